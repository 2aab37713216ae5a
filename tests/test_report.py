"""Tables, report, notebooks and the W&B workspace, from a tiny image sweep."""
import json

import pytest

from ddmd_lab.training.run import run_ablation

from .tiny_images import image_cfg

# FID (a 2048x2048 sqrtm each) only where a test reads it: the W&B final table and the tables' FID columns
SWEEP = [("ca_only", 4, "wandb=offline"), ("coupled", 4, None), ("decoupled_hybrid", 4, "fid_samples=0"),
         ("dm_only", 1, "fid_samples=0")]


@pytest.fixture(scope="module")
def sweep(image_dirs, tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("report_runs")
    dirs = [d for d in image_dirs if not d.startswith("runs_dir=")] + [f"runs_dir={runs_dir}"]
    runs = {}
    for arm, steps, extra in SWEEP:
        runs[(arm, steps)] = run_ablation(image_cfg(dirs, arm, f"student_steps={steps}", *([extra] if extra else [])))
    return runs_dir, runs


def test_every_image_run_keeps_its_spectra_figures_and_observer(sweep):
    _, runs = sweep
    ca = runs[("ca_only", 4)]
    for name in ("term_spectra.npz", "term_spectra.json", "term_spectra.png", "output_spectra.png"):
        assert (ca / name).is_file(), name
    summary = json.loads((ca / "summary.json").read_text())
    observer = json.loads((ca / "term_spectra.json").read_text())["observer"]
    assert summary["observer_fake_x0_hf_excess"] == observer["fake_x0_hf_excess"]


def test_wandb_offline_run_holds_grids_spectra_and_final_metrics(sweep):
    _, runs = sweep
    files = list((runs[("ca_only", 4)] / "wandb").glob("offline-run-*/files"))[0]
    media = {p.name.split("_")[0] for p in (files / "media" / "images" / "media").glob("*.png")}
    assert media >= {"samples", "term", "output"}
    tables = list((files / "media" / "table").glob("final_*.table.json"))
    assert tables and "fid" in json.loads(tables[0].read_text())["columns"]


def test_paper_tables_put_the_papers_numbers_on_the_matching_rows(sweep):
    from ddmd_lab.commands.report import scale_facts
    from ddmd_lab.report.tables import paper_tables, render_tables

    runs_dir, _ = sweep
    tables = paper_tables(runs_dir, "mnist", scale_facts(runs_dir, "mnist"))
    md = render_tables(tables, "markdown")
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "DMD2 | 18.95" in rows["coupled"] and "Decoupled-Hybrid | 17.8" in rows["decoupled_hybrid"]
    table1 = next(t for t in tables if t.title.startswith("Table 1"))
    assert [r[0] for r in table1.rows] == ["ref.", 1, 2, 3, 4]
    assert table1.rows[0][2] > 0 and table1.rows[4][6] == 85.85  # the teacher's FID measured; #4's DPG from the paper
    assert table1.rows[2][2] is None  # decoupled_full was not run: shown as missing, never invented
    fig2 = next(t for t in tables if t.title.startswith("Fig. 2") and "4-step" in t.title)
    std_rows = [r for r in fig2.rows if r[2] == "out_std" and r[1] in ("ca_only", "coupled")]
    assert len(std_rows) == 2 and all(isinstance(v, float) for v in std_rows[0][3:6])
    latex = render_tables(tables, "latex")
    assert latex.count(r"\begin{tabular}") == len(tables) and r"ca\_only" in latex


def test_report_regenerates_with_its_figures_and_keeps_the_previous_one(sweep, tmp_path):
    from ddmd_lab.commands.report import scale_facts
    from ddmd_lab.report.report import write_report

    runs_dir, _ = sweep
    facts = scale_facts(runs_dir, "mnist")
    first = write_report(runs_dir, "mnist", facts, tmp_path)
    page = (first / "README.md").read_text()
    images = [line.split("](")[1].rstrip(")") for line in page.splitlines() if line.startswith("![")]
    assert {"variance.png", "quality.png", "observer.png", "term_spectra_ca_only_4.png"} <= set(images)
    assert all((first / name).is_file() for name in images)
    assert "make sweep SCALE=mnist" in page and "Table 2 analogue" in page
    write_report(runs_dir, "mnist", facts, tmp_path)
    kept = list(tmp_path.glob("mnist.replaced-*"))
    assert len(kept) == 1 and (kept[0] / "README.md").read_text() == page


def test_notebooks_execute_headless_on_the_runs(sweep, tmp_path):
    import nbformat

    from ddmd_lab.report.notebooks import ANALYSIS, NOTEBOOKS, execute

    runs_dir, _ = sweep
    figures = {"spectra.ipynb": 3, "variance.ipynb": 1}  # at least: term spectra, output spectra, observer; the curves
    for name in NOTEBOOKS:
        committed = nbformat.read(ANALYSIS / name, as_version=4)
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in committed.cells
                   if c.cell_type == "code"), f"{name}: strip outputs before committing"
        nb = nbformat.read(execute(ANALYSIS / name, tmp_path, runs_dir, "mnist"), as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"]
        assert sum("image/png" in o.get("data", {}) for o in outputs) >= figures[name], name


def test_dashboard_is_built_offline_and_reads_only_logged_keys(sweep):
    import csv

    from ddmd_lab.report.dashboard import SECTIONS, build_workspace, panel_keys, workspace_spec

    spec = workspace_spec(build_workspace("someone"))
    sections = spec["spec"]["section"]["panelBankConfig"]["sections"]
    assert [s["name"] for s in sections] == list(SECTIONS) and all(s["panels"] for s in sections)
    _, runs = sweep
    logged = set()
    for arm in ("ca_only", "coupled"):
        run = runs[(arm, 4)]
        with open(next(run.glob("logs/version_*/metrics.csv"))) as f:
            logged |= set(next(csv.reader(f)))
        logged |= {f"final_{k}" for k in json.loads((run / "summary.json").read_text())}
    logged |= {"media/samples", "media/term_spectra", "media/output_spectra"}  # checked in the W&B test above
    assert panel_keys("image") <= logged, panel_keys("image") - logged  # text-to-image keys: test_eval_protocols


def test_tables_and_report_from_the_command_line(sweep, tmp_path, capsys):
    from ddmd_lab.commands.cli import main

    runs_dir, _ = sweep
    assert main(["tables", "--scale", "mnist", "--runs-dir", str(runs_dir), "--format", "latex"]) == 0
    assert r"\caption{Table 1 analogue" in capsys.readouterr().out
    assert main(["report", "--scale", "mnist", "--runs-dir", str(runs_dir), "--reports-dir", str(tmp_path)]) == 0
    assert main(["tables", "--scale", "mnist", "--runs-dir", str(tmp_path / "nothing")]) == 2
    assert "make sweep SCALE=mnist" in capsys.readouterr().err
