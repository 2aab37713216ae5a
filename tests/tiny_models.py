"""Tiny configurations of the real diffusers classes (from diffusers' own tests / STACK_NOTES)."""
import torch


def tiny_zimage_transformer():
    from diffusers import ZImageTransformer2DModel

    return ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=16, n_layers=1,
                                    n_refiner_layers=1, n_heads=1, n_kv_heads=2, qk_norm=True, cap_feat_dim=16,
                                    rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[256, 32, 32])


def tiny_lumina2_transformer():
    from diffusers import Lumina2Transformer2DModel

    return Lumina2Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, hidden_size=24, num_layers=2,
                                     num_refiner_layers=1, num_attention_heads=3, num_kv_heads=1, multiple_of=2,
                                     axes_dim_rope=(4, 2, 2), axes_lens=(300, 512, 512), cap_feat_dim=32)  # real axes_lens


def tiny_sdxl_unet(widths=(2, 4)):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(block_out_channels=widths, layers_per_block=2, sample_size=32,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                                transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
                                cross_attention_dim=64, norm_num_groups=1)


def sdxl_alphas_cumprod() -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
