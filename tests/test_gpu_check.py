"""make gpu-check's script on tiny configs of the same classes (the CPU run of its code path)."""
import json
import math
import weakref


def test_gpu_check_runs_every_measurement_on_tiny_configs(tmp_path, monkeypatch):
    from ddmd_lab.commands.gpu_check import main
    from ddmd_lab.training import bench_fit  # builds each case's DistillModule

    made = []

    class Recorded(bench_fit.DistillModule):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(weakref.ref(self))

    monkeypatch.setattr(bench_fit, "DistillModule", Recorded)
    out = tmp_path / "gpu_check.json"
    results = main(["--tiny", "--steps", "3", "--repeats", "1", "--cases", "sdxl:2,zimage:0", "--out", str(out)])
    assert json.loads(out.read_text()) == results
    assert [(r["family"], r["lora_rank"]) for r in results] == [("sdxl", 2), ("zimage", 0)]
    for r in results:
        assert r["step_ms"] > 0 and r["floor_ms"] > 0 and math.isfinite(r["step_over_floor"])
        assert math.isfinite(r["bf16_rel_diff"]) and -1 - 1e-5 <= r["bf16_cosine"] <= 1 + 1e-5  # float rounding
        assert "plan_peak_gib" in r and "plan_training_gib" in r  # None on tiny configs (no plan)
    # a flow model's update in bf16 autocast points where the float32 one does; the tiny random SDXL UNet's does
    # not (x0 = (x - sqrt(1 - ab) eps) / sqrt(ab) amplifies bf16's eps error 15-50x at tau near 0, and its CFG
    # difference is small): measured 0.42 cosine on the tiny one; the real UNet's number is what gpu-check reports
    assert results[1]["bf16_cosine"] > 0.99 and results[1]["bf16_rel_diff"] < 0.1
    # each case's module is freed when the case ends, without waiting for Python's cycle collector: on a GPU a
    # module left alive (it and its Trainer refer to each other) counted in the next case's peak -- the H200
    # run's SDXL full fine-tuning module (~29 GiB) in the Z-Image LoRA case's 47.49 GiB
    assert len(made) == 2 and all(ref() is None for ref in made)


def test_gpu_check_compares_the_measured_peak_with_the_plans_training_part():
    """The plan's training part leaves out what gpu-check never loads (text encoders, VAE, its decode)."""
    from ddmd_lab.config import load_config
    from ddmd_lab.planning.memory_plan import GIB, TRAINING, memory_plan, training_bytes

    plan = memory_plan(load_config("zimage", "decoupled_hybrid"), gpu_gib=140)
    gib = plan["gib"]
    assert set(TRAINING).isdisjoint({"text_encoders", "vae", "vae_decode"})
    assert abs(plan["training_gib"] - training_bytes(plan["bytes"]) / GIB) < 0.01  # held + one model's update
    assert abs(plan["peak_gib"] - plan["training_gib"] - gib["text_encoders"] - gib["vae"]) < 0.05  # decode < activations
    # the recipe: 21.76 of 29.40 GiB (22.25 of 29.90 while the plan counted both adapters' gradients and an autocast cache)
    assert 21.5 < plan["training_gib"] < 22.0 and plan["peak_gib"] > 29
