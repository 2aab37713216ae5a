"""Training a teacher: flow matching with label dropout, for any backbone.

Label dropout (a share ``p_uncond`` of labels replaced by the null condition)
is what makes one network give both the conditional and the unconditional
prediction, so CFG -- and therefore CA -- works.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ddmd_lab.core.flow import renoise, velocity_from_x0, velocity_target


class TeacherModule(pl.LightningModule):
    def __init__(self, backbone, lr: float = 2e-3, p_uncond: float = 0.1, total_steps: int = 1000):
        super().__init__()
        self.backbone = backbone
        self.lr, self.p_uncond, self.total_steps = lr, p_uncond, total_steps

    def training_step(self, batch, batch_idx):
        x0, labels = batch
        drop = torch.rand(labels.shape[0], device=labels.device) < self.p_uncond
        labels = torch.where(drop, self.backbone.null_condition(labels), labels)
        # logit-normal-free uniform t, kept away from t = 1 where v is undefined
        t = torch.rand(x0.shape[0], device=x0.device) * 0.999
        noise = torch.randn_like(x0)
        x_t = renoise(x0, noise, t)
        v_pred = velocity_from_x0(x_t, self.backbone.x0(x_t, t, labels), t)
        loss = F.mse_loss(v_pred, velocity_target(x0, noise))
        self.log("teacher_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.backbone.parameters(), lr=self.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
