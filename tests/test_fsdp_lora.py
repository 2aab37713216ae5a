"""LoRA under strategy=fsdp: two gloo ranks train the tiny Z-Image transformer's adapters on one shared,
sharded base, and end with the adapters ddp ends with.

The image scale's UNet2DModel takes no peft adapters, so this runs the module directly (as
tests/test_real_backbones_distill.py does on one process): each run is ``python -m tests.test_fsdp_lora
<strategy> <out>``, whose rank 0 Lightning's launcher re-runs as rank 1; rank 0 writes the adapters
(whole: a DTensor's full_tensor()) and what each rank held of the base.
"""
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _launch(strategy: str, out: Path, port: int) -> dict:
    env = {**{k: v for k, v in os.environ.items() if k != "DDMD_RUN_DIR"}, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(port)}
    proc = subprocess.run([sys.executable, "-m", "tests.test_fsdp_lora", strategy, str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out, weights_only=True)


def test_lora_under_fsdp_shards_the_shared_base_and_trains_the_adapters_as_ddp(tmp_path):
    """Fails on the code before FSDP2: config refused LoRA with strategy=fsdp (the adapters sat inside the
    frozen base's FSDP1 flat parameters)."""
    port = 34000 + os.getpid() % 1000 * 2
    ddp = _launch("ddp", tmp_path / "ddp.pt", port)
    fsdp = _launch("fsdp", tmp_path / "fsdp.pt", port + 1)
    # the base's block weights and the adapters in them are DTensors, about half of them on each rank
    held = fsdp["held"]
    assert held["dtensors"] == held["params"] > 0 and 0.4 < held["local"] / held["full"] < 0.6, held
    assert ddp["adapters"].keys() == fsdp["adapters"].keys() and ddp["adapters"]
    worst = max((ddp["adapters"][k] - fsdp["adapters"][k]).abs().max().item() for k in ddp["adapters"])
    moved = max(v.abs().max().item() for k, v in fsdp["adapters"].items() if "lora_B" in k)  # B starts at zero
    print(f"\nLoRA under fsdp vs ddp: largest adapter difference {worst:.3g} (lora_B moved to {moved:.3g})")
    assert worst < 1e-5 and moved > 1e-5
    assert fsdp["steps"] == ddp["steps"] == (2, 2, 0)  # generator, critic, skipped


def _main(strategy: str, out: str) -> None:
    import pytorch_lightning as pl
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from ddmd_lab.config import RunConfig
    from ddmd_lab.core.arms import REGISTRY
    from ddmd_lab.parallel.strategies import PerOptimizerDDP, make_strategy
    from ddmd_lab.training.module import DistillModule
    from tests.test_real_backbones_distill import _Conditions, _zimage

    PerOptimizerDDP.forwards_in_lockstep = True  # rank 0's k on both ranks, as fsdp draws it: the same training
    torch.manual_seed(0)
    teacher, make_cond = _zimage()
    cfg = RunConfig.of(arm=REGISTRY["decoupled_hybrid"], steps=2, ttur=1, batch_size=2, student_steps=2, alpha=4.0,
                       wandb="disabled", lora={"rank": 2}, strategy=strategy, devices=2, accelerator="cpu")
    module = DistillModule(teacher, cfg)
    loader = torch.utils.data.DataLoader(_Conditions(make_cond, 2), batch_size=None, collate_fn=lambda b: b)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy=make_strategy(cfg.parallel), logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False)
    trainer.fit(module, loader)
    blocks = [p for m in module.base.modules() if isinstance(m, FSDPModule) and m is not module.base for p in m.parameters()]
    held = {"params": len(blocks), "dtensors": sum(isinstance(p, DTensor) for p in blocks),
            "local": sum(p.to_local().numel() for p in blocks if isinstance(p, DTensor)), "full": sum(p.numel() for p in blocks)}
    adapters = {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
                for n, p in module.base.named_parameters() if "lora_" in n}
    if trainer.global_rank == 0:
        torch.save({"adapters": adapters, "held": held,
                    "steps": (module.generator_step_count, module.critic_step_count, module.skipped_steps)}, out)


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
