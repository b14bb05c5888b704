"""Builds the full-size small-music Stable Audio 3 architecture with identical random weights in our pipeline and in
upstream diffusers' `StableAudio3Pipeline`, for `bench_inference.py`.

Upstream is built first with a seeded random initialisation of every parameter (no zero-initialised layers, so the
outputs are not trivial), then converted to ours:

- DiT: `convert_upstream_transformer_state_dict` (exact; our block-norm eps is the official 1e-5, upstream's 1e-6).
- SAME-S: upstream runs SAME-S with sliding-window attention and a kernel-1 decoder mapping, the official model (ours)
  with chunked attention and a kernel-3 mapping, so the weights are mapped key by key with the renames of
  `convert_same`, and upstream's kernel-1 decoder mapping goes to the centre tap of ours (side taps 0). The two models
  do the same amount of projection/MLP work; they differ in the attention pattern, which is what is being compared.
- T5Gemma: one `T5GemmaEncoderModel` shared by both pipelines, at the google/t5gemma-b-b-ul2 shape (12 layers, 768,
  12 heads, GeGLU 2048, vocabulary 256000), random weights, bf16 as the released checkpoint; the fixture tokenizer.
"""

import copy
import math
import os
from typing import Dict, Optional

import torch


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER_PATH = os.path.join(REPO_ROOT, "tests", "fixtures", "sa3_official_tiny", "small", "t5gemma-b-b-ul2")

SMALL_DIT = {"embed_dim": 1024, "depth": 20, "num_heads": 16, "use_differential_attention": False}
MEDIUM_DIT = {"embed_dim": 1536, "depth": 24, "num_heads": 24, "use_differential_attention": True}
SAME_S = {"encoder_channels": 128, "encoder_transformer_depths": (6,), "decoder_sinusoidal_blocks": (0,)}
SAME_L = {"encoder_channels": 256, "encoder_transformer_depths": (12,), "decoder_sinusoidal_blocks": (8,)}


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded random values for every parameter: `N(0, 1/fan_in)` for matrices, `1 + 0.1 N` for gains, `0.02 N`
    otherwise (biases, embeddings, DyT alpha kept at its init)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.numel() == 0:
                continue
            leaf = name.rsplit(".", 1)[-1]
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if leaf in ("alpha", "running_std"):
                continue
            if leaf in ("gamma", "weight_g") or (leaf == "weight" and param.ndim == 1):
                value = (param.float() if leaf == "weight_g" else 1.0) + 0.1 * noise * (
                    param.float().abs().mean() if leaf == "weight_g" else 1.0
                )
            elif param.ndim >= 2 and "embedding" not in name and "memory_tokens" not in name:
                value = noise / math.sqrt(param[0].numel())
            else:
                value = 0.02 * noise
            param.copy_(value.to(param.dtype))
    return module


def all_tensors(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Every parameter and buffer (persistent or not) by name, each once, contiguous."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    return {name: tensor.detach().contiguous() for name, tensor in named}


def assign_tensors_(module: torch.nn.Module, tensors: Dict[str, torch.Tensor]) -> torch.nn.Module:
    """Puts `all_tensors` output into a module built on the meta device (parameters and buffers); strict."""
    for name, tensor in tensors.items():
        module_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(module_name)
        if leaf in owner._parameters:
            owner._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)
        elif leaf in owner._buffers:
            owner._buffers[leaf] = tensor
        else:
            raise ValueError(f"unexpected tensor {name!r}")
    if hasattr(module, "tie_weights"):
        module.tie_weights()
    leftover = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if leftover:
        raise ValueError(f"tensors missing: {leftover}")
    return module


def build_text_encoder(
    seed: int = 0, dtype: torch.dtype = torch.bfloat16, vocab_size: int = 256000, tensors: Optional[dict] = None
):
    """`(T5GemmaEncoderModel, tokenizer)`; with `tensors` (all parameters and buffers by name) the model is built on
    the meta device and takes them, which is much faster than a random initialisation."""
    from transformers import AutoTokenizer, T5GemmaConfig, T5GemmaEncoderModel
    from transformers.models.t5gemma.configuration_t5gemma import T5GemmaModuleConfig

    module = dict(  # noqa: C408
        vocab_size=vocab_size,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        head_dim=64,
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=64,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        sliding_window=4096,
        layer_types=["sliding_attention", "full_attention"] * 6,
        rms_norm_eps=1e-6,
        max_position_embeddings=8192,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    config = T5GemmaConfig(
        encoder=T5GemmaModuleConfig(**module),
        decoder=T5GemmaModuleConfig(**module, is_decoder=True),
        is_encoder_decoder=False,
        vocab_size=vocab_size,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    if tensors is None:
        torch.manual_seed(seed)
        encoder = T5GemmaEncoderModel(config).to(dtype).eval()
    else:
        with torch.device("meta"):
            encoder = T5GemmaEncoderModel(config)
        assign_tensors_(encoder, tensors).eval()
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_PATH)
    return encoder, tokenizer


def build_upstream_models(variant: str = "small", seed: int = 0):
    """Upstream `StableAudio3DiTModel`, `AutoencoderSAME` and `StableAudio3DurationEmbedder` with random weights."""
    from diffusers import AutoencoderSAME
    from diffusers.models.transformers.transformer_stable_audio3 import StableAudio3DiTModel
    from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import StableAudio3DurationEmbedder

    dit_kwargs = SMALL_DIT if variant == "small" else MEDIUM_DIT
    transformer = randomize_(StableAudio3DiTModel(**dit_kwargs), seed + 1).eval()
    vae = randomize_(AutoencoderSAME(**(SAME_S if variant == "small" else SAME_L)), seed + 2).eval()
    duration_embedder = randomize_(StableAudio3DurationEmbedder(), seed + 3).eval()
    return transformer, vae, duration_embedder


def convert_upstream_vae_to_ours(upstream_vae, variant: str = "small"):
    """Our `SAMEAutoencoderModel` with upstream's weights (see the module docstring for SAME-S)."""
    from diffusers_sa3 import SAMEAutoencoderModel
    from diffusers_sa3.conversion.convert_same import (
        _UPSTREAM_BLOCK_PATTERN,
        _UPSTREAM_BLOCK_RENAMES,
        _UPSTREAM_TOP_RENAMES,
    )

    if variant == "small":
        config = dict(  # noqa: C408
            num_attention_heads=12,
            num_encoder_layers=6,
            num_decoder_layers=6,
            sliding_window=None,
            attention_chunk_size=32,
            chunk_midpoint_shift=True,
            decoder_sinusoidal_blocks=0,
            decoder_kernel_size=3,
        )
    else:
        config = {}
    ours = SAMEAutoencoderModel(**config).eval()
    converted: Dict[str, torch.Tensor] = {}
    for key, value in upstream_vae.state_dict().items():
        if key in _UPSTREAM_TOP_RENAMES:
            converted[_UPSTREAM_TOP_RENAMES[key]] = value
            continue
        side, index, rest = _UPSTREAM_BLOCK_PATTERN.match(key).groups()
        if rest == "attn.to_qkv.weight":
            q, q_diff, k, k_diff, v = value.chunk(5, dim=0)
            value = torch.cat([q, k, v, q_diff, k_diff], dim=0)
        converted[f"{side}.resampler.transformer_blocks.{index}.{_UPSTREAM_BLOCK_RENAMES[rest]}"] = value
    converted["bottleneck.running_std"] = converted["bottleneck.running_std"].reshape(1)
    target = ours.state_dict()
    mapping = converted["decoder.conv_out.weight_v"]
    if target["decoder.conv_out.weight_v"].shape[-1] != mapping.shape[-1]:
        centre = torch.zeros_like(target["decoder.conv_out.weight_v"])
        centre[..., centre.shape[-1] // 2] = mapping[..., 0]
        converted["decoder.conv_out.weight_v"] = centre
    for key in target:
        if key not in converted:  # RoPE inv_freq buffers and the empty noise_scale are not stored upstream
            converted[key] = target[key]
    ours.load_state_dict(converted, strict=True)
    return ours


def convert_upstream_transformer_to_ours(upstream_transformer, duration_embedder):
    from diffusers_sa3 import StableAudio3Transformer
    from diffusers_sa3.conversion.convert_transformer import (
        convert_upstream_transformer_state_dict,
        transformer_config_from_upstream,
    )

    config = transformer_config_from_upstream(dict(upstream_transformer.config), dict(duration_embedder.config))
    config["norm_eps"] = 1e-5  # the official value (upstream uses 1e-6); no effect on speed
    ours = StableAudio3Transformer(**config).eval()
    state_dict = convert_upstream_transformer_state_dict(
        upstream_transformer.state_dict(), duration_embedder.state_dict()
    )
    state_dict["rotary_pos_emb.inv_freq"] = ours.rotary_pos_emb.inv_freq
    ours.load_state_dict(state_dict, strict=True)
    return ours


def build_pipelines(variant: str = "small", seed: int = 0, build_upstream: bool = True):
    """Returns `(ours, upstream_or_None)`: our `StableAudio3Pipeline` (post-trained small-music: ping-pong sampler,
    guidance off) and upstream's `StableAudio3Pipeline` (its ping-pong-style stochastic Euler) sharing weights and the
    text encoder."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers import StableAudio3Pipeline as UpstreamPipeline

    from diffusers_sa3 import PingPongAdversarialScheduler, StableAudio3Pipeline

    text_encoder, tokenizer = build_text_encoder(seed)
    up_transformer, up_vae, duration_embedder = build_upstream_models(variant, seed)
    transformer = convert_upstream_transformer_to_ours(up_transformer, duration_embedder)
    vae = convert_upstream_vae_to_ours(up_vae, variant)
    ours = StableAudio3Pipeline(
        vae=vae,
        transformer=transformer,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=PingPongAdversarialScheduler(),
    )
    ours.set_progress_bar_config(disable=True)
    upstream: Optional[object] = None
    if build_upstream:
        # Upstream runs the whole pipeline in the text encoder's dtype (its prompt embeddings set the latents' dtype),
        # so with fp32 models it needs an fp32 copy of the (same) bf16 T5Gemma weights.
        upstream_text_encoder = copy.deepcopy(text_encoder).to(torch.float32)
        upstream = UpstreamPipeline(
            vae=up_vae,
            text_encoder=upstream_text_encoder,
            tokenizer=tokenizer,
            duration_embedder=duration_embedder,
            transformer=up_transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(stochastic_sampling=True),
        )
        upstream.set_progress_bar_config(disable=True)
    else:
        del up_transformer, up_vae
    return ours, upstream
