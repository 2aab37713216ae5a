"""Common random numbers: one seeded stream per purpose, keyed by (seed, rank, purpose, step).

Every random draw of a distillation run comes from a generator seeded afresh by
``stream_seed(seed, rank, purpose, step)``, never from torch's global RNG.  Three things follow:

- Two arms run with the same seed see the same draws wherever they draw the same thing at the same
  step: the same labels, real batches, student step k and start noise, the same critic tau' and
  noise.  The decoupled arms' CA draw (tau_CA's uniform and its noise) is coupled's one shared draw,
  so coupled and a decoupled arm differ at a step only in the DM draw (its own tau_DM and noise) and
  in the tau rule that maps the shared uniform to a time.
- A draw does not depend on how many draws came before it (another arm's extra term, an evaluation,
  a diagnostics pass), so pairing arms by seed removes the noise that does not belong to the contrast.
- A resumed run draws exactly what the uninterrupted run drew, with no generator state to save.

A purpose is a name from PURPOSES; its index enters the key, so the list is append-only.
"""
from __future__ import annotations

import numpy as np
import torch

PURPOSES = (
    "student_k",  # backward simulation's step index k
    "start_noise",  # the noise the student's trajectory starts from
    "student_noise",  # the re-noising noise between the student's steps (renoise sampler)
    "tau_ca",  # the CA term's tau (coupled's shared draw)
    "noise_ca",  # the CA term's re-noising noise (coupled's shared draw)
    "tau_dm",  # the DM term's tau (decoupled arms only)
    "noise_dm",
    "critic_tau",  # the fake model's denoising loss: tau' and its noise
    "critic_noise",
    "gan_tau",  # the generator's GAN term: its output re-noised
    "gan_noise",
    "real_tau",  # the discriminator's real batch re-noised
    "real_noise",
    "batches",  # labels / prompts and the real batch of a step (data/steps.py)
    "evaluation",  # an evaluator's noise (its own seed, not the run's)
)


def stream_seed(seed: int, rank: int, purpose: str, step: int) -> int:
    """A 63-bit seed for one purpose's draws at one step of one rank (SeedSequence mixes the key)."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown random stream {purpose!r}; known: {', '.join(PURPOSES)}")
    key = [int(seed) % 2**63, int(rank), PURPOSES.index(purpose), int(step)]
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] % 2**63)


class Streams:
    """The per-purpose generators of one rank: ``at(purpose, step)`` is a generator seeded for that
    key, on ``device`` (CUDA draws on its own generator, as diffusers' randn_tensor does; elsewhere
    on the CPU's).  One generator per purpose is kept and re-seeded, so a step allocates nothing."""

    def __init__(self, seed: int, rank: int = 0, device: torch.device | str = "cpu"):
        self.seed, self.rank = seed, rank
        device = torch.device(device)
        self.device = device if device.type == "cuda" else torch.device("cpu")
        self._generators: dict[str, torch.Generator] = {}

    def at(self, purpose: str, step: int) -> torch.Generator:
        g = self._generators.get(purpose)
        if g is None:
            g = self._generators[purpose] = torch.Generator(device=self.device)
        return g.manual_seed(stream_seed(self.seed, self.rank, purpose, step))

    def randn(self, purpose: str, step: int, shape, device) -> torch.Tensor:
        """Standard normal noise of ``shape`` from one key, on ``device``."""
        g = self.at(purpose, step)
        return torch.randn(tuple(shape), generator=g, device=g.device).to(device)

    def randint(self, purpose: str, step: int, high: int) -> int:
        return int(torch.randint(high, (), generator=self.at(purpose, step), device=self.device).item())
