"""Tiny pipelines of the three real families, built from the real diffusers /
transformers classes with random weights and saved as diffusers folders
(model_index.json + one subfolder per component), so tests load them through
exactly the code users point at real checkpoints."""
from __future__ import annotations

from pathlib import Path

import torch

from .tiny_models import tiny_lumina2_transformer, tiny_sdxl_unet, tiny_zimage_transformer

# Qwen3's chat template, reduced to what Z-Image's prompt uses (system / user turns,
# generation prompt, the thinking switch)
QWEN_LIKE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
CORPUS = ["a photo of a cat", "a red bus on a street", "<think> thinking </think> user assistant system",
          "a bowl of fruit on a wooden table", "two dogs playing in the snow"]


def byte_bpe(special: list[str], wrap: tuple[str, ...] = (), vocab_size: int = 320):
    """A byte-level BPE tokenizer trained offline on a few sentences; ``wrap`` = (bos,) or
    (bos, eos) added around every text, as the real Gemma / CLIP tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if wrap:
        tok.post_processor = processors.TemplateProcessing(
            single=" ".join([wrap[0], "$A", *wrap[1:]]), special_tokens=[(w, tok.token_to_id(w)) for w in wrap])
    return tok


def tiny_vae(latent_channels: int, shift_factor: float | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=4, sample_size=32,
                         scaling_factor=0.3611, shift_factor=shift_factor)


def save_zimage(folder: Path) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    tok = Qwen2Tokenizer(tokenizer_object=byte_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
                                  pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tok.chat_template = QWEN_LIKE_TEMPLATE
    encoder = Qwen3Model(Qwen3Config(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     num_key_value_heads=1, head_dim=8, intermediate_size=32))
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae(16, 0.1159),
                          text_encoder=encoder, tokenizer=tok, transformer=tiny_zimage_transformer())
    pipe.save_pretrained(folder)
    return Path(folder)


def save_lumina2(folder: Path) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline
    from transformers import Gemma2Config, Gemma2Model, GemmaTokenizer

    torch.manual_seed(0)
    raw = byte_bpe(["<pad>", "<eos>", "<bos>", "<unk>"], wrap=("<bos>",))
    tok = GemmaTokenizer(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>")
    encoder = Gemma2Model(Gemma2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       num_key_value_heads=1, head_dim=16, intermediate_size=64))
    # the VAE declares a shift factor, as Lumina-Image-2.0's (FLUX's) does: Lumina2Pipeline's decode requires one
    pipe = Lumina2Pipeline(transformer=tiny_lumina2_transformer(), scheduler=FlowMatchEulerDiscreteScheduler(),
                           vae=tiny_vae(4, 0.0), text_encoder=encoder, tokenizer=tok)
    pipe.save_pretrained(folder)
    return Path(folder)


def save_sdxl(folder: Path) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    toks = [CLIPTokenizer(tokenizer_object=byte_bpe(["<|startoftext|>", "<|endoftext|>"], wrap=("<|startoftext|>", "<|endoftext|>")), bos_token="<|startoftext|>",
                          eos_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=32) for _ in range(2)]
    text = dict(vocab_size=len(toks[0]), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                max_position_embeddings=32, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(4), text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text)), tokenizer=toks[0], tokenizer_2=toks[1],
        unet=tiny_sdxl_unet(), scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                                beta_end=0.012, timestep_spacing="leading", steps_offset=1))
    pipe.save_pretrained(folder)
    return Path(folder)
