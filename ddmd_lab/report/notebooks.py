"""The analysis notebooks, executed headless (nbclient, this interpreter's kernel).

analysis/*.ipynb are committed without outputs; they read the run folders
named by DDMD_RUNS_DIR / DDMD_SCALE (or the list at their top).  Executing
writes a copy with outputs elsewhere; the committed files are never touched.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ANALYSIS = Path(__file__).resolve().parents[2] / "analysis"
NOTEBOOKS = ("spectra.ipynb", "variance.ipynb")


def execute(notebook: Path, out_dir: Path, runs_dir: Path, scale: str, timeout: int = 600) -> Path:
    import nbformat  # deferred: the Jupyter stack, only make notebooks needs it
    from nbclient import NotebookClient  # deferred: the Jupyter stack

    nb = nbformat.read(notebook, as_version=4)
    env = {"DDMD_RUNS_DIR": str(Path(runs_dir).resolve()), "DDMD_SCALE": scale, "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel process inherits them
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    out = Path(out_dir) / notebook.name
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    return out


def main(argv: list[str]) -> None:
    out_dir = Path(argv[0]) if argv else Path("runs/notebooks")
    scale = os.environ.get("DDMD_SCALE", "toy2d")
    for name in NOTEBOOKS:
        print(f"executed: {execute(ANALYSIS / name, out_dir, Path(os.environ.get('DDMD_RUNS_DIR', 'runs')), scale)}")


if __name__ == "__main__":
    main(sys.argv[1:])
