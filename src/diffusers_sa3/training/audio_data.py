"""A folder of audio files as a PyTorch data set: any rate / channel count in, fixed-rate float32 segments out.

Files are read with `soundfile` and resampled with `soxr`. Unreadable files are found when the data set is built
(header check) and skipped with one warning that lists them.
"""

import math
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile as sf
import soxr
import torch
from diffusers.utils import logging
from torch.utils.data import Dataset


logger = logging.get_logger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")


def convert_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """
    Converts `(samples, in_channels)` audio to `channels` channels: mono is repeated, extra channels are dropped
    (the first `channels` are kept), and `channels=1` averages all input channels.
    """
    if audio.shape[1] == channels:
        return audio
    if channels == 1:
        return audio.mean(axis=1, keepdims=True)
    if audio.shape[1] == 1:
        return np.repeat(audio, channels, axis=1)
    if audio.shape[1] > channels:
        return audio[:, :channels]
    raise ValueError(f"Cannot convert {audio.shape[1]}-channel audio to `channels`={channels}.")


def load_audio(
    path: str,
    sample_rate: int = 44100,
    channels: int = 2,
    start: Optional[int] = None,
    num_samples: Optional[int] = None,
) -> torch.Tensor:
    """
    Reads an audio file as a `(channels, samples)` float32 tensor at `sample_rate`.

    Args:
        path (`str`): the audio file.
        sample_rate (`int`, defaults to 44100): output rate; other rates are resampled with soxr ("HQ").
        channels (`int`, defaults to 2): output channels (see [`convert_channels`]).
        start (`int`, *optional*): first output sample to read (in output-rate samples); only that region of the file
            is decoded.
        num_samples (`int`, *optional*): number of output samples to read from `start` (fewer at the end of the file).
    """
    info = sf.info(path)
    ratio = info.samplerate / sample_rate
    src_start = 0 if start is None else int(math.floor(start * ratio))
    # A few extra source frames keep the resampler's edge effects out of the requested region.
    src_stop = None if num_samples is None else min(info.frames, src_start + int(math.ceil(num_samples * ratio)) + 16)
    audio, file_rate = sf.read(path, start=src_start, stop=src_stop, dtype="float32", always_2d=True)
    audio = convert_channels(audio, channels)
    if file_rate != sample_rate and audio.shape[0] > 0:
        audio = soxr.resample(audio, file_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    if num_samples is not None:
        audio = audio[:num_samples]
    return torch.from_numpy(np.ascontiguousarray(audio.T))


def find_audio_files(root: str, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> List[str]:
    """Sorted paths of the files under `root` (recursively) whose extension is in `extensions` (case-insensitive)."""
    extensions = tuple(e.lower() for e in extensions)
    paths = []
    for directory, _, names in os.walk(root):
        paths.extend(os.path.join(directory, name) for name in names if name.lower().endswith(extensions))
    return sorted(paths)


def check_audio_files(paths: Sequence[str]) -> Tuple[List[Tuple[str, object]], List[str]]:
    """
    Reads the header of every file. Returns `(readable, bad)`: `(path, soundfile info)` pairs of the files that open
    and hold at least one frame, and a `"path (reason)"` line per other file. Logs one warning listing the bad files.
    """
    readable, bad = [], []
    for path in paths:
        try:
            info = sf.info(path)
            if info.frames <= 0 or info.samplerate <= 0:
                raise RuntimeError("no audio frames")
        except Exception as error:  # soundfile raises several error types for unreadable files
            bad.append(f"{path} ({type(error).__name__}: {str(error).strip()[:120]})")
            continue
        readable.append((path, info))
    if bad:
        logger.warning(f"Skipping {len(bad)} unreadable audio file(s):\n  " + "\n  ".join(bad))
    return readable, bad


class AudioFolderDataset(Dataset):
    """
    The audio files of a folder (searched recursively), as fixed-length segments at one sampling rate.

    Each item is a dict: `audio` `(channels, segment_samples)` float32 (zero-padded at the end when the file is
    shorter), `path` (the file), and `num_samples` (the number of valid, non-padding samples). Without
    `segment_samples`, `audio` is the whole file and the data set can only be batched with batch size 1.

    Random crops are reproducible when `seed` is set: the offset of item `index` in epoch `epoch` (see
    [`~AudioFolderDataset.set_epoch`]) comes from `numpy.random.default_rng([seed, epoch, index])`, independent of the
    order in which items are read, so a resumed run reads the same crops. Without `seed` the global torch generator is
    used.

    Args:
        root (`str` or list of `str`): a folder, or an explicit list of audio files.
        sample_rate (`int`, defaults to 44100): output sampling rate.
        channels (`int`, defaults to 2): output channels (mono is duplicated, extra channels dropped).
        segment_samples (`int`, *optional*): segment length in output samples; `None` returns whole files.
        random_crop (`bool`, defaults to `True`): crop at a random offset; `False` always takes the start.
        crop_multiple (`int`, defaults to 1): random offsets are multiples of this many output samples (e.g. a
            model's latent frame, for material whose events sit on that grid).
        extensions (`Sequence[str]`, defaults to `AUDIO_EXTENSIONS`): file extensions searched in a folder.
        seed (`int`, *optional*): seed of the random crops.
    """

    def __init__(
        self,
        root: Union[str, Sequence[str]],
        sample_rate: int = 44100,
        channels: int = 2,
        segment_samples: Optional[int] = None,
        random_crop: bool = True,
        extensions: Sequence[str] = AUDIO_EXTENSIONS,
        seed: Optional[int] = None,
        crop_multiple: int = 1,
    ):
        if isinstance(root, str):
            if not os.path.isdir(root):
                raise ValueError(f"`root` must be a folder of audio files or a list of files, got {root!r}.")
            candidates = find_audio_files(root, extensions)
        else:
            candidates = list(root)
        if segment_samples is not None and segment_samples <= 0:
            raise ValueError(f"`segment_samples` must be a positive number of samples or None, got {segment_samples}.")
        if channels <= 0:
            raise ValueError(f"`channels` must be positive, got {channels}.")
        if isinstance(crop_multiple, bool) or not isinstance(crop_multiple, int) or crop_multiple < 1:
            raise ValueError(
                f"`crop_multiple` must be a positive whole number of samples (1: any offset), got {crop_multiple!r}."
            )

        self.sample_rate = sample_rate
        self.channels = channels
        self.segment_samples = segment_samples
        self.random_crop = random_crop
        self.crop_multiple = crop_multiple
        self.seed = seed
        self.epoch = 0

        readable, bad = check_audio_files(candidates)
        self.paths = [path for path, _ in readable]
        self.lengths = [int(info.frames * sample_rate // info.samplerate) for _, info in readable]
        self.skipped_files = bad
        if not self.paths:
            raise ValueError(
                f"No readable audio files found in `root`={root!r} (extensions {tuple(extensions)}, "
                f"{len(bad)} unreadable)."
            )

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose random crops the data set returns (only used with `seed`)."""
        self.epoch = int(epoch)

    def _crop_offset(self, index: int, max_offset: int) -> int:
        if not self.random_crop or max_offset <= 0:
            return 0
        # Offsets 0, m, 2m, ... up to max_offset (m = crop_multiple; with m = 1 the draws are as before).
        choices = max_offset // self.crop_multiple + 1
        if self.seed is not None:
            draw = int(np.random.default_rng([self.seed, self.epoch, index]).integers(0, choices))
        else:
            draw = int(torch.randint(0, choices, ()).item())
        return draw * self.crop_multiple

    def __getitem__(self, index: int) -> Dict[str, Union[torch.Tensor, str, int]]:
        path = self.paths[index]
        if self.segment_samples is None:
            audio = load_audio(path, self.sample_rate, self.channels)
            return {"audio": audio, "path": path, "num_samples": audio.shape[-1]}

        offset = self._crop_offset(index, self.lengths[index] - self.segment_samples)
        audio = load_audio(path, self.sample_rate, self.channels, start=offset, num_samples=self.segment_samples)
        num_samples = audio.shape[-1]
        if num_samples < self.segment_samples:
            audio = torch.nn.functional.pad(audio, (0, self.segment_samples - num_samples))
        return {"audio": audio, "path": path, "num_samples": num_samples}
