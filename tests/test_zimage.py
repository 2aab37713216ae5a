"""Z-Image text path and transformer adapter, on tiny models built from the real classes."""
import pytest
import torch

from .tiny_models import tiny_zimage_transformer

QWEN_LIKE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


@pytest.fixture(scope="module")
def text_stack(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["a photo of a cat", "a red bus on a street", "<think> thinking </think> user assistant"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    fast.chat_template = QWEN_LIKE_TEMPLATE
    folder = tmp_path_factory.mktemp("qwen")
    fast.save_pretrained(folder / "tokenizer")
    torch.manual_seed(0)
    model = Qwen3Model(Qwen3Config(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=8, intermediate_size=64)).eval()
    model.save_pretrained(folder / "text_encoder")
    return PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer"), Qwen3Model.from_pretrained(folder / "text_encoder").eval()


def test_prompt_text_with_and_without_thinking(text_stack):
    from ddmd_lab.backbones.zimage import zimage_prompt_text

    tok, _ = text_stack
    plain = zimage_prompt_text(tok, "a cat")
    assert plain == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"  # enable_thinking=True: no empty block
    system = zimage_prompt_text(tok, "a cat", system_prompt="be vivid")
    assert system.startswith("<|im_start|>system\nbe vivid<|im_end|>\n")
    thought = zimage_prompt_text(tok, "a cat", thinking="fur, whiskers")
    assert thought == plain + "<think>\nfur, whiskers\n</think>\n\n"


def test_caption_features_are_hidden_states_minus_two_without_padding(text_stack):
    from ddmd_lab.backbones.zimage import encode_prompts, zimage_prompt_text

    tok, enc = text_stack
    feats = encode_prompts(tok, enc, ["a cat", "a red bus on a street"], max_length=48)
    for prompt, f in zip(["a cat", "a red bus on a street"], feats):
        ids = tok(zimage_prompt_text(tok, prompt), return_tensors="pt").input_ids
        assert f.shape == (ids.shape[1], 32)  # padding removed
        direct = enc(input_ids=ids, output_hidden_states=True).hidden_states
        torch.testing.assert_close(f, direct[-2][0], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(f, direct[-1][0])
    assert feats[0].shape[0] < feats[1].shape[0]


def test_zimage_adapter_x0_convention_and_batched_conditions(tmp_path):
    from diffusers import ZImageTransformer2DModel

    from ddmd_lab.backbones.zimage import Captions, ZImageBackbone

    torch.manual_seed(0)
    net = tiny_zimage_transformer()
    net.save_pretrained(tmp_path / "transformer")
    net = ZImageTransformer2DModel.from_pretrained(tmp_path / "transformer").eval()
    model = ZImageBackbone(net, torch.randn(3, 16), (16, 8, 8))
    x, t = torch.randn(2, 16, 8, 8), torch.tensor([0.3, 0.8])
    cond = Captions([torch.randn(5, 16), torch.randn(7, 16)])
    with torch.no_grad():
        out = net(list(x.unsqueeze(2).unbind(0)), t, cond.features, return_dict=False)[0]
        expected = x + (1 - t).view(2, 1, 1, 1) * torch.stack(out).squeeze(2)  # x0 = x_t + (1 - t) * velocity
        torch.testing.assert_close(model.x0(x, t, cond), expected)
        # cond and uncond of one step in one call: the same as two calls
        both = model.x0(torch.cat([x, x]), torch.cat([t, t]), model.cat_conditions([cond, model.null_condition(cond)]))
        torch.testing.assert_close(both[:2], model.x0(x, t, cond), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(both[2:], model.x0(x, t, model.null_condition(cond)), atol=1e-5, rtol=1e-5)
