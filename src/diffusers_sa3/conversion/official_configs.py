"""The `model_config.json` of each released Stable Audio 3 checkpoint, reconstructed.

The real files are gated; these reproduce every architectural value (they give the official tensor and parameter
counts) and the policy keys reported for the releases (`shared/docs/sa3-reference.md` §1.3, from
`Stability-AI/stable-audio-3` `factory.py`, `model_configs.py` and third-party readers of the real files).
"""

import copy


VARIANTS = ("small-music", "small-music-base", "small-sfx", "small-sfx-base", "medium", "medium-base")


def _same_config(width_channels: int, depth: int, small: bool) -> dict:
    common = {
        "in_channels": 512,
        "channels": width_channels,
        "c_mults": [6],
        "strides": [16],
        "latent_dim": 256,
        "transformer_depths": [depth],
        "checkpointing": False,
        "differential": True,
        "dyt": True,
        "dim_heads": 64,
        "variable_stride": True,
    }
    if small:
        common.update({"chunk_size": 32, "chunk_midpoint_shift": True})
    else:
        common.update({"sliding_window": [1, 1], "conv_bias": False})
    encoder = dict(common, mask_noise=0.0)
    decoder = dict(common, mask_noise=0.01)
    decoder.pop("in_channels")
    decoder["out_channels"] = 512
    decoder["sinusoidal_blocks"] = [0] if small else [8]
    if small:
        decoder["conv_mapping"] = True
    return {
        "encoder": {"type": "same", "config": encoder},
        "decoder": {"type": "same", "config": decoder},
        "bottleneck": {
            "type": "softnorm",
            "config": {
                "dim": 256,
                "noise_augment_dim": 0,
                "noise_regularize": True,
                "auto_scale": True,
                "freeze": True,
            },
        },
        "pretransform": {"type": "patched", "config": {"patch_size": 256, "channels": 2}},
        "latent_dim": 256,
        "downsampling_ratio": 4096,
        "io_channels": 2,
    }


def official_model_config(variant: str) -> dict:
    """The official `model_config.json` (as a dict) of a released checkpoint: one of `VARIANTS`."""
    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be one of {VARIANTS}, got {variant!r}.")
    small = variant.startswith("small")
    base = variant.endswith("-base")
    repo = "stabilityai/stable-audio-3-" + ("medium" if not small else variant.removesuffix("-base"))
    dit = {
        "io_channels": 256,
        "embed_dim": 1024 if small else 1536,
        "depth": 20 if small else 24,
        "num_heads": 16 if small else 24,
        "cond_token_dim": 768,
        "global_cond_dim": 768,
        "local_add_cond_dim": 257,
        "global_cond_type": "adaLN",
        "timestep_features_type": "expo",
        "attn_kwargs": {"qk_norm": "rms", "differential": not small},
        "norm_type": "rms_norm",
        "norm_kwargs": {"force_fp32": True},
        "ff_kwargs": {"mult": 4.0},
        "num_memory_tokens": 64,
    }
    if small:
        dit["timestep_features_logsnr"] = False
    shift = {"min_length": 256, "max_length": 4096}
    if small:
        shift = {"type": "full", **shift}
    config = {
        "model_type": "diffusion_cond",
        "sample_rate": 44100,
        "sample_size": 5292032 if small else 16777216,
        "model": {
            "io_channels": 256,
            "pretransform": {
                "type": "autoencoder",
                "chunked": True,
                "config": _same_config(128, 6, True) if small else _same_config(256, 12, False),
            },
            "conditioning": {
                "cond_dim": 768,
                "configs": [
                    {
                        "id": "prompt",
                        "type": "t5gemma",
                        "config": {
                            "max_length": 256,
                            "padding_mode": "learned",
                            "repo_id": repo,
                            "subfolder": "t5gemma-b-b-ul2",
                        },
                    },
                    {
                        "id": "seconds_total",
                        "type": "number",
                        "config": {"min_val": 0, "max_val": 384, "fourier_features_type": "expo"},
                    },
                ],
            },
            "diffusion": {
                "type": "dit",
                "diffusion_objective": "rectified_flow" if base else "rf_denoiser",
                "cross_attention_cond_ids": ["prompt", "seconds_total"],
                "global_cond_ids": ["seconds_total"],
                "local_add_cond_ids": ["inpaint_mask", "inpaint_masked_input"],
                "mask_padding_attention": True,
                "use_effective_length_for_schedule": True,
                "distribution_shift_options": shift,
                "config": dit,
            },
        },
    }
    return copy.deepcopy(config)


def t5gemma_b_b_ul2_encoder_config() -> dict:
    """Encoder geometry of `google/t5gemma-b-b-ul2` (reference §3.4, from the official MLX port)."""
    return {
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 12,
        "head_dim": 64,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 64,
        "vocab_size": 256000,
    }
