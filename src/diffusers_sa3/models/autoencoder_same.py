"""SAME autoencoder of Stable Audio 3 (SAME-S and SAME-L), numerically faithful to the official implementation.

Official source of truth: `Stability-AI/stable-audio-3` (`stable_audio_3/models/{autoencoders,transformer,bottleneck,
pretransforms}.py`). The differences from upstream diffusers' `AutoencoderSAME` are deliberate: SAME-S uses chunked
attention with a mid-point shift and a kernel-3 decoder mapping (upstream runs a sliding window and a kernel-1 mapping
for both variants), the official length rules and the official decode-time noise are reproduced, and attention is
always local with a cost linear in the duration.

Shapes: audio `(batch, channels, samples)`, latents `(batch, latent_channels, frames)`; one latent frame covers
`patch_size * resampling_stride` = 4096 samples.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput, logging
from diffusers.utils.accelerate_utils import apply_forward_hook
from diffusers.utils.torch_utils import randn_tensor
from torch import nn


logger = logging.get_logger(__name__)


@dataclass
class SAMEAutoencoderOutput(BaseOutput):
    """
    Output of [`SAMEAutoencoderModel.encode`].

    Args:
        latents (`torch.Tensor` of shape `(batch, latent_channels, frames)`): the soft-normalised latents.
    """

    latents: torch.Tensor


@dataclass
class SAMEDecoderOutput(BaseOutput):
    """
    Output of [`SAMEAutoencoderModel.decode`].

    Args:
        sample (`torch.Tensor` of shape `(batch, audio_channels, samples)`): the decoded audio.
    """

    sample: torch.Tensor


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def _pad_to_multiple(x: torch.Tensor, multiple: int, dim: int) -> torch.Tensor:
    """Right-pads `x` with zeros along `dim` to a multiple of `multiple`."""
    pad = (multiple - x.shape[dim] % multiple) % multiple
    if pad == 0:
        return x
    shape = list(x.shape)
    shape[dim] = pad
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def _patchify(audio: torch.Tensor, patch_size: int) -> torch.Tensor:
    """`(B, c, l*h)` -> `(B, c*h, l)`; channel index `c * h_size + h` (official `PatchedPretransform.encode`)."""
    audio = _pad_to_multiple(audio, patch_size, dim=-1)
    batch, channels, samples = audio.shape
    patches = audio.reshape(batch, channels, samples // patch_size, patch_size).permute(0, 1, 3, 2)
    return patches.reshape(batch, channels * patch_size, samples // patch_size)


def _unpatchify(patches: torch.Tensor, patch_size: int) -> torch.Tensor:
    """`(B, c*h, l)` -> `(B, c, l*h)` (official `PatchedPretransform.decode`)."""
    batch, channels_times_patch, length = patches.shape
    audio = patches.reshape(batch, channels_times_patch // patch_size, patch_size, length).permute(0, 1, 3, 2)
    return audio.reshape(batch, channels_times_patch // patch_size, length * patch_size)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rotary_emb(x: torch.Tensor, freqs: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """
    Partial RoPE (GPT-J style): rotates the first `freqs.shape[-1]` dims of `x` (`(..., seq, head_dim)`) in fp32.
    `inplace` writes the rotated dims into `x` (a fresh tensor the caller owns, outside autograd) instead of
    concatenating a new one; the values are the same.
    """
    rot_dim = freqs.shape[-1]
    x_rot, x_pass = x[..., :rot_dim].float(), x[..., rot_dim:]
    x_rot = x_rot * freqs.cos() + _rotate_half(x_rot) * freqs.sin()
    if inplace:
        x[..., :rot_dim] = x_rot
        return x
    return torch.cat((x_rot.to(x.dtype), x_pass), dim=-1)


def _sliding_window_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, window: int, block_size: int
) -> torch.Tensor:
    """
    Band attention (query `i` sees keys `j` with `|i - j| <= window`) as blocked SDPA with halos.

    Queries are split into blocks of `block_size`; each block attends to its keys plus `window` keys of halo on
    either side, with a `(block_size, block_size + 2 * window)` band mask per block. Memory and compute are linear in
    the sequence length; no `(seq, seq)` tensor is built. Inputs are `(batch, heads, seq, head_dim)`.
    """
    batch, heads, seq_len, head_dim = query.shape
    num_blocks = -(-seq_len // block_size)
    pad = num_blocks * block_size - seq_len
    span = block_size + 2 * window

    query = F.pad(query, (0, 0, 0, pad))
    query = query.reshape(batch, heads, num_blocks, block_size, head_dim).transpose(1, 2)
    query = query.reshape(batch * num_blocks, heads, block_size, head_dim)

    def to_blocks(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (0, 0, window, pad + window)).unfold(2, span, block_size)  # (B, H, nb, D, span)
        return t.permute(0, 2, 1, 4, 3).reshape(batch * num_blocks, heads, span, head_dim)

    key, value = to_blocks(key), to_blocks(value)

    device = query.device
    query_pos = torch.arange(num_blocks * block_size, device=device).view(num_blocks, block_size, 1)
    key_pos = (torch.arange(num_blocks, device=device) * block_size - window).view(num_blocks, 1, 1)
    key_pos = key_pos + torch.arange(span, device=device).view(1, 1, span)
    in_band = (key_pos - query_pos).abs() <= window
    # Halo keys outside the sequence are masked; padded queries (discarded below) may see them, so no row is empty.
    valid = ((key_pos >= 0) & (key_pos < seq_len)) | (query_pos >= seq_len)
    mask = (in_band & valid).unsqueeze(1).repeat(batch, 1, 1, 1)

    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    out = out.reshape(batch, num_blocks, heads, block_size, head_dim).transpose(1, 2)
    return out.reshape(batch, heads, num_blocks * block_size, head_dim)[:, :, :seq_len]


# ----------------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------------


class SAMEDynamicTanh(nn.Module):
    """DyT norm `weight * tanh(alpha * x) + bias` (Zhu et al. 2025, "Transformers without Normalization")."""

    def __init__(self, dim: int, init_alpha: float = 4.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), init_alpha))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or not hidden_states.dtype == self.weight.dtype == self.alpha.dtype:
            return self.weight * torch.tanh(self.alpha * hidden_states) + self.bias
        # Inference: the same operations in the same order on one buffer (about 2x faster on CPU, bit-identical).
        out = torch.mul(hidden_states, self.alpha)
        return out.tanh_().mul_(self.weight).add_(self.bias)


class SAMEWeightNormConv1d(nn.Module):
    """
    Conv1d with old-style weight norm (`torch.nn.utils.weight_norm`, dim 0), computed explicitly in `forward`:
    `weight = weight_v * (weight_g / ||weight_v||)`, the norm taken over all dims but the output channels.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"`kernel_size` must be odd for 'same' padding, got {kernel_size}.")
        weight_v = torch.empty(out_channels, in_channels, kernel_size)
        nn.init.kaiming_uniform_(weight_v, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_channels * kernel_size)
        self.weight_g = nn.Parameter(weight_v.norm(dim=(1, 2), keepdim=True))
        self.weight_v = nn.Parameter(weight_v)
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))
        self.padding = kernel_size // 2

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(1, 2), keepdim=True))
        return F.conv1d(hidden_states, weight, self.bias, padding=self.padding)


class SAMERotaryEmbedding(nn.Module):
    """RoPE frequencies; `inv_freq` is a persistent buffer because the official checkpoints store it."""

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=True)

    def forward(self, seq_len: int) -> torch.Tensor:
        positions = torch.arange(seq_len, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq.float())
        return torch.cat((freqs, freqs), dim=-1)  # (seq_len, rot_dim)


class SAMEAttention(nn.Module):
    """
    Differential self-attention `SDPA(q, k, v) - SDPA(q_diff, k_diff, v)` (no lambda, no sub-norm), DyT q/k norms
    shared by both maps, partial RoPE on the first `head_dim // 2` dims. `to_qkv` keeps the official row order
    `[q | k | v | q_diff | k_diff]`. The two maps run as one SDPA call over `2 * heads`.
    """

    def __init__(self, dim: int, attention_head_dim: int):
        super().__init__()
        self.heads = dim // attention_head_dim
        self.head_dim = attention_head_dim
        self.to_qkv = nn.Linear(dim, 5 * dim, bias=False)
        self.norm_q = SAMEDynamicTanh(attention_head_dim)
        self.norm_k = SAMEDynamicTanh(attention_head_dim)
        self.to_out = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.to_out.weight)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary_freqs: torch.Tensor,
        sliding_window: Optional[int] = None,
        block_size: int = 0,
    ) -> torch.Tensor:
        heads, head_dim = self.heads, self.head_dim
        query, key, value, query_diff, key_diff = self.to_qkv(hidden_states).chunk(5, dim=-1)

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (-1, head_dim)).transpose(1, 2)  # (B, H, N, D)

        query = split_heads(torch.cat([query, query_diff], dim=-1))  # heads [0, H) plain, [H, 2H) diff
        key = split_heads(torch.cat([key, key_diff], dim=-1))
        value = split_heads(value).repeat(1, 2, 1, 1)

        inplace = not torch.is_grad_enabled()  # the normed q / k are fresh buffers: rotate them in place
        query = _apply_rotary_emb(self.norm_q(query), rotary_freqs, inplace).to(value.dtype)
        key = _apply_rotary_emb(self.norm_k(key), rotary_freqs, inplace).to(value.dtype)

        if sliding_window is None:
            out = F.scaled_dot_product_attention(query, key, value)
        else:
            out = _sliding_window_attention(query, key, value, sliding_window, block_size)
        out = out[:, :heads] - out[:, heads:]
        return self.to_out(out.transpose(1, 2).flatten(2))


class SAMEFeedForward(nn.Module):
    """GLU feed-forward `proj_out(x * act(gate))`, `act` = SiLU or `sin(pi * gate)` (sinusoidal blocks)."""

    def __init__(self, dim: int, mlp_ratio: float = 3.0, sinusoidal: bool = False):
        super().__init__()
        inner_dim = int(dim * mlp_ratio)
        self.sinusoidal = sinusoidal
        self.proj_in = nn.Linear(dim, 2 * inner_dim)
        self.proj_out = nn.Linear(inner_dim, dim)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states, gate = self.proj_in(hidden_states).chunk(2, dim=-1)
        gate = torch.sin(math.pi * gate) if self.sinusoidal else F.silu(gate)
        return self.proj_out(hidden_states * gate)


class SAMETransformerBlock(nn.Module):
    """Pre-norm block: `x + attn(norm1(x))`, then `x + ff(norm2(x))`; RoPE positions restart for every sequence."""

    def __init__(self, dim: int, attention_head_dim: int, mlp_ratio: float, sinusoidal: bool):
        super().__init__()
        self.norm1 = SAMEDynamicTanh(dim)
        self.attn = SAMEAttention(dim, attention_head_dim)
        self.norm2 = SAMEDynamicTanh(dim)
        self.ff = SAMEFeedForward(dim, mlp_ratio, sinusoidal)
        self.rotary_emb = SAMERotaryEmbedding(attention_head_dim // 2)

    def forward(
        self, hidden_states: torch.Tensor, sliding_window: Optional[int] = None, block_size: int = 0
    ) -> torch.Tensor:
        rotary_freqs = self.rotary_emb(hidden_states.shape[1])
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states), rotary_freqs, sliding_window, block_size)
        hidden_states = hidden_states + self.ff(self.norm2(hidden_states))
        return hidden_states


class SAMEResamplingBlock(nn.Module):
    """
    The transformer resampling block (TRB) without its channel mapping.

    Tokens are grouped in sub-chunks of `stride + 1`: encoder `[p_0 .. p_{S-1}, NEW]` keeps the last token (downsample
    by S); decoder `[latent, NEW x S]` keeps the last S tokens (upsample by S). `NEW` is one shared learned token.
    Attention is local: either non-overlapping chunks of `attention_chunk_size * (S + 1) / S` tokens (SAME-S, RoPE
    restarting per chunk; with `chunk_midpoint_shift` the second half of the blocks sees chunks shifted by half a
    chunk, the first and last half-chunks duplicated at the ends and sliced off afterwards), or a sliding window of
    `sliding_window * (S + 1)` tokens on each side over the whole sequence (SAME-L, global RoPE positions).
    """

    # Queries per block of the banded SDPA, in sub-chunks; 8 * 17 = 136 queries against 170 keys per block.
    _window_block_sub_chunks = 8

    def __init__(
        self,
        dim: int,
        stride: int,
        num_layers: int,
        attention_head_dim: int,
        mlp_ratio: float,
        is_decoder: bool,
        sliding_window: Optional[int],
        attention_chunk_size: Optional[int],
        chunk_midpoint_shift: bool,
        sinusoidal_blocks: int = 0,
    ):
        super().__init__()
        self.stride = stride
        self.is_decoder = is_decoder
        self.sub_chunk_size = stride + 1
        self.window = None if sliding_window is None else sliding_window * self.sub_chunk_size
        self.chunk_tokens = None
        if sliding_window is None:
            self.chunk_tokens = attention_chunk_size + attention_chunk_size // stride
        self.chunk_midpoint_shift = chunk_midpoint_shift and sliding_window is None
        # Length multiple of the block input: encoder in patches, decoder in latent frames (official padding rules).
        if sliding_window is None:
            self.input_multiple = attention_chunk_size // stride if is_decoder else attention_chunk_size
        else:
            self.input_multiple = 1 if is_decoder else stride

        self.new_tokens = nn.Parameter(1e-5 * torch.randn(1, 1, dim))
        self.transformer_blocks = nn.ModuleList(
            [
                # Official rule (`autoencoders.py:61`): block i is sinusoidal when depth - i < sinusoidal_blocks.
                SAMETransformerBlock(dim, attention_head_dim, mlp_ratio, (num_layers - i) < sinusoidal_blocks)
                for i in range(num_layers)
            ]
        )
        self.gradient_checkpointing = False

    def padded_length(self, length: int) -> int:
        """Input length after the block's zero padding (patches for the encoder, latent frames for the decoder)."""
        return -(-length // self.input_multiple) * self.input_multiple

    def _run_blocks(
        self, hidden_states: torch.Tensor, blocks: Sequence[nn.Module], sliding_window: Optional[int]
    ) -> torch.Tensor:
        block_size = self._window_block_sub_chunks * self.sub_chunk_size
        for block in blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(block, hidden_states, sliding_window, block_size)
            else:
                hidden_states = block(hidden_states, sliding_window, block_size)
        return hidden_states

    def _run_chunked(self, hidden_states: torch.Tensor, blocks: Sequence[nn.Module]) -> torch.Tensor:
        batch, seq_len, dim = hidden_states.shape
        hidden_states = hidden_states.reshape(-1, self.chunk_tokens, dim)
        hidden_states = self._run_blocks(hidden_states, blocks, None)
        return hidden_states.reshape(batch, seq_len, dim)

    def forward(self, hidden_states: torch.Tensor, new_token_noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            hidden_states (`torch.Tensor`): `(batch, length, dim)`. Encoder: mapped patches, length a multiple of
                `input_multiple`. Decoder: projected latents (padded here to a multiple of `input_multiple`).
            new_token_noise (`torch.Tensor`, *optional*): decoder only, already scaled noise added to the new
                tokens, `(batch * padded_frames, stride, dim)`.

        Returns:
            `(batch, length / stride, dim)` for the encoder, `(batch, padded_frames * stride, dim)` for the decoder.
        """
        batch, _, dim = hidden_states.shape
        stride = self.stride
        if self.is_decoder:
            hidden_states = _pad_to_multiple(hidden_states, self.input_multiple, dim=1)
            frames = hidden_states.shape[1]
            new_tokens = self.new_tokens.expand(batch * frames, stride, dim)
            if new_token_noise is not None:
                new_tokens = new_tokens + new_token_noise
            hidden_states = torch.cat([hidden_states.reshape(batch * frames, 1, dim), new_tokens], dim=1)
        else:
            frames = hidden_states.shape[1] // stride
            hidden_states = hidden_states.reshape(batch * frames, stride, dim)
            new_tokens = self.new_tokens.expand(batch * frames, 1, dim)
            hidden_states = torch.cat([hidden_states, new_tokens], dim=1)
        hidden_states = hidden_states.reshape(batch, frames * self.sub_chunk_size, dim)

        if self.window is not None:
            hidden_states = self._run_blocks(hidden_states, self.transformer_blocks, self.window)
        elif not self.chunk_midpoint_shift:
            hidden_states = self._run_chunked(hidden_states, self.transformer_blocks)
        else:
            split = len(self.transformer_blocks) // 2
            shift = self.chunk_tokens // 2
            hidden_states = self._run_chunked(hidden_states, self.transformer_blocks[:split])
            hidden_states = torch.cat([hidden_states[:, :shift], hidden_states, hidden_states[:, -shift:]], dim=1)
            hidden_states = self._run_chunked(hidden_states, self.transformer_blocks[split:])
            hidden_states = hidden_states[:, shift:-shift]

        hidden_states = hidden_states.reshape(batch, frames, self.sub_chunk_size, dim)
        if self.is_decoder:
            return hidden_states[:, :, -stride:].reshape(batch, frames * stride, dim)
        return hidden_states[:, :, -1]


class SAMEEncoder(nn.Module):
    """Patches `(B, channels * patch_size, P)` -> weight-normed 1x1 conv -> TRB (downsample) -> Linear -> latents."""

    def __init__(self, in_channels: int, dim: int, latent_channels: int, resampler_kwargs: dict):
        super().__init__()
        self.conv_in = SAMEWeightNormConv1d(in_channels, dim, kernel_size=1)
        self.resampler = SAMEResamplingBlock(dim, is_decoder=False, **resampler_kwargs)
        self.proj_out = nn.Linear(dim, latent_channels)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        # Zero-pad before the mapping, so padding goes through the mapping like real silence (official order).
        patches = _pad_to_multiple(patches, self.resampler.input_multiple, dim=-1)
        hidden_states = self.conv_in(patches).transpose(1, 2)
        hidden_states = self.resampler(hidden_states)
        return self.proj_out(hidden_states).transpose(1, 2)


class SAMEDecoder(nn.Module):
    """Latents -> Linear -> TRB (upsample) -> weight-normed conv (kernel 3 'same' for SAME-S, 1 for SAME-L)."""

    def __init__(self, out_channels: int, dim: int, latent_channels: int, kernel_size: int, resampler_kwargs: dict):
        super().__init__()
        self.proj_in = nn.Linear(latent_channels, dim)
        self.resampler = SAMEResamplingBlock(dim, is_decoder=True, **resampler_kwargs)
        self.conv_out = SAMEWeightNormConv1d(dim, out_channels, kernel_size=kernel_size)

    def forward(self, latents: torch.Tensor, new_token_noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        hidden_states = self.proj_in(latents.transpose(1, 2))
        hidden_states = self.resampler(hidden_states, new_token_noise)
        return self.conv_out(hidden_states.transpose(1, 2))


class SAMESoftNormBottleneck(nn.Module):
    """
    Soft-norm bottleneck. encode: `z = (x * scale + bias) / running_std`; decode: `z * running_std` plus, when noise is
    given, `noise * running_std * s` with s = 1e-3 in eval and 5e-2 in training (official `SoftNormBottleneck`).
    Decode does not undo `scale` / `bias`: the decoder consumes the affine-normalised values.

    `running_std` is an `nn.Parameter` without gradient, as in the official module. It is an EMA
    `0.999 * running_std + 0.001 * std(x)` (clamped at 1e-4) updated in `encode` only while training and not frozen.
    `noise_scale` is the official (empty) `noise_scaling_factor` of `noise_augment_dim = 0`.
    """

    def __init__(self, latent_channels: int, freeze: bool = True):
        super().__init__()
        self.freeze = freeze
        self.scale = nn.Parameter(torch.ones(1, latent_channels, 1), requires_grad=not freeze)
        self.bias = nn.Parameter(torch.zeros(1, latent_channels, 1), requires_grad=not freeze)
        self.noise_scale = nn.Parameter(torch.ones(1, 0, 1), requires_grad=not freeze)
        self.running_std = nn.Parameter(torch.ones(1), requires_grad=False)

    def encode(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states * self.scale + self.bias
        if self.training and not self.freeze:
            with torch.no_grad():
                ema = self.running_std * 0.999 + hidden_states.detach().std() * 0.001
                self.running_std.copy_(ema.clamp(min=1e-4))
        return hidden_states / self.running_std

    def decode(self, latents: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        hidden_states = latents * self.running_std
        if noise is not None:
            noise_level = 5e-2 if self.training else 1e-3
            hidden_states = hidden_states + noise * self.running_std * noise_level
        return hidden_states

    @staticmethod
    def regularization_loss(latents: torch.Tensor) -> torch.Tensor:
        """Official training regulariser `KL_t + 0.4 * KL_c`, `KL = mean(mu^2 + var - log var - 1)`, var >= 1e-4."""

        def kl(dim: int) -> torch.Tensor:
            var = (latents.std(dim=dim) ** 2).clip(min=1e-4)
            mean = latents.mean(dim=dim)
            return (mean * mean + var - torch.log(var) - 1).mean()

        return kl(-1) + 0.4 * kl(-2)


# ----------------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------------


class SAMEAutoencoderModel(ModelMixin, ConfigMixin):
    r"""
    SAME autoencoder of Stable Audio 3: stereo 44.1 kHz audio <-> latents at 44100 / 4096 = 10.77 Hz.

    Defaults are the released SAME-L (`stabilityai/SAME-L`, the autoencoder of SA3 medium). SAME-S (SA3 small) is
    `num_attention_heads=12, num_encoder_layers=6, num_decoder_layers=6, sliding_window=None,
    attention_chunk_size=32, chunk_midpoint_shift=True, decoder_sinusoidal_blocks=0, decoder_kernel_size=3`. Use
    [`~conversion.convert_same.same_config_from_official`] to derive a config from an official `model_config.json`.

    Parameters:
        audio_channels (`int`, defaults to 2): audio channels.
        sampling_rate (`int`, defaults to 44100): audio sampling rate in Hz.
        patch_size (`int`, defaults to 256): samples per patch (parameter-free patching).
        resampling_stride (`int`, defaults to 16): patches per latent frame (TRB stride).
        latent_channels (`int`, defaults to 256): latent channels.
        num_attention_heads (`int`, defaults to 24): heads; the transformer width is heads x head dim (1536).
        attention_head_dim (`int`, defaults to 64): head dim; RoPE rotates its first half.
        num_encoder_layers (`int`, defaults to 12): transformer blocks of the encoder TRB.
        num_decoder_layers (`int`, defaults to 12): transformer blocks of the decoder TRB.
        mlp_ratio (`float`, defaults to 3.0): GLU inner width over the transformer width.
        sliding_window (`int`, *optional*, defaults to 1): sliding-window half width in latent frames (1 -> +-17
            tokens). `None` selects chunked attention.
        attention_chunk_size (`int`, *optional*): attention chunk in patches (SAME-S: 32, i.e. 2 latent frames or
            34 tokens). Set exactly one of `sliding_window` and `attention_chunk_size`.
        chunk_midpoint_shift (`bool`, defaults to `False`): shift the chunks of the second half of the blocks by half
            a chunk (SAME-S).
        decoder_sinusoidal_blocks (`int`, defaults to 8): decoder block `i` uses `sin(pi x)` gating when
            `num_decoder_layers - i < decoder_sinusoidal_blocks` (official rule; SAME-L: blocks 5..11).
        decoder_kernel_size (`int`, defaults to 1): kernel of the decoder's output mapping (SAME-S: 3).
        decoder_mask_noise (`float`, defaults to 0.01): std of the noise added to the decoder's new tokens at decode
            time (also at inference, as official).
        bottleneck_noise (`bool`, defaults to `True`): add `1e-3 * running_std` noise in the bottleneck at decode
            time (official `noise_regularize`; 5e-2 in training mode).
        freeze_bottleneck (`bool`, defaults to `True`): freeze the bottleneck affine and its `running_std` EMA.
        chunked (`bool`, defaults to `True`): default of `chunked` in `encode` / `decode` (official
            `pretransform.chunked`).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["SAMETransformerBlock"]
    _repeated_blocks = ["SAMETransformerBlock"]

    @register_to_config
    def __init__(
        self,
        audio_channels: int = 2,
        sampling_rate: int = 44100,
        patch_size: int = 256,
        resampling_stride: int = 16,
        latent_channels: int = 256,
        num_attention_heads: int = 24,
        attention_head_dim: int = 64,
        num_encoder_layers: int = 12,
        num_decoder_layers: int = 12,
        mlp_ratio: float = 3.0,
        sliding_window: Optional[int] = 1,
        attention_chunk_size: Optional[int] = None,
        chunk_midpoint_shift: bool = False,
        decoder_sinusoidal_blocks: int = 8,
        decoder_kernel_size: int = 1,
        decoder_mask_noise: float = 0.01,
        bottleneck_noise: bool = True,
        freeze_bottleneck: bool = True,
        chunked: bool = True,
    ):
        super().__init__()
        if (sliding_window is None) == (attention_chunk_size is None):
            raise ValueError(
                f"Set exactly one of `sliding_window` and `attention_chunk_size`, got {sliding_window} and "
                f"{attention_chunk_size}. SAME-L uses `sliding_window=1`, SAME-S `attention_chunk_size=32`."
            )
        if sliding_window is not None and sliding_window < 1:
            raise ValueError(f"`sliding_window` must be a positive number of latent frames, got {sliding_window}.")
        if attention_chunk_size is not None and (
            attention_chunk_size <= 0 or attention_chunk_size % resampling_stride != 0
        ):
            raise ValueError(
                f"`attention_chunk_size` must be a positive multiple of `resampling_stride` ({resampling_stride}), "
                f"got {attention_chunk_size}."
            )
        if (
            attention_chunk_size is not None
            and chunk_midpoint_shift
            and (attention_chunk_size // resampling_stride) % 2
        ):
            raise ValueError(
                "`chunk_midpoint_shift` needs an even number of latent frames per chunk, got `attention_chunk_size` "
                f"{attention_chunk_size} / `resampling_stride` {resampling_stride}."
            )

        dim = num_attention_heads * attention_head_dim
        common = {
            "stride": resampling_stride,
            "attention_head_dim": attention_head_dim,
            "mlp_ratio": mlp_ratio,
            "sliding_window": sliding_window,
            "attention_chunk_size": attention_chunk_size,
            "chunk_midpoint_shift": chunk_midpoint_shift,
        }
        self.encoder = SAMEEncoder(
            audio_channels * patch_size, dim, latent_channels, {**common, "num_layers": num_encoder_layers}
        )
        self.bottleneck = SAMESoftNormBottleneck(latent_channels, freeze=freeze_bottleneck)
        self.decoder = SAMEDecoder(
            audio_channels * patch_size,
            dim,
            latent_channels,
            decoder_kernel_size,
            {**common, "num_layers": num_decoder_layers, "sinusoidal_blocks": decoder_sinusoidal_blocks},
        )

    # ------------------------------------------------------------------------------------------------------------------
    # Lengths
    # ------------------------------------------------------------------------------------------------------------------

    @property
    def downsampling_ratio(self) -> int:
        """Audio samples per latent frame (`patch_size * resampling_stride` = 4096)."""
        return self.config.patch_size * self.config.resampling_stride

    def latent_length(self, num_samples: int) -> int:
        """
        Frames returned by the unchunked `encode` for `num_samples` samples (official raw length): `ceil(N / 4096)`,
        rounded up to an even count for SAME-S (whose encoder pads to whole attention chunks). The chunked path (long
        inputs) returns `ceil(N / 4096)`.
        """
        frames = -(-int(num_samples) // self.downsampling_ratio)
        return self.decoder.resampler.padded_length(frames)

    def decoded_length(self, num_latents: int) -> int:
        """Samples returned by the unchunked `decode` of `num_latents` frames (SAME-S rounds odd counts up)."""
        return self.decoder.resampler.padded_length(int(num_latents)) * self.downsampling_ratio

    # ------------------------------------------------------------------------------------------------------------------
    # Input checks
    # ------------------------------------------------------------------------------------------------------------------

    def _check_input(self, tensor, name: str, channels: int, layout: str, what: str) -> None:
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"`{name}` must be a torch.Tensor of shape {layout}, got {type(tensor).__name__}.")
        if tensor.ndim != 3 or tensor.shape[1] != channels:
            raise ValueError(
                f"`{name}` must have shape {layout} with {channels} channels, got shape {tuple(tensor.shape)}. "
                + (
                    "Add a batch dimension with `audio[None]` for a single (channels, samples) clip."
                    if tensor.ndim == 2
                    else f"Pass {what}."
                )
            )
        if not torch.is_floating_point(tensor):
            raise ValueError(
                f"`{name}` must be a floating-point tensor, got dtype {tensor.dtype}. Convert it with "
                f"`{name}.float()` (audio scaled to [-1, 1])."
            )
        if tensor.shape[0] == 0 or tensor.shape[-1] == 0:
            raise ValueError(f"`{name}` must not be empty, got shape {tuple(tensor.shape)}.")

    @staticmethod
    def _check_chunking(chunk_size: int, overlap: int) -> None:
        if not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"`chunk_size` must be a positive number of latent frames, got {chunk_size!r}.")
        if not isinstance(overlap, int) or not 0 <= overlap < chunk_size:
            raise ValueError(f"`overlap` must be an int in [0, chunk_size={chunk_size}), got {overlap!r}.")

    # ------------------------------------------------------------------------------------------------------------------
    # Encode
    # ------------------------------------------------------------------------------------------------------------------

    def _encode(self, audio: torch.Tensor) -> torch.Tensor:
        hidden_states = self.encoder(_patchify(audio, self.config.patch_size))
        return self.bottleneck.encode(hidden_states)

    @apply_forward_hook
    def encode(
        self,
        audio: torch.Tensor,
        return_dict: bool = True,
        chunked: Optional[bool] = None,
        chunk_size: int = 128,
        overlap: int = 32,
    ) -> Union[SAMEAutoencoderOutput, Tuple[torch.Tensor]]:
        """
        Encodes audio into latents, as the official `AutoencoderModel.encode` (no resampling: `audio` must be at
        `config.sampling_rate`).

        The audio is zero-padded to a multiple of `downsampling_ratio` (4096). Unchunked, the result has
        `latent_length(samples)` frames. Chunked (official overlap-and-trim): windows of `chunk_size` frames with a
        hop of `chunk_size - overlap`, the last window anchored to the end, each encoded independently and spliced
        hard, dropping `overlap // 2` frames at every inner edge; the result has `ceil(samples / 4096)` frames. Inputs
        shorter than `chunk_size` frames are encoded unchunked.

        Args:
            audio (`torch.Tensor`): `(batch, audio_channels, samples)` float audio.
            return_dict (`bool`, defaults to `True`): return a [`SAMEAutoencoderOutput`] instead of a tuple.
            chunked (`bool`, *optional*): chunked encoding; `None` uses `config.chunked`.
            chunk_size (`int`, defaults to 128): chunk length in latent frames.
            overlap (`int`, defaults to 32): overlap between chunks in latent frames.
        """
        self._check_input(audio, "audio", self.config.audio_channels, "(batch, channels, samples)", "stereo audio")
        self._check_chunking(chunk_size, overlap)
        chunked = self.config.chunked if chunked is None else chunked
        ratio = self.downsampling_ratio
        audio = _pad_to_multiple(audio.to(self.dtype), ratio, dim=-1)
        total_samples = audio.shape[-1]

        if not chunked or total_samples < chunk_size * ratio:
            latents = self._encode(audio)
        else:
            chunk_samples = chunk_size * ratio
            starts = list(range(0, total_samples - chunk_samples + 1, (chunk_size - overlap) * ratio))
            if starts[-1] != total_samples - chunk_samples:
                starts.append(total_samples - chunk_samples)
            total_latents = total_samples // ratio
            latents = None
            for i, start in enumerate(starts):
                chunk = self._encode(audio[..., start : start + chunk_samples])
                if latents is None:
                    latents = chunk.new_zeros(*chunk.shape[:-1], total_latents)
                is_last = i == len(starts) - 1
                out_start = total_latents - chunk_size if is_last else start // ratio
                left = 0 if i == 0 else overlap // 2
                right = chunk_size if is_last else chunk_size - overlap // 2
                latents[..., out_start + left : out_start + right] = chunk[..., left:right]

        if not return_dict:
            return (latents,)
        return SAMEAutoencoderOutput(latents=latents)

    # ------------------------------------------------------------------------------------------------------------------
    # Decode
    # ------------------------------------------------------------------------------------------------------------------

    def _draw_decode_noise(
        self, latents: torch.Tensor, generator: Optional[Union[torch.Generator, List[torch.Generator]]]
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """
        The official decode-time draws for `latents`, in the official order: the bottleneck draw (shape of the
        latents), then the decoder's new-token draw `(batch, padded_frames, resampling_stride, width)`; float32 for
        half-precision latents.
        """
        batch = latents.shape[0]
        frames = self.decoder.resampler.padded_length(latents.shape[-1])
        dim = self.config.num_attention_heads * self.config.attention_head_dim
        # Drawn in float32 at least, so a bf16 / fp16 model draws the same noise as a float32 one.
        dtype = torch.promote_types(latents.dtype, torch.float32)
        bottleneck_noise = decoder_noise = None
        if self.config.bottleneck_noise:
            bottleneck_noise = randn_tensor(latents.shape, generator, device=latents.device, dtype=dtype)
        if self.config.decoder_mask_noise > 0:
            decoder_noise = randn_tensor(
                (batch, frames, self.config.resampling_stride, dim), generator, device=latents.device, dtype=dtype
            )
        return bottleneck_noise, decoder_noise

    def _decode_reach(self) -> int:
        """
        Latent frames on each side of a frame that its decoded audio depends on (the decoder's exact receptive field).
        Chunked attention: a chunk spanning `n` frames reaches `n - 1`; the midpoint-shifted chunks of the second half
        of the blocks add their own span (one frame more when the shift is not a whole frame). Sliding window: `w`
        frames per block. Plus one frame for an output convolution wider than 1 (its edge patches see the
        neighbouring frames' edge tokens).
        """
        resampler = self.decoder.resampler
        if self.config.sliding_window is not None:
            reach = self.config.num_decoder_layers * self.config.sliding_window
        else:
            chunk_frames = resampler.input_multiple
            reach = chunk_frames - 1
            if resampler.chunk_midpoint_shift:
                shift = resampler.chunk_tokens // 2
                reach += chunk_frames - 1 + (1 if shift % resampler.sub_chunk_size else 0)
        return reach + (1 if self.config.decoder_kernel_size > 1 else 0)

    def _decode(
        self,
        latents: torch.Tensor,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]],
        add_noise: bool,
        noise: Optional[Sequence[Optional[torch.Tensor]]] = None,
    ) -> torch.Tensor:
        batch = latents.shape[0]
        frames = self.decoder.resampler.padded_length(latents.shape[-1])
        stride = self.config.resampling_stride
        dim = self.config.num_attention_heads * self.config.attention_head_dim
        decoder_shape = (batch * frames, stride, dim)
        bottleneck_noise = decoder_noise = None
        if add_noise and noise is not None:
            bottleneck_noise, decoder_noise = noise
            for name, draw, shape in (
                ("noise[0]", bottleneck_noise, latents.shape),
                ("noise[1]", decoder_noise, decoder_shape),
            ):
                if draw is not None and tuple(draw.shape) != tuple(shape):
                    raise ValueError(f"`{name}` must have shape {tuple(shape)}, got {tuple(draw.shape)}.")
        elif add_noise:
            bottleneck_noise, decoder_noise = self._draw_decode_noise(latents, generator)
            if decoder_noise is not None:
                decoder_noise = decoder_noise.reshape(decoder_shape)
        if not self.config.bottleneck_noise:
            bottleneck_noise = None
        if decoder_noise is not None:
            decoder_noise = decoder_noise.to(latents) * self.config.decoder_mask_noise
        if bottleneck_noise is not None:
            bottleneck_noise = bottleneck_noise.to(latents)

        hidden_states = self.bottleneck.decode(latents, bottleneck_noise)
        hidden_states = self.decoder(hidden_states, decoder_noise)
        return _unpatchify(hidden_states, self.config.patch_size)

    @apply_forward_hook
    def decode(
        self,
        latents: torch.Tensor,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        add_noise: bool = True,
        return_dict: bool = True,
        chunked: Optional[bool] = None,
        chunk_size: int = 128,
        overlap: int = 32,
        noise: Optional[Sequence[Optional[torch.Tensor]]] = None,
        output_frames: Optional[int] = None,
    ) -> Union[SAMEDecoderOutput, Tuple[torch.Tensor]]:
        """
        Decodes latents into audio, as the official `AutoencoderModel.decode`.

        Unchunked, the result has `decoded_length(frames)` samples. Chunked: windows of `chunk_size` frames (hop
        `chunk_size - overlap`, last one anchored to the end) decoded independently, each with its own noise draws,
        and spliced hard, dropping `overlap // 2` frames worth of samples at every inner edge; the result has
        `frames * 4096` samples. Latents shorter than `chunk_size` frames are decoded unchunked. The frames a window
        would decode only to have them dropped (or overwritten by the next window) are skipped, beyond a halo that
        covers the decoder's receptive field; the window's noise is drawn whole and sliced, so the output is the
        official one (SAME-S at the default 128 / 32: 32 % less work for 30 s of latents, 22 % for 120 s).

        Args:
            latents (`torch.Tensor`): `(batch, latent_channels, frames)`.
            generator (`torch.Generator` or list of them, *optional*): source of the decode noise.
            add_noise (`bool`, defaults to `True`): add the official decode-time noise: the bottleneck noise
                `1e-3 * running_std * eps` (if `config.bottleneck_noise`) and the decoder new-token noise
                `decoder_mask_noise * eps`, drawn in that order. `False` makes decoding deterministic.
            return_dict (`bool`, defaults to `True`): return a [`SAMEDecoderOutput`] instead of a tuple.
            chunked (`bool`, *optional*): chunked decoding; `None` uses `config.chunked`.
            chunk_size (`int`, defaults to 128): chunk length in latent frames.
            overlap (`int`, defaults to 32): overlap between chunks in latent frames.
            noise (`tuple` of two `torch.Tensor`, *optional*): pre-drawn standard-normal `eps` instead of drawing
                from `generator`: the bottleneck draw `(batch, latent_channels, frames)` and the decoder draw
                `(batch * padded_frames, resampling_stride, width)`. Only for an unchunked decode with `add_noise`.
            output_frames (`int`, *optional*): only the audio of the first `output_frames` latent frames is wanted
                (a pipeline trimming its generation headroom): a chunked decode then skips the windows' work past it
                (still drawing their noise in the official order), and the samples past it are 0. The samples before
                it equal the full decode's. `None`: all frames.
        """
        self._check_input(
            latents, "latents", self.config.latent_channels, "(batch, latent_channels, frames)", "latents"
        )
        self._check_chunking(chunk_size, overlap)
        chunked = self.config.chunked if chunked is None else chunked
        latents = latents.to(self.dtype)
        total_latents = latents.shape[-1]
        if output_frames is not None and (
            isinstance(output_frames, bool)
            or not isinstance(output_frames, int)
            or not 0 < output_frames <= total_latents
        ):
            raise ValueError(
                f"`output_frames` must be an int in [1, {total_latents}] (the latents' frames), got {output_frames!r}; "
                "pass None to decode every frame."
            )

        if not chunked or total_latents < chunk_size:
            sample = self._decode(latents, generator, add_noise, noise)
        else:
            if noise is not None:
                raise ValueError(
                    "`noise` is only supported for an unchunked decode; pass `chunked=False` or `noise=None`."
                )
            ratio = self.downsampling_ratio
            starts = list(range(0, total_latents - chunk_size + 1, chunk_size - overlap))
            if starts[-1] != total_latents - chunk_size:
                starts.append(total_latents - chunk_size)
            # Window i keeps frames [start + left, start + right) (official hard splice, the last window anchored to
            # the end and written last). Only the part no later window overwrites is decoded, with a halo of frames
            # that fully determines it (`_decode_reach` frames, widened to the window's own attention chunks); the
            # window's noise is still drawn whole, in the official order, and sliced, so the output is the official one.
            reach, multiple = self._decode_reach(), self.decoder.resampler.input_multiple
            half = overlap // 2
            kept = []
            for i, start in enumerate(starts):
                left = 0 if i == 0 else half
                right = chunk_size if i == len(starts) - 1 else chunk_size - half
                kept.append([start + left, start + right])
            for i in range(len(kept) - 1):
                kept[i][1] = min(kept[i][1], kept[i + 1][0])
            if output_frames is not None:
                for span in kept:
                    span[1] = min(span[1], output_frames)
            sample = None
            for start, (keep_start, keep_end) in zip(starts, kept):
                window = latents[..., start : start + chunk_size]
                if keep_end <= keep_start:
                    if add_noise:
                        self._draw_decode_noise(window, generator)  # keep the draws of later windows official
                    continue
                first = max(0, (keep_start - start - reach) // multiple * multiple)
                last = min(chunk_size, -(-(keep_end - start + reach) // multiple) * multiple)
                noise_span = None
                if add_noise:
                    bottleneck_noise, decoder_noise = self._draw_decode_noise(window, generator)
                    span_frames = self.decoder.resampler.padded_length(last - first)
                    if bottleneck_noise is not None:
                        bottleneck_noise = bottleneck_noise[..., first:last]
                    if decoder_noise is not None:
                        decoder_noise = decoder_noise[:, first : first + span_frames].flatten(0, 1)
                    noise_span = (bottleneck_noise, decoder_noise)
                chunk = self._decode(window[..., first:last], generator, add_noise, noise_span)
                if sample is None:
                    sample = chunk.new_zeros(*chunk.shape[:-1], total_latents * ratio)
                offset = (start + first) * ratio
                sample[..., keep_start * ratio : keep_end * ratio] = chunk[
                    ..., keep_start * ratio - offset : keep_end * ratio - offset
                ]
        if output_frames is not None:
            sample[..., output_frames * self.downsampling_ratio :] = 0

        if not return_dict:
            return (sample,)
        return SAMEDecoderOutput(sample=sample)

    def forward(
        self,
        sample: torch.Tensor,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        add_noise: bool = True,
        return_dict: bool = True,
    ) -> Union[SAMEDecoderOutput, Tuple[torch.Tensor]]:
        """Reconstruction: unchunked `encode` then unchunked `decode` (training noise level in training mode)."""
        latents = self.encode(sample, chunked=False).latents
        return self.decode(latents, generator=generator, add_noise=add_noise, return_dict=return_dict, chunked=False)

    # ------------------------------------------------------------------------------------------------------------------
    # Official checkpoints
    # ------------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_single_file(
        cls, pretrained_model_link_or_path: str, torch_dtype: Optional[torch.dtype] = None, **config_overrides
    ) -> "SAMEAutoencoderModel":
        """
        Loads an official checkpoint: a folder with `model_config.json` and `model.safetensors`, or that
        `model.safetensors` with `model_config.json` beside it. Full SA3 checkpoints (autoencoder keys under
        `pretransform.model.`) and standalone SAME repos (bare keys) are accepted. Loading is strict.

        Args:
            pretrained_model_link_or_path (`str`): the checkpoint folder or its `model.safetensors`.
            torch_dtype (`torch.dtype`, *optional*): dtype of the returned model (default float32).
            config_overrides: values replacing entries of the derived config (e.g. `chunked=False`).
        """
        from ..conversion.convert_same import load_official_same

        return load_official_same(cls, pretrained_model_link_or_path, torch_dtype, config_overrides)
