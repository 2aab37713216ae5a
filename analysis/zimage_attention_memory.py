"""Where Z-Image's activation memory goes on a GPU: peak GiB (and seconds) of a no-grad forward
(batch 2 and 6 = the teacher's batched CFG call) and of a forward+backward with and without
gradient checkpointing, full-size Z-Image with random bf16 weights, with each SDPA backend
allowed alone (does Z-Image's masked attention leave flash attention?).

    python analysis/zimage_attention_memory.py          # on a GPU (output: reports/gpu_check/zimage_attention_h200.txt)
    python analysis/zimage_attention_memory.py --tiny   # the same code on a tiny config (CPU)
"""
import json, sys, time
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from ddmd_lab.commands.gpu_check import TINY, random_teacher, condition_maker
from ddmd_lab.planning.architectures import family_specs

tiny = "--tiny" in sys.argv
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
spec = TINY["zimage"] if tiny else {"_library": "diffusers", **family_specs("zimage")["denoiser"]}
side, tokens = (16, 8) if tiny else (128, 512)
model = random_teacher("zimage", spec, side, side * 8, dev, torch.bfloat16)
net = model.denoiser()
res = {}
def peak(fn):
    if dev.type != "cuda":
        fn(); return 0.0
    torch.cuda.synchronize(); torch.cuda.empty_cache(); base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats(); t0 = time.perf_counter(); fn(); torch.cuda.synchronize()
    return round((torch.cuda.max_memory_allocated() - base) / 2**30, 2), round(time.perf_counter() - t0, 2)
for batch in (2, 6):
    cond = condition_maker("zimage", spec, batch, side * 8, tokens)(torch.Generator().manual_seed(0))
    cond = type(cond)([f.to(dev) for f in cond.features])
    x = torch.randn(batch, *model.sample_shape, device=dev, dtype=torch.bfloat16); t = torch.rand(batch, device=dev)
    for name, backends in (("default", None), ("flash", [SDPBackend.FLASH_ATTENTION]), ("efficient", [SDPBackend.EFFICIENT_ATTENTION]), ("math", [SDPBackend.MATH])):
        def nograd():
            with torch.no_grad(), torch.autocast(dev.type, torch.bfloat16):
                model.x0(x, t, cond)
        def grad(ckpt):
            net.gradient_checkpointing = False
            if ckpt: net.enable_gradient_checkpointing()
            else: net.disable_gradient_checkpointing()
            xx = x.clone().requires_grad_(True)
            with torch.autocast(dev.type, torch.bfloat16):
                out = model.x0(xx, t, cond)
            out.float().square().mean().backward()
        for kind, fn in (("nograd", nograd), ("grad_ckpt", lambda: grad(True)), ("grad_full", lambda: grad(False))):
            if (batch == 6 and kind != "nograd") or (kind == "grad_full" and name != "default"): continue
            try:
                if backends is None: r = peak(fn)
                else:
                    with sdpa_kernel(backends): r = peak(fn)
            except Exception as e:
                r = f"error: {type(e).__name__}: {str(e)[:120]}"
            res[f"b{batch}_{name}_{kind}"] = r
            print(f"b{batch}_{name}_{kind}", r, flush=True)
print(json.dumps(res))
