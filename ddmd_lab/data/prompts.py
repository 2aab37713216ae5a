"""Prompt files and the text encoders' windows.

``read_prompts``: a .txt (one prompt per line) or a COCO captions .json, with one
sentence naming the fix for every way it can be wrong.  ``warn_truncated``: prompts
longer than a text encoder's window are cut silently by the pipelines; say so once,
before any long work, with how many, what one loses and the fix.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from ddmd_lab.errors import UserError


def read_prompts(path: str | None) -> list[str]:
    if not path:
        raise UserError("no training prompts: set data.prompts to a text file (one prompt per line) or a COCO "
                        "captions JSON, e.g. --set data.prompts=/data/coco/annotations/captions_train2014.json.")
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"prompt file {p} does not exist; set data.prompts to a .txt (one per line) or a COCO captions .json.")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # no permission, a binary file, another encoding
        raise UserError(f"prompt file {p} cannot be read as UTF-8 text ({exc.__class__.__name__}); make it a readable "
                        "UTF-8 .txt (one prompt per line) or a COCO captions .json.") from None
    if p.suffix == ".json":
        try:
            prompts = [a["caption"].strip() for a in json.loads(text)["annotations"]]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{p} is not a COCO captions file ({exc.__class__.__name__}); it needs "
                            "annotations[*].caption, or give a .txt with one prompt per line.") from None
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompt file {p} holds no prompts (only blank lines or no captions); write one prompt per "
                        "line, or point data.prompts at another file.")
    return prompts


_CHECKED_WINDOWS: set = set()


def warn_truncated(model, prompts: list[str], what: str = "prompts") -> None:
    """``model``: a backbones.text_to_image.TextToImage.  Warn (once per model and prompt list) when prompts are longer than a text encoder's window: the
    pipeline cuts them silently, so the teacher never sees their end.  Says how many, what one loses, the fix."""
    key = (id(model), len(prompts), hash(tuple(prompts)))
    if key in _CHECKED_WINDOWS or not model.windows:
        return
    _CHECKED_WINDOWS.add(key)
    for window in model.windows:
        cut = window.truncated(prompts)
        if not cut:
            continue
        count = sum(p in cut for p in prompts)
        example, lost = next(iter(cut.items()))
        short = (lambda s: s if len(s) <= 80 else f"{s[:38]} ... {s[-38:]}")
        fix = (f"shorten them, or raise {window.setting} (now {window.length})" if window.setting else
               f"shorten them (this encoder's {window.length} tokens are fixed)")
        warnings.warn(f"{count} of {len(prompts)} {what} are longer than the text encoder's window of {window.length} "
                      f"tokens (with the pipeline's template) and lose their end, e.g. {short(example)!r} loses "
                      f"{short(lost)!r}; {fix}.", UserWarning, stacklevel=2)
        return
