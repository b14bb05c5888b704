"""Stage 3 of Stable Audio 3 training: adversarial relativistic-contrastive (ARC) post-training pieces.

- [`StableAudio3Discriminator`]: the base flow model's transformer trunk plus a small head giving one logit per
  sample, conditioned on text and duration (through the trunk's cross-attention and global condition).
- The relativistic losses (RpGAN, Jolicoeur-Martineau 2018; ARC, Novack et al. 2025, arXiv:2505.08175, Eq. 5) and the
  contrastive discriminator loss (ARC Eq. 8), and the CLAP text-audio alignment loss of the SA3 post-training
  (`docs/guides/model-overview.md`, "Adversarial Post-Training").
- A differentiable path from 44.1 kHz SA3 audio to CLAP input features: [`SincResampler`] (fixed polyphase
  windowed-sinc filter) and [`ClapLogMel`] (the numpy `ClapFeatureExtractor` log-mel, re-done in torch).
"""

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils import logging
from torch import nn


logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------------


def relativistic_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """
    Relativistic pairing loss of the discriminator, `mean(softplus(-(D(real) - D(fake))))` (RpGAN; ARC Eq. 5): each
    real sample is compared with the fake generated from (a noisy version of) the same real sample and prompt.

    Args:
        real_logits (`torch.Tensor` of shape `(batch,)`): logits of the re-noised real latents.
        fake_logits (`torch.Tensor` of shape `(batch,)`): logits of the re-noised generator outputs, paired with
            `real_logits` element by element.
    """
    _check_paired(real_logits, fake_logits, "real_logits", "fake_logits")
    return F.softplus(-(real_logits.float() - fake_logits.float())).mean()


def relativistic_generator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's mirror of [`relativistic_discriminator_loss`]: `mean(softplus(-(D(fake) - D(real))))`."""
    _check_paired(real_logits, fake_logits, "real_logits", "fake_logits")
    return F.softplus(-(fake_logits.float() - real_logits.float())).mean()


def shuffled_prompt_indices(
    prompts: Sequence[str], generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    A random derangement of the batch for the contrastive loss: sample `i` is paired with the prompt of sample
    `index[i] != i`. The permutation is one random cycle through the whole batch, so no sample keeps its own prompt.

    Returns:
        `(index, valid)`: int64 `(batch,)` indices and a bool `(batch,)` mask that is False where the shuffled prompt
        is the same text as the sample's own (duplicate prompts in a batch are not negatives).
    """
    batch_size = len(prompts)
    if batch_size < 2:
        raise ValueError(f"The contrastive loss needs a batch of at least 2 prompts, got {batch_size}.")
    order = torch.randperm(batch_size, generator=generator)
    index = torch.empty(batch_size, dtype=torch.long)
    index[order] = order.roll(-1)
    valid = torch.tensor([prompts[i] != prompts[int(j)] for i, j in enumerate(index)], dtype=torch.bool)
    return index, valid


def contrastive_discriminator_loss(
    paired_logits: torch.Tensor, shuffled_logits: torch.Tensor, valid: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """
    Contrastive discriminator loss (ARC Eq. 8): the discriminator must score a real latent higher with its own prompt
    than with a shuffled one, `mean(softplus(-(D(x, c) - D(x, c_shuffled))))`, averaged over the pairs marked `valid`
    (0 if none is).

    Args:
        paired_logits (`torch.Tensor` of shape `(batch,)`): `D(x_real, c)`.
        shuffled_logits (`torch.Tensor` of shape `(batch,)`): `D(x_real, c[index])` from [`shuffled_prompt_indices`].
        valid (`torch.Tensor` of shape `(batch,)`, *optional*): bool mask of the pairs that count.
    """
    _check_paired(paired_logits, shuffled_logits, "paired_logits", "shuffled_logits")
    losses = F.softplus(-(paired_logits.float() - shuffled_logits.float()))
    if valid is None:
        return losses.mean()
    weights = valid.to(device=losses.device, dtype=losses.dtype)
    return (losses * weights).sum() / weights.sum().clamp(min=1.0)


def clap_alignment_loss(audio_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """
    CLAP alignment loss of the generator: `mean(1 - cos(audio_embeds, text_embeds))` over paired rows (the cosine
    distance CLAP's contrastive training uses as similarity).

    Args:
        audio_embeds (`torch.Tensor` of shape `(batch, dim)`): CLAP audio embeddings of the generated audio.
        text_embeds (`torch.Tensor` of shape `(batch, dim)`): CLAP text embeddings of the prompts.
    """
    if audio_embeds.shape != text_embeds.shape or audio_embeds.ndim != 2:
        raise ValueError(
            f"`audio_embeds` and `text_embeds` must be (batch, dim) tensors of one shape, got "
            f"{tuple(audio_embeds.shape)} and {tuple(text_embeds.shape)}."
        )
    return (1 - F.cosine_similarity(audio_embeds.float(), text_embeds.float(), dim=-1)).mean()


def _check_paired(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must be (batch,) tensors of one shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}."
        )


def masked_mean_pool(hidden_states: torch.Tensor, frame_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of `(batch, frames, dim)` over the valid frames of `frame_mask` `(batch, frames)` (all if None)."""
    if frame_mask is None:
        return hidden_states.mean(dim=1)
    weights = frame_mask.to(device=hidden_states.device, dtype=hidden_states.dtype)[:, :, None]
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


# ----------------------------------------------------------------------------------------------------------------------
# Discriminator
# ----------------------------------------------------------------------------------------------------------------------


class StableAudio3Discriminator(nn.Module):
    """
    Discriminator of the ARC post-training: a [`StableAudio3Transformer`] trunk (initialised from the base flow model)
    and a head giving one logit per sample.

    The trunk runs exactly as the flow model does (memory tokens, timestep, text and duration conditioning, variable
    length attention, inpainting conditioning) and its per-frame output `(batch, latent_dim, frames)` (the last block
    through the trainable output projections) is the feature map. It is mean-pooled over the valid frames and the
    head `Linear(latent_dim, head_dim) -> SiLU -> Linear(head_dim, 1)` gives the logit. The last head layer starts at
    zero, so every logit is 0 at the start of training. Reading the trunk's output rather than the hidden states of
    its last block keeps the discriminator independent of the transformer's internals (which packs samples of equal
    valid length together) and leaves no unused parameter under DDP.

    Args:
        transformer ([`StableAudio3Transformer`]): the trunk (a copy of the base model; it is trained).
        head_dim (`int`, *optional*): hidden width of the head (default: the trunk width).
    """

    def __init__(self, transformer, head_dim: Optional[int] = None):
        super().__init__()
        self.transformer = transformer
        channels = transformer.config.in_channels
        width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        head_dim = head_dim or width
        self.head = nn.Sequential(nn.Linear(channels, head_dim), nn.SiLU(), nn.Linear(head_dim, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        cross_attention_context: torch.Tensor,
        global_condition: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        inpaint_mask: Optional[torch.Tensor] = None,
        inpaint_latents: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(batch, latent_dim, frames)`): noisy latents `x_s`.
            timestep (`torch.Tensor` of shape `(batch,)`): their noise level `s`.
            cross_attention_context, global_condition: from `StableAudio3Transformer.encode_conditioning`.
            attention_mask (`torch.Tensor` of shape `(batch, frames)`, *optional*): 1 = valid frame.
            inpaint_mask, inpaint_latents (*optional*): the inpainting conditioning of the generator's input.

        Returns:
            `torch.Tensor` of shape `(batch,)`: one float32 logit per sample.
        """
        features = self.transformer(
            hidden_states,
            timestep,
            inpaint_mask=inpaint_mask,
            inpaint_latents=inpaint_latents,
            attention_mask=attention_mask,
            cross_attention_context=cross_attention_context,
            global_condition=global_condition,
            return_dict=False,
        )[0]
        pooled = masked_mean_pool(features.transpose(1, 2), attention_mask)
        return self.head(pooled.to(self.head[0].weight.dtype)).squeeze(-1).float()


# ----------------------------------------------------------------------------------------------------------------------
# Differentiable CLAP input
# ----------------------------------------------------------------------------------------------------------------------


class SincResampler(nn.Module):
    """
    Differentiable band-limited resampling with a fixed polyphase filter bank (no torchaudio).

    With `orig_freq / new_freq` reduced to `p / q` (44100 -> 48000: 147 -> 160), output sample `m` lies at input
    position `m p / q`; its `q` possible fractional phases each get one FIR kernel, the Hann-windowed sinc
    `sinc(f_c (k - m p / q)) * cos^2(pi (k - m p / q) f_c / (2 Z))` over `|k - m p / q| <= Z / f_c` input samples,
    `f_c = rolloff * min(p, q) / p` (cut-off relative to the input rate), gain `f_c`. The `q` kernels are applied
    as one strided `conv1d` (stride `p`), and the phases are interleaved. This is the standard windowed-sinc
    resampler (the default method of `torchaudio.functional.resample`); the signal is zero-padded at both ends.
    Gradients flow to the input; the kernels are constants.

    Args:
        orig_freq (`int`): input rate (44100).
        new_freq (`int`): output rate (48000 for CLAP).
        zero_crossings (`int`, defaults to 16): half-width of the sinc in zero crossings.
        rolloff (`float`, defaults to 0.945): cut-off as a fraction of the lower Nyquist frequency.
    """

    def __init__(self, orig_freq: int, new_freq: int, zero_crossings: int = 16, rolloff: float = 0.945):
        super().__init__()
        if orig_freq <= 0 or new_freq <= 0:
            raise ValueError(f"`orig_freq` and `new_freq` must be positive, got {orig_freq} and {new_freq}.")
        divisor = math.gcd(int(orig_freq), int(new_freq))
        self.orig, self.new = int(orig_freq) // divisor, int(new_freq) // divisor
        cutoff = rolloff * min(self.orig, self.new)  # in units of 1 / (orig * new) of the common grid
        self.width = math.ceil(zero_crossings * self.orig / cutoff)
        taps = torch.arange(-self.width, self.width + self.orig, dtype=torch.float64)[None, :] / self.orig
        phases = -torch.arange(self.new, dtype=torch.float64)[:, None] / self.new
        time = ((taps + phases) * cutoff).clamp(-zero_crossings, zero_crossings)
        window = torch.cos(time * math.pi / (2 * zero_crossings)) ** 2
        sinc = torch.where(time == 0, torch.ones_like(time), torch.sin(math.pi * time) / (math.pi * time))
        kernels = sinc * window * (cutoff / self.orig)
        self.register_buffer("kernels", kernels[:, None, :].float(), persistent=False)

    def output_length(self, num_samples: int) -> int:
        return math.ceil(self.new * int(num_samples) / self.orig)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """`(..., samples)` at `orig_freq` -> `(..., ceil(samples * new / orig))` at `new_freq`."""
        if self.orig == self.new:
            return waveform
        shape, length = waveform.shape[:-1], waveform.shape[-1]
        flat = F.pad(waveform.reshape(-1, 1, length), (self.width, self.width + self.orig))
        resampled = F.conv1d(flat, self.kernels.to(flat.dtype), stride=self.orig)
        resampled = resampled.transpose(1, 2).reshape(flat.shape[0], -1)[:, : self.output_length(length)]
        return resampled.reshape(*shape, -1)


class ClapLogMel(nn.Module):
    """
    The log-mel input features of `transformers.ClapFeatureExtractor`, computed in torch so that gradients reach the
    waveform.

    Per clip (mono, at the extractor's `sampling_rate`), as `ClapFeatureExtractor._get_input_mel`:

    1. Clips shorter than `max_length_s` are padded as `padding` says (`"repeatpad"`: tiled a whole number of times,
       then zero-padded; `"repeat"`: tiled and cut; `"pad"`: zero-padded). Longer clips are cut to their first
       `max_length_s` seconds (the extractor takes random crops; a fixed crop keeps training deterministic).
    2. Power spectrogram: periodic Hann window of `fft_window_size`, hop `hop_length`, centred frames with reflect
       padding, then the extractor's own mel filter bank (HTK, unnormalised for `truncation="fusion"`; Slaney for
       `"rand_trunc"`), floored at 1e-10, and `10 log10` (dB, reference 1).
    3. `"fusion"`: the mel is repeated on 4 channels and `is_longer` is False (the extractor's layout for clips that
       are not longer than `max_length_s`; its random `is_longer=True` for one clip per batch is not reproduced).
       `"rand_trunc"`: one channel.

    Args:
        feature_extractor (`transformers.ClapFeatureExtractor`): the CLAP model's extractor (its settings and filters).
    """

    def __init__(self, feature_extractor):
        super().__init__()
        self.sampling_rate = int(feature_extractor.sampling_rate)
        self.fft_window_size = int(feature_extractor.fft_window_size)
        self.hop_length = int(feature_extractor.hop_length)
        self.max_length = int(feature_extractor.nb_max_samples)
        self.truncation = feature_extractor.truncation
        self.padding = feature_extractor.padding
        if self.truncation not in ("fusion", "rand_trunc"):
            raise ValueError(f"CLAP `truncation` must be 'fusion' or 'rand_trunc', got {self.truncation!r}.")
        if self.padding not in ("repeatpad", "repeat", "pad"):
            raise ValueError(f"CLAP `padding` must be 'repeatpad', 'repeat' or 'pad', got {self.padding!r}.")
        filters = (
            feature_extractor.mel_filters if self.truncation == "fusion" else feature_extractor.mel_filters_slaney
        )
        self.register_buffer("mel_filters", torch.from_numpy(np.asarray(filters, dtype=np.float32)), persistent=False)
        self.register_buffer("window", torch.hann_window(self.fft_window_size, periodic=True), persistent=False)

    def _fit_length(self, waveform: torch.Tensor) -> torch.Tensor:
        length, max_length = waveform.shape[-1], self.max_length
        if length >= max_length:
            return waveform[:max_length]
        if self.padding == "repeatpad":
            waveform = waveform.repeat(max_length // length)
        elif self.padding == "repeat":
            waveform = waveform.repeat(max_length // length + 1)[:max_length]
        return F.pad(waveform, (0, max_length - waveform.shape[-1]))

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """`(samples,)` -> `(frames, mel_bins)` dB mel spectrogram (no length fitting)."""
        spectrum = torch.stft(
            waveform.float(),
            self.fft_window_size,
            hop_length=self.hop_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = spectrum.real**2 + spectrum.imag**2
        mel = (self.mel_filters.T @ power).clamp(min=1e-10)
        return (10.0 * torch.log10(mel)).T

    def forward(self, waveforms: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            waveforms (list of `torch.Tensor` of shape `(samples,)`): mono clips at `sampling_rate`, any lengths.

        Returns:
            `(input_features, is_longer)`: `(batch, 4 or 1, frames, mel_bins)` float32 and `(batch, 1)` bool, the
            arguments of `ClapModel.get_audio_features`.
        """
        features = []
        for waveform in waveforms:
            if waveform.ndim != 1 or waveform.shape[0] == 0:
                raise ValueError(f"Each waveform must be a non-empty (samples,) tensor, got {tuple(waveform.shape)}.")
            mel = self.log_mel(self._fit_length(waveform))
            features.append(mel.expand(4, -1, -1) if self.truncation == "fusion" else mel[None])
        input_features = torch.stack(features)
        is_longer = torch.zeros(len(waveforms), 1, dtype=torch.bool, device=input_features.device)
        return input_features, is_longer


class ClapAlignment(nn.Module):
    """
    Frozen CLAP scorer of the generator's audio: `loss(audio, num_samples, prompts)` is [`clap_alignment_loss`]
    between CLAP's audio embedding of each (differentiably resampled, mono-mixed) clip and CLAP's text embedding of
    its prompt.

    Args:
        clap_model_path (`str`): a local folder with a `transformers.ClapModel`, its feature extractor and tokenizer.
        audio_sampling_rate (`int`, defaults to 44100): rate of the audio passed to `loss`.
    """

    def __init__(self, clap_model_path: str, audio_sampling_rate: int = 44100):
        super().__init__()
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        self.model = ClapModel.from_pretrained(clap_model_path, local_files_only=True).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(clap_model_path, local_files_only=True)
        feature_extractor = ClapFeatureExtractor.from_pretrained(clap_model_path, local_files_only=True)
        self.features = ClapLogMel(feature_extractor)
        self.resampler = SincResampler(audio_sampling_rate, self.features.sampling_rate)

    def train(self, mode: bool = True):
        # CLAP stays in eval mode (its batch norm and dropout must not change).
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def text_embeds(self, prompts: List[str], device: torch.device) -> torch.Tensor:
        max_length = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings - 2)
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(
            device
        )
        output = self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        return output.pooler_output

    def audio_embeds(self, audio: torch.Tensor, num_samples: Sequence[int]) -> torch.Tensor:
        """`audio` `(batch, channels, samples)` at `audio_sampling_rate`; each clip is cut to its `num_samples`."""
        mono = audio.float().mean(dim=1)
        clips = [self.resampler(mono[i, : int(n)]) for i, n in enumerate(num_samples)]
        input_features, is_longer = self.features(clips)
        dtype = next(self.model.parameters()).dtype
        output = self.model.get_audio_features(input_features=input_features.to(dtype), is_longer=is_longer)
        return output.pooler_output

    def loss(self, audio: torch.Tensor, num_samples: Sequence[int], prompts: List[str]) -> torch.Tensor:
        return clap_alignment_loss(self.audio_embeds(audio, num_samples), self.text_embeds(prompts, audio.device))
