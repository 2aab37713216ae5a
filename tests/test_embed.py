"""make embed: text conditions computed once into memory-mapped bfloat16 shards, and training
runs (data.precompute=true) that read them without ever loading or calling a text encoder."""
import json
import shutil

import numpy as np
import pytest
import torch

from ddmd_lab.commands.cli import main
from ddmd_lab.config import load_config

PROMPTS = ["a photo of a cat", "a red bus on a street", "a bowl of fruit", "two dogs playing in the snow",
           "a photo of a cat"]  # a repeat, as COCO's captions have
FAMILIES = ["zimage", "lumina2", "sdxl"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, pipeline_folders):
    root = tmp_path_factory.mktemp("embed")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return pipeline_folders, prompts, root


def _settings(setup, family, *extra, cache="cache"):
    paths, prompts, root = setup
    return [f"teacher.source={paths[family]}", "teacher.resolution=32", "teacher.text_dtype=float32",
            f"data.prompts={prompts}", "data.encode_batch=2", "accelerator=cpu", "precision=32-true", "wandb=disabled",
            "batch_size=2", "eval_every=1", "ttur=1", "eval_samples=4", "gradient_checkpointing=false",
            f"runs_dir={root / 'runs'}", f"cache_dir={root / cache}", "progress_bar=false", "checkpoint_every=0",
            "lora.rank=0", *extra]


def _args(items):
    return [a for item in items for a in ("--set", item)]


def _cfg(items, family):
    from ddmd_lab.config import parse_overrides

    return load_config(family, "decoupled_hybrid", parse_overrides(items))


def _bf16(t):
    return t.to(torch.bfloat16).float() if t.is_floating_point() else t


def _tensors(cond):
    return {k: (v if isinstance(v, list) else [v]) for k, v in vars(cond).items()}


def _assert_rows_equal(ours, reference, exact_floats=("time_ids",)):
    """A cached row against the on-the-fly one: bfloat16-rounded features exactly, time ids and masks exactly."""
    a, b = _tensors(ours), _tensors(reference)
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name], b[name], strict=True):
            want = y if name in exact_floats else _bf16(y)
            assert x.dtype == want.dtype and x.shape == want.shape, (name, x.shape, want.shape)
            assert torch.equal(x, want), name


@pytest.mark.parametrize("family", FAMILIES)
def test_embed_writes_shards_equal_to_on_the_fly_encoding_and_reuses_them(setup, family, capsys):
    from ddmd_lab.data.embeddings import open_embeddings
    from ddmd_lab.scales import text2image

    items = _settings(setup, family)
    assert main(["embed", "--scale", family, *_args(items)]) == 0
    out = capsys.readouterr().out
    assert out.count("embedding cache written") == 2  # the training prompts and the evaluator's
    cfg = _cfg(items, family)
    model = text2image.load_model(cfg, fresh=True)
    caches = text2image.find_embeddings(cfg)
    train = caches["training"]
    assert len(train) == len(PROMPTS) and train.folder.parent.name == "embeddings"
    on_the_fly = model.backbone.condition_rows(model.encode(PROMPTS))
    for i, row in enumerate(on_the_fly):
        _assert_rows_equal(train[i], row)
    eval_prompts = text2image.data_settings(cfg)["eval_prompts"]
    for i, row in enumerate(model.backbone.condition_rows(model.encode(eval_prompts))):
        _assert_rows_equal(caches["eval"][i], row)
    _assert_rows_equal(train.null, model.backbone.null_batch(1), exact_floats=tuple(vars(train.null)))  # float32
    # bfloat16 on disk: the float features take 2 bytes a value
    meta = json.loads((train.folder / "meta.json").read_text())
    floats = {"zimage": ["features"], "lumina2": ["embeds"], "sdxl": ["tokens", "text_embeds"]}[family]
    for name in floats:
        spec = meta["tensors"][name]
        assert spec["dtype"] == "bfloat16"
        assert (train.folder / f"{name}.bin").stat().st_size == 2 * int(np.prod(spec["shape"]))
    print(f"\n{family}: {train.describe()}")
    # a second embed reuses both caches and encodes nothing
    assert main(["embed", "--scale", family, *_args(items)]) == 0
    out = capsys.readouterr().out
    assert out.count("reusing the complete embedding cache") == 2 and "written" not in out
    # a GAN arm's captions are some of data.prompts: they map onto the same cache
    rows = text2image.embedded_rows(cfg, [PROMPTS[3], PROMPTS[0]])
    _assert_rows_equal(rows[0], on_the_fly[3])
    _assert_rows_equal(rows[1], on_the_fly[0])
    assert open_embeddings(train.folder.with_name("absent")) is None


def test_the_key_follows_the_text_path_and_nothing_else(setup, tmp_path):
    from safetensors.torch import load_file, save_file

    from ddmd_lab.data.embeddings import cache_folder
    from ddmd_lab.scales.text2image import text_identity

    paths = setup[0]

    def folder(*extra, source=None, prompts=PROMPTS):
        items = _settings(setup, "zimage", *extra) + ([f"teacher.source={source}"] if source else [])
        cfg = _cfg(items, "zimage")
        return cache_folder(cfg.run.cache_dir, text_identity(cfg), prompts)

    base = folder()
    assert folder() == base  # stable
    assert folder("alpha=2", "teacher.dtype=float32", "lora.rank=4", "teacher.resolution=64") == base  # not text settings
    changed = [folder("teacher.system_prompt=be vivid"), folder("teacher.max_length=64"),
               folder("teacher.thinking=fur"), folder("teacher.text_dtype=bfloat16"), folder(prompts=PROMPTS[:4])]
    assert len({base, *changed}) == len(changed) + 1
    # the text encoder's weights: a copy of the checkpoint with one weight changed is another cache
    copy = tmp_path / "zimage"
    shutil.copytree(paths["zimage"], copy)
    same_copy = folder(source=str(copy))
    weights = copy / "text_encoder" / "model.safetensors"
    state = load_file(weights)
    name = sorted(state)[0]
    state[name] = state[name] + 1e-3
    save_file(state, weights, metadata={"format": "pt"})
    assert folder(source=str(copy)) != same_copy
    # the denoiser's weights do not matter to the text conditions
    copy2 = tmp_path / "zimage2"
    shutil.copytree(paths["zimage"], copy2)
    before = folder(source=str(copy2))
    net = next((copy2 / "transformer").glob("*.safetensors"))
    state = load_file(net)
    state = {k: v + 1 for k, v in state.items()}
    save_file(state, net, metadata={"format": "pt"})
    assert folder(source=str(copy2)) == before
    # sdxl's conditions carry the image size (time ids): its key follows teacher.resolution
    sdxl = [_cfg(_settings(setup, "sdxl", f"teacher.resolution={r}"), "sdxl") for r in (32, 64)]
    assert len({cache_folder(c.run.cache_dir, text_identity(c), PROMPTS) for c in sdxl}) == 2


def test_an_interrupted_write_leaves_no_readable_cache(setup, tmp_path):
    from ddmd_lab.backbones.zimage import Captions
    from ddmd_lab.data.embeddings import open_embeddings, write_embeddings

    calls = []

    def encode(prompts, fail_at=None):
        calls.append(prompts)
        if len(calls) == fail_at:
            raise KeyboardInterrupt  # a Ctrl-C (or any exception) in the middle of the write
        return [Captions([torch.randn(3 + len(p) % 4, 8)]) for p in prompts]

    null = Captions([torch.zeros(2, 8)])
    target = tmp_path / "embeddings" / "zimage-5-0123456789abcdef"
    with pytest.raises(KeyboardInterrupt):
        write_embeddings(target, lambda ps: encode(ps, fail_at=2), PROMPTS, 2, null, {"family": "zimage"})
    assert open_embeddings(target) is None and not target.exists()
    assert list(target.parent.iterdir()) == []  # the partial folder went with the interruption
    # a writer killed outright leaves a partial folder: never read, removed by the next writer on this host
    dead = target.with_name(f".{target.name}.partial-{__import__('socket').gethostname()}-999999999-abc123")
    dead.mkdir()
    (dead / "meta.json").write_text("{}")
    assert open_embeddings(target) is None
    calls.clear()
    cache = write_embeddings(target, encode, PROMPTS, 2, null, {"family": "zimage"}, progress=False)
    assert not dead.exists() and len(cache) == len(PROMPTS) and open_embeddings(target) is not None
    assert [p.name for p in target.parent.iterdir()] == [target.name]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_precompute_run_never_calls_the_text_encoders(setup, family, monkeypatch):
    import transformers

    from ddmd_lab.scales import text2image

    items = _settings(setup, family, "data.precompute=true", cache=f"cache-run-{family}")
    if family == "zimage":  # the first precompute run of a text path builds the cache itself
        assert main(["ablation", "--scale", family, "--steps", "1", *_args(items)]) == 0
    else:
        assert main(["embed", "--scale", family, *_args(items)]) == 0

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__} was called during training")

    for cls in ("Qwen3Model", "Gemma2Model", "CLIPTextModel", "CLIPTextModelWithProjection"):
        monkeypatch.setattr(getattr(transformers, cls), "forward", refuse)
    root = setup[2]
    assert main(["ablation", "--scale", family, "--steps", "2", *_args(items)]) == 0
    run = sorted((root / "runs" / family / "decoupled_hybrid").iterdir())[-1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["generator_steps"] == 2 and summary["skipped_steps"] == 0
    assert "error" not in json.loads((run / "memory_plan.json").read_text())  # the plan reads the encoders' architecture
    # the run's model holds its text encoders only as weightless architectures
    model = text2image.load_model(_cfg(items, family), training=True)
    assert model.text_encoders and all(p.is_meta for m in model.text_encoders for p in m.parameters())
    assert not list((root / f"cache-run-{family}").glob("prompt_embeddings*"))  # no pickled list of every feature


def test_encoders_sit_on_the_ranks_own_device(monkeypatch):
    from ddmd_lab.scales.text2image import encode_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)  # what it says before Lightning sets the device

    def device(devices, accelerator="gpu"):
        return encode_device(load_config("toy2d", "decoupled_hybrid", {"accelerator": accelerator, "devices": devices}))

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert device(2) == torch.device("cuda", 0) and device([4, 5]) == torch.device("cuda", 4)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert device(2) == torch.device("cuda", 1)
    assert device([4, 5]) == torch.device("cuda", 5) and device("4,5") == torch.device("cuda", 5)
    assert device(2, accelerator="cpu") == torch.device("cpu")
