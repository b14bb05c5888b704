"""Official (and upstream diffusers) Stable Audio 3 DiT checkpoints -> `StableAudio3Transformer`.

Official key layout (`model.safetensors`): the DiT under `model.model.*` (`DiTWrapper.model` = `DiffusionTransformer`),
the learned prompt padding under `conditioner.conditioners.prompt.padding_embedding` and the `seconds_total` number
embedder Linear under `conditioner.conditioners.seconds_total.embedder.embedding.1.*`. Every one of these tensors maps to
exactly one tensor of ours (the RoPE `inv_freq` buffer included); nothing is dropped, and an unknown key is an error.
"""

import math
import re
from typing import Dict, Iterable, Optional

import torch


OFFICIAL_DIT_PREFIX = "model.model."
OFFICIAL_PROMPT_PADDING_KEY = "conditioner.conditioners.prompt.padding_embedding"
OFFICIAL_SECONDS_PREFIX = "conditioner.conditioners.seconds_total.embedder.embedding.1."

# Official key (relative to `model.model.`) -> ours, outside the blocks.
_OFFICIAL_TOP_LEVEL = {
    "to_timestep_embed.0.weight": "timestep_embedder.linear_1.weight",
    "to_timestep_embed.0.bias": "timestep_embedder.linear_1.bias",
    "to_timestep_embed.2.weight": "timestep_embedder.linear_2.weight",
    "to_timestep_embed.2.bias": "timestep_embedder.linear_2.bias",
    "to_cond_embed.0.weight": "context_embedder.linear_1.weight",
    "to_cond_embed.2.weight": "context_embedder.linear_2.weight",
    "to_global_embed.0.weight": "global_embedder.linear_1.weight",
    "to_global_embed.2.weight": "global_embedder.linear_2.weight",
    "preprocess_conv.weight": "preprocess_conv.weight",
    "postprocess_conv.weight": "postprocess_conv.weight",
    "transformer.project_in.weight": "proj_in.weight",
    "transformer.project_out.weight": "proj_out.weight",
    "transformer.memory_tokens": "memory_tokens",
    "transformer.rotary_pos_emb.inv_freq": "rotary_pos_emb.inv_freq",
    "transformer.global_cond_embedder.0.weight": "adaln_embedder.linear_1.weight",
    "transformer.global_cond_embedder.0.bias": "adaln_embedder.linear_1.bias",
    "transformer.global_cond_embedder.2.weight": "adaln_embedder.linear_2.weight",
    "transformer.global_cond_embedder.2.bias": "adaln_embedder.linear_2.bias",
}

# Official key inside `transformer.layers.N.` -> ours inside `transformer_blocks.N.`.
_OFFICIAL_BLOCK = {
    "to_scale_shift_gate": "scale_shift_table",
    "pre_norm.gamma": "norm1.weight",
    "self_attn.to_qkv.weight": "attn1.to_qkv.weight",
    "self_attn.to_out.weight": "attn1.to_out.weight",
    "self_attn.q_norm.gamma": "attn1.norm_q.weight",
    "self_attn.k_norm.gamma": "attn1.norm_k.weight",
    "cross_attend_norm.gamma": "norm2.weight",
    "cross_attn.to_q.weight": "attn2.to_q.weight",
    "cross_attn.to_kv.weight": "attn2.to_kv.weight",
    "cross_attn.to_out.weight": "attn2.to_out.weight",
    "cross_attn.q_norm.gamma": "attn2.norm_q.weight",
    "cross_attn.k_norm.gamma": "attn2.norm_k.weight",
    "ff_norm.gamma": "norm3.weight",
    "ff.ff.0.proj.weight": "ff.proj_in.weight",
    "ff.ff.0.proj.bias": "ff.proj_in.bias",
    "ff.ff.2.weight": "ff.proj_out.weight",
    "ff.ff.2.bias": "ff.proj_out.bias",
    "to_local_embed.0.weight": "to_local_embed.linear_1.weight",
    "to_local_embed.0.bias": "to_local_embed.linear_1.bias",
    "to_local_embed.2.weight": "to_local_embed.linear_2.weight",
    "to_local_embed.2.bias": "to_local_embed.linear_2.bias",
}

_OFFICIAL_CONDITIONER = {
    OFFICIAL_PROMPT_PADDING_KEY: "prompt_padding_embedding",
    OFFICIAL_SECONDS_PREFIX + "weight": "duration_embedder.weight",
    OFFICIAL_SECONDS_PREFIX + "bias": "duration_embedder.bias",
}

# Upstream diffusers `StableAudio3DiTModel` key -> ours (the same module tree under other names).
_UPSTREAM_TOP_LEVEL = {
    "to_timestep_embed.0.weight": "timestep_embedder.linear_1.weight",
    "to_timestep_embed.0.bias": "timestep_embedder.linear_1.bias",
    "to_timestep_embed.2.weight": "timestep_embedder.linear_2.weight",
    "to_timestep_embed.2.bias": "timestep_embedder.linear_2.bias",
    "to_cond_embed.0.weight": "context_embedder.linear_1.weight",
    "to_cond_embed.2.weight": "context_embedder.linear_2.weight",
    "to_global_embed.0.weight": "global_embedder.linear_1.weight",
    "to_global_embed.2.weight": "global_embedder.linear_2.weight",
    "global_cond_embedder.0.weight": "adaln_embedder.linear_1.weight",
    "global_cond_embedder.0.bias": "adaln_embedder.linear_1.bias",
    "global_cond_embedder.2.weight": "adaln_embedder.linear_2.weight",
    "global_cond_embedder.2.bias": "adaln_embedder.linear_2.bias",
    "preprocess_conv.weight": "preprocess_conv.weight",
    "postprocess_conv.weight": "postprocess_conv.weight",
    "proj_in.weight": "proj_in.weight",
    "proj_out.weight": "proj_out.weight",
    "memory_tokens": "memory_tokens",
    "rotary_pos_emb.inv_freq": "rotary_pos_emb.inv_freq",
    "prompt_padding_embedding": "prompt_padding_embedding",
}

_UPSTREAM_BLOCK = {
    "to_scale_shift_gate": "scale_shift_table",
    "pre_norm.gamma": "norm1.weight",
    "self_attn.to_qkv.weight": "attn1.to_qkv.weight",
    "self_attn.to_out.weight": "attn1.to_out.weight",
    "self_attn.q_norm.gamma": "attn1.norm_q.weight",
    "self_attn.k_norm.gamma": "attn1.norm_k.weight",
    "cross_attend_norm.gamma": "norm2.weight",
    "cross_attn.to_q.weight": "attn2.to_q.weight",
    "cross_attn.to_kv.weight": "attn2.to_kv.weight",
    "cross_attn.to_out.weight": "attn2.to_out.weight",
    "cross_attn.q_norm.gamma": "attn2.norm_q.weight",
    "cross_attn.k_norm.gamma": "attn2.norm_k.weight",
    "ff_norm.gamma": "norm3.weight",
    "ff.proj_in.weight": "ff.proj_in.weight",
    "ff.proj_in.bias": "ff.proj_in.bias",
    "ff.proj_out.weight": "ff.proj_out.weight",
    "ff.proj_out.bias": "ff.proj_out.bias",
    "to_local_embed.0.weight": "to_local_embed.linear_1.weight",
    "to_local_embed.0.bias": "to_local_embed.linear_1.bias",
    "to_local_embed.2.weight": "to_local_embed.linear_2.weight",
    "to_local_embed.2.bias": "to_local_embed.linear_2.bias",
}

_UPSTREAM_DURATION = {"linear.weight": "duration_embedder.weight", "linear.bias": "duration_embedder.bias"}

_OFFICIAL_BLOCK_RE = re.compile(r"^transformer\.layers\.(\d+)\.(.+)$")
_UPSTREAM_BLOCK_RE = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")


def _fmt(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:20])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")


def _require(condition: bool, key: str, value, expected: str) -> None:
    if not condition:
        raise ValueError(
            f"Unsupported official Stable Audio 3 config: `{key}` is {value!r}, expected {expected}. Only the "
            "architecture of the released checkpoints is implemented."
        )


def transformer_config_from_official(model_config: dict) -> dict:
    """
    Translates an official `model_config.json` (the whole dict) into `StableAudio3Transformer` kwargs.

    Raises a `ValueError` naming the key when the config asks for something the released checkpoints do not use.
    """
    if not isinstance(model_config, dict) or "model" not in model_config:
        raise ValueError("`model_config` must be the official `model_config.json` dict, with a top-level `model` key.")
    model = model_config["model"]
    diffusion = model.get("diffusion")
    conditioning = model.get("conditioning")
    if not isinstance(diffusion, dict) or not isinstance(conditioning, dict):
        raise ValueError(
            "`model_config['model']` must have `diffusion` and `conditioning` sections (a diffusion_cond model)."
        )
    _require(diffusion.get("type") == "dit", "model.diffusion.type", diffusion.get("type"), '"dit"')
    dit = diffusion.get("config", {})

    _require(
        list(diffusion.get("cross_attention_cond_ids", [])) == ["prompt", "seconds_total"],
        "model.diffusion.cross_attention_cond_ids",
        diffusion.get("cross_attention_cond_ids"),
        '["prompt", "seconds_total"]',
    )
    _require(
        list(diffusion.get("global_cond_ids", [])) == ["seconds_total"],
        "model.diffusion.global_cond_ids",
        diffusion.get("global_cond_ids"),
        '["seconds_total"]',
    )
    _require(
        list(diffusion.get("local_add_cond_ids", [])) == ["inpaint_mask", "inpaint_masked_input"],
        "model.diffusion.local_add_cond_ids",
        diffusion.get("local_add_cond_ids"),
        '["inpaint_mask", "inpaint_masked_input"]',
    )
    for key in ("input_concat_ids", "prepend_cond_ids", "modular_local_cond_configs"):
        _require(not diffusion.get(key), f"model.diffusion.{key}", diffusion.get(key), "absent or empty")

    expected = {
        "patch_size": 1,
        "global_cond_type": "adaLN",
        "timestep_features_type": "expo",
        "timestep_features_logsnr": False,
        "timestep_cond_type": "global",
        "transformer_type": "continuous_transformer",
        "norm_type": "rms_norm",
        "project_cond_tokens": True,
        "project_global_cond": True,
        "input_concat_dim": 0,
        "prepend_cond_dim": 0,
        "timestep_features_dim": 256,
    }
    for key, value in expected.items():
        if key in dit:
            _require(dit[key] == value, f"model.diffusion.config.{key}", dit[key], repr(value))
    for key in ("global_cond_type", "timestep_features_type", "norm_type"):
        _require(key in dit, f"model.diffusion.config.{key}", None, repr(expected[key]))
    attn_kwargs = dit.get("attn_kwargs", {})
    _require(
        attn_kwargs.get("qk_norm") == "rms",
        "model.diffusion.config.attn_kwargs.qk_norm",
        attn_kwargs.get("qk_norm"),
        '"rms"',
    )
    unknown_attn = set(attn_kwargs) - {"qk_norm", "differential"}
    _require(
        not unknown_attn, "model.diffusion.config.attn_kwargs", sorted(unknown_attn), "only qk_norm / differential"
    )
    norm_kwargs = dit.get("norm_kwargs", {})
    _require(
        norm_kwargs.get("force_fp32", False) is True and set(norm_kwargs) <= {"force_fp32", "eps"},
        "model.diffusion.config.norm_kwargs",
        norm_kwargs,
        '{"force_fp32": true}',
    )
    ff_kwargs = dit.get("ff_kwargs", {})
    _require(set(ff_kwargs) <= {"mult"}, "model.diffusion.config.ff_kwargs", ff_kwargs, 'only "mult"')

    in_channels = int(dit.get("io_channels", model.get("io_channels")))
    width = int(dit["embed_dim"])
    num_heads = int(dit["num_heads"])
    _require(width % num_heads == 0, "model.diffusion.config.num_heads", num_heads, f"a divisor of embed_dim {width}")
    cond_dim = int(conditioning["cond_dim"])
    _require(
        int(dit["cond_token_dim"]) == cond_dim,
        "model.diffusion.config.cond_token_dim",
        dit["cond_token_dim"],
        f"cond_dim {cond_dim}",
    )
    _require(
        int(dit["global_cond_dim"]) == cond_dim,
        "model.diffusion.config.global_cond_dim",
        dit["global_cond_dim"],
        f"cond_dim {cond_dim}",
    )
    _require(
        int(dit.get("local_add_cond_dim", -1)) == in_channels + 1,
        "model.diffusion.config.local_add_cond_dim",
        dit.get("local_add_cond_dim"),
        f"io_channels + 1 = {in_channels + 1}",
    )

    conditioners = {c["id"]: c for c in conditioning.get("configs", [])}
    _require(
        set(conditioners) == {"prompt", "seconds_total"},
        "model.conditioning.configs ids",
        sorted(conditioners),
        '["prompt", "seconds_total"]',
    )
    prompt = conditioners["prompt"]
    _require(
        prompt.get("type") == "t5gemma", "model.conditioning.configs[prompt].type", prompt.get("type"), '"t5gemma"'
    )
    padding_mode = prompt.get("config", {}).get("padding_mode", "zero")
    _require(
        padding_mode == "learned", "model.conditioning.configs[prompt].config.padding_mode", padding_mode, '"learned"'
    )
    seconds = conditioners["seconds_total"]
    seconds_config = seconds.get("config", {})
    _require(
        seconds.get("type") == "number",
        "model.conditioning.configs[seconds_total].type",
        seconds.get("type"),
        '"number"',
    )
    _require(
        seconds_config.get("fourier_features_type") == "expo",
        "model.conditioning.configs[seconds_total].config.fourier_features_type",
        seconds_config.get("fourier_features_type"),
        '"expo"',
    )

    return {
        "in_channels": in_channels,
        "num_layers": int(dit["depth"]),
        "num_attention_heads": num_heads,
        "attention_head_dim": width // num_heads,
        "cross_attention_dim": cond_dim,
        "mlp_ratio": float(ff_kwargs.get("mult", 4.0)),
        "num_memory_tokens": int(dit.get("num_memory_tokens", 0)),
        "use_differential_attention": bool(attn_kwargs.get("differential", False)),
        "timestep_features_dim": int(dit.get("timestep_features_dim", 256)),
        "duration_features_dim": 256,
        "min_duration": float(seconds_config.get("min_val", 0)),
        "max_duration": float(seconds_config.get("max_val", 1)),
        "norm_eps": float(norm_kwargs.get("eps", 1e-5)),
        "qk_norm_eps": 1e-6,
    }


def convert_official_transformer_state_dict(
    state_dict: Dict[str, torch.Tensor], ignore_prefixes: Iterable[str] = ()
) -> Dict[str, torch.Tensor]:
    """
    Maps the official `model.model.*` DiT tensors and the three `conditioner.conditioners.*` tensors to our keys.

    Args:
        state_dict (`Dict[str, torch.Tensor]`): Official keys, with their full prefixes.
        ignore_prefixes (`Iterable[str]`, *optional*): Prefixes of keys that belong to other components and are left
            out on purpose (for example `("pretransform.",)` for a whole checkpoint). Any other key that is not part of
            the DiT or its conditioner raises a `ValueError`.
    """
    ignore_prefixes = tuple(ignore_prefixes)
    converted, unknown = {}, []
    for key, tensor in state_dict.items():
        if key in _OFFICIAL_CONDITIONER:
            converted[_OFFICIAL_CONDITIONER[key]] = tensor
            continue
        if not key.startswith(OFFICIAL_DIT_PREFIX):
            if not key.startswith(ignore_prefixes):
                unknown.append(key)
            continue
        name = key[len(OFFICIAL_DIT_PREFIX) :]
        if name in _OFFICIAL_TOP_LEVEL:
            converted[_OFFICIAL_TOP_LEVEL[name]] = tensor
            continue
        match = _OFFICIAL_BLOCK_RE.match(name)
        if match and match.group(2) in _OFFICIAL_BLOCK:
            converted[f"transformer_blocks.{match.group(1)}.{_OFFICIAL_BLOCK[match.group(2)]}"] = tensor
            continue
        unknown.append(key)
    if unknown:
        raise ValueError(
            f"Unexpected keys in the official Stable Audio 3 state dict: {_fmt(unknown)}. They belong to no part of "
            "the DiT or its conditioner; the checkpoint may be from an unsupported variant."
        )
    missing = [k for k in _OFFICIAL_CONDITIONER.values() if k not in converted]
    if missing:
        official = [k for k, v in _OFFICIAL_CONDITIONER.items() if v in missing]
        raise ValueError(
            f"Missing keys in the official Stable Audio 3 state dict: {_fmt(official)}. The transformer needs the "
            "conditioner's prompt padding embedding and `seconds_total` embedder; pass the whole `model.safetensors`."
        )
    return converted


def _reorder_upstream_differential_qkv(weight: torch.Tensor) -> torch.Tensor:
    """Upstream `[q1 | q2 | k1 | k2 | v]` -> official / ours `[q | k | v | q_diff | k_diff]`."""
    query, query_diff, key, key_diff, value = weight.chunk(5, dim=0)
    return torch.cat([query, key, value, query_diff, key_diff], dim=0)


def convert_upstream_transformer_state_dict(
    state_dict: Dict[str, torch.Tensor], duration_embedder_state_dict: Optional[Dict[str, torch.Tensor]] = None
) -> Dict[str, torch.Tensor]:
    """
    Converts an upstream diffusers `StableAudio3DiTModel` state dict (plus its pipeline's `StableAudio3DurationEmbedder`)
    to ours.

    Differences handled: module names, the differential self-attention layout (upstream `[q1|q2|k1|k2|v]`, ours the
    official `[q|k|v|q_diff|k_diff]`; cross-attention layouts agree), `prompt_padding_embedding` (same), and the
    duration embedder, which upstream keeps as a separate pipeline component (`linear.*` and a `freqs` buffer, checked
    against the frequencies we compute). Model-level differences that are not in the weights: upstream uses eps 1e-6
    in the block norms (ours 1e-5, official; pass `norm_eps=1e-6` to reproduce upstream numbers) and a rotary width of
    `head_dim // 2` (official and ours `max(head_dim // 2, 32)`, equal for the released 64-channel heads).
    """
    if duration_embedder_state_dict is None:
        raise ValueError(
            "`duration_embedder_state_dict` is required: `StableAudio3Transformer` owns the duration embedder, which "
            "upstream keeps in the pipeline's `duration_embedder` (keys `linear.weight`, `linear.bias`, `freqs`)."
        )
    width = state_dict["proj_in.weight"].shape[0] if "proj_in.weight" in state_dict else None
    converted, unknown = {}, []
    for key, tensor in state_dict.items():
        if key in _UPSTREAM_TOP_LEVEL:
            converted[_UPSTREAM_TOP_LEVEL[key]] = tensor
            continue
        match = _UPSTREAM_BLOCK_RE.match(key)
        if match and match.group(2) in _UPSTREAM_BLOCK:
            if match.group(2) == "self_attn.to_qkv.weight" and width is not None and tensor.shape[0] == 5 * width:
                tensor = _reorder_upstream_differential_qkv(tensor)
            converted[f"transformer_blocks.{match.group(1)}.{_UPSTREAM_BLOCK[match.group(2)]}"] = tensor
            continue
        unknown.append(key)
    for key, tensor in duration_embedder_state_dict.items():
        if key in _UPSTREAM_DURATION:
            converted[_UPSTREAM_DURATION[key]] = tensor
        elif key == "freqs":
            _check_upstream_duration_freqs(tensor)
        else:
            unknown.append(f"duration_embedder.{key}")
    if unknown:
        raise ValueError(f"Unexpected keys in the upstream Stable Audio 3 state dict: {_fmt(unknown)}.")
    return converted


def _check_upstream_duration_freqs(freqs: torch.Tensor) -> None:
    if freqs.is_meta:
        return
    ramp = torch.linspace(0, 1, freqs.shape[0], dtype=torch.float32)
    expected = torch.exp(ramp * (math.log(10000.0) - math.log(0.5)) + math.log(0.5))
    if not torch.allclose(freqs.float().cpu(), expected, rtol=1e-5, atol=0):
        raise ValueError(
            "Upstream duration embedder key `freqs` does not hold the exponential frequencies 0.5..10000 that "
            "`StableAudio3Transformer` computes; this embedder cannot be converted."
        )


def transformer_config_from_upstream(config: dict, duration_embedder_config: Optional[dict] = None) -> dict:
    """Upstream `StableAudio3DiTModel` config and `StableAudio3DurationEmbedder` config -> `StableAudio3Transformer`
    kwargs (with upstream's block-norm eps 1e-6, see `convert_upstream_transformer_state_dict`)."""
    duration_embedder_config = duration_embedder_config or {}
    for key, value in (("fourier_dim", 256), ("min_freq", 0.5), ("max_freq", 10000.0)):
        if key in duration_embedder_config and float(duration_embedder_config[key]) != value:
            raise ValueError(f"Duration embedder `{key}` must be {value}, got {duration_embedder_config[key]}.")
    if int(duration_embedder_config.get("output_dim", config["cond_token_dim"])) != int(config["cond_token_dim"]):
        raise ValueError(
            f"Duration embedder `output_dim` ({duration_embedder_config['output_dim']}) must equal the transformer's "
            f"`cond_token_dim` ({config['cond_token_dim']})."
        )
    if int(config.get("patch_size", 1)) != 1:
        raise ValueError(f"`patch_size` must be 1 (as in the released checkpoints), got {config.get('patch_size')}.")
    width, heads = int(config["embed_dim"]), int(config["num_heads"])
    if int(config["cond_token_dim"]) != int(config["global_cond_dim"]):
        raise ValueError(
            f"`cond_token_dim` ({config['cond_token_dim']}) must equal `global_cond_dim` ({config['global_cond_dim']})."
        )
    if int(config["local_add_cond_dim"]) != int(config["io_channels"]) + 1:
        raise ValueError(
            f"`local_add_cond_dim` must be io_channels + 1 = {int(config['io_channels']) + 1}, got "
            f"{config['local_add_cond_dim']}."
        )
    if (width // heads) // 2 < 32:
        raise ValueError(
            f"Upstream rotates `head_dim // 2` = {(width // heads) // 2} channels, the official model "
            f"max(head_dim // 2, 32) = 32; conversion is only exact for heads of at least 64 channels."
        )
    return {
        "in_channels": int(config["io_channels"]),
        "num_layers": int(config["depth"]),
        "num_attention_heads": heads,
        "attention_head_dim": width // heads,
        "cross_attention_dim": int(config["cond_token_dim"]),
        "mlp_ratio": float(config["ff_mult"]),
        "num_memory_tokens": int(config["num_memory_tokens"]),
        "use_differential_attention": bool(config["use_differential_attention"]),
        "timestep_features_dim": int(config.get("timestep_features_dim", 256)),
        "min_duration": float(duration_embedder_config.get("min_val", 0.0)),
        "max_duration": float(duration_embedder_config.get("max_val", 384.0)),
        "norm_eps": 1e-6,
    }
