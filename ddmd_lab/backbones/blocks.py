"""The repeated blocks of each real family's denoiser: what diffusers' enable_gradient_checkpointing()
recomputes, what FSDP wraps as a unit (parallel/strategies.py) and what the memory plan counts
(planning/).  One table, read by all three."""
from __future__ import annotations

# class names, and a module-name prefix where only some instances are: SDXL checkpoints its resnets and
# transformer blocks, Z-Image its refiners and main layers, Lumina2 only its main layers (the refiners keep
# their activations)
CHECKPOINTED = {"sdxl": (("ResnetBlock2D", "BasicTransformerBlock"), ""),
                "zimage": (("ZImageTransformerBlock",), ""),
                "lumina2": (("Lumina2TransformerBlock",), "layers.")}
