"""Official SAME checkpoints (and upstream diffusers `AutoencoderSAME` state dicts) -> `SAMEAutoencoderModel`.

Official layout (relative to `pretransform.model.` in full SA3 checkpoints, bare in standalone SAME repos):

| official | ours |
|---|---|
| `encoder.layers.0.mapping.{weight_g,weight_v,bias}` | `encoder.conv_in.*` |
| `encoder.layers.0.new_tokens` | `encoder.resampler.new_tokens` |
| `encoder.layers.0.transformers.N.<block>` | `encoder.resampler.transformer_blocks.N.<block>` |
| `encoder.layers.2.{weight,bias}` | `encoder.proj_out.*` |
| `decoder.layers.1.{weight,bias}` | `decoder.proj_in.*` |
| `decoder.layers.3.new_tokens` / `.transformers.N.<block>` | `decoder.resampler.*` |
| `decoder.layers.3.mapping.{weight_g,weight_v,bias}` | `decoder.conv_out.*` |
| `bottleneck.{scaling_factor,bias,noise_scaling_factor,running_std}` | `bottleneck.{scale,bias,noise_scale,running_std}` |

Inside a block: `pre_norm.{alpha,gamma,beta}` -> `norm1.{alpha,weight,bias}`, `ff_norm` -> `norm2`,
`self_attn.{q,k}_norm` -> `attn.norm_{q,k}`, `self_attn.to_qkv/to_out` -> `attn.*` (row order kept),
`ff.ff.0.proj` -> `ff.proj_in`, `ff.ff.2` -> `ff.proj_out`, `rope.inv_freq` -> `rotary_emb.inv_freq` (persistent).
"""

import inspect
import re
from typing import Dict, Optional

import torch

from .official import (
    AUTOENCODER_PREFIX,
    check_state_dict_matches,
    read_official_config,
    read_safetensors,
    resolve_official_paths,
    safetensors_keys,
)


_BLOCK_RENAMES = {
    "pre_norm.alpha": "norm1.alpha",
    "pre_norm.gamma": "norm1.weight",
    "pre_norm.beta": "norm1.bias",
    "ff_norm.alpha": "norm2.alpha",
    "ff_norm.gamma": "norm2.weight",
    "ff_norm.beta": "norm2.bias",
    "self_attn.to_qkv.weight": "attn.to_qkv.weight",
    "self_attn.to_out.weight": "attn.to_out.weight",
    "self_attn.q_norm.alpha": "attn.norm_q.alpha",
    "self_attn.q_norm.gamma": "attn.norm_q.weight",
    "self_attn.q_norm.beta": "attn.norm_q.bias",
    "self_attn.k_norm.alpha": "attn.norm_k.alpha",
    "self_attn.k_norm.gamma": "attn.norm_k.weight",
    "self_attn.k_norm.beta": "attn.norm_k.bias",
    "ff.ff.0.proj.weight": "ff.proj_in.weight",
    "ff.ff.0.proj.bias": "ff.proj_in.bias",
    "ff.ff.2.weight": "ff.proj_out.weight",
    "ff.ff.2.bias": "ff.proj_out.bias",
    "rope.inv_freq": "rotary_emb.inv_freq",
}
_TOP_RENAMES = {
    "encoder.layers.0.mapping.weight_g": "encoder.conv_in.weight_g",
    "encoder.layers.0.mapping.weight_v": "encoder.conv_in.weight_v",
    "encoder.layers.0.mapping.bias": "encoder.conv_in.bias",
    "encoder.layers.0.new_tokens": "encoder.resampler.new_tokens",
    "encoder.layers.2.weight": "encoder.proj_out.weight",
    "encoder.layers.2.bias": "encoder.proj_out.bias",
    "decoder.layers.1.weight": "decoder.proj_in.weight",
    "decoder.layers.1.bias": "decoder.proj_in.bias",
    "decoder.layers.3.new_tokens": "decoder.resampler.new_tokens",
    "decoder.layers.3.mapping.weight_g": "decoder.conv_out.weight_g",
    "decoder.layers.3.mapping.weight_v": "decoder.conv_out.weight_v",
    "decoder.layers.3.mapping.bias": "decoder.conv_out.bias",
    "bottleneck.scaling_factor": "bottleneck.scale",
    "bottleneck.bias": "bottleneck.bias",
    "bottleneck.noise_scaling_factor": "bottleneck.noise_scale",
    "bottleneck.running_std": "bottleneck.running_std",
}
_BLOCK_PATTERN = re.compile(r"^(encoder\.layers\.0|decoder\.layers\.3)\.transformers\.(\d+)\.(.+)$")
_BLOCK_PREFIXES = {"encoder.layers.0": "encoder.resampler", "decoder.layers.3": "decoder.resampler"}


def _official_to_ours(key: str) -> Optional[str]:
    if key in _TOP_RENAMES:
        return _TOP_RENAMES[key]
    match = _BLOCK_PATTERN.match(key)
    if match and match.group(3) in _BLOCK_RENAMES:
        prefix, index, rest = match.groups()
        return f"{_BLOCK_PREFIXES[prefix]}.transformer_blocks.{index}.{_BLOCK_RENAMES[rest]}"
    return None


def convert_official_same_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """
    Renames an official SAME state dict (bare keys, or keys under `pretransform.model.`) to `SAMEAutoencoderModel`
    keys. Every official tensor maps to exactly one of ours; unknown keys raise a `ValueError` naming them.
    """
    if any(key.startswith(AUTOENCODER_PREFIX) for key in state_dict):
        state_dict = {
            k[len(AUTOENCODER_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(AUTOENCODER_PREFIX)
        }
    converted, unknown = {}, []
    for key, value in state_dict.items():
        new_key = _official_to_ours(key)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    if unknown:
        shown = ", ".join(sorted(unknown)[:20]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 20 else "")
        raise ValueError(
            f"The official SAME state dict has keys with no counterpart in SAMEAutoencoderModel: {shown}. Only the "
            "released SAME-S / SAME-L layout (one resampling block per side) is supported."
        )
    return converted


# ----------------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------------

# Keys of the official SAME encoder/decoder configs that we read or that carry no numerical meaning.
_KNOWN_BLOCK_KEYS = {
    "in_channels", "out_channels", "channels", "c_mults", "strides", "latent_dim", "transformer_depths",
    "checkpointing", "differential", "dyt", "dim_heads", "variable_stride", "sliding_window", "chunk_size",
    "chunk_midpoint_shift", "mask_noise", "sinusoidal_blocks", "conv_mapping", "conv_bias", "ff_mult",
    "conformer", "layer_scale", "causal", "feat_scale", "cross_attn", "mapping_bias", "freeze_backbone",
    "soft_clip",
}  # fmt: skip


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"Unsupported official SAME config: {message}")


def _single(values, name: str):
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    _require(len(values) == 1, f"`{name}` must have one entry (one resampling block), got {values}.")
    return values[0]


def same_config_from_official(model_config: dict) -> dict:
    """
    Derives the `SAMEAutoencoderModel` config from an official `model_config.json` (already parsed): a full SA3
    config (autoencoder under `model.pretransform.config`, `chunked` from `model.pretransform.chunked`) or a
    standalone SAME config (`encoder` / `decoder` / `bottleneck` / `pretransform` directly under `model`; `chunked`
    False, the default of the official `AutoencoderModel`). Unsupported switches raise a `ValueError`.
    """
    if not isinstance(model_config, dict) or not isinstance(model_config.get("model"), dict):
        raise ValueError("`model_config` must be the parsed official `model_config.json` with a `model` section.")
    model = model_config["model"]
    if "encoder" in model:
        autoencoder, chunked = model, False
    else:
        pretransform = model.get("pretransform")
        _require(
            isinstance(pretransform, dict) and pretransform.get("type") == "autoencoder",
            "`model.pretransform.type` must be 'autoencoder'.",
        )
        autoencoder, chunked = pretransform["config"], bool(pretransform.get("chunked", False))
    if "sample_rate" not in model_config:
        raise ValueError("`model_config` has no `sample_rate`; the official config always sets it.")

    for part, expected in (
        ("encoder", "same"),
        ("decoder", "same"),
        ("bottleneck", "softnorm"),
        ("pretransform", "patched"),
    ):
        _require(autoencoder.get(part, {}).get("type") == expected, f"`{part}.type` must be '{expected}'.")
    encoder = autoencoder["encoder"]["config"]
    decoder = autoencoder["decoder"]["config"]
    bottleneck = autoencoder["bottleneck"]["config"]
    patching = autoencoder["pretransform"]["config"]

    for name, block in (("encoder", encoder), ("decoder", decoder)):
        unknown = sorted(set(block) - _KNOWN_BLOCK_KEYS)
        _require(not unknown, f"unknown `{name}` keys {unknown}.")
        for flag in ("conformer", "layer_scale", "causal", "feat_scale", "cross_attn", "freeze_backbone", "soft_clip"):
            _require(not block.get(flag, False), f"`{name}.{flag}` is not supported.")
        _require(block.get("differential", True), f"`{name}.differential` must be true.")
        _require(block.get("dyt", True), f"`{name}.dyt` must be true.")
        _require(block.get("variable_stride", False), f"`{name}.variable_stride` must be true.")
        _require(block.get("mapping_bias", True), f"`{name}.mapping_bias` must be true.")
    _require(not encoder.get("conv_mapping", False), "`encoder.conv_mapping` must be false.")
    _require(encoder.get("mask_noise", 0.0) == 0, "`encoder.mask_noise` must be 0.")
    _require(_single(encoder.get("sinusoidal_blocks", [0]), "encoder.sinusoidal_blocks") == 0, "encoder sin blocks.")

    width = encoder.get("channels", 128) * _single(encoder.get("c_mults", [1]), "encoder.c_mults")
    for key in ("channels", "c_mults", "strides", "latent_dim", "dim_heads", "sliding_window", "chunk_size",
                "chunk_midpoint_shift", "ff_mult"):  # fmt: skip
        _require(encoder.get(key) == decoder.get(key), f"`encoder.{key}` and `decoder.{key}` differ.")
    stride = _single(encoder.get("strides", [2]), "encoder.strides")
    head_dim = min(encoder.get("dim_heads", 128), width)
    _require(width % head_dim == 0, f"width {width} is not a multiple of `dim_heads` {head_dim}.")

    patch_size = patching["patch_size"]
    audio_channels = patching["channels"]
    _require(patching.get("oversampling", 1) == 1, "`pretransform.oversampling` must be 1.")
    _require(patching.get("postfilter_channels", 0) == 0, "`pretransform.postfilter_channels` must be 0.")
    _require(
        encoder.get("in_channels", 2) == audio_channels * patch_size, "`encoder.in_channels` != channels x patch."
    )
    _require(decoder.get("out_channels", 2) == audio_channels * patch_size, "`decoder.out_channels` mismatch.")
    ratio = autoencoder.get("downsampling_ratio", patch_size * stride)
    _require(ratio == patch_size * stride, f"`downsampling_ratio` {ratio} != patch_size x stride.")
    _require(autoencoder.get("io_channels", audio_channels) == audio_channels, "`io_channels` mismatch.")

    latent_dim = autoencoder.get("latent_dim", encoder.get("latent_dim"))
    _require(
        encoder.get("latent_dim") == latent_dim and bottleneck.get("dim", 32) == latent_dim, "latent dims differ."
    )
    _require(bottleneck.get("noise_augment_dim", 0) == 0, "`bottleneck.noise_augment_dim` must be 0.")
    _require(bottleneck.get("auto_scale", False), "`bottleneck.auto_scale` must be true (running_std).")

    window = encoder.get("sliding_window")
    if window is not None:
        _require(len(window) == 2 and window[0] == window[1], f"`sliding_window` must be symmetric, got {window}.")
        window = int(window[0])
        chunk_size, midpoint = None, False
    else:
        chunk_size, midpoint = encoder.get("chunk_size", 128), bool(encoder.get("chunk_midpoint_shift", False))

    return {
        "audio_channels": audio_channels,
        "sampling_rate": int(model_config["sample_rate"]),
        "patch_size": patch_size,
        "resampling_stride": stride,
        "latent_channels": latent_dim,
        "num_attention_heads": width // head_dim,
        "attention_head_dim": head_dim,
        "num_encoder_layers": _single(encoder.get("transformer_depths", [3]), "encoder.transformer_depths"),
        "num_decoder_layers": _single(decoder.get("transformer_depths", [3]), "decoder.transformer_depths"),
        "mlp_ratio": float(encoder.get("ff_mult", 3)),
        "sliding_window": window,
        "attention_chunk_size": chunk_size,
        "chunk_midpoint_shift": midpoint,
        "decoder_sinusoidal_blocks": _single(decoder.get("sinusoidal_blocks", [0]), "decoder.sinusoidal_blocks"),
        "decoder_kernel_size": 3 if decoder.get("conv_mapping", False) else 1,
        "decoder_mask_noise": float(decoder.get("mask_noise", 0.0)),
        "bottleneck_noise": bool(bottleneck.get("noise_regularize", False)),
        "freeze_bottleneck": bool(bottleneck.get("freeze", False)),
        "chunked": chunked,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def load_official_same(cls, path: str, torch_dtype: Optional[torch.dtype] = None, config_overrides=None):
    """Builds `cls` from an official checkpoint (see `SAMEAutoencoderModel.from_single_file`)."""
    from accelerate import init_empty_weights

    config_path, weights_path = resolve_official_paths(path)
    config = same_config_from_official(read_official_config(config_path))
    config_overrides = dict(config_overrides or {})
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(config_overrides) - allowed)
    if unknown:
        raise ValueError(f"Unknown config overrides {unknown} for {cls.__name__}; valid names: {sorted(allowed)}.")
    config.update(config_overrides)

    try:
        keys = safetensors_keys(weights_path)
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"Could not read {weights_path!r} as safetensors ({e}). Is the file truncated?") from e
    # Full SA3 checkpoints nest the autoencoder under `pretransform.model.`; standalone SAME repos have bare keys.
    prefix = AUTOENCODER_PREFIX if any(key.startswith(AUTOENCODER_PREFIX) for key in keys) else None
    state_dict = convert_official_same_state_dict(read_safetensors(weights_path, prefix))
    dtype = torch_dtype or torch.float32
    # RoPE frequencies stay float32 (as official); every other floating tensor takes the requested dtype.
    state_dict = {
        k: v.to(dtype) if (v.is_floating_point() and not k.endswith("inv_freq")) else v for k, v in state_dict.items()
    }

    with init_empty_weights():
        model = cls.from_config(config)
    check_state_dict_matches(model, state_dict, source=f"checkpoint {weights_path!r}")
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------------
# Upstream diffusers `AutoencoderSAME`
# ----------------------------------------------------------------------------------------------------------------------

_UPSTREAM_SAME_S_REASON = (
    "upstream diffusers' `AutoencoderSAME` runs SAME-S with sliding-window attention and a kernel-1 decoder mapping, "
    "while the official SAME-S uses chunked attention with a mid-point shift and a kernel-3 decoder mapping, so "
    "upstream SAME-S weights do not describe the official model (the decoder mapping cannot even hold the official "
    "tensor). Load the official checkpoint with `SAMEAutoencoderModel.from_single_file` instead."
)


def same_config_from_upstream(upstream_config: dict) -> dict:
    """`SAMEAutoencoderModel` config equivalent to an upstream `AutoencoderSAME` config (SAME-L-like models only)."""
    cfg = dict(upstream_config)
    width = cfg.get("encoder_channels", 128) * _single(cfg.get("encoder_c_mults", (6,)), "encoder_c_mults")
    depth = _single(cfg.get("encoder_transformer_depths", (6,)), "encoder_transformer_depths")
    if width == 768 and depth == 6:
        raise ValueError(f"`upstream_config` describes SAME-S: {_UPSTREAM_SAME_S_REASON}")
    _require(cfg.get("use_differential_attention", True), "`use_differential_attention` must be true.")
    _require(_single(cfg.get("encoder_sinusoidal_blocks", (0,)), "encoder_sinusoidal_blocks") == 0, "encoder sin.")
    head_dim = min(cfg.get("dim_heads", 64), width)
    return {
        "audio_channels": cfg.get("audio_channels", 2),
        "sampling_rate": cfg.get("sampling_rate", 44100),
        "patch_size": cfg.get("patch_size", 256),
        "resampling_stride": _single(cfg.get("encoder_strides", (16,)), "encoder_strides"),
        "latent_channels": cfg.get("latent_dim", 256),
        "num_attention_heads": width // head_dim,
        "attention_head_dim": head_dim,
        "num_encoder_layers": depth,
        "num_decoder_layers": depth,
        "mlp_ratio": float(cfg.get("ff_mult", 3)),
        "sliding_window": cfg.get("sliding_window", 1),
        "attention_chunk_size": None,
        "chunk_midpoint_shift": False,
        "decoder_sinusoidal_blocks": _single(cfg.get("decoder_sinusoidal_blocks", (0,)), "decoder_sinusoidal_blocks"),
        "decoder_kernel_size": 1,
        "decoder_mask_noise": 0.01,
        "bottleneck_noise": True,
        "freeze_bottleneck": True,
        "chunked": True,
    }


_UPSTREAM_BLOCK_RENAMES = {
    "norm_attn.alpha": "norm1.alpha",
    "norm_attn.gamma": "norm1.weight",
    "norm_attn.beta": "norm1.bias",
    "norm_ff.alpha": "norm2.alpha",
    "norm_ff.gamma": "norm2.weight",
    "norm_ff.beta": "norm2.bias",
    "attn.to_qkv.weight": "attn.to_qkv.weight",
    "attn.to_out.weight": "attn.to_out.weight",
    "attn.q_norm.alpha": "attn.norm_q.alpha",
    "attn.q_norm.gamma": "attn.norm_q.weight",
    "attn.q_norm.beta": "attn.norm_q.bias",
    "attn.k_norm.alpha": "attn.norm_k.alpha",
    "attn.k_norm.gamma": "attn.norm_k.weight",
    "attn.k_norm.beta": "attn.norm_k.bias",
    "ff.proj_in.weight": "ff.proj_in.weight",
    "ff.proj_in.bias": "ff.proj_in.bias",
    "ff.proj_out.weight": "ff.proj_out.weight",
    "ff.proj_out.bias": "ff.proj_out.bias",
}
_UPSTREAM_TOP_RENAMES = {
    "encoder.blocks.0.mapping.weight_g": "encoder.conv_in.weight_g",
    "encoder.blocks.0.mapping.weight_v": "encoder.conv_in.weight_v",
    "encoder.blocks.0.mapping.bias": "encoder.conv_in.bias",
    "encoder.blocks.0.new_tokens": "encoder.resampler.new_tokens",
    "encoder.proj.weight": "encoder.proj_out.weight",
    "encoder.proj.bias": "encoder.proj_out.bias",
    "decoder.proj.weight": "decoder.proj_in.weight",
    "decoder.proj.bias": "decoder.proj_in.bias",
    "decoder.blocks.0.new_tokens": "decoder.resampler.new_tokens",
    "decoder.blocks.0.mapping.weight_g": "decoder.conv_out.weight_g",
    "decoder.blocks.0.mapping.weight_v": "decoder.conv_out.weight_v",
    "decoder.blocks.0.mapping.bias": "decoder.conv_out.bias",
    "bottleneck.scale": "bottleneck.scale",
    "bottleneck.bias": "bottleneck.bias",
    "bottleneck.running_std": "bottleneck.running_std",
}
_UPSTREAM_BLOCK_PATTERN = re.compile(r"^(encoder|decoder)\.blocks\.0\.transformers\.(\d+)\.(.+)$")


def convert_upstream_same_state_dict(
    state_dict: Dict[str, torch.Tensor], upstream_config: Optional[dict] = None
) -> Dict[str, torch.Tensor]:
    """
    Converts an upstream diffusers `AutoencoderSAME` state dict to `SAMEAutoencoderModel` keys, for the architectures
    that agree (SAME-L: sliding window, kernel-1 decoder mapping). The fused QKV rows go back from upstream's
    `[q | q_diff | k | k_diff | v]` to the official `[q | k | v | q_diff | k_diff]`; the RoPE `inv_freq` buffers (not
    stored upstream) are recomputed and the empty `noise_scale` is added. SAME-S raises a `ValueError` (see
    `_UPSTREAM_SAME_S_REASON`): detected from `upstream_config` or, without it, from the SAME-S geometry (width 768,
    6 blocks) or a non-1 decoder mapping kernel.
    """
    if upstream_config is not None:
        same_config_from_upstream(upstream_config)  # raises for SAME-S
    converted, unknown = {}, []
    for key, value in state_dict.items():
        if key in _UPSTREAM_TOP_RENAMES:
            converted[_UPSTREAM_TOP_RENAMES[key]] = value
            continue
        match = _UPSTREAM_BLOCK_PATTERN.match(key)
        if match is None or match.group(3) not in _UPSTREAM_BLOCK_RENAMES:
            unknown.append(key)
            continue
        side, index, rest = match.groups()
        if rest == "attn.to_qkv.weight":
            if value.shape[0] % 5 != 0:
                raise ValueError(f"`{key}` has shape {tuple(value.shape)}; only differential attention is supported.")
            q, q_diff, k, k_diff, v = value.chunk(5, dim=0)
            value = torch.cat([q, k, v, q_diff, k_diff], dim=0)
        converted[f"{side}.resampler.transformer_blocks.{index}.{_UPSTREAM_BLOCK_RENAMES[rest]}"] = value
    if unknown:
        raise ValueError(f"Upstream `AutoencoderSAME` keys with no counterpart: {', '.join(sorted(unknown)[:20])}.")

    mapping = converted.get("decoder.conv_out.weight_v")
    if mapping is not None and mapping.shape[-1] != 1:
        raise ValueError(f"The decoder mapping has kernel {mapping.shape[-1]} (SAME-S): {_UPSTREAM_SAME_S_REASON}")
    new_tokens = converted.get("encoder.resampler.new_tokens")
    num_blocks = len({k.split(".")[3] for k in converted if k.startswith("encoder.resampler.transformer_blocks.")})
    if new_tokens is not None and new_tokens.shape[-1] == 768 and num_blocks == 6:
        raise ValueError(f"The state dict has the SAME-S geometry (width 768, 6 blocks): {_UPSTREAM_SAME_S_REASON}")

    for key in [k for k in converted if k.endswith("attn.norm_q.weight")]:
        head_dim = converted[key].shape[0]
        rot = head_dim // 2
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))
        converted[key.replace("attn.norm_q.weight", "rotary_emb.inv_freq")] = inv_freq
    if "bottleneck.scale" in converted:
        scale = converted["bottleneck.scale"]
        converted["bottleneck.noise_scale"] = scale.new_ones(1, 0, 1)
        if "bottleneck.running_std" in converted:
            converted["bottleneck.running_std"] = converted["bottleneck.running_std"].reshape(1)
    return converted
