"""``make finetune``: the run folder and the training loop.

A fine-tune writes a new folder ``<runs_dir>/<scale>/finetune/<time>-s<seed>-<random>/``
(never an existing one) holding

  finetune.yaml   the distillation run and checkpoint it started from, DATA, the settings
  metrics.csv     the curves: one row per evaluation point (step 0 = the untouched student),
                  at the student's step count and guidance 0 (evaluate.py names the columns)
  logs.csv        per step: loss, mean t, gradient norm, seconds
  grids/          before_/after_g<guidance>_n<steps>.png: old classes (a row each), the new one last
  samples/        step_<k>.png, the grid of each evaluation point
  grids.json      the metrics of every grid, before and after
  result.json     the last curve point, seconds per step, skipped steps, the frozen student's
                  fingerprint before and after (they must agree)
  adapter.pt      the adapter's weights (peft names) and the new label row; tensors only

No config.yaml / summary.json: the report and table builders read every
runs/<scale>/*/*/summary.json as a distillation run.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from ddmd_lab.config import read_config
from ddmd_lab.data.image_files import uint8_to_signed
from ddmd_lab.data.real_latents import encode_latents, read_image
from ddmd_lab.errors import UserError
from ddmd_lab.finetune.config import FinetuneConfig
from ddmd_lab.finetune.data import CaptionFolder, ImageConcept, parse_data
from ddmd_lab.finetune.evaluate import ImageFinetuneEvaluator, TextFinetuneEvaluator, grid_settings, write_grid
from ddmd_lab.finetune.objective import denoising_loss, draw_student_times
from ddmd_lab.finetune.student import ADAPTER, Student, load_student
from ddmd_lab.scales.text2image import teacher_settings
from ddmd_lab.training.checkpointing import teacher_fingerprint
from ddmd_lab.training.restore import run_checkpoint
from ddmd_lab.util.devices import to_device
from ddmd_lab.util.io import atomic_torch_save, atomic_write_text, new_run_dir


class ImageData:
    """The concept's training images, all under the new label."""

    def __init__(self, student: Student, concept: ImageConcept):
        self.x0, self.label = concept.train, student.new_label

    def __len__(self) -> int:
        return len(self.x0)

    def batch(self, idx: torch.Tensor, device):
        return self.x0[idx].to(device), torch.full((len(idx),), self.label, dtype=torch.long, device=device)


class TextData:
    """The folder's images as VAE latents (posterior mean, as the GAN arms' real images) and their captions'
    conditions, both computed once."""

    def __init__(self, student: Student, concept: CaptionFolder, encode_batch: int = 4):
        model, resolution = student.model, teacher_settings(student.cfg)["resolution"]
        pixels = [read_image(f, resolution) for f in concept.files]
        bad = [f for f, p in zip(concept.files, pixels) if p is None]
        if bad:
            raise UserError(f"{len(bad)} of {len(pixels)} images in {concept.folder} cannot be read, e.g. {bad[0]}; "
                            "replace or remove them.")
        self.images = uint8_to_signed(np.stack(pixels))
        vae, device = model.vae, student.device
        dtype = next(vae.parameters()).dtype
        vae.to(torch.float32)
        with torch.no_grad():
            self.latents = torch.cat([encode_latents(vae, self.images[i:i + encode_batch].to(device)).cpu()
                                      for i in range(0, len(self.images), encode_batch)])
            vae.to(dtype)
            self.rows = model.backbone.condition_rows(model.encode(concept.captions))
        self.backbone = model.backbone

    def __len__(self) -> int:
        return len(self.latents)

    def batch(self, idx: torch.Tensor, device):
        cond = self.backbone.cat_conditions([self.rows[int(i)] for i in idx])
        return self.latents[idx].to(device), to_device(cond, device)


class FinetuneLoop:
    """AdamW on the adapter (and new label row) only; the loss at the student's times."""

    def __init__(self, student: Student, data, ft: FinetuneConfig):
        self.student, self.data, self.ft = student, data, ft
        self.params = student.trainable()
        self.opt = torch.optim.AdamW(self.params, lr=ft.lr, weight_decay=ft.weight_decay)
        self.times = student.times()
        self.batch_size = ft.batch_size or student.cfg.schedule.batch_size
        self.gen = torch.Generator().manual_seed(ft.seed)  # batches, times and noise of this fine-tune
        self.step_count = self.skipped = 0

    def _autocast(self):
        device = self.student.device
        if device.type == "cuda" and self.student.cfg.parallel.precision.startswith("bf16"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(self) -> dict:
        start = time.perf_counter()
        device, b = self.student.device, self.batch_size
        idx = torch.randint(len(self.data), (b,), generator=self.gen)
        t = draw_student_times(self.times, b, self.gen)
        x0, cond = self.data.batch(idx, device)
        noise = torch.randn(x0.shape, generator=self.gen)
        with self._autocast():
            loss = denoising_loss(self.student.backbone, x0, cond, t.to(device), self.ft.train_guidance, noise.to(device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.ft.grad_clip)
        if torch.isfinite(loss) and torch.isfinite(norm):
            self.opt.step()
        else:  # a non-finite step changes nothing and is counted
            self.skipped += 1
        self.opt.zero_grad(set_to_none=True)
        self.step_count += 1
        return {"step": self.step_count, "loss": loss.item(), "t_mean": t.mean().item(), "grad_norm": norm.item(),
                "seconds": time.perf_counter() - start}


def _csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _grids(ev, student: Student, ft: FinetuneConfig, out: Path, phase: str) -> list[dict]:
    rows = []
    for guidance, steps in grid_settings(student, ft):
        metrics, images, nrow = ev.measure(steps, guidance)
        write_grid(images, nrow, out / "grids" / f"{phase}_g{guidance:g}_n{steps}.png")
        rows.append({"phase": phase, **metrics})
    return rows


def _fingerprint(student: Student) -> str:
    return teacher_fingerprint(student.frozen_state(), type(student.backbone).__name__)


def finetune(run: str, data: str, overrides: dict | None = None, log=print) -> Path:
    """Fine-tune RUN's student on DATA; returns the new run folder."""
    ft = FinetuneConfig.from_overrides(overrides or {})
    if not run:
        raise UserError("no run to fine-tune: make finetune RUN=runs/<scale>/<arm>/<run-id> DATA=<concept>.")
    run_dir = Path(run)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"RUN={run_dir} is not a run folder (no config.yaml); pass a distillation run, "
                        "RUN=runs/<scale>/<arm>/<run-id>.")
    cfg = read_config(run_dir / "config.yaml")
    run_checkpoint(run_dir)  # a run without a checkpoint stops here, before anything loads
    concept = parse_data(data, cfg.run.scale, cfg.data.get("root"))  # a bad DATA too
    torch.manual_seed(ft.seed)  # the adapter's initialisation
    student = load_student(run_dir, ft, ft.device or None)
    if student.checkpoint.name != "final.ckpt":
        log(f"warning: {run_dir} has no final.ckpt (unfinished run): fine-tuning its {student.checkpoint.name}.")
    if isinstance(concept, ImageConcept):
        train_data, ev = ImageData(student, concept), ImageFinetuneEvaluator(student, concept, ft)
    else:
        train_data = TextData(student, concept)
        ev = TextFinetuneEvaluator(student, concept, ft, train_data.images)
    out = new_run_dir(Path(ft.runs_dir or cfg.run.runs_dir), cfg.run.scale, "finetune", ft.seed)
    loop = FinetuneLoop(student, train_data, ft)
    record = {"run": str(run_dir), "checkpoint": str(student.checkpoint), "data": str(data), "concept": concept.describe(),
              "new_label": student.new_label,
              "student": {"scale": cfg.run.scale, "arm": cfg.arm.name, "student_steps": cfg.student.student_steps,
                          "student_sampler": cfg.student.student_sampler, "shift": cfg.student.shift, "alpha": cfg.objective.alpha,
                          "distill_lora_rank": int(cfg.optimisation.lora.get("rank", 0)), "seed": cfg.run.seed},
              "lora_targets": list(student.targets), "batch_size": loop.batch_size, "student_times": [round(float(t), 6) for t in loop.times],
              "guidance_form": "offset: cond + g (cond - uncond), alpha = 1 + g; 0 = no CFG",
              "finetune": ft.to_dict()}
    atomic_write_text(out / "finetune.yaml", yaml.safe_dump(record, sort_keys=False))
    log(f"fine-tuning the {cfg.arm.name} student of {run_dir} ({cfg.student.student_steps} steps, {cfg.student.student_sampler}) "
        f"on {concept.describe()}: LoRA rank {ft.rank}, lr {ft.lr:g}, train_guidance {ft.train_guidance:g}, "
        f"{ft.steps} steps, batch {loop.batch_size} -> {out}")
    before = _fingerprint(student)
    student.backbone.eval()  # the frozen base never trains (no dropout / norm updates); LoRA dropout is 0
    grid_rows = _grids(ev, student, ft, out, "before")
    curve = [{"step": 0, "loss": math.nan, **_curve_point(ev, out, 0)}]
    _csv(out / "metrics.csv", curve)
    logs, every = [], max(1, ft.steps // 20)
    for _ in range(ft.steps):
        logs.append(loop.step())
        k = loop.step_count
        if ft.progress_bar and (k % every == 0 or k == ft.steps):
            recent = logs[-every:]
            log(f"finetune: step {k}/{ft.steps} loss {sum(r['loss'] for r in recent) / len(recent):.4f} "
                f"{sum(r['seconds'] for r in recent) / len(recent):.3f} s/step")
        if k % ft.eval_every == 0 or k == ft.steps:
            since = logs[-(k - curve[-1]["step"]):]
            curve.append({"step": k, "loss": sum(r["loss"] for r in since) / len(since), **_curve_point(ev, out, k)})
            _csv(out / "metrics.csv", curve)
            _csv(out / "logs.csv", logs)
    grid_rows += _grids(ev, student, ft, out, "after")
    atomic_write_text(out / "grids.json", json.dumps(grid_rows, indent=2))
    _save_adapter(student, out / "adapter.pt")
    after = _fingerprint(student)
    if after != before:
        raise RuntimeError(f"the frozen student changed during fine-tuning ({before} -> {after}): a bug, not a setting.")
    seconds = [r["seconds"] for r in logs]
    result = {**curve[-1], "steps": ft.steps, "skipped_steps": loop.skipped,
              "seconds_per_step": sum(seconds) / len(seconds),
              "seconds_per_step_after_first": sum(seconds[1:]) / max(len(seconds) - 1, 1),
              "frozen_fingerprint": {"before": before, "after": after}}
    atomic_write_text(out / "result.json", json.dumps(result, indent=2))
    log(f"fine-tune written: {out} ({result['seconds_per_step']:.3f} s/step)")
    return out


def _curve_point(ev, out: Path, step: int) -> dict:
    metrics, images, nrow = ev.measure()
    write_grid(images, nrow, out / "samples" / f"step_{step:07d}.png")
    return {k: v for k, v in metrics.items() if k not in ("sample_steps", "sample_guidance")}


def _save_adapter(student: Student, path: Path) -> None:
    from peft.utils import get_peft_model_state_dict  # deferred: peft pulls in transformers; only LoRA paths need it

    net = student.backbone.denoiser()
    state = {"lora": {k: v.detach().cpu() for k, v in get_peft_model_state_dict(net, adapter_name=ADAPTER).items()}}
    if student.new_label is not None:
        state["new_label_row"] = net.class_embedding.new.detach().cpu()
        state["new_label"] = student.new_label
    atomic_torch_save(state, path)
