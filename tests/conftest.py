"""Test settings: nothing may touch the network or the user's folders."""
import os
import tempfile

_tmp = tempfile.mkdtemp(prefix="ddmd_test_env_")
for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "MPLCONFIGDIR"):
    os.environ.setdefault(var, os.path.join(_tmp, var.lower()))
    os.makedirs(os.environ[var], exist_ok=True)
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PL_DISABLE_FORK", "1")
