"""ddmd_lab: a research harness for Decoupled DMD."""
from ddmd_lab.util import quiet as _quiet  # noqa: F401  (third-party banners and known-harmless warnings, at their source)
