"""Third-party output a run does not need, silenced where it comes from (imported with the package).

Each filter names the library's logger or module and the message, so anything else those
libraries say still shows; nothing here hides warnings in general.  W&B's own banners are off
by its ``silent`` / ``quiet`` settings (run.make_loggers), Lightning's progress bar is ours
(progress.py).
"""
from __future__ import annotations

import logging
import re
import warnings

# Lightning's INFO lines at every Trainer: an advertisement, the device banner (a run names its
# accelerator in its config), and the fit loop's stop reason (the progress line says where it stopped).
LIGHTNING_BANNERS = re.compile(r"💡 Tip:|(GPU|TPU|HPU) available:|LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES:|"
                               r"`Trainer\.fit` stopped:")
LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                     "pytorch_lightning.accelerators.cuda")


# diffusers' pipelines log what they cut off a long prompt at every encode (every training step); ddmd_lab
# warns once, before the run, with the count and the fix (data/prompts.warn_truncated)
DIFFUSERS_TRUNCATION = re.compile(r"The following part of your input was truncated because")
DIFFUSERS_ENCODERS = ("diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl",
                      "diffusers.pipelines.lumina2.pipeline_lumina2")


class DropMessages(logging.Filter):
    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def quiet_third_party() -> None:
    """Idempotent: the filters are installed once per logger."""
    for names, pattern in ((LIGHTNING_LOGGERS, LIGHTNING_BANNERS), (DIFFUSERS_ENCODERS, DIFFUSERS_TRUNCATION)):
        for name in names:
            logger = logging.getLogger(name)
            if not any(isinstance(f, DropMessages) for f in logger.filters):
                logger.addFilter(DropMessages(pattern))
    # torch 2.14 deprecated isinstance checks against LeafSpec, which Lightning 2.6's own pytree helper
    # still makes at every fit; harmless, and Lightning's to change
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"pytorch_lightning\.utilities\._pytree")
    # two adapters (generator, fake) on one frozen base is the LoRA recipe (lora.py), not an accident
    warnings.filterwarnings("ignore", message=r"Already found a `peft_config` attribute in the model",
                            category=UserWarning, module=r"peft\.tuners\.tuners_utils")
    # FID's Inception 2015-12-05 network ships as TorchScript (eval/inception.py): torch.jit.load is its only loader
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning,
                            module=r"torch\.jit\._serialization")
    # clean-fid's Frechet distance passes scipy's sqrtm a `disp` argument SciPy 1.18 will drop (its result is unchanged)
    warnings.filterwarnings("ignore", message=r"The `disp` argument is deprecated", category=DeprecationWarning,
                            module=r"cleanfid\.fid")
    # diffusers' schedulers call np.array on torch tensors; numpy 2 deprecates torch's __array__ signature
    warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy keyword",
                            category=DeprecationWarning, module=r"diffusers\.schedulers")


quiet_third_party()
