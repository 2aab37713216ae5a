"""Run configuration: typed sections (sections.py) read from and written to flat YAML keys (files.py)."""
from ddmd_lab.config.files import (experiments_dir, known_arm_names, known_scales, load_config, parse_overrides,
                                   read_config, resolve_arm, save_config, scale_settings)
from ddmd_lab.config.sections import (Evaluation, Objective, Optimisation, Parallel, RunConfig, RunSettings, Schedule,
                                      StudentSampling)

__all__ = ["RunConfig", "RunSettings", "Schedule", "StudentSampling", "Objective", "Optimisation", "Evaluation", "Parallel",
           "experiments_dir", "known_scales", "parse_overrides", "load_config", "scale_settings", "save_config",
           "read_config", "known_arm_names", "resolve_arm"]
