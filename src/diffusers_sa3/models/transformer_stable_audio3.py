# Copyright 2025 Stability AI and The HuggingFace Team. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The Stable Audio 3 diffusion transformer (DiT), numerically equivalent to the official `DiffusionTransformer`."""

import contextlib
import math
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin, AttentionModuleMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput, logging

from ..conversion.convert_transformer import convert_official_transformer_state_dict, transformer_config_from_official
from ..conversion.official import (
    check_state_dict_matches,
    read_official_config,
    read_safetensors,
    resolve_official_paths,
)


try:  # optional: exact variable-length attention on CUDA, as the official models were trained with
    from flash_attn import flash_attn_varlen_func
except ImportError:
    flash_attn_varlen_func = None


logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

PADDING_SEMANTICS = ("varlen", "value_zeroing")
PROMPT_PADDING_MODES = ("learned", "zeros")


@dataclass
class StableAudio3TransformerOutput(BaseOutput):
    """
    Output of [`StableAudio3Transformer`].

    Args:
        sample (`torch.Tensor` of shape `(batch, latent_dim, frames)`):
            The predicted velocity `noise - clean_latents` (rectified flow).
    """

    sample: torch.Tensor


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def _rotate_half(hidden_states: torch.Tensor) -> torch.Tensor:
    first, second = hidden_states.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _apply_rotary_emb(hidden_states: torch.Tensor, rotary_emb: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Partial RoPE (GPT-J style) on `(batch, seq, heads, head_dim)`: rotates the first `rotary_dim` channels in fp32
    with the half-split layout and passes the others through (official `apply_rotary_pos_emb`)."""
    cos, sin = rotary_emb  # (seq, rotary_dim), fp32
    rotary_dim = cos.shape[-1]
    input_dtype = hidden_states.dtype
    rotated = hidden_states[..., :rotary_dim].float()
    passed = hidden_states[..., rotary_dim:]
    cos, sin = cos[:, None, :], sin[:, None, :]
    rotated = (rotated * cos) + (_rotate_half(rotated) * sin)
    return torch.cat((rotated.to(input_dtype), passed), dim=-1)


def _is_broadcast_condition(local_cond: torch.Tensor) -> bool:
    """True for a `(batch, frames, channels)` condition expanded from one row (`expand` keeps a size-1 batch's stride,
    so a single sample is recognised by its shape)."""
    return local_cond.stride(1) == 0 and (local_cond.shape[0] == 1 or local_cond.stride(0) == 0)


# Packed variable-length groups run on a multiple of this many frames (see `StableAudio3Transformer.forward`).
_PACK_MULTIPLE = 8


def _flash_varlen_self_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Packs the valid tokens of `(batch, seq, heads, head_dim)` inputs, runs `flash_attn_varlen_func` and scatters
    the result back (padded queries get 0), like the official flash-attn path."""
    batch_size, seq_len, num_heads, head_dim = query.shape
    indices = torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()
    seqlens = attention_mask.sum(dim=-1, dtype=torch.int32)
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    max_seqlen = int(seqlens.max())
    query, key, value = (t.reshape(batch_size * seq_len, num_heads, head_dim)[indices] for t in (query, key, value))
    packed = flash_attn_varlen_func(query, key, value, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)
    out = packed.new_zeros(batch_size * seq_len, num_heads, head_dim)
    out[indices] = packed
    return out.reshape(batch_size, seq_len, num_heads, head_dim)


# ----------------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------------


class StableAudio3AttnProcessor:
    """Self- and cross-attention of the SA3 DiT: qk RMS norm, partial RoPE (self-attention only), optional
    differential attention `Attn(q, k, v) - Attn(q_diff, k_diff, v)` with no lambda (official `transformer.py:790`).

    Padding (self-attention only):
      - `attention_mask` `(batch, seq)`, True = valid: true masking. Padded keys get no softmax weight; on CUDA with
        `flash-attn` installed and fp16/bf16 inputs, `flash_attn_varlen_func` packs the valid tokens.
      - `value_mask` `(batch, seq)`: the official CPU semantics, `v *= mask` (padded keys keep their softmax weight).
    """

    _attention_backend = None
    _parallel_config = None

    def _attend(self, query, key, value, attention_mask):
        if attention_mask is None:
            return dispatch_attention_fn(
                query, key, value, backend=self._attention_backend, parallel_config=self._parallel_config
            )
        if (
            flash_attn_varlen_func is not None
            and self._attention_backend is None
            and query.is_cuda
            and query.dtype in (torch.float16, torch.bfloat16)
        ):
            return _flash_varlen_self_attention(query, key, value, attention_mask)
        return dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask[:, None, None, :],
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )

    def __call__(
        self,
        attn: "StableAudio3Attention",
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        rotary_emb: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        attention_mask: Optional[torch.Tensor] = None,
        value_mask: Optional[torch.Tensor] = None,
        encoder_key_value: Optional[Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]] = None,
    ) -> torch.Tensor:
        query_diff = key_diff = None
        if encoder_hidden_states is None and encoder_key_value is None:
            if attn.differential:
                query, key, value, query_diff, key_diff = attn.to_qkv(hidden_states).chunk(5, dim=-1)
            else:
                query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
            query, key, value = (t.unflatten(-1, (attn.heads, -1)) for t in (query, key, value))
            query, key = attn.norm_q(query), attn.norm_k(key)
        else:
            # Cross-attention: the context keys/values may come precomputed (they do not change across steps).
            if encoder_key_value is None:
                encoder_key_value = attn.project_context(encoder_hidden_states)
            key, value, key_diff = encoder_key_value
            if attn.differential:
                query, query_diff = attn.to_q(hidden_states).chunk(2, dim=-1)
            else:
                query = attn.to_q(hidden_states)
            query = attn.norm_q(query.unflatten(-1, (attn.heads, -1)))
        if rotary_emb is not None:
            query, key = _apply_rotary_emb(query, rotary_emb), _apply_rotary_emb(key, rotary_emb)
        if value_mask is not None:
            value = value * value_mask[:, :, None, None].to(value.dtype)

        hidden_states = self._attend(query, key, value, attention_mask)
        if attn.differential:
            query_diff = attn.norm_q(query_diff.unflatten(-1, (attn.heads, -1)))
            # Self-attention `key_diff` is still flat; the cross-attention one comes normed from `project_context`.
            if key_diff.ndim == 3:
                key_diff = attn.norm_k(key_diff.unflatten(-1, (attn.heads, -1)))
            if rotary_emb is not None:
                query_diff = _apply_rotary_emb(query_diff, rotary_emb)
                key_diff = _apply_rotary_emb(key_diff, rotary_emb)
            hidden_states = hidden_states - self._attend(query_diff, key_diff, value, attention_mask)

        hidden_states = hidden_states.flatten(2, 3)
        return attn.to_out(hidden_states)


class StableAudio3Attention(nn.Module, AttentionModuleMixin):
    """Attention with fused projections in the official layouts.

    Self-attention: `to_qkv` gives `[q | k | v]`, or `[q | k | v | q_diff | k_diff]` when differential. Cross-attention:
    `to_q` gives `[q]` or `[q | q_diff]`, `to_kv` gives `[k | v]` or `[k | k_diff | v]`.
    """

    _default_processor_cls = StableAudio3AttnProcessor
    _available_processors = [StableAudio3AttnProcessor]
    _supports_qkv_fusion = False

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: Optional[int] = None,
        differential: bool = False,
        qk_norm_eps: float = 1e-6,
        processor=None,
    ):
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.differential = differential
        self.is_cross_attention = cross_attention_dim is not None
        num_pairs = 2 if differential else 1
        if self.is_cross_attention:
            self.to_q = nn.Linear(query_dim, inner_dim * num_pairs, bias=False)
            self.to_kv = nn.Linear(cross_attention_dim, inner_dim * (num_pairs + 1), bias=False)
        else:
            self.to_qkv = nn.Linear(query_dim, inner_dim * (2 * num_pairs + 1), bias=False)
        self.norm_q = StableAudio3RMSNorm(dim_head, eps=qk_norm_eps, force_fp32=False)
        self.norm_k = StableAudio3RMSNorm(dim_head, eps=qk_norm_eps, force_fp32=False)
        self.to_out = nn.Linear(inner_dim, query_dim, bias=False)
        nn.init.zeros_(self.to_out.weight)
        self.set_processor(processor if processor is not None else self._default_processor_cls())

    def project_context(
        self, encoder_hidden_states: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Cross-attention keys and values of a context, `(key, value, key_diff)` as `(batch, tokens, heads,
        head_dim)`, keys already RMS-normed (`key_diff` is `None` without differential attention)."""
        key_diff = None
        if self.differential:
            key, key_diff, value = self.to_kv(encoder_hidden_states).chunk(3, dim=-1)
            key_diff = self.norm_k(key_diff.unflatten(-1, (self.heads, -1)))
        else:
            key, value = self.to_kv(encoder_hidden_states).chunk(2, dim=-1)
        key = self.norm_k(key.unflatten(-1, (self.heads, -1)))
        return key, value.unflatten(-1, (self.heads, -1)), key_diff

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        rotary_emb: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        attention_mask: Optional[torch.Tensor] = None,
        value_mask: Optional[torch.Tensor] = None,
        encoder_key_value: Optional[Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]] = None,
    ) -> torch.Tensor:
        kwargs = {} if encoder_key_value is None else {"encoder_key_value": encoder_key_value}
        return self.processor(
            self,
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            rotary_emb=rotary_emb,
            attention_mask=attention_mask,
            value_mask=value_mask,
            **kwargs,
        )


# ----------------------------------------------------------------------------------------------------------------------
# Block
# ----------------------------------------------------------------------------------------------------------------------


class StableAudio3RMSNorm(nn.Module):
    """RMS norm with a learned gain; `force_fp32` computes it in float32 (official `RMSNorm(force_fp32=True)`)."""

    def __init__(self, dim: int, eps: float, force_fp32: bool):
        super().__init__()
        self.eps = eps
        self.force_fp32 = force_fp32
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.force_fp32:
            return F.rms_norm(hidden_states, hidden_states.shape[-1:], weight=self.weight, eps=self.eps)
        output = F.rms_norm(hidden_states.float(), hidden_states.shape[-1:], weight=self.weight.float(), eps=self.eps)
        return output.to(hidden_states.dtype)


class StableAudio3MLPEmbedder(nn.Module):
    """`Linear -> SiLU -> Linear`, the shape of every conditioning projection of the DiT."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int, bias: bool):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(hidden_features, out_features, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(hidden_states)))


class StableAudio3FeedForward(nn.Module):
    """SwiGLU: `proj_out(x * silu(gate))` with `x, gate = proj_in(h).chunk(2)`."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.proj_in = nn.Linear(dim, inner_dim * 2, bias=True)
        self.act = nn.SiLU()
        self.proj_out = nn.Linear(inner_dim, dim, bias=True)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states, gate = self.proj_in(hidden_states).chunk(2, dim=-1)
        return self.proj_out(hidden_states * self.act(gate))


class StableAudio3Block(nn.Module):
    """One DiT block (official `TransformerBlock`, adaLN path):

    ```
    scale1, shift1, gate1, scale2, shift2, gate2 = (scale_shift_table + adaln_emb).chunk(6)
    h = h + sigmoid(1 - gate1) * SelfAttn(norm1(h) * (1 + scale1) + shift1)
    h = h + CrossAttn(norm2(h), context)                       # no modulation, no gate, no mask
    h = h + left_pad(to_local_embed([inpaint_mask | inpaint_latents]))   # memory tokens get 0
    h = h + sigmoid(1 - gate2) * FF(norm3(h) * (1 + scale2) + shift2)
    ```
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        ff_inner_dim: int,
        local_cond_dim: int,
        differential: bool,
        norm_eps: float,
        qk_norm_eps: float,
    ):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(6 * dim) / dim**0.5)
        self.norm1 = StableAudio3RMSNorm(dim, eps=norm_eps, force_fp32=True)
        self.attn1 = StableAudio3Attention(
            dim, num_attention_heads, attention_head_dim, differential=differential, qk_norm_eps=qk_norm_eps
        )
        self.norm2 = StableAudio3RMSNorm(dim, eps=norm_eps, force_fp32=True)
        self.attn2 = StableAudio3Attention(
            dim,
            num_attention_heads,
            attention_head_dim,
            cross_attention_dim=dim,
            differential=differential,
            qk_norm_eps=qk_norm_eps,
        )
        self.to_local_embed = StableAudio3MLPEmbedder(local_cond_dim, dim, dim, bias=True)
        nn.init.zeros_(self.to_local_embed.linear_2.weight)
        nn.init.zeros_(self.to_local_embed.linear_2.bias)
        self.norm3 = StableAudio3RMSNorm(dim, eps=norm_eps, force_fp32=True)
        self.ff = StableAudio3FeedForward(dim, ff_inner_dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        adaln_emb: torch.Tensor,
        local_cond: torch.Tensor,
        rotary_emb: Tuple[torch.Tensor, torch.Tensor],
        attention_mask: Optional[torch.Tensor] = None,
        value_mask: Optional[torch.Tensor] = None,
        encoder_key_value: Optional[Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]] = None,
    ) -> torch.Tensor:
        # A bf16 / fp16 block gets a float32 residual stream (see `StableAudio3Transformer._run_blocks`): the
        # modulation and the residual sums stay float32 and only the branches' inputs are cast to the weights' dtype.
        # For a float32 model every cast below is a no-op.
        compute_dtype = self.scale_shift_table.dtype
        modulation = (self.scale_shift_table.to(hidden_states.dtype) + adaln_emb.to(hidden_states.dtype)).unsqueeze(1)
        scale_msa, shift_msa, gate_msa, scale_mlp, shift_mlp, gate_mlp = modulation.chunk(6, dim=-1)

        norm_hidden_states = (self.norm1(hidden_states) * (1 + scale_msa) + shift_msa).to(compute_dtype)
        attn_output = self.attn1(
            norm_hidden_states, rotary_emb=rotary_emb, attention_mask=attention_mask, value_mask=value_mask
        )
        hidden_states = attn_output * torch.sigmoid(1 - gate_msa) + hidden_states

        attn_output = self.attn2(
            self.norm2(hidden_states).to(compute_dtype),
            encoder_hidden_states=encoder_hidden_states,
            encoder_key_value=encoder_key_value,
        )
        hidden_states = hidden_states + attn_output

        if _is_broadcast_condition(local_cond):
            # A broadcast condition (text-to-audio: all zeros) has one distinct row: embed it once.
            local_emb = self.to_local_embed(local_cond[:1, :1]).expand(-1, local_cond.shape[1], -1)
        else:
            local_emb = self.to_local_embed(local_cond)
        hidden_states = hidden_states + F.pad(local_emb, (0, 0, hidden_states.shape[1] - local_emb.shape[1], 0))

        norm_hidden_states = (self.norm3(hidden_states) * (1 + scale_mlp) + shift_mlp).to(compute_dtype)
        ff_output = self.ff(norm_hidden_states)
        hidden_states = ff_output * torch.sigmoid(1 - gate_mlp) + hidden_states
        return hidden_states


# ----------------------------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------------------------


def _feature_input(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """
    The input of the timestep / duration Fourier features for a model in `dtype`. The official code casts it to the
    model dtype first (fp16 on CUDA), which is kept for fp16. A bf16 model keeps the float32 value: bf16's 8-bit
    mantissa would shift the 10 kHz features by whole turns (t = 0.99 is off by up to 2e-3), so the features would be
    noise; float32 and float64 models are unaffected.
    """
    return values.to(dtype) if dtype == torch.float16 else values


class StableAudio3ExpoFourierFeatures(nn.Module):
    """`[cos(2 pi x f), sin(2 pi x f)]` with `dim // 2` frequencies log-spaced on `[min_freq, max_freq]`, computed in
    fp32 and returned in the input dtype (official `ExpoFourierFeatures`, `blocks.py:50-82`)."""

    def __init__(self, dim: int, min_freq: float = 0.5, max_freq: float = 10000.0):
        super().__init__()
        self.dim = dim
        self.min_freq = min_freq
        self.max_freq = max_freq

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0, 1, self.dim // 2, device=values.device, dtype=torch.float32)
        log_min, log_max = math.log(self.min_freq), math.log(self.max_freq)
        freqs = torch.exp(ramp * (log_max - log_min) + log_min)
        args = values.float()[:, None] * freqs * 2 * math.pi
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(values.dtype)


class StableAudio3RotaryEmbedding(nn.Module):
    """RoPE frequencies for positions `0..seq_len-1`; `inv_freq` is a persistent buffer (official
    `transformer.rotary_pos_emb.inv_freq` is in the checkpoints)."""

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=True)

    def forward(self, seq_len: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq.float())
        freqs = torch.cat((freqs, freqs), dim=-1)
        return freqs.cos(), freqs.sin()


# ----------------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------------


class StableAudio3Transformer(ModelMixin, ConfigMixin, AttentionMixin, PeftAdapterMixin):
    r"""
    The Stable Audio 3 diffusion transformer: predicts the rectified-flow velocity of audio latents, conditioned on the
    timestep, T5Gemma text tokens, the target duration and (for inpainting) a masked reference.

    It owns every conditioning parameter of the official checkpoint: the learned prompt padding embedding and the
    `seconds_total` number embedder (see [`~StableAudio3Transformer.encode_conditioning`]). The defaults are those of
    `stable-audio-3-small-music`; `stable-audio-3-medium` uses `num_layers=24, num_attention_heads=24,
    use_differential_attention=True`.

    Parameters:
        in_channels (`int`, defaults to 256): Latent channels (input and output).
        num_layers (`int`, defaults to 20): Number of [`StableAudio3Block`]s.
        num_attention_heads (`int`, defaults to 16): Attention heads; the width is `heads * attention_head_dim`.
        attention_head_dim (`int`, defaults to 64): Channels per head.
        cross_attention_dim (`int`, defaults to 768): Width of the text tokens, the duration token and the global
            condition (official `cond_dim`).
        mlp_ratio (`float`, defaults to 4.0): SwiGLU inner width = `int(width * mlp_ratio)`.
        num_memory_tokens (`int`, defaults to 64): Learned tokens prepended to the sequence (RoPE positions 0..63).
        use_differential_attention (`bool`, defaults to `False`): Differential self- and cross-attention.
        timestep_features_dim (`int`, defaults to 256): Exponential Fourier features of the timestep.
        duration_features_dim (`int`, defaults to 256): Exponential Fourier features of the duration.
        min_duration (`float`, defaults to 0.0) and max_duration (`float`, defaults to 384.0): the duration (seconds)
            is clamped to this range and mapped to [0, 1].
        norm_eps (`float`, defaults to 1e-5): eps of the block RMS norms (computed in fp32).
        qk_norm_eps (`float`, defaults to 1e-6): eps of the query/key RMS norms.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["StableAudio3Block"]
    _repeated_blocks = ["StableAudio3Block"]
    _keep_in_fp32_modules = ["time_proj", "duration_proj", "rotary_pos_emb"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 256,
        num_layers: int = 20,
        num_attention_heads: int = 16,
        attention_head_dim: int = 64,
        cross_attention_dim: int = 768,
        mlp_ratio: float = 4.0,
        num_memory_tokens: int = 64,
        use_differential_attention: bool = False,
        timestep_features_dim: int = 256,
        duration_features_dim: int = 256,
        min_duration: float = 0.0,
        max_duration: float = 384.0,
        norm_eps: float = 1e-5,
        qk_norm_eps: float = 1e-6,
    ):
        super().__init__()
        if max_duration <= min_duration:
            raise ValueError(
                f"`max_duration` must be larger than `min_duration`, got {max_duration} and {min_duration}."
            )
        inner_dim = num_attention_heads * attention_head_dim

        # Conditioning that the official checkpoint keeps in its conditioner (`conditioner.conditioners.*`).
        self.prompt_padding_embedding = nn.Parameter(torch.randn(cross_attention_dim) * 0.02)
        self.duration_proj = StableAudio3ExpoFourierFeatures(duration_features_dim)
        self.duration_embedder = nn.Linear(duration_features_dim, cross_attention_dim)

        self.time_proj = StableAudio3ExpoFourierFeatures(timestep_features_dim)
        self.timestep_embedder = StableAudio3MLPEmbedder(timestep_features_dim, inner_dim, inner_dim, bias=True)
        self.context_embedder = StableAudio3MLPEmbedder(cross_attention_dim, inner_dim, inner_dim, bias=False)
        self.global_embedder = StableAudio3MLPEmbedder(cross_attention_dim, inner_dim, inner_dim, bias=False)
        self.adaln_embedder = StableAudio3MLPEmbedder(inner_dim, inner_dim, 6 * inner_dim, bias=True)

        self.preprocess_conv = nn.Conv1d(in_channels, in_channels, 1, bias=False)
        self.proj_in = nn.Linear(in_channels, inner_dim, bias=False)
        self.memory_tokens = nn.Parameter(torch.randn(num_memory_tokens, inner_dim))
        # Official rotary width: max(head_dim // 2, 32), i.e. the first 32 of 64 channels.
        self.rotary_pos_emb = StableAudio3RotaryEmbedding(max(attention_head_dim // 2, 32))

        self.transformer_blocks = nn.ModuleList(
            [
                StableAudio3Block(
                    dim=inner_dim,
                    num_attention_heads=num_attention_heads,
                    attention_head_dim=attention_head_dim,
                    ff_inner_dim=int(inner_dim * mlp_ratio),
                    local_cond_dim=in_channels + 1,
                    differential=use_differential_attention,
                    norm_eps=norm_eps,
                    qk_norm_eps=qk_norm_eps,
                )
                for _ in range(num_layers)
            ]
        )

        self.proj_out = nn.Linear(inner_dim, in_channels, bias=False)
        self.postprocess_conv = nn.Conv1d(in_channels, in_channels, 1, bias=False)
        nn.init.zeros_(self.preprocess_conv.weight)
        nn.init.zeros_(self.postprocess_conv.weight)

        self.gradient_checkpointing = False
        self.padding_semantics = "varlen"
        self._context_cache_enabled = False
        self._context_cache = None

    # ------------------------------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_single_file(
        cls, pretrained_model_link_or_path: Union[str, os.PathLike], torch_dtype: Optional[torch.dtype] = None
    ) -> "StableAudio3Transformer":
        """
        Loads the DiT and its conditioning parameters from an official Stable Audio 3 checkpoint.

        Args:
            pretrained_model_link_or_path (`str` or `os.PathLike`):
                A local official checkpoint folder (`model_config.json` + `model.safetensors`) or its
                `model.safetensors` with `model_config.json` beside it.
            torch_dtype (`torch.dtype`, *optional*): Cast the loaded model to this dtype.

        Loading is strict: a missing, unexpected or mis-shaped key raises a `ValueError` naming the keys. The
        `pretransform.model.*` tensors (the autoencoder) are not read.
        """
        config_path, weights_path = resolve_official_paths(pretrained_model_link_or_path)
        config = transformer_config_from_official(read_official_config(config_path))
        state_dict = convert_official_transformer_state_dict(
            read_safetensors(weights_path), ignore_prefixes=("pretransform.",)
        )
        with torch.device("meta"):
            model = cls(**config)
        check_state_dict_matches(model, state_dict, source=f"checkpoint {weights_path!r}")
        model.load_state_dict(state_dict, strict=True, assign=True)
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        return model.eval()

    # ------------------------------------------------------------------------------------------------------------------
    # Padding semantics
    # ------------------------------------------------------------------------------------------------------------------

    def set_padding_semantics(self, semantics: str) -> None:
        """
        Chooses how `attention_mask` acts in self-attention.

        Args:
            semantics (`str`):
                `"varlen"` (default): true variable-length attention, as the official flash-attn path the models were
                trained with. Padded frames neither attend nor are attended (memory tokens always are), and their
                output is 0; a sample in a padded batch gives the same output as alone. `"value_zeroing"`: the
                official CPU / no-flash-attn fallback, `v *= mask`. Padded keys still take softmax mass and padded
                frames are computed normally. Use it only to reproduce official CPU outputs.
        """
        if semantics not in PADDING_SEMANTICS:
            raise ValueError(f"`semantics` must be one of {PADDING_SEMANTICS}, got {semantics!r}.")
        self.padding_semantics = semantics

    # ------------------------------------------------------------------------------------------------------------------
    # Conditioning
    # ------------------------------------------------------------------------------------------------------------------

    def embed_duration(self, duration: Union[float, Sequence[float], torch.Tensor]) -> torch.Tensor:
        """`seconds_total` number conditioner: `Linear(ExpoFourier((clamp(s, min, max) - min) / (max - min)))`,
        `(batch,)` seconds -> `(batch, cross_attention_dim)`."""
        weight = self.duration_embedder.weight
        if not torch.is_tensor(duration):
            duration = torch.tensor(duration, dtype=torch.float32)
        if duration.dtype == torch.bool or duration.is_complex():
            raise ValueError(f"`duration` must hold numbers of seconds, got dtype {duration.dtype}.")
        duration = duration.to(device=weight.device, dtype=torch.float32).reshape(-1)
        min_duration, max_duration = self.config.min_duration, self.config.max_duration
        normalized = (duration.clamp(min_duration, max_duration) - min_duration) / (max_duration - min_duration)
        return self.duration_embedder(self.duration_proj(_feature_input(normalized, weight.dtype)).to(weight.dtype))

    def encode_conditioning(
        self,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: Optional[torch.Tensor],
        duration: Union[float, Sequence[float], torch.Tensor],
        prompt_padding: str = "learned",
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Builds the official conditioner outputs from the text-encoder states and the durations.

        Args:
            encoder_hidden_states (`torch.Tensor` of shape `(batch, text_tokens, cross_attention_dim)`):
                T5Gemma `last_hidden_state`, before any padding substitution.
            encoder_attention_mask (`torch.Tensor` of shape `(batch, text_tokens)`, *optional*):
                1 = real token. `None` means every token is real.
            duration (`float`, list or `torch.Tensor` of shape `(batch,)`): `seconds_total` per sample.
            prompt_padding (`str`, defaults to `"learned"`):
                What replaces masked text positions: `"learned"` (the learned padding embedding, the conditioner's
                output) or `"zeros"` (the official negative-prompt branch of classifier-free guidance).

        Returns:
            `(context, global_condition)`: `context` `(batch, text_tokens + 1, cross_attention_dim)` is the prompt
            tokens followed by the duration embedding (official `cross_attn_cond`), `global_condition`
            `(batch, cross_attention_dim)` is the duration embedding (official `global_cond`).
        """
        if prompt_padding not in PROMPT_PADDING_MODES:
            raise ValueError(f"`prompt_padding` must be one of {PROMPT_PADDING_MODES}, got {prompt_padding!r}.")
        self._check_text_inputs(encoder_hidden_states, encoder_attention_mask)
        batch_size = encoder_hidden_states.shape[0]
        global_condition = self.embed_duration(duration)
        if global_condition.shape[0] == 1 and batch_size > 1:
            global_condition = global_condition.expand(batch_size, -1)
        if global_condition.shape[0] != batch_size:
            raise ValueError(
                f"`duration` must have one value per sample ({batch_size}), got {global_condition.shape[0]} values."
            )

        dtype = torch.promote_types(encoder_hidden_states.dtype, self.prompt_padding_embedding.dtype)
        prompt_embeds = encoder_hidden_states.to(dtype)
        if encoder_attention_mask is not None:
            keep = encoder_attention_mask.to(device=prompt_embeds.device, dtype=torch.bool)[:, :, None]
            if prompt_padding == "learned":
                padding = self.prompt_padding_embedding.to(dtype)[None, None, :]
            else:
                padding = prompt_embeds.new_zeros(())
            prompt_embeds = torch.where(keep, prompt_embeds, padding)
        context = torch.cat([prompt_embeds, global_condition[:, None, :].to(dtype)], dim=1)
        return context, global_condition

    # ------------------------------------------------------------------------------------------------------------------
    # Input checks
    # ------------------------------------------------------------------------------------------------------------------

    def _check_text_inputs(self, encoder_hidden_states, encoder_attention_mask):
        width = self.config.cross_attention_dim
        if not torch.is_tensor(encoder_hidden_states) or encoder_hidden_states.ndim != 3:
            raise ValueError(
                "`encoder_hidden_states` must be a (batch, text_tokens, "
                f"{width}) tensor, got {_describe(encoder_hidden_states)}."
            )
        if not encoder_hidden_states.is_floating_point() or encoder_hidden_states.shape[-1] != width:
            raise ValueError(
                f"`encoder_hidden_states` must be a floating-point (batch, text_tokens, {width}) tensor, got "
                f"{_describe(encoder_hidden_states)}. Pass the text encoder's `last_hidden_state`."
            )
        if encoder_attention_mask is not None and (
            not torch.is_tensor(encoder_attention_mask)
            or encoder_attention_mask.shape != encoder_hidden_states.shape[:2]
        ):
            raise ValueError(
                f"`encoder_attention_mask` must be a {tuple(encoder_hidden_states.shape[:2])} tensor (1 = real token), "
                f"got {_describe(encoder_attention_mask)}."
            )

    def _check_forward_inputs(
        self,
        hidden_states,
        timestep,
        encoder_hidden_states,
        duration,
        inpaint_mask,
        inpaint_latents,
        attention_mask,
        cross_attention_context,
        global_condition,
    ):
        channels, width = self.config.in_channels, self.config.cross_attention_dim
        if (
            not torch.is_tensor(hidden_states)
            or hidden_states.ndim != 3
            or not hidden_states.is_floating_point()
            or hidden_states.shape[1] != channels
        ):
            raise ValueError(
                f"`hidden_states` must be a floating-point (batch, {channels}, frames) tensor of latents, got "
                f"{_describe(hidden_states)}."
            )
        batch_size, _, num_frames = hidden_states.shape
        if torch.is_tensor(timestep):
            if timestep.dtype == torch.bool or timestep.is_complex() or timestep.numel() not in (1, batch_size):
                raise ValueError(
                    f"`timestep` must be a float or a ({batch_size},) tensor of flow times in [0, 1], got "
                    f"{_describe(timestep)}."
                )
        elif not isinstance(timestep, (int, float)):
            raise ValueError(f"`timestep` must be a float or a ({batch_size},) tensor, got {type(timestep).__name__}.")

        if cross_attention_context is not None or global_condition is not None:
            if cross_attention_context is None or global_condition is None:
                raise ValueError(
                    "`cross_attention_context` and `global_condition` must be passed together (both come from "
                    "`encode_conditioning`)."
                )
            if (
                not torch.is_tensor(cross_attention_context)
                or cross_attention_context.ndim != 3
                or not cross_attention_context.is_floating_point()
                or cross_attention_context.shape[0] != batch_size
                or cross_attention_context.shape[2] != width
            ):
                raise ValueError(
                    f"`cross_attention_context` must be a floating-point ({batch_size}, tokens, {width}) tensor, got "
                    f"{_describe(cross_attention_context)}."
                )
            if (
                not torch.is_tensor(global_condition)
                or not global_condition.is_floating_point()
                or tuple(global_condition.shape) != (batch_size, width)
            ):
                raise ValueError(
                    f"`global_condition` must be a floating-point ({batch_size}, {width}) tensor, got "
                    f"{_describe(global_condition)}."
                )
        else:
            if encoder_hidden_states is None or duration is None:
                raise ValueError(
                    "Pass `encoder_hidden_states` and `duration` (optionally `encoder_attention_mask`), or the "
                    "precomputed `cross_attention_context` and `global_condition`."
                )
            if torch.is_tensor(encoder_hidden_states) and encoder_hidden_states.shape[0] != batch_size:
                raise ValueError(
                    f"`encoder_hidden_states` must have batch size {batch_size} like `hidden_states`, got "
                    f"{_describe(encoder_hidden_states)}."
                )

        if (inpaint_mask is None) != (inpaint_latents is None):
            raise ValueError(
                "`inpaint_mask` and `inpaint_latents` must be passed together (or neither, for text-to-audio)."
            )
        if inpaint_mask is not None:
            if not torch.is_tensor(inpaint_mask) or tuple(inpaint_mask.shape) != (batch_size, 1, num_frames):
                raise ValueError(
                    f"`inpaint_mask` must be a ({batch_size}, 1, {num_frames}) tensor (1 = frame given by the "
                    f"reference), got {_describe(inpaint_mask)}."
                )
            if (
                not torch.is_tensor(inpaint_latents)
                or not inpaint_latents.is_floating_point()
                or tuple(inpaint_latents.shape) != (batch_size, channels, num_frames)
            ):
                raise ValueError(
                    f"`inpaint_latents` must be a floating-point ({batch_size}, {channels}, {num_frames}) tensor, got "
                    f"{_describe(inpaint_latents)}."
                )
        if attention_mask is not None and (
            not torch.is_tensor(attention_mask) or tuple(attention_mask.shape) != (batch_size, num_frames)
        ):
            raise ValueError(
                f"`attention_mask` must be a ({batch_size}, {num_frames}) tensor (1 = valid frame), got "
                f"{_describe(attention_mask)}."
            )

    # ------------------------------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: Union[torch.Tensor, float],
        encoder_hidden_states: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        duration: Optional[Union[torch.Tensor, float, List[float]]] = None,
        inpaint_mask: Optional[torch.Tensor] = None,
        inpaint_latents: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        return_dict: bool = True,
        cross_attention_context: Optional[torch.Tensor] = None,
        global_condition: Optional[torch.Tensor] = None,
    ) -> Union[StableAudio3TransformerOutput, Tuple[torch.Tensor]]:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(batch, latent_dim, frames)`): Noisy latents.
            timestep (`torch.Tensor` of shape `(batch,)` or `float`): Flow time in [0, 1], 1 = pure noise.
            encoder_hidden_states (`torch.Tensor` of shape `(batch, text_tokens, cross_attention_dim)`, *optional*):
                T5Gemma `last_hidden_state` before padding substitution.
            encoder_attention_mask (`torch.Tensor` of shape `(batch, text_tokens)`, *optional*): 1 = real token.
                Masked positions get the learned padding embedding; cross-attention itself is never masked.
            duration (`torch.Tensor` of shape `(batch,)`, *optional*): `seconds_total` per sample.
            inpaint_mask (`torch.Tensor` of shape `(batch, 1, frames)`, *optional*): 1 = frame given by the reference.
            inpaint_latents (`torch.Tensor` of shape `(batch, latent_dim, frames)`, *optional*): Reference latents,
                already multiplied by `inpaint_mask`. Without inpainting both are zeros, as in the official code.
            attention_mask (`torch.Tensor` of shape `(batch, frames)`, *optional*): 1 = valid frame (variable length);
                see [`~StableAudio3Transformer.set_padding_semantics`].
            return_dict (`bool`, defaults to `True`): Return a [`StableAudio3TransformerOutput`] or a tuple.
            cross_attention_context (`torch.Tensor` of shape `(batch, tokens, cross_attention_dim)`, *optional*):
                Precomputed context from [`~StableAudio3Transformer.encode_conditioning`] (or its all-zero
                unconditional branch); overrides `encoder_hidden_states`, `encoder_attention_mask` and `duration`.
            global_condition (`torch.Tensor` of shape `(batch, cross_attention_dim)`, *optional*):
                Precomputed global condition; goes with `cross_attention_context`.

        Returns:
            [`StableAudio3TransformerOutput`] or `tuple`: the velocity, `(batch, latent_dim, frames)`.
        """
        self._check_forward_inputs(
            hidden_states,
            timestep,
            encoder_hidden_states,
            duration,
            inpaint_mask,
            inpaint_latents,
            attention_mask,
            cross_attention_context,
            global_condition,
        )
        batch_size, _, num_frames = hidden_states.shape
        device, dtype = hidden_states.device, self.proj_in.weight.dtype

        # 1. Conditioning: context tokens, timestep + duration global embedding, adaLN modulation.
        if cross_attention_context is None:
            cross_attention_context, global_condition = self.encode_conditioning(
                encoder_hidden_states, encoder_attention_mask, duration
            )
        context_key_values = self._context_key_values(cross_attention_context, device, dtype)
        timestep = torch.as_tensor(timestep, device=device).float().reshape(-1).expand(batch_size)
        # The official DiT casts t to the model dtype before the Fourier features (`dit.py:238`): kept for fp16 (see
        # `_feature_input`).
        timestep_emb = self.timestep_embedder(self.time_proj(_feature_input(timestep, dtype)).to(dtype))
        global_emb = self.global_embedder(global_condition.to(device=device, dtype=dtype)) + timestep_emb
        adaln_emb = self.adaln_embedder(global_emb)

        # 2. Local (inpainting) conditioning `[mask | masked reference]`; zeros for text-to-audio, as official (a
        # broadcast zero tensor: every block embeds its one distinct row once; an all-zero conditioning is the same).
        if inpaint_mask is None or not (bool(inpaint_mask.any()) or bool(inpaint_latents.any())):
            local_cond = hidden_states.new_zeros((1, 1, self.config.in_channels + 1), dtype=dtype)
            local_cond = local_cond.expand(batch_size, num_frames, -1)
        else:
            local_cond = torch.cat([inpaint_mask.to(dtype), inpaint_latents.to(dtype)], dim=1).transpose(1, 2)

        # 3. Padding: an all-valid mask is dropped. With true variable-length semantics and no flash-attn, samples are
        # packed: each group of samples with the same number of leading valid frames runs on those frames alone, so
        # the cost follows the valid lengths (not batch x longest) and a sample gives what it gives alone.
        hidden_states = hidden_states.to(dtype)
        frame_mask = None
        if attention_mask is not None:
            frame_mask = attention_mask.to(device=device, dtype=torch.bool)
            if bool(frame_mask.all()):
                frame_mask = None
        if (
            frame_mask is not None
            and self.padding_semantics == "varlen"
            and not self._uses_flash_varlen(hidden_states)
        ):
            valid_lengths = frame_mask.sum(dim=1)
            positions = torch.arange(num_frames, device=device)
            if bool((frame_mask == (positions[None] < valid_lengths[:, None])).all()):
                output = hidden_states.new_zeros(hidden_states.shape)
                lengths = valid_lengths.tolist()
                for length in sorted(set(lengths)):
                    index = [i for i, value in enumerate(lengths) if value == length]
                    if length == 0:
                        continue
                    if len(index) == batch_size:
                        # One group (e.g. a single padded sample): plain slices, no copies.
                        rows = slice(None)
                        group_key_values = context_key_values
                    else:
                        rows = torch.tensor(index, device=device)
                        group_key_values = [
                            tuple(None if t is None else t[rows] for t in kv) for kv in context_key_values
                        ]
                    # The group runs on its valid frames rounded up to a multiple of 8 (within the padded length),
                    # the extra frames masked out as keys: odd GEMM shapes cost CPU bf16 up to a fifth more (30 s,
                    # 387 frames), and the 1x1 convs keep the extra frames from touching valid ones.
                    run_length = min(num_frames, -(-length // _PACK_MULTIPLE) * _PACK_MULTIPLE)
                    group_mask = None
                    if run_length > length:
                        group_mask = (positions[:run_length] < length).expand(len(index), -1)
                    if _is_broadcast_condition(local_cond):
                        # Keep a broadcast condition broadcast, so each block still embeds its one row once.
                        group_local_cond = local_cond[:1, :1].expand(len(index), run_length, -1)
                    else:
                        group_local_cond = local_cond[rows, :run_length]
                    output[rows, :, :length] = self._run_blocks(
                        hidden_states[rows, :, :run_length],
                        adaln_emb[rows],
                        group_local_cond,
                        group_key_values,
                        group_mask,
                    )[:, :, :length]
                if not return_dict:
                    return (output,)
                return StableAudio3TransformerOutput(sample=output)

        output = self._run_blocks(hidden_states, adaln_emb, local_cond, context_key_values, frame_mask)
        if frame_mask is not None and self.padding_semantics == "varlen":
            output = output.masked_fill(~frame_mask[:, None, :], 0.0)

        if not return_dict:
            return (output,)
        return StableAudio3TransformerOutput(sample=output)

    def _uses_flash_varlen(self, hidden_states: torch.Tensor) -> bool:
        processor = self.transformer_blocks[0].attn1.processor if len(self.transformer_blocks) else None
        return (
            flash_attn_varlen_func is not None
            and getattr(processor, "_attention_backend", None) is None
            and hidden_states.is_cuda
            and hidden_states.dtype in (torch.float16, torch.bfloat16)
        )

    def _run_blocks(
        self,
        hidden_states: torch.Tensor,
        adaln_emb: torch.Tensor,
        local_cond: torch.Tensor,
        context_key_values: List[Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]],
        frame_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Input projection, memory tokens, the blocks and the output projection (padded frames are not zeroed)."""
        batch_size = hidden_states.shape[0]
        num_memory_tokens = self.config.num_memory_tokens

        # Input projection and memory tokens (RoPE positions 0..num_memory_tokens-1).
        hidden_states = self.preprocess_conv(hidden_states) + hidden_states
        hidden_states = self.proj_in(hidden_states.transpose(1, 2))
        memory_tokens = self.memory_tokens.unsqueeze(0).expand(batch_size, -1, -1)
        # The residual stream is float32 at least: a bf16 model's blocks add their (bf16) branch outputs to float32
        # sums (full-size random small DiT, 64 frames: relative error 1.9e-2 with a bf16 stream, 1.2e-2 with this).
        hidden_states = torch.cat([memory_tokens, hidden_states], dim=1)
        hidden_states = hidden_states.to(torch.promote_types(hidden_states.dtype, torch.float32))
        rotary_emb = self.rotary_pos_emb(hidden_states.shape[1], hidden_states.device)

        # Padding: memory tokens are always valid.
        self_attention_mask = value_mask = None
        if frame_mask is not None:
            sequence_mask = F.pad(frame_mask, (num_memory_tokens, 0), value=True)
            if self.padding_semantics == "varlen":
                self_attention_mask = sequence_mask
            else:
                value_mask = sequence_mask

        for block, key_value in zip(self.transformer_blocks, context_key_values):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(
                    block,
                    hidden_states,
                    None,
                    adaln_emb,
                    local_cond,
                    rotary_emb,
                    self_attention_mask,
                    value_mask,
                    key_value,
                )
            else:
                hidden_states = block(
                    hidden_states,
                    encoder_hidden_states=None,
                    adaln_emb=adaln_emb,
                    local_cond=local_cond,
                    rotary_emb=rotary_emb,
                    attention_mask=self_attention_mask,
                    value_mask=value_mask,
                    encoder_key_value=key_value,
                )

        # Output: drop the memory tokens, project (no final norm), residual 1x1 conv.
        hidden_states = self.proj_out(hidden_states[:, num_memory_tokens:].to(self.proj_out.weight.dtype))
        hidden_states = hidden_states.transpose(1, 2)
        return self.postprocess_conv(hidden_states) + hidden_states

    # ------------------------------------------------------------------------------------------------------------------
    # Context cache
    # ------------------------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def cache_context(self):
        """
        Context manager that caches the cross-attention keys and values of the text context across calls: the
        sampling loop calls the model with the same `cross_attention_context` tensor at every step, and its keys and
        values (the context embedder plus every block's `to_kv`) never change. A cache entry is used only when the
        context is equal (`torch.equal` against a stored copy; a cheap check on a `(batch, tokens, width)` tensor) and
        the device, dtype and in-place versions of the weights involved are unchanged; it is only used without
        autograd and is dropped when the context manager exits. Outputs are identical to uncached.

        ```py
        with transformer.cache_context():
            for t in timesteps:
                velocity = transformer(latents, t, cross_attention_context=context, global_condition=g).sample
        ```
        """
        previous = self._context_cache_enabled
        self._context_cache_enabled = True
        try:
            yield
        finally:
            self._context_cache_enabled = previous
            if not previous:
                self._context_cache = None

    def _context_weights_version(self) -> Optional[Tuple[int, ...]]:
        params = list(self.context_embedder.parameters())
        params += [block.attn2.to_kv.weight for block in self.transformer_blocks]
        if any(p.is_inference() for p in params):
            return None  # weights created under `torch.inference_mode` track no versions: do not cache
        return tuple(p._version for p in params)

    def _context_key_values(
        self, cross_attention_context: torch.Tensor, device: torch.device, dtype: torch.dtype
    ) -> List[Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]:
        """Per block `(key, value, key_diff)` of the cross-attention context (cached inside `cache_context`)."""
        use_cache = getattr(self, "_context_cache_enabled", False) and not torch.is_grad_enabled()
        key = None
        if use_cache:
            key = (device, dtype, self._context_weights_version())
            use_cache = key[2] is not None
        if use_cache:
            cached = getattr(self, "_context_cache", None)
            if (
                cached is not None
                and cached[1] == key
                and cached[0].shape == cross_attention_context.shape
                and cached[0].dtype == cross_attention_context.dtype
                and torch.equal(cached[0], cross_attention_context.to(cached[0].device))
            ):
                return cached[2]
        encoder_hidden_states = self.context_embedder(cross_attention_context.to(device=device, dtype=dtype))
        key_values = [block.attn2.project_context(encoder_hidden_states) for block in self.transformer_blocks]
        if use_cache:
            self._context_cache = (cross_attention_context.clone(), key, key_values)
        return key_values


def _describe(value) -> str:
    if torch.is_tensor(value):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r:.80}"
