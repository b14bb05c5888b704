"""Audio and length helpers shared by the Stable Audio 3 pipelines (official `generate()` length rules)."""

import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import soxr
import torch


AudioLike = Union[np.ndarray, torch.Tensor]


def latent_frames_for_duration(
    max_seconds: float,
    sampling_rate: int,
    downsampling_ratio: int,
    latent_alignment: int,
    max_sample_size: int,
    headroom_seconds: float,
) -> int:
    """Latent length `T` the official `generate()` uses for a batch whose longest duration is `max_seconds`.

    `n = int((max_seconds + headroom) * sr)`, rounded up to a multiple of the downsampling ratio and then of
    `downsampling_ratio * latent_alignment`, capped at `max_sample_size` (`stable_audio_3/model.py`, `_adapt_sample_size`).
    """
    num_samples = int((max_seconds + headroom_seconds) * sampling_rate)
    num_samples = math.ceil(num_samples / downsampling_ratio) * downsampling_ratio
    align = downsampling_ratio * latent_alignment
    num_samples = math.ceil(num_samples / align) * align
    return min(num_samples, max_sample_size) // downsampling_ratio


def valid_latent_frames(
    seconds: Sequence[float], sampling_rate: int, downsampling_ratio: int, num_frames: int, headroom_seconds: float
) -> List[int]:
    """Valid latent frames per sample: `ceil(int(s * sr) / ratio) + int(headroom * sr / ratio)`, capped at `T`.

    (`stable_audio_3/inference/sampling.py`, `sample_diffusion` padding mask.)
    """
    headroom = int(headroom_seconds * sampling_rate / downsampling_ratio)
    return [min(math.ceil(int(s * sampling_rate) / downsampling_ratio) + headroom, num_frames) for s in seconds]


def audio_to_tensor(audio: AudioLike, name: str = "audio") -> torch.Tensor:
    """Brings a user clip to a float32 tensor of shape (channels, samples).

    Accepts (samples,), (channels, samples) with channels <= 8, or a soundfile-style (samples, channels) array;
    integer PCM is scaled to [-1, 1].
    """
    if isinstance(audio, np.ndarray):
        if audio.dtype == np.int16:
            audio = audio.astype(np.float32) / 32767.0
        elif audio.dtype == np.int32:
            audio = audio.astype(np.float32) / 2147483647.0
        elif not np.issubdtype(audio.dtype, np.floating):
            raise ValueError(f"`{name}` must hold float or int16/int32 PCM samples, got dtype {audio.dtype}.")
        audio = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    elif isinstance(audio, torch.Tensor):
        if not (audio.is_floating_point()):
            raise ValueError(f"`{name}` must be a floating point tensor, got dtype {audio.dtype}.")
        audio = audio.detach().float().cpu()
    else:
        raise ValueError(f"`{name}` must be a numpy array or a torch tensor, got {type(audio).__name__}.")

    if audio.ndim == 3 and audio.shape[0] == 1:
        audio = audio[0]
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2:
        raise ValueError(
            f"`{name}` must have shape (samples,), (channels, samples) or (1, channels, samples), got "
            f"{tuple(audio.shape)}."
        )
    if audio.shape[0] > 8 and audio.shape[1] <= 8:
        audio = audio.T  # soundfile layout (samples, channels)
    if audio.shape[0] > 8:
        raise ValueError(
            f"`{name}` has {audio.shape[0]} channels (shape {tuple(audio.shape)}); pass (channels, samples) with at "
            "most 8 channels."
        )
    if audio.shape[0] == 0 or audio.shape[-1] == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(audio.shape)}); pass at least one sample.")
    if not torch.isfinite(audio).all():
        raise ValueError(f"`{name}` contains NaN or infinite samples; clean the clip first.")
    return audio.contiguous()


def prepare_reference_audio(
    audio: AudioLike, sampling_rate: int, target_rate: int, target_length: int, name: str = "audio"
) -> torch.Tensor:
    """Resamples (soxr), zero-pads or crops from the start to `target_length` and makes stereo: (1, 2, target_length).

    Mirrors the official `prepare_audio` (`stable_audio_3/inference/audio_utils.py`), with soxr instead of torchaudio.
    """
    if not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
        raise ValueError(f"`sampling_rate` must be a positive integer (Hz), got {sampling_rate!r}.")
    audio = audio_to_tensor(audio, name)
    if sampling_rate != target_rate:
        resampled = soxr.resample(audio.T.numpy(), int(sampling_rate), int(target_rate), quality="VHQ")
        audio = torch.from_numpy(np.ascontiguousarray(resampled.T, dtype=np.float32))
        if audio.ndim == 1:
            audio = audio[None]
    out = audio.new_zeros(audio.shape[0], target_length)
    length = min(audio.shape[-1], target_length)
    out[:, :length] = audio[:, :length]
    if out.shape[0] == 1:
        out = out.repeat(2, 1)
    elif out.shape[0] > 2:
        out = out[:2]
    return out[None]


def seconds_of(audio: AudioLike, sampling_rate: int, name: str = "audio") -> float:
    return audio_to_tensor(audio, name).shape[-1] / float(sampling_rate)


def normalize_regions(
    regions: Optional[Union[Tuple[float, float], Sequence[Tuple[float, float]]]], clip_seconds: float, name: str
) -> List[Tuple[float, float]]:
    """Validates `[(start, end), ...]` in seconds: inside `[0, clip_seconds]`, start < end, no overlaps."""
    if regions is None:
        return []
    if (
        isinstance(regions, (tuple, list))
        and len(regions) == 2
        and all(isinstance(v, (int, float, np.floating)) for v in regions)
    ):
        regions = [tuple(regions)]
    out = []
    for region in regions:
        if not (isinstance(region, (tuple, list)) and len(region) == 2):
            raise ValueError(f"`{name}` must be a list of (start, end) pairs in seconds, got {regions!r}.")
        start, end = float(region[0]), float(region[1])
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"`{name}` region {region!r} is not finite; give start and end in seconds.")
        if start < 0 or end > clip_seconds + 1e-9:
            raise ValueError(
                f"`{name}` region ({start}, {end}) lies outside the clip, which spans 0 to {clip_seconds:.3f} s; "
                "keep every region inside the clip."
            )
        if start >= end:
            raise ValueError(
                f"`{name}` region ({start}, {end}) is empty or reversed; give it as (start, end) with start < end."
            )
        out.append((start, end))
    out.sort()
    for (s0, e0), (s1, e1) in zip(out, out[1:]):
        if s1 < e0:
            raise ValueError(
                f"`{name}` regions ({s0}, {e0}) and ({s1}, {e1}) overlap; merge them into one region ({s0}, "
                f"{max(e0, e1)})."
            )
    return out
