"""A finished run's student as the frozen base of one new LoRA adapter.

The student is loaded as ``make sample`` / export load a run's generator (the run's
checkpoint over the scale's teacher, refused if the teacher differs); a LoRA
distillation run's ``generator`` adapter is merged into its base first (diffusers'
fuse_lora + unload_lora, as export does), so the base is the student itself.  The
new adapter is injected with peft directly (``inject_adapter_in_model``: the image
scales' UNet2DModel has no diffusers adapter mixin) and is the only thing trained,
with, on the image scales, one new label row (below).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddmd_lab.backbones.lora import DEFAULT_TARGETS, AdapterView, check_targets
from ddmd_lab.config import RunConfig, read_config
from ddmd_lab.core.rollout import times_for_model
from ddmd_lab.errors import UserError
from ddmd_lab.finetune.config import FinetuneConfig
from ddmd_lab.training import restore
from ddmd_lab.training.module import DistillModule
from ddmd_lab.training.networks import load_networks
from ddmd_lab.training.restore import default_device, run_checkpoint
from ddmd_lab.util.io import safe_torch_load

ADAPTER = "finetune"
FAMILIES = ("fashion", "mnist", "zimage", "lumina2")  # flow-matching students (objective.py)


class NewLabelRow(nn.Module):
    """The class-conditional UNet's label embedding with one more label.

    backbones/class_unet.py builds ``num_class_embeds = num_classes + 1``: rows 0..K-1 are the
    classes and row K is the null label of label dropout, so there is no spare row.  The new
    concept gets label K -- the student's num_classes, so it reads as one more class -- and
    the null label moves to K + 1, keeping its row: the table is [classes, new row, null row].
    Every old row is the frozen student's own tensor (old labels and the unconditional
    prediction compute exactly what they did); the new row is trained with the adapter.  It
    starts as a copy of the null row, so before training the new label asks for the
    unconditional prediction (nothing about the concept is assumed).
    """

    def __init__(self, old: nn.Embedding):
        super().__init__()
        self.old = old.requires_grad_(False)
        self.new = nn.Parameter(old.weight[-1:].detach().clone().float())

    def forward(self, labels: Tensor) -> Tensor:
        w = self.old.weight
        return F.embedding(labels, torch.cat([w[:-1], self.new.to(w.dtype), w[-1:]]))


@dataclass
class Student:
    run_dir: Path
    cfg: RunConfig                # the distillation run's
    backbone: nn.Module           # the frozen student with the adapter (and the new label row)
    checkpoint: Path
    model: object | None = None   # text-to-image scales: the pipeline around it (VAE, text encoders)
    new_label: int | None = None  # image scales: the concept's label
    targets: tuple[str, ...] = ()  # the modules the new adapter adapts (_add_adapter)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def times(self, steps: int | None = None) -> Tensor:
        """The student's times at ``steps`` evaluations (its own list at its own count)."""
        n = steps or self.cfg.student.student_steps
        explicit = self.cfg.student.student_times if n == self.cfg.student.student_steps else None
        return times_for_model(self.backbone, n, self.cfg.student.shift, explicit)

    def trainable(self) -> list[nn.Parameter]:
        net = self.backbone.denoiser()
        params = [p for n, p in net.named_parameters() if f".{ADAPTER}." in n]
        if self.new_label is not None:
            params.append(net.class_embedding.new)
        return params

    def frozen_state(self) -> dict[str, Tensor]:
        """Every tensor of the student that is not trained (what must not change)."""
        trained = {id(p) for p in self.trainable()}
        return {k: v for k, v in self.backbone.state_dict(keep_vars=True).items() if id(v) not in trained}

    @contextlib.contextmanager
    def adapter_off(self):
        """The student as the run left it (the adapter's layers bypassed; the new label row stays)."""
        from peft.tuners.tuners_utils import \
            BaseTunerLayer  # deferred: peft pulls in transformers; only LoRA paths need it

        layers = [m for m in self.backbone.denoiser().modules() if isinstance(m, BaseTunerLayer)]
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield self.backbone
        finally:
            for layer in layers:
                layer.enable_adapters(True)
            for p in self.trainable():  # peft's switch turns requires_grad off; training needs it back
                p.requires_grad_(True)


def load_student(run_dir: Path, ft: FinetuneConfig, device: str | None = None) -> Student:
    """The run's student, frozen, with the new adapter (B = 0: it computes the student exactly)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"RUN={run_dir} is not a run folder (no config.yaml); pass a distillation run, "
                        "RUN=runs/<scale>/<arm>/<run-id>.")
    cfg = read_config(run_dir / "config.yaml")
    if cfg.run.scale not in FAMILIES:
        why = ("its teacher is an epsilon (DDPM) model, whose objective this fine-tune does not implement"
               if cfg.run.scale == "sdxl" else "it is not an image model")
        raise UserError(f"fine-tuning takes a student of {', '.join(FAMILIES)}; RUN={run_dir} is a {cfg.run.scale} run "
                        f"({why}).")
    ckpt = run_checkpoint(run_dir)
    backbone, model = (_image_student if cfg.run.scale in ("fashion", "mnist") else _text_student)(cfg, ckpt)
    student = Student(run_dir, cfg, backbone, ckpt, model)
    _add_adapter(student, ft)
    dev = default_device(device or None)
    backbone.to(dev)
    if model is not None:
        for m in [model.vae, *model.text_encoders]:
            m.eval().to(dev)
    return student


def _image_student(cfg: RunConfig, ckpt: Path):
    checkpoint = safe_torch_load(ckpt, "fine-tune from a checkpoint ddmd_lab wrote (the run's checkpoints/final.ckpt)",
                                 "checkpoint", mmap=True)  # first: a refused checkpoint loads no teacher
    teacher, init = load_networks(cfg)
    module = DistillModule(teacher, cfg, init)
    module.load_weights(checkpoint)  # refuses a checkpoint of another teacher
    if int(cfg.optimisation.lora.get("rank", 0)) > 0:
        return _merged(module.base), None
    return module.generator.eval(), None


def _text_student(cfg: RunConfig, ckpt: Path):
    model, student = restore.load_pipeline_student(cfg, ckpt)
    if isinstance(student, AdapterView):
        _merged(model.backbone)
    return model.backbone.eval(), model


def _merged(backbone: nn.Module) -> nn.Module:
    """A LoRA run's base with its generator adapter merged in and every adapter removed."""
    net = backbone.denoiser()
    net.fuse_lora(adapter_names=["generator"])
    net.unload_lora()  # plain layers holding the merged weights
    return backbone


def default_targets(scale: str) -> tuple[str, ...]:
    """What a fine-tune's LoRA adapts unless SET names it: the attention projections (lora.DEFAULT_TARGETS,
    what Z-Image / Lumina2 LoRAs train); on the image scales also every ResNet block's two convolutions
    ("LoCon", as kohya / LyCORIS LoRAs of SDXL's UNet), because their UNet has attention only at its 4 x 4
    bottleneck: measured on a fashion student learning mnist:7 (rank 8, lr 1e-3, 300 steps), attention alone
    reached adherence 0.12 to the new class, attention + convolutions 0.98 within 150 steps."""
    return DEFAULT_TARGETS + (("conv1", "conv2") if scale in ("fashion", "mnist") else ())


def _add_adapter(student: Student, ft: FinetuneConfig) -> None:
    from peft import (LoraConfig,  # deferred: peft pulls in transformers; only LoRA paths need it
                      inject_adapter_in_model)

    backbone = student.backbone
    net = backbone.denoiser()
    targets = ft.targets or default_targets(student.cfg.run.scale)
    check_targets(net, targets)
    student.targets = targets
    backbone.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=ft.rank, lora_alpha=ft.lora_alpha, target_modules=list(targets),
                                       init_lora_weights=True), net, adapter_name=ADAPTER)
    if student.cfg.run.scale in ("fashion", "mnist"):
        student.new_label = backbone.num_classes
        net.class_embedding = NewLabelRow(net.class_embedding)
        backbone.num_classes += 1  # the null label is now K + 1 (ClassUNet.null_condition reads num_classes)
    for p in student.trainable():  # float32 master weights and optimiser states, whatever the base's dtype
        p.data = p.data.float()
        p.requires_grad_(True)
