from concurrent.futures import ThreadPoolExecutor

from ddmd_lab.util.io import atomic_write_text, new_run_dir


def test_runs_started_at_once_get_distinct_folders(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda _: new_run_dir(tmp_path, "toy2d", "coupled", 0), range(32)))
    assert len(set(dirs)) == 32 and all(d.is_dir() for d in dirs)


def test_atomic_write_leaves_no_temp_and_replaces(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_publish_dir_keeps_the_replaced_folder(tmp_path):
    from ddmd_lab.util.io import publish_dir

    target = tmp_path / "teacher"
    for version in ("old", "new"):
        staging = tmp_path / f"staging-{version}"
        staging.mkdir()
        (staging / "weights").write_text(version)
        publish_dir(staging, target)
    assert (target / "weights").read_text() == "new"
    replaced = [p for p in tmp_path.iterdir() if p.name.startswith("teacher.replaced-")]
    assert len(replaced) == 1 and (replaced[0] / "weights").read_text() == "old"
