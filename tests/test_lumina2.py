import torch

from .tiny_models import tiny_lumina2_transformer


def test_lumina2_adapter_x0_convention_and_padded_batching(tmp_path):
    from diffusers import Lumina2Transformer2DModel

    from ddmd_lab.backbones.lumina2 import Lumina2Backbone, PaddedText

    torch.manual_seed(0)
    net = tiny_lumina2_transformer()
    net.save_pretrained(tmp_path / "transformer")
    net = Lumina2Transformer2DModel.from_pretrained(tmp_path / "transformer").eval()
    null = PaddedText(torch.randn(1, 3, 32), torch.tensor([[True, True, False]]))
    model = Lumina2Backbone(net, null, (4, 16, 16))
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([0.2, 0.7])
    cond = PaddedText(torch.randn(2, 6, 32), torch.tensor([[True] * 6, [True] * 4 + [False] * 2]))
    with torch.no_grad():
        out = net(hidden_states=x, timestep=t, encoder_hidden_states=cond.embeds, encoder_attention_mask=cond.mask,
                  return_dict=False)[0]
        torch.testing.assert_close(model.x0(x, t, cond), x + (1 - t).view(2, 1, 1, 1) * out)
        both = model.x0(torch.cat([x, x]), torch.cat([t, t]), model.cat_conditions([cond, model.null_condition(cond)]))
        torch.testing.assert_close(both[:2], model.x0(x, t, cond), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(both[2:], model.x0(x, t, model.null_condition(cond)), atol=1e-4, rtol=1e-4)
