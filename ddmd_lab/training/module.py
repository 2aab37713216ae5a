"""DistillModule: one arm's distillation run as a LightningModule.

Frozen teacher, trainable generator and fake model (both copies of the
teacher, or of ``init`` where the teacher has no weights to copy: toy2d's exact
denoiser), manual optimisation with TTUR.  The cadence is counted here, not
read from trainer.global_step, because Lightning counts every optimiser's
step there (a critic and a generator step make global_step advance by two).

Every training draw comes from a stream keyed by (seed, rank, purpose, step)
(core/streams.py): two arms with one seed share their labels, start noise and
every draw they make alike, and a resumed run draws what the uninterrupted one
did.  Under data parallelism every rank holds the same model (initialised from
cfg.run.seed) but draws its own training randomness (its rank is in the key),
every rank skips a non-finite update or none does (_update), and each rank's
RNG state is checkpointed (for anything drawn outside the streams).  With
ema_decay > 0 the generator's weight average (method/ema.py) is the student:
evaluated, sampled and exported.  Values are read from the device only on the steps that are
logged, plus one agreed finiteness flag per update.
"""
from __future__ import annotations

import contextlib
import copy

import pytorch_lightning as pl
import torch
from torch import Tensor

from ddmd_lab.backbones.lora import DEFAULT_TARGETS, LoraPlan, shared_base_views
from ddmd_lab.config import RunConfig
from ddmd_lab.core.flow import renoise
from ddmd_lab.core.objective import critic_loss, meanvar_kl, proxy_loss
from ddmd_lab.core.rollout import backward_simulate, sample_student, times_for_model
from ddmd_lab.core.streams import Streams
from ddmd_lab.core.tau import TauRule, sample_tau
from ddmd_lab.data.steps import condition_of, real_data_of
from ddmd_lab.errors import NonFiniteError, UserError
from ddmd_lab.method.ema import WeightAverage
from ddmd_lab.method.gan import DiscriminatorHead, discriminator_loss, generator_gan_loss
from ddmd_lab.method.update import UpdateSettings, generator_update
from ddmd_lab.parallel.ranks import every_rank, rng_state, seed_rank, set_rng_state
from ddmd_lab.parallel.strategies import rank_zeros_draw, reduce_and_clip, sharded_ids
from ddmd_lab.training.callbacks.diagnostics import diagnose_step
from ddmd_lab.training.callbacks.diagnostics import due as diagnostics_due
from ddmd_lab.training.checkpointing import TEACHER_FINGERPRINT, check_teacher, student_state, teacher_fingerprint

CRITIC_TAU = TauRule("uniform", 0.0, 1.0)  # tau' ~ U(0,1) for the fake model's denoising loss


class DistillModule(pl.LightningModule):
    def __init__(self, teacher, cfg: RunConfig, init=None):
        """``init``: the network the generator and the fake model start from (a copy each), when it is
        not the frozen teacher (scales.load_networks); None: copies of the teacher."""
        super().__init__()
        self.cfg, self.arm = cfg, cfg.arm
        lora = cfg.optimisation.lora
        if init is not None and cfg.optimisation.lora_rank:
            raise UserError("LoRA adapts the frozen teacher's own network, so the trained networks cannot start "
                            "from a separate initialisation (toy2d's teacher.kind=exact); set lora.rank=0.")
        if cfg.optimisation.lora_rank:
            # one base held once (registered as self.base); teacher / generator / fake are views
            plan = LoraPlan(int(lora["rank"]), float(lora.get("alpha", lora["rank"])), tuple(lora.get("targets", DEFAULT_TARGETS)))
            self.base = teacher.eval()
            views = shared_base_views(teacher, plan, ("generator", "fake") if self.arm.train_fake else ("generator",))
            self.teacher, self.generator, self.fake = views["teacher"], views["generator"], views.get("fake")
        else:
            init = teacher if init is None else init
            self.teacher = teacher.eval().requires_grad_(False)
            self.generator = copy.deepcopy(init).train().requires_grad_(True)
            self.fake = copy.deepcopy(init).train().requires_grad_(True) if self.arm.train_fake else None
        self._cast_trained(getattr(torch, cfg.optimisation.master_dtype))
        if cfg.optimisation.gradient_checkpointing:  # trades a second forward for activation memory on the trained nets
            nets = {id(m.denoiser()): m.denoiser() for m in (self.generator, self.fake) if m is not None}
            # LoRA: one network, several adapters; a block is recomputed with the adapter of its forward
            func = {"gradient_checkpointing_func": self.generator.switch.checkpoint} if cfg.optimisation.lora.get("rank", 0) else {}
            for net in nets.values():
                net.enable_gradient_checkpointing(**func)
        self.disc = None
        if self.arm.gan_weight or self.arm.gan_disc_weight:
            self.disc = DiscriminatorHead.for_backbone(self.fake)
        self.automatic_optimization = False
        times = times_for_model(teacher, cfg.student.student_steps, cfg.student.shift, cfg.student.student_times)
        self.register_buffer("times", times, persistent=False)
        self.settings = UpdateSettings(cfg.objective.alpha, cfg.student.shift, tuple(cfg.objective.tau_clamp), cfg.objective.normaliser_eps)
        # Counters that define the run; saved in checkpoints.
        self.step_count = 0
        self.generator_step_count = 0
        self.critic_step_count = 0
        self.skipped_steps = 0
        self.skipped_generator_steps = 0  # of skipped_steps, the generator's (the rest: the critic's)
        self.nonfinite_in_row = 0
        # which value of which model at which step was non-finite first, as this rank saw it (not a counter: ranks
        # differ, and a resumed run names its own first one)
        self.first_nonfinite: str | None = None
        self._generator_logs: dict = {}  # the last generator step's logs (0-dim tensors), logged at the next logged step
        # diagnostics (eval/diagnostics_callback.py): measured in due generator steps where its callback switches
        # them on; the step's binned result waits here for the callback
        self.diagnostics_on, self.diagnosis = False, None
        # the generator's weight average, built at train start from the weights as this rank holds them
        # (shards under FSDP); _pending_ema: a checkpoint's, until then
        self.ema: WeightAverage | None = None
        self._pending_ema = None
        self._stream_cache: tuple | None = None
        # Checkpoints leave the frozen teacher out (it is the scale's, loaded before the module);
        # its fingerprint, taken before Lightning moves or casts anything, says which teacher it was.
        frozen = self._frozen_state()
        self._frozen_keys = frozenset(frozen)
        self.teacher_fingerprint = teacher_fingerprint(frozen, type(teacher).__name__)

    # ---- pieces -----------------------------------------------------------
    def _cast_trained(self, dtype: torch.dtype) -> None:
        """What is trained in ``dtype`` (cfg.optimisation.master_dtype): full copies cast whole, LoRA adapters
        parameter by parameter (peft gives them the base's dtype and computes each adapter in its own),
        so a bfloat16 teacher keeps float32 master weights and optimiser states for what moves."""
        for m in (self.generator, self.fake):
            if m is None:
                continue
            if self.cfg.optimisation.lora.get("rank", 0):
                for p in m.parameters():
                    p.data = p.data.to(dtype)
            else:
                m.to(dtype)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never leaves eval mode
        return self

    def sample(self, noise: Tensor, cond, generator: torch.Generator | None = None) -> Tensor:
        """The student's few-step sample (no gradients); the re-noising between its steps draws from
        ``generator`` (an evaluator's own), or torch's global RNG."""
        return sample_student(self.generator, noise, cond, self.times, self.cfg.student.student_sampler, generator)

    def streams(self) -> Streams:
        """This rank's keyed random streams (core/streams.py), on the module's device."""
        key = (self.global_rank if self._trainer is not None else 0, str(self.device))
        if self._stream_cache is None or self._stream_cache[0] != key:
            self._stream_cache = (key, Streams(self.cfg.run.seed, key[0], self.device))
        return self._stream_cache[1]

    def _student_input(self, cond, batch: int) -> tuple[Tensor, Tensor]:
        """Draw a step index k and the student's input at t_k (backward simulation).  Under FSDP every
        rank runs k generator calls, each a collective: rank 0's k then holds for all (strategies.rank_zeros_draw)."""
        s, step = self.streams(), self.step_count
        k = s.randint("student_k", step, len(self.times))
        k = rank_zeros_draw(self._trainer.strategy if self._trainer is not None else None, k, self.device)
        noise = s.randn("start_noise", step, (batch, *self.generator.sample_shape), self.device)
        x_t = backward_simulate(self.generator, noise, cond, self.times, k, self.cfg.student.student_sampler,
                                s.at("student_noise", step))
        return x_t, self.times[k].expand(batch)

    def _critic_params(self) -> list:
        return list(self.fake.parameters()) + (list(self.disc.parameters()) if self.disc is not None else [])

    def _renoised(self, x0: Tensor, t_like: Tensor, purpose: str) -> tuple[Tensor, Tensor]:
        """x0 re-noised at tau' ~ U(0,1), shifted by the run's time shift (the DM term queries the fake
        model at shifted times too) and clamped: what the fake model and the discriminator read.
        ``purpose``: whose draw it is (critic, gan, real: core/streams.py)."""
        s, step = self.streams(), self.step_count
        tau = sample_tau(CRITIC_TAU, t_like, self.settings.shift, tuple(self.cfg.objective.tau_clamp),
                         s.at(f"{purpose}_tau", step)).to(x0.device)
        return renoise(x0, s.randn(f"{purpose}_noise", step, x0.shape, x0.device).to(x0.dtype), tau), tau

    def configure_optimizers(self):
        c = self.cfg.optimisation
        opt_g = torch.optim.AdamW(self.generator.parameters(), lr=c.lr_generator, betas=tuple(c.betas), weight_decay=c.weight_decay)
        if self.fake is None:
            return [opt_g]
        opt_f = torch.optim.AdamW(self._critic_params(), lr=c.lr_fake, betas=tuple(c.betas), weight_decay=c.weight_decay)
        return [opt_g, opt_f]

    # ---- one step -----------------------------------------------------------
    def _logged_step(self) -> bool:
        """Whether Lightning logs this step (log_every_n_steps = cfg.evaluation.log_every, counted in
        steps done; step_count is this step's index until the step ends)."""
        return (self.step_count + 1) % self.cfg.evaluation.log_every == 0

    def training_step(self, batch, batch_idx):
        cond = condition_of(batch)
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        # 0-dim tensors, read (by Lightning) only on logged steps: reading them every step
        # would make the host wait for the device some twenty times a step
        logs: dict[str, Tensor | float] = {}
        self._step_had_nonfinite = False
        sample = None
        if self.step_count % self.cfg.schedule.ttur == 0:
            # the generator's logs are kept until the next logged step: generator steps (every ttur-th) and
            # logged steps (every log_every-th) need not coincide (with 5 and 10 they never would)
            self._generator_logs = {}
            with _frozen(self._critic_params() if self.fake is not None else []):
                sample = self._generator_step(cond, opts[0], self._generator_logs)
        if self.fake is not None:
            self._critic_step(cond, sample, opts[1], logs, real_data_of(batch))
        logged = self._logged_step()
        self.step_count += 1
        self._count_nonfinite_run()
        if logged:
            logs = {**self._generator_logs, **logs}
            logs.update(step=float(self.step_count), generator_steps=float(self.generator_step_count),
                        skipped_steps=float(self.skipped_steps))
            self.log_dict(logs, on_step=True, prog_bar=False)

    def _generator_step(self, cond, opt, logs) -> tuple[Tensor, Tensor]:
        x_t, t = self._student_input(cond, len(cond))
        x = self.generator.x0(x_t, t, cond)
        keep = {} if diagnostics_due(self) else None
        update, ulogs = generator_update(self.arm, x, cond, t, self.teacher, self.fake, self.settings, out=keep,
                                         streams=self.streams(), step=self.step_count)
        if keep:
            self.diagnosis = diagnose_step(self, keep["terms"], cond, t)
        loss = proxy_loss(x, update)
        if self.arm.gan_weight:
            x_tau, tau = self._renoised(x, t, "gan")
            gan = generator_gan_loss(self.disc(self.fake.features(x_tau, tau, cond)))
            logs["loss_gan_generator"] = gan.detach()
            loss = loss + self.arm.gan_weight * gan
        if self.arm.meanvar_weight:
            reg = meanvar_kl(x, self.cfg.objective.meanvar_mu, self.cfg.objective.meanvar_var, self.cfg.objective.meanvar_scope)
            logs["loss_meanvar"] = reg.detach()
            loss = loss + self.arm.meanvar_weight * reg
        finite = torch.isfinite(update).all() & torch.isfinite(x.detach()).all()
        # device-side reductions only (no host read): they go out with the next logged step
        nonfinite = (~torch.isfinite(update)).sum() + (~torch.isfinite(x.detach())).sum()
        logs.update({f"gen/{k}": v for k, v in ulogs.items()})
        logs.update({"loss_generator": loss.detach(), "nonfinite": nonfinite.float(),
                     "gen/out_mean": x.detach().mean(), "gen/out_std": x.detach().std()})
        if self._update(loss, opt, list(self.generator.parameters()), logs, "generator", finite):
            self.generator_step_count += 1
            if self.ema is not None:
                self.ema.update()
        return x.detach(), t

    def _critic_step(self, cond, sample, opt, logs, real: Tensor | None = None) -> None:
        if sample is None:  # a critic-only step: the fake model needs a fresh sample
            with torch.no_grad():
                x_t, t = self._student_input(cond, len(cond))
                sample = (self.generator.x0(x_t, t, cond), t)
        x0 = sample[0]
        x_tau, tau = self._renoised(x0, sample[1], "critic")
        loss = critic_loss(self.fake.x0(x_tau, tau, cond), x0, tau, self.cfg.objective.critic_target)
        logs["loss_critic"] = loss.detach()
        if self.arm.gan_disc_weight:
            if real is None:
                raise UserError(f"arm {self.arm.name!r} needs real data in each batch; this scale's loader gives none.")
            real_tau, real_t = self._renoised(real.to(x0.device).float(), sample[1], "real")
            # generated and real batches through the fake's features in one call (per-sample network)
            feats = self.fake.features(torch.cat([x_tau.detach(), real_tau]), torch.cat([tau, real_t]),
                                       self.fake.cat_conditions([cond, cond]))
            fake_logits, real_logits = self.disc(feats).chunk(2)
            d_loss = discriminator_loss(real_logits, fake_logits)
            logs["loss_discriminator"] = d_loss.detach()
            if self._logged_step():
                logs.update(disc_real_acc=(real_logits.detach() > 0).float().mean(),
                            disc_fake_acc=(fake_logits.detach() < 0).float().mean())
            loss = loss + self.arm.gan_disc_weight * d_loss
        if self._update(loss, opt, self._critic_params(), logs, "fake"):
            self.critic_step_count += 1

    def _update(self, loss: Tensor, opt, params: list, logs: dict, name: str, finite: Tensor | None = None) -> bool:
        """Backward, clip, step -- on every rank, or on none (the update is skipped and counted).

        Every rank runs backward whatever its loss: the gradients are then averaged over the
        ranks (strategies.reduce_and_clip: only this optimiser's, all-reduced, or reduce-scattered by FSDP2),
        a collective the other ranks would wait in forever.  Then all ranks agree
        on one flag: the loss, ``finite`` (the generator's update direction and output) and
        the clipped gradient norm are finite on every rank.  A NaN on one rank makes all
        ranks skip, so weights and counters stay identical.  Reading that flag is the one
        host sync of an update.
        """
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        strategy = self._trainer.strategy if self._trainer is not None else None
        grad_norm = reduce_and_clip(strategy, params, self.cfg.optimisation.grad_clip)  # the global norm
        logs[f"grad_norm_{name}"] = grad_norm.detach()
        ok = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
        stepped = self._on_every_rank(ok if finite is None else ok & finite)
        if stepped:
            opt.step()
        opt.zero_grad(set_to_none=True)  # gradients are not held between steps (a full model's worth each)
        if stepped:
            return True
        self.skipped_steps += 1
        self.skipped_generator_steps += name == "generator"
        self._step_had_nonfinite = True
        if self.first_nonfinite is None:  # what went non-finite first, for NonFiniteError (read on a skip only)
            out_ok = bool(torch.isfinite(logs.get("gen/out_mean", torch.zeros(()))))
            what = ("output" if not out_ok else "update direction" if finite is not None and not bool(finite)
                    else "loss" if not bool(torch.isfinite(loss.detach())) else "gradient norm"
                    if not bool(torch.isfinite(grad_norm)) else "value (on another rank)")
            taus = ", ".join(f"mean {k[4:10].replace('_ca', '_CA').replace('_dm', '_DM')} {float(logs[k]):.3g}"
                             for k in ("gen/tau_ca_mean", "gen/tau_dm_mean") if k in logs)
            self.first_nonfinite = (f"the {'fake model' if name == 'fake' else name}'s {what} at step "
                                    f"{self.step_count + 1}" + (f" ({taus})" if taus else ""))
        return False

    def _on_every_rank(self, ok: Tensor) -> bool:
        """Whether ``ok`` (a 0-dim bool tensor) holds on every rank: an all-reduce, one host sync."""
        bad = (~ok).to(torch.int32)
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        return not bool(bad)

    def _count_nonfinite_run(self) -> None:
        """Stop after max_nonfinite_in_row training steps in a row had a skipped update, or once more than
        max_skipped_share of one model's updates attempted so far were skipped.  The share is each model's
        own: a generator that skips every update (every ttur-th step) never makes many bad steps in a row
        and, at ttur >= 10, is under a tenth of all updates, yet learns nothing.  It is judged from
        SHARE_AFTER_UPDATES attempts of that model on (a share of a few says little)."""
        o = self.cfg.optimisation
        self.nonfinite_in_row = self.nonfinite_in_row + 1 if self._step_had_nonfinite else 0
        first = f"; the first non-finite value was {self.first_nonfinite}" if self.first_nonfinite else ""
        fix = "lower the learning rates or alpha, or raise normaliser_eps"
        if self.nonfinite_in_row >= o.max_nonfinite_in_row:
            raise NonFiniteError(f"{self.nonfinite_in_row} steps in a row had non-finite losses or updates at step "
                                 f"{self.step_count}{first}; {fix}.")
        skipped_critic = self.skipped_steps - self.skipped_generator_steps
        for model, skipped, done in (("generator", self.skipped_generator_steps, self.generator_step_count),
                                     ("critic", skipped_critic, self.critic_step_count)):
            if skipped + done >= self.SHARE_AFTER_UPDATES and skipped > o.max_skipped_share * (skipped + done):
                raise NonFiniteError(
                    f"{skipped} of the {skipped + done} {model} updates attempted by step {self.step_count} were "
                    f"skipped as non-finite, more than max_skipped_share={o.max_skipped_share:g} of them{first}; {fix}.")

    # ---- checkpoints ----------------------------------------------------------
    COUNTERS = ("step_count", "generator_step_count", "critic_step_count", "skipped_steps", "nonfinite_in_row",
                "skipped_generator_steps")
    SHARE_AFTER_UPDATES = 50  # a model's skipped share is judged once it attempted this many updates

    def _frozen_state(self) -> dict[str, Tensor]:
        """The frozen teacher's entries of state_dict (full fine-tuning: ``teacher.*``; LoRA: the
        shared base ``base.*`` without the adapters), which checkpoints do not hold."""
        trained = {id(p) for m in (self.generator, self.fake) if m is not None for p in m.parameters()}
        prefix = "base." if self.cfg.optimisation.lora.get("rank", 0) else "teacher."
        return {k: v for k, v in self.state_dict(keep_vars=True).items() if k.startswith(prefix) and id(v) not in trained}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A checkpoint's state: a lean one (without the frozen teacher) is completed with this
        module's own teacher; one written with the teacher (older runs) loads as it is."""
        absent = self._frozen_keys - state_dict.keys()
        if absent and absent != self._frozen_keys:
            raise UserError(f"this checkpoint holds {len(self._frozen_keys) - len(absent)} of the frozen teacher's "
                            f"{len(self._frozen_keys)} tensors, so it was not written by this run's DistillModule; "
                            "load a checkpoint of this run (checkpoints/last.ckpt or final.ckpt).")
        if not absent:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        # loaded without them: the teacher keeps its tensors (nothing copied, nor gathered under FSDP)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = sorted(set(result.missing_keys) - absent)
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}: missing keys {missing}, "
                               f"unexpected keys {result.unexpected_keys}")
        return result

    def load_weights(self, checkpoint: dict) -> None:
        """A checkpoint's trained weights outside a Trainer (sampling, export, spectra): its student,
        i.e. the generator's weight average where the run kept one."""
        check_teacher(checkpoint, self.teacher_fingerprint, self.cfg)
        self.load_state_dict(student_state(checkpoint))

    # ---- the generator's weight average -------------------------------------------------
    def _ema_params(self) -> list[Tensor]:
        return [p for p in self.generator.parameters() if p.requires_grad]

    def _ema_names(self) -> list[str]:
        """The averaged tensors' names in this module's named_parameters (with LoRA the adapters' names
        under the shared base), in the average's order."""
        names = {id(p): n for n, p in self.named_parameters()}
        return [names[id(p)] for p in self._ema_params()]

    def ema_weights(self):
        """A context in which the generator holds its weight average (a no-op without one)."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    def _student_entries(self) -> dict[str, Tensor]:
        """The generator's weight average as state_dict entries (whole tensors, keyed as in the
        checkpoint's state_dict): what load_weights puts in place of the raw weights."""
        with self.ema.applied():
            ids = {id(p) for p in self.ema.params}
            return {k: v.detach().cpu().clone() for k, v in self.state_dict(keep_vars=True).items() if id(v) in ids}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        for k in self._frozen_keys:  # what training changes only: no frozen teacher / LoRA base
            checkpoint["state_dict"].pop(k, None)
        checkpoint[TEACHER_FINGERPRINT] = self.teacher_fingerprint
        checkpoint["ddmd_counters"] = {k: getattr(self, k) for k in self.COUNTERS}
        checkpoint["ddmd_config"] = self.cfg.to_dict()
        # every rank's state, in rank order (every rank calls trainer.save_checkpoint)
        checkpoint["ddmd_rng"] = every_rank(rng_state())
        if self.ema is not None:
            if sharded_ids(self):
                # FSDP2: the average as DTensors keyed by parameter name, written shard by shard with the
                # weights (parallel/dcp_state.py); the whole student is made by `make consolidate`
                checkpoint["ddmd_ema"] = {"decay": self.ema.decay, "updates": self.ema.updates,
                                          "average": dict(zip(self._ema_names(), self.ema.sharded_average()))}
            else:
                # to resume: the average (the ranks agree, so one); to sample: the average as whole weights
                checkpoint["ddmd_ema"] = [self.ema.state()]
                checkpoint["ddmd_student"] = self._student_entries()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_teacher(checkpoint, self.teacher_fingerprint, self.cfg)  # then Lightning calls load_state_dict
        for k, v in checkpoint.get("ddmd_counters", {}).items():
            setattr(self, k, v)
        states = checkpoint.get("ddmd_rng")
        ranks = self._trainer.world_size if self._trainer is not None else 1
        if isinstance(states, dict):
            # written before each rank's state was kept: rank 0's only.  Rank 0 goes on
            # exactly; other ranks draw from their own seed (seed_rank), not what they drew.
            states = [states] + [None] * (ranks - 1)
        if states is not None and len(states) != ranks:
            raise UserError(
                f"this checkpoint holds the random state of {len(states)} ranks, but this run has {ranks}; a run "
                f"continues exactly only on as many ranks as it started with: resume with devices / num_nodes "
                f"giving {len(states)} ranks (the run's config.yaml), or start a new run.")
        # Applied just before the next step, not now: Lightning draws from the
        # global RNG between restoring and the first step (e.g. the DataLoader's
        # base seed), which an uninterrupted run does not do at that point.
        self._pending_rng = states[self.global_rank] if states is not None else None
        averages = checkpoint.get("ddmd_ema")
        if isinstance(averages, dict):  # a sharded checkpoint's: {parameter name: this rank's part}
            self._pending_ema = {"updates": averages["updates"],
                                 "average": [averages["average"][name] for name in self._ema_names()]}
        elif averages is not None:  # older FSDP1 checkpoints held one entry per rank
            self._pending_ema = averages[self.global_rank if len(averages) > 1 else 0]
        elif self.cfg.optimisation.ema_decay > 0 and self.generator_step_count > 0:
            raise UserError("this checkpoint holds no weight average of the generator but the run's ema_decay is "
                            f"{self.cfg.optimisation.ema_decay}; resume with the config it was written with "
                            "(ema_decay=0), or start a new run.")
        if averages is not None and self.ema is not None:
            # a strategy that restores after setup (fsdp: the optimisers must exist to load their shards)
            # reads the checkpoint after on_fit_start built the average from the weights: rebuild it
            self._build_ema()

    def configure_model(self) -> None:
        """Lightning's hook for sharding, called once the process group and device mesh exist and before
        the optimisers are built: under strategy=fsdp the strategy shards the networks here
        (parallel/fsdp2.py); other strategies have nothing to do."""
        shard = getattr(self._trainer.strategy, "shard", None) if self._trainer is not None else None
        if shard is not None:
            shard(self)

    def on_fit_start(self) -> None:
        if self.cfg.optimisation.ema_decay > 0 and self.ema is None:
            # built here: after the strategy placed (and sharded) the weights, before the first evaluation
            # (EvalCallback.on_train_start); from a checkpoint's average where one was read already
            self._build_ema()

    def _build_ema(self) -> None:
        pending, self._pending_ema = self._pending_ema, None
        self.ema = WeightAverage(self._ema_params(), self.cfg.optimisation.ema_decay,
                                 pending["updates"] if pending else 0, pending["average"] if pending else None)

    def on_train_start(self) -> None:
        if self.global_rank > 0:
            seed_rank(self.cfg.run.seed, self.global_rank)

    def on_train_batch_start(self, batch, batch_idx):
        if getattr(self, "_pending_rng", None) is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None


@contextlib.contextmanager
def _frozen(params: list):
    """The idle model's weights take no gradient during the other's update (the GAN term reaches the
    generator through the fake model and its head): nothing is computed, and nothing reduced, for
    tensors whose optimiser does not step now.  (LoRA views switch their adapters back on per call.)"""
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, was):
            p.requires_grad_(flag)
