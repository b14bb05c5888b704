"""Losses for training the SAME autoencoder, and the small heads some of them train jointly with it.

The official repository ships no SAME training code; its model overview names five losses (spectral reconstruction,
adversarial, diffusion alignment, semantic regression for pitch and stereo image, contrastive latent). Each is a small
pure function here; the exact form of each is our choice and is documented on the function.

Shapes: audio `(batch, channels, samples)`, latents `(batch, latent_channels, frames)`.
"""

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------------------------------------
# Spectral reconstruction
# ----------------------------------------------------------------------------------------------------------------------


def with_mid_side(audio: torch.Tensor) -> torch.Tensor:
    """Stereo `(B, 2, N)` -> `(B, 4, N)`: left, right, mid `(L + R) / 2` and side `(L - R) / 2`."""
    if audio.ndim != 3 or audio.shape[1] != 2:
        raise ValueError(f"`audio` must be stereo with shape (batch, 2, samples), got {tuple(audio.shape)}.")
    left, right = audio[:, 0:1], audio[:, 1:2]
    return torch.cat([audio, (left + right) / 2, (left - right) / 2], dim=1)


def stft_magnitude(audio: torch.Tensor, n_fft: int, hop_length: Optional[int] = None, eps: float = 1e-7):
    """
    Magnitude STFT of every channel: `(B, C, N)` -> `(B, C, n_fft // 2 + 1, frames)`.

    Periodic Hann window of `n_fft`, hop `n_fft // 4` by default, centred frames with zero padding, no normalisation.
    The magnitude is `sqrt(max(|X|^2, eps))` so that its gradient stays finite at zero.
    """
    hop_length = n_fft // 4 if hop_length is None else hop_length
    batch, channels, samples = audio.shape
    spectrum = torch.stft(
        audio.float().reshape(batch * channels, samples),
        n_fft,
        hop_length,
        window=torch.hann_window(n_fft, device=audio.device),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    power = spectrum.real.square() + spectrum.imag.square()
    return power.clamp(min=eps).sqrt().reshape(batch, channels, *spectrum.shape[-2:])


def multi_resolution_stft_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    fft_sizes: Sequence[int] = (2048, 1024, 512, 256, 128),
    use_mid_side: bool = True,
    eps: float = 1e-7,
) -> torch.Tensor:
    """
    Multi-resolution STFT loss (Yamamoto et al., 2020, Parallel WaveGAN §2.3) on stereo plus mid/side.

    For every STFT size `n` (hop `n // 4`), with magnitudes `S` of `target` and `Ŝ` of `prediction` (see
    [`stft_magnitude`]) over the channels L, R, M, S (or the input channels if `use_mid_side=False`):
    `spectral convergence ||S - Ŝ||_F / ||S||_F` + `mean |log S - log Ŝ|`. The result is the mean over sizes.
    A perfect reconstruction gives exactly 0.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"`prediction` and `target` must have the same shape, got {tuple(prediction.shape)} and "
            f"{tuple(target.shape)}."
        )
    if use_mid_side:
        prediction, target = with_mid_side(prediction), with_mid_side(target)
    losses = []
    for n_fft in fft_sizes:
        target_mag = stft_magnitude(target, n_fft, eps=eps)
        pred_mag = stft_magnitude(prediction, n_fft, eps=eps)
        convergence = torch.linalg.vector_norm(target_mag - pred_mag) / torch.linalg.vector_norm(target_mag)
        log_distance = (target_mag.log() - pred_mag.log()).abs().mean()
        losses.append(convergence + log_distance)
    return torch.stack(losses).mean()


def frame_level_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    frame_length: int = 2048,
    hop_length: int = 512,
    floor_db: float = -60.0,
) -> torch.Tensor:
    """
    Per-channel loudness envelope loss: `mean |level(prediction) - level(target)| / 20` over channels and frames.

    `level` is the RMS of each `frame_length`-sample frame (hop `hop_length`, zero padding at the end) of every input
    channel in dB, floored at `floor_db` (-60 dB: where both clips are silent the loss is 0 and its gradient too). It is
    measured on the channels themselves (L and R, not mid/side), so it pins what the spectral losses leave loose on
    a small model: the output level, the level difference of the channels (stereo position) and where the sound ends.
    The result is in decades (1 = 20 dB off everywhere); a perfect reconstruction gives exactly 0.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"`prediction` and `target` must have the same shape, got {tuple(prediction.shape)} and "
            f"{tuple(target.shape)}."
        )
    if prediction.ndim != 3:
        raise ValueError(f"`prediction` must be (batch, channels, samples), got {tuple(prediction.shape)}.")
    floor = 10.0 ** (floor_db / 10.0)  # in power

    def level_db(audio):
        samples = audio.shape[-1]
        padding = (-(samples - frame_length) % hop_length) if samples > frame_length else frame_length - samples
        frames = F.pad(audio.float(), (0, padding)).unfold(-1, frame_length, hop_length)
        return 10.0 * frames.square().mean(-1).clamp(min=floor).log10()

    return (level_db(prediction) - level_db(target)).abs().mean() / 20.0


def waveform_l1_loss(prediction: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """
    Relative waveform L1: `sum |prediction - target| / (sum |target| + eps)` over the whole batch, all channels.

    The spectral losses see magnitudes only, so a small decoder can satisfy them with the wrong phase: periodic sounds
    (tones) that do not line up across patches and a stereo image averaged to mono. This term compares the samples
    themselves. Normalised by the target's mean absolute value, it reads the same for quiet and loud batches: 0 for a
    perfect reconstruction, 1 for silence in place of the target, 0.5 for a gain of 1/2, 2 for a sign flip.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"`prediction` and `target` must have the same shape, got {tuple(prediction.shape)} and "
            f"{tuple(target.shape)}."
        )
    prediction, target = prediction.float(), target.float()
    return (prediction - target).abs().sum() / (target.abs().sum() + eps)


def hz_to_mel(frequency):
    """HTK mel scale `2595 log10(1 + f / 700)`."""
    return 2595.0 * math.log10(1.0 + frequency / 700.0)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: Optional[float] = None
) -> torch.Tensor:
    """
    Triangular mel filterbank `(n_mels, n_fft // 2 + 1)`: HTK mel scale, `n_mels + 2` equally spaced mel points between
    `f_min` and `f_max` (default Nyquist), unit peak, no area normalisation (torchaudio's `melscale_fbanks` with
    `mel_scale="htk"`, `norm=None`).
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    bin_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_points = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    hz_points = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)
    lower, center, upper = hz_points[:-2, None], hz_points[1:-1, None], hz_points[2:, None]
    rising = (bin_hz - lower) / (center - lower)
    falling = (upper - bin_hz) / (upper - center)
    return torch.minimum(rising, falling).clamp(min=0).float()


def multi_resolution_mel_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    sample_rate: int = 44100,
    fft_sizes: Sequence[int] = (2048, 1024, 512, 256, 128),
    n_mels: Sequence[int] = (160, 80, 40, 20, 10),
    use_mid_side: bool = True,
    eps: float = 1e-5,
) -> torch.Tensor:
    """
    Multi-resolution log-mel L1 loss (as in DAC, Kumar et al., 2023): for every pair `(n_fft, n_mels)`, the magnitude
    STFT (see [`stft_magnitude`]) is projected on a [`mel_filterbank`] and compared as
    `mean |log10(max(mel, eps)) - log10(max(mel̂, eps))|` over L, R, M, S; the result is the mean over resolutions.
    """
    if len(fft_sizes) != len(n_mels):
        raise ValueError(
            f"`fft_sizes` and `n_mels` must have the same length, got {len(fft_sizes)} and {len(n_mels)}."
        )
    if prediction.shape != target.shape:
        raise ValueError(
            f"`prediction` and `target` must have the same shape, got {tuple(prediction.shape)} and "
            f"{tuple(target.shape)}."
        )
    if use_mid_side:
        prediction, target = with_mid_side(prediction), with_mid_side(target)
    losses = []
    for n_fft, mels in zip(fft_sizes, n_mels):
        filters = mel_filterbank(sample_rate, n_fft, mels).to(target.device)
        target_mel = torch.einsum("mf,bcft->bcmt", filters, stft_magnitude(target, n_fft))
        pred_mel = torch.einsum("mf,bcft->bcmt", filters, stft_magnitude(prediction, n_fft))
        losses.append((target_mel.clamp(min=eps).log10() - pred_mel.clamp(min=eps).log10()).abs().mean())
    return torch.stack(losses).mean()


# ----------------------------------------------------------------------------------------------------------------------
# Adversarial
# ----------------------------------------------------------------------------------------------------------------------


def _check_loss_type(loss_type: str) -> None:
    if loss_type not in ("hinge", "lsgan"):
        raise ValueError(f"`loss_type` must be 'hinge' or 'lsgan', got {loss_type!r}.")


def discriminator_loss(
    real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor], loss_type: str = "hinge"
) -> torch.Tensor:
    """
    Discriminator loss, averaged over discriminators. `hinge`: `mean(relu(1 - D(x))) + mean(relu(1 + D(x̂)))`;
    `lsgan`: `mean((1 - D(x))^2) + mean(D(x̂)^2)`.
    """
    _check_loss_type(loss_type)
    losses = []
    for real, fake in zip(real_logits, fake_logits):
        if loss_type == "hinge":
            losses.append(F.relu(1 - real).mean() + F.relu(1 + fake).mean())
        else:
            losses.append((1 - real).square().mean() + fake.square().mean())
    return torch.stack(losses).mean()


def generator_adversarial_loss(fake_logits: Sequence[torch.Tensor], loss_type: str = "hinge") -> torch.Tensor:
    """
    Generator loss, averaged over discriminators. `hinge`: `mean(relu(1 - D(x̂)))` (EnCodec's bounded form);
    `lsgan`: `mean((1 - D(x̂))^2)`.
    """
    _check_loss_type(loss_type)
    losses = []
    for fake in fake_logits:
        losses.append(F.relu(1 - fake).mean() if loss_type == "hinge" else (1 - fake).square().mean())
    return torch.stack(losses).mean()


def feature_matching_loss(
    real_features: Sequence[Sequence[torch.Tensor]], fake_features: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """
    Feature matching (Kumar et al., 2019, MelGAN §3.2): `mean |f(x̂) - f(x)|` per hidden layer of every discriminator,
    with the real features detached, averaged over all (discriminator, layer) pairs.
    """
    losses = []
    for real_layers, fake_layers in zip(real_features, fake_features):
        for real, fake in zip(real_layers, fake_layers):
            losses.append((fake - real.detach()).abs().mean())
    return torch.stack(losses).mean()


# ----------------------------------------------------------------------------------------------------------------------
# Diffusion alignment
# ----------------------------------------------------------------------------------------------------------------------


def timestep_features(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features `[cos(2π t f), sin(2π t f)]` of `t` in [0, 1], `dim / 2` frequencies log-spaced 1 .. 1000."""
    frequencies = torch.logspace(0, 3, dim // 2, device=timestep.device, dtype=torch.float32)
    angles = 2 * math.pi * timestep.float()[:, None] * frequencies
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class LatentDenoiser(nn.Module):
    """
    A small velocity-prediction network on latents, trained jointly with the autoencoder for the diffusion-alignment
    loss: 1x1 conv in, `num_layers` residual blocks `x + conv(SiLU(conv(SiLU(x)) + temb))` (kernel 3), 1x1 conv out;
    `temb` is an MLP of [`timestep_features`].

    Args:
        latent_channels (`int`): latent channels.
        hidden_channels (`int`, defaults to 128): width.
        num_layers (`int`, defaults to 2): residual blocks.
    """

    def __init__(self, latent_channels: int, hidden_channels: int = 128, num_layers: int = 2):
        super().__init__()
        self.time_embedding = nn.Sequential(
            nn.Linear(64, hidden_channels), nn.SiLU(), nn.Linear(hidden_channels, hidden_channels)
        )
        self.conv_in = nn.Conv1d(latent_channels, hidden_channels, 1)
        self.blocks = nn.ModuleList(
            [
                nn.ModuleList(
                    [
                        nn.Conv1d(hidden_channels, hidden_channels, 3, padding=1),
                        nn.Conv1d(hidden_channels, hidden_channels, 3, padding=1),
                    ]
                )
                for _ in range(num_layers)
            ]
        )
        self.conv_out = nn.Conv1d(hidden_channels, latent_channels, 1)

    def forward(self, noisy_latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Predicts the velocity `(B, C, T)` from `noisy_latents` `(B, C, T)` and `timestep` `(B,)` in [0, 1]."""
        temb = self.time_embedding(timestep_features(timestep, 64).to(noisy_latents.dtype))[:, :, None]
        hidden_states = self.conv_in(noisy_latents)
        for conv1, conv2 in self.blocks:
            hidden_states = hidden_states + conv2(F.silu(conv1(F.silu(hidden_states)) + temb))
        return self.conv_out(F.silu(hidden_states))


def flow_matching_alignment_loss(
    denoiser: nn.Module,
    latents: torch.Tensor,
    noise: Optional[torch.Tensor] = None,
    timestep: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """
    Diffusion-alignment loss: the rectified-flow objective of the SA3 DiT (reference §3.5), applied by a small
    `denoiser` to the autoencoder's latents `z`:

        x_t = (1 - t) z + t ε,   v = ε - z,   loss = mean((denoiser(x_t, t) - v)^2)

    with `t ~ U(0, 1)` per sample (the official DiT's default sampler is uniform) and `ε ~ N(0, I)` unless given.
    Nothing is detached: the gradient reaches the encoder through both `x_t` and the target `v`, so the encoder is
    pushed towards latents that a diffusion model denoises easily. Shrinking the latents would make the task trivial;
    the official soft-norm regulariser (`SAMESoftNormBottleneck.regularization_loss`, `ae/kl` in the training
    script) keeps them near zero mean and unit variance.
    """
    if noise is None:
        noise = torch.randn_like(latents)
    if timestep is None:
        timestep = torch.rand(latents.shape[0], device=latents.device, dtype=latents.dtype)
    t = timestep.to(latents.dtype)[:, None, None]
    noisy_latents = (1 - t) * latents + t * noise
    velocity = noise - latents
    return (denoiser(noisy_latents, timestep) - velocity).square().mean()


# ----------------------------------------------------------------------------------------------------------------------
# Semantic regression (chroma and interaural level difference)
# ----------------------------------------------------------------------------------------------------------------------


def _frame_power_spectrum(audio: torch.Tensor, frame_length: int) -> torch.Tensor:
    """`(B, C, N)` -> power `|rfft(hann * frame)|^2` of non-overlapping frames, `(B, C, frames, frame_length//2+1)`;
    the audio is zero-padded to `ceil(N / frame_length)` frames."""
    frames = -(-audio.shape[-1] // frame_length)
    audio = F.pad(audio.float(), (0, frames * frame_length - audio.shape[-1]))
    framed = audio.unflatten(-1, (frames, frame_length)) * torch.hann_window(frame_length, device=audio.device)
    spectrum = torch.fft.rfft(framed, dim=-1)
    return spectrum.real.square() + spectrum.imag.square()


def chroma_targets(
    audio: torch.Tensor,
    sample_rate: int = 44100,
    frame_length: int = 4096,
    f_min: float = 55.0,
    f_max: float = 5000.0,
    eps: float = 1e-10,
) -> torch.Tensor:
    """
    Chroma of every latent frame, `(B, 12, ceil(N / frame_length))`, with plain DSP: the channels are averaged, cut
    into non-overlapping Hann-windowed frames of `frame_length` samples (one per latent frame), and the power of every
    FFT bin with frequency `f` in `[f_min, f_max]` is added to pitch class `round(12 log2(f / 440) + 9) mod 12`
    (0 = C, 9 = A). Each frame is divided by its largest class (`max(·, eps)`), so values are in [0, 1].
    """
    power = _frame_power_spectrum(audio.mean(dim=1, keepdim=True), frame_length)[:, 0]  # (B, frames, bins)
    frequencies = torch.arange(power.shape[-1], device=audio.device) * sample_rate / frame_length
    in_range = (frequencies >= f_min) & (frequencies <= f_max)
    pitch_class = torch.round(12 * torch.log2(frequencies.clamp(min=1e-3) / 440.0) + 9).long() % 12
    assignment = F.one_hot(pitch_class, 12).float() * in_range[:, None]  # (bins, 12)
    chroma = power @ assignment  # (B, frames, 12)
    chroma = chroma / chroma.amax(dim=-1, keepdim=True).clamp(min=eps)
    return chroma.transpose(1, 2)


def interaural_level_difference(
    audio: torch.Tensor,
    sample_rate: int = 44100,
    frame_length: int = 4096,
    band_edges_hz: Sequence[float] = (0.0, 500.0, 2000.0, 8000.0, 22050.0),
    max_db: float = 20.0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """
    Interaural level difference per latent frame and frequency band, `(B, bands, ceil(N / frame_length))`, in
    [-1, 1]: with the band energies `E_L`, `E_R` (power of the FFT bins with `lo <= f < hi` of non-overlapping Hann
    frames of `frame_length` samples), `clamp(10 log10((E_L + eps) / (E_R + eps)), ±max_db) / max_db`. Positive =
    louder on the left. The last band also includes its upper edge.
    """
    if audio.shape[1] != 2:
        raise ValueError(f"`audio` must be stereo (batch, 2, samples), got {tuple(audio.shape)}.")
    power = _frame_power_spectrum(audio, frame_length)  # (B, 2, frames, bins)
    frequencies = torch.arange(power.shape[-1], device=audio.device) * sample_rate / frame_length
    bands = []
    for i, (low, high) in enumerate(zip(band_edges_hz[:-1], band_edges_hz[1:])):
        last = i == len(band_edges_hz) - 2
        bands.append((frequencies >= low) & ((frequencies <= high) if last else (frequencies < high)))
    band_matrix = torch.stack(bands, dim=1).float()  # (bins, bands)
    energy = power @ band_matrix  # (B, 2, frames, bands)
    ild = 10 * torch.log10((energy[:, 0] + eps) / (energy[:, 1] + eps))
    return (ild.clamp(-max_db, max_db) / max_db).transpose(1, 2)


class SemanticRegressionHead(nn.Module):
    """Per-frame regressor on latents: conv(kernel 3) -> SiLU -> conv(kernel 1), `(B, C, T)` -> `(B, outputs, T)`."""

    def __init__(self, latent_channels: int, num_outputs: int, hidden_channels: int = 128):
        super().__init__()
        self.conv_in = nn.Conv1d(latent_channels, hidden_channels, 3, padding=1)
        self.conv_out = nn.Conv1d(hidden_channels, num_outputs, 1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.conv_in(latents)))


def frame_regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """
    MSE between per-frame predictions `(B, K, T_latent)` and DSP targets `(B, K, T_audio)`. Latent frames past the
    audio (SAME-S rounds the frame count up to even) have no target and are ignored: `T = min(T_latent, T_audio)`.
    """
    frames = min(prediction.shape[-1], target.shape[-1])
    return (prediction[..., :frames] - target[..., :frames].to(prediction.dtype)).square().mean()


# ----------------------------------------------------------------------------------------------------------------------
# Contrastive latent alignment
# ----------------------------------------------------------------------------------------------------------------------


def augment_audio(
    audio: torch.Tensor,
    max_gain_db: float = 6.0,
    noise_db_range: Tuple[float, float] = (-50.0, -30.0),
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """
    A random view of each clip for the contrastive loss: gain `U(-max_gain_db, 0)` dB, polarity flipped with
    probability 1/2, and white noise at `U(*noise_db_range)` dB relative to the clip's RMS.
    """
    batch = audio.shape[0]

    def uniform(low, high):
        return torch.rand(batch, 1, 1, generator=generator, device=audio.device) * (high - low) + low

    gain = 10 ** (uniform(-max_gain_db, 0.0) / 20)
    polarity = torch.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0)
    rms = audio.square().mean(dim=(1, 2), keepdim=True).sqrt()
    noise_std = rms * 10 ** (uniform(*noise_db_range) / 20)
    noise = torch.randn(audio.shape, generator=generator, device=audio.device, dtype=audio.dtype)
    return (audio * polarity + noise * noise_std) * gain


def info_nce_loss(embeddings_a: torch.Tensor, embeddings_b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """
    Symmetric InfoNCE (Oord et al., 2018; CLIP form): rows of `embeddings_a` and `embeddings_b` `(B, D)` are
    L2-normalised, `logits = a @ b.T / temperature`, and the loss is the mean of the cross-entropies of rows and
    columns with the matching index as the label. Views of the same clip are pulled together, other clips pushed
    apart. Needs `B >= 2`.
    """
    if embeddings_a.shape != embeddings_b.shape or embeddings_a.ndim != 2:
        raise ValueError(
            "`embeddings_a` and `embeddings_b` must both have shape (batch, dim), got "
            f"{tuple(embeddings_a.shape)} and {tuple(embeddings_b.shape)}."
        )
    if embeddings_a.shape[0] < 2:
        raise ValueError(f"InfoNCE needs a batch of at least 2 clips, got {embeddings_a.shape[0]}.")
    a = F.normalize(embeddings_a.float(), dim=-1)
    b = F.normalize(embeddings_b.float(), dim=-1)
    logits = a @ b.T / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class ContrastiveProjection(nn.Module):
    """Clip embedding for the contrastive loss: latents `(B, C, T)` -> mean over time -> Linear -> SiLU -> Linear."""

    def __init__(self, latent_channels: int, embedding_dim: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(latent_channels, embedding_dim), nn.SiLU(), nn.Linear(embedding_dim, embedding_dim)
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.mlp(latents.mean(dim=-1))


class SAMEAuxiliaryHeads(nn.Module):
    """
    The small networks trained jointly with the autoencoder on its latents; a head is only built when its loss is
    used (`None` otherwise), so data-parallel training sees no unused parameters.

    Args:
        latent_channels (`int`): latent channels of the autoencoder.
        hidden_channels (`int`, defaults to 128): width of every head.
        diffusion (`bool`): build the [`LatentDenoiser`].
        chroma (`bool`): build the chroma [`SemanticRegressionHead`] (12 outputs).
        ild (`bool`): build the ILD [`SemanticRegressionHead`] (`num_ild_bands` outputs).
        contrastive (`bool`): build the [`ContrastiveProjection`].
        num_ild_bands (`int`, defaults to 4): ILD bands.
    """

    def __init__(
        self,
        latent_channels: int,
        hidden_channels: int = 128,
        diffusion: bool = True,
        chroma: bool = True,
        ild: bool = True,
        contrastive: bool = True,
        num_ild_bands: int = 4,
    ):
        super().__init__()
        self.denoiser = LatentDenoiser(latent_channels, hidden_channels) if diffusion else None
        self.chroma = SemanticRegressionHead(latent_channels, 12, hidden_channels) if chroma else None
        self.ild = SemanticRegressionHead(latent_channels, num_ild_bands, hidden_channels) if ild else None
        self.projection = ContrastiveProjection(latent_channels, hidden_channels) if contrastive else None
