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


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def image_dirs(tmp_path_factory):
    """runs_dir / cache_dir overrides shared by every tiny image test: one teacher, one classifier."""
    root = tmp_path_factory.mktemp("images")
    return [f"runs_dir={root / 'runs'}", f"cache_dir={root / 'cache'}"]


@pytest.fixture(scope="session")
def pipeline_folders(tmp_path_factory):
    """Tiny pipelines of the three real families saved as diffusers folders, once per session."""
    from .tiny_pipelines import save_lumina2, save_sdxl, save_zimage

    root = tmp_path_factory.mktemp("tiny_pipelines")
    return {name: save(root / name) for name, save in (("zimage", save_zimage), ("lumina2", save_lumina2),
                                                       ("sdxl", save_sdxl))}
