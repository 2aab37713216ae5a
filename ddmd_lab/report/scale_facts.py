"""What a report needs from its scale that no run folder holds: computed by the command
(commands/report.py, which may load the scale and its networks) and handed in, so report/ only reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ScaleFacts:
    # the scale's reference rows (teacher many-step, exact samples), measured like a student
    reference: dict[str, dict] = field(default_factory=dict)
    # text-to-image scales lay out make eval-coco / eval-hps's numbers in place of the image tables
    text_to_image: bool = False
    # where make spectra writes the teacher's CA spectra on real data (None: the scale has no teacher folder)
    teacher_ca_spectra: Path | None = None
    # make floors' measurement (commands/floors.py): the metric's floor and the evaluation's noise, or None
    noise_floors: dict | None = None
