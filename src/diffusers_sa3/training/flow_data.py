"""Captioned data for stage-1 flow-matching training: audio files with prompts, or pre-encoded latent shards.

Two sources feed `training_examples/train_flow.py`:

- [`CaptionedAudioDataset`]: audio files (any rate and channel count, brought to 44.1 kHz stereo) with a caption each,
  from a `.txt` beside the file or a `metadata.jsonl` / `metadata.csv` (columns `file_name` and `text`) in the root.
- [`LatentShardDataset`]: safetensors shards written by `training_examples/pre_encode.py`, holding SAME latents with
  their valid lengths (and optionally the text-encoder states), so that long runs never run the autoencoder.

Bad files (unreadable, too short, without caption) are found when the data set is built and skipped with one warning
that lists them; a data set left without any file raises a `ValueError` that says why.
"""

import csv
import json
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from diffusers.utils import logging
from safetensors import safe_open
from torch.utils.data import Dataset

from .audio_data import AUDIO_EXTENSIONS, check_audio_files, find_audio_files, load_audio


logger = logging.get_logger(__name__)

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
SHARD_INDEX_NAME = "index.json"
SILENCE_LATENTS_NAME = "silence_latents.safetensors"


def read_caption_table(path: str) -> Dict[str, str]:
    """Reads a `metadata.jsonl` or `metadata.csv` with `file_name` and `text` columns; returns `{file_name: text}`."""
    rows = []
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"`{path}` line {number} is not valid JSON: {error}.") from error
    else:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    captions = {}
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or "file_name" not in row or "text" not in row:
            raise ValueError(
                f"`{path}` row {number} must have the columns `file_name` and `text`, got {sorted(row or {})}."
            )
        captions[os.path.normpath(str(row["file_name"]))] = str(row["text"]).strip()
    return captions


class CaptionedAudioDataset(Dataset):
    """
    Audio files with text prompts, cut to at most `max_seconds` and resampled to `sample_rate` stereo.

    Captions come from a `metadata.jsonl` or `metadata.csv` in `root` (columns `file_name`, relative to `root`, and
    `text`) if there is one, else from a `.txt` file beside each audio file (`clip.wav` -> `clip.txt`). Files are
    checked when the data set is built; unreadable files, files shorter than `min_seconds` and files without a (non-
    empty) caption are skipped with one warning listing them (`skipped_files` keeps the list).

    Each item is a dict:
        - `audio` (`torch.Tensor` of shape `(2, num_samples)`): float32 audio, not padded (see [`collate_audio`]).
        - `num_samples` (`int`): its length.
        - `seconds_total` (`float`): `ceil(file samples / sample_rate)`, the duration of the whole file rounded up to a
          second, as the official `PadCrop_Normalized_T` (`data/utils.py:24-80`): a crop of a longer file keeps the
          file's duration.
        - `prompt` (`str`) and `path` (`str`).

    Files longer than `max_seconds` are cropped at a random offset (`random_crop=True`) or at the start. With `seed`,
    the offset of item `index` in epoch `epoch` ([`~CaptionedAudioDataset.set_epoch`]) comes from
    `numpy.random.default_rng([seed, epoch, index])`, so a resumed run reads the same crops.

    Args:
        root (`str`): folder of audio files (searched recursively).
        sample_rate (`int`, defaults to 44100): output sampling rate.
        max_seconds (`float`, defaults to 380.0): longest clip (the official LoRA script's `--duration`).
        random_crop (`bool`, defaults to `True`): crop long files at a random offset.
        seed (`int`, *optional*): seed of the random crops.
        channels (`int`, defaults to 2): output channels.
        min_seconds (`float`, defaults to 0.1): shorter files are skipped.
        extensions (`Sequence[str]`): audio file extensions.
    """

    def __init__(
        self,
        root: str,
        sample_rate: int = 44100,
        max_seconds: float = 380.0,
        random_crop: bool = True,
        seed: Optional[int] = None,
        channels: int = 2,
        min_seconds: float = 0.1,
        extensions: Sequence[str] = AUDIO_EXTENSIONS,
    ):
        if not os.path.isdir(root):
            raise ValueError(f"`root` must be a folder of audio files, got {root!r}.")
        if not max_seconds > 0:
            raise ValueError(f"`max_seconds` must be positive, got {max_seconds}.")
        if not 0 <= min_seconds <= max_seconds:
            raise ValueError(f"`min_seconds` must be in [0, max_seconds={max_seconds}], got {min_seconds}.")
        self.root = root
        self.sample_rate = sample_rate
        self.channels = channels
        self.max_samples = int(max_seconds * sample_rate)
        self.random_crop = random_crop
        self.seed = seed
        self.epoch = 0

        table_path = next(
            (os.path.join(root, n) for n in METADATA_FILES if os.path.isfile(os.path.join(root, n))), None
        )
        table = read_caption_table(table_path) if table_path else None
        readable, bad = check_audio_files(find_audio_files(root, extensions))
        skipped = list(bad)
        self.paths, self.prompts, self.lengths = [], [], []
        for path, info in readable:
            length = int(info.frames * sample_rate // info.samplerate)
            if length < min_seconds * sample_rate:
                skipped.append(f"{path} (too short: {info.frames / info.samplerate:.3f} s < {min_seconds} s)")
                continue
            prompt = self._caption(path, table, table_path)
            if not prompt:
                where = f"no row in {table_path}" if table else f"no {os.path.splitext(path)[0]}.txt"
                skipped.append(f"{path} (missing or empty caption: {where})")
                continue
            self.paths.append(path)
            self.prompts.append(prompt)
            self.lengths.append(length)
        new = skipped[len(bad) :]
        if new:
            logger.warning(
                f"Skipping {len(new)} audio file(s) without a usable caption or length:\n  " + "\n  ".join(new)
            )
        self.skipped_files = skipped
        self.decode_failures: List[str] = []  # files that failed while reading items (see `__getitem__`)
        if not self.paths:
            raise ValueError(
                f"No usable audio file in `root`={root!r}: {len(skipped)} skipped ({'; '.join(skipped[:3])}). Each file "
                "needs a caption (a `.txt` beside it, or a `metadata.jsonl` / `metadata.csv` with `file_name` and "
                "`text` columns)."
            )

    def _caption(self, path: str, table: Optional[Dict[str, str]], table_path: Optional[str]) -> Optional[str]:
        if table is not None:
            return table.get(os.path.normpath(os.path.relpath(path, self.root)))
        caption_path = os.path.splitext(path)[0] + ".txt"
        if not os.path.isfile(caption_path):
            return None
        with open(caption_path, encoding="utf-8") as f:
            return f.read().strip()

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose random crops the data set returns (only used with `seed`)."""
        self.epoch = int(epoch)

    def _crop_offset(self, index: int, max_offset: int) -> int:
        if not self.random_crop or max_offset <= 0:
            return 0
        if self.seed is not None:
            return int(np.random.default_rng([self.seed, self.epoch, index]).integers(0, max_offset + 1))
        return int(torch.randint(0, max_offset + 1, ()).item())

    def __getitem__(self, index: int) -> Dict[str, Union[torch.Tensor, str, int, float]]:
        # A file that passed the header check but fails to decode (a truncated or corrupt download) is skipped with a
        # warning naming it, and the next usable item takes its place: a long run never dies on one bad file.
        for attempt in range(len(self.paths)):
            item = (index + attempt) % len(self.paths)
            path = self.paths[item]
            if path in self.decode_failures:  # known bad: not read again every epoch
                continue
            try:
                return self._read(item)
            except Exception as error:
                self.decode_failures.append(path)
                self.skipped_files.append(f"{path} (failed to decode: {error})")
                logger.warning(f"Skipping `{path}`, which failed to decode: {error}")
        raise RuntimeError(f"No file of `root`={self.root!r} decodes; see the warnings above for each failure.")

    def _read(self, index: int) -> Dict[str, Union[torch.Tensor, str, int, float]]:
        path, length = self.paths[index], self.lengths[index]
        offset = self._crop_offset(index, length - self.max_samples)
        audio = load_audio(path, self.sample_rate, self.channels, start=offset, num_samples=self.max_samples)
        if audio.shape[-1] == 0:
            raise RuntimeError(f"decoded to no samples at offset {offset}")
        return {
            "audio": audio,
            "num_samples": audio.shape[-1],
            "seconds_total": float(math.ceil(length / self.sample_rate)),
            "prompt": self.prompts[index],
            "path": path,
        }


def collate_audio(batch: List[Dict]) -> Dict[str, Union[torch.Tensor, List]]:
    """
    Batches [`CaptionedAudioDataset`] items: `audio` `(batch, channels, longest)` zero-padded at the end,
    `num_samples` and `seconds_total` tensors, `prompt` and `path` lists.
    """
    longest = max(item["audio"].shape[-1] for item in batch)
    audio = torch.stack(
        [torch.nn.functional.pad(item["audio"], (0, longest - item["audio"].shape[-1])) for item in batch]
    )
    return {
        "audio": audio,
        "num_samples": torch.tensor([item["num_samples"] for item in batch], dtype=torch.long),
        "seconds_total": torch.tensor([item["seconds_total"] for item in batch], dtype=torch.float32),
        "prompt": [item["prompt"] for item in batch],
        "path": [item["path"] for item in batch],
    }


class LatentShardDataset(Dataset):
    """
    Pre-encoded latents from `training_examples/pre_encode.py`: a folder with `index.json`, safetensors shards
    `shard-*.safetensors` and `silence_latents.safetensors` (the latents of digital silence, used to pad).

    Each item is a dict: `latents` `(channels, valid_length)` float32 (only the valid frames are stored),
    `valid_length` (`int`), `seconds_total` (`float`), `prompt` (`str`), `path` (`str`, the source audio) and, when
    the shards hold them, `encoder_hidden_states` `(text_tokens, dim)` and `encoder_attention_mask` `(text_tokens,)`.

    Args:
        path (`str`): the folder written by `pre_encode.py`.
        max_frames (`int`, *optional*): crop longer items to this many latent frames (random offset if
            `random_crop`, seeded per `(seed, epoch, index)` like [`CaptionedAudioDataset`]).
        random_crop (`bool`, defaults to `True`) and seed (`int`, *optional*): crop placement.
    """

    def __init__(
        self,
        path: str,
        max_frames: Optional[int] = None,
        random_crop: bool = True,
        seed: Optional[int] = None,
    ):
        index_path = os.path.join(path, SHARD_INDEX_NAME)
        if not os.path.isfile(index_path):
            raise ValueError(
                f"`path` {path!r} is not a pre-encoded latent folder (no {SHARD_INDEX_NAME}); write one with "
                "`training_examples/pre_encode.py`."
            )
        with open(index_path, encoding="utf-8") as f:
            self.index = json.load(f)
        self.path = path
        self.config = self.index.get("config", {})
        self.items: List[Tuple[str, str, dict]] = []
        for shard in self.index["shards"]:
            shard_path = os.path.join(path, shard)
            if not os.path.isfile(shard_path):
                raise ValueError(f"Shard `{shard_path}` listed in {index_path} is missing.")
            with safe_open(shard_path, framework="pt") as f:
                records = json.loads(f.metadata()["items"])
            self.items.extend((shard_path, key, record) for key, record in records.items())
        if not self.items:
            raise ValueError(f"The latent folder {path!r} holds no items.")
        silence_path = os.path.join(path, SILENCE_LATENTS_NAME)
        self.silence_latents = None
        if os.path.isfile(silence_path):
            with safe_open(silence_path, framework="pt") as f:
                self.silence_latents = f.get_tensor("latents").float()
        self.has_text_states = all("encoder_hidden_states" in record for _, _, record in self.items)
        self.max_frames = max_frames
        self.random_crop = random_crop
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose random crops the data set returns (only used with `seed`)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> Dict[str, Union[torch.Tensor, str, int, float]]:
        shard_path, key, record = self.items[index]
        with safe_open(shard_path, framework="pt") as f:
            latents = f.get_tensor(f"{key}.latents").float()
            text = None
            if "encoder_hidden_states" in record:
                text = (
                    f.get_tensor(f"{key}.encoder_hidden_states").float(),
                    f.get_tensor(f"{key}.encoder_attention_mask").long(),
                )
        valid_length = int(record["valid_length"])
        latents = latents[:, :valid_length]
        if self.max_frames is not None and valid_length > self.max_frames:
            max_offset = valid_length - self.max_frames
            offset = 0
            if self.random_crop:
                if self.seed is not None:
                    offset = int(np.random.default_rng([self.seed, self.epoch, index]).integers(0, max_offset + 1))
                else:
                    offset = int(torch.randint(0, max_offset + 1, ()).item())
            latents = latents[:, offset : offset + self.max_frames]
            valid_length = self.max_frames
        item = {
            "latents": latents,
            "valid_length": valid_length,
            "seconds_total": float(record["seconds_total"]),
            "prompt": record["prompt"],
            "path": record.get("path", ""),
        }
        if text is not None:
            item["encoder_hidden_states"], item["encoder_attention_mask"] = text
        return item


def pad_latents(
    latents: torch.Tensor, num_frames: int, padding_latents: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """
    Pads `(channels, frames)` or `(batch, channels, frames)` latents at the end to `num_frames` with `padding_latents`
    `(channels, n)` (tiled as needed; the latents of silence, as the official pre-encoded data set pads,
    `data/dataset.py:403-420`), or with zeros when it is `None`.
    """
    missing = num_frames - latents.shape[-1]
    if missing <= 0:
        return latents
    if padding_latents is None:
        return torch.nn.functional.pad(latents, (0, missing))
    padding_latents = padding_latents.to(device=latents.device, dtype=latents.dtype)
    repeats = math.ceil(missing / padding_latents.shape[-1])
    padding = padding_latents.repeat(1, repeats)[:, :missing]
    if latents.ndim == 3:
        padding = padding.unsqueeze(0).expand(latents.shape[0], -1, -1)
    return torch.cat([latents, padding], dim=-1)


def collate_latents(
    batch: List[Dict], padding_latents: Optional[torch.Tensor] = None
) -> Dict[str, Union[torch.Tensor, List]]:
    """
    Batches [`LatentShardDataset`] items: `latents` `(batch, channels, longest)` padded with `padding_latents` (see
    [`pad_latents`]; zeros when `None`), `valid_length` and `seconds_total` tensors, `prompt` and `path` lists, and the
    stacked text-encoder states when every item has them.
    """
    longest = max(item["latents"].shape[-1] for item in batch)
    collated = {
        "latents": torch.stack([pad_latents(item["latents"], longest, padding_latents) for item in batch]),
        "valid_length": torch.tensor([item["valid_length"] for item in batch], dtype=torch.long),
        "seconds_total": torch.tensor([item["seconds_total"] for item in batch], dtype=torch.float32),
        "prompt": [item["prompt"] for item in batch],
        "path": [item.get("path", "") for item in batch],
    }
    if all("encoder_hidden_states" in item for item in batch):
        collated["encoder_hidden_states"] = torch.stack([item["encoder_hidden_states"] for item in batch])
        collated["encoder_attention_mask"] = torch.stack([item["encoder_attention_mask"] for item in batch])
    return collated
