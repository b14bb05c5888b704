#!/usr/bin/env python
"""Pre-encodes a captioned audio folder into SAME latents (safetensors shards) for `train_flow.py --latents_dir`.

Each clip (cut to `--max_seconds` from its start) is encoded alone, so its latents do not depend on batch padding;
only its valid frames `ceil(samples / 4096)` are stored, with `valid_length`, `seconds_total` (`ceil(file length /
44100)`, official), the prompt and the source path. `--encode_text` also stores the text-encoder states
(`encoder_hidden_states`, `encoder_attention_mask`), so training can skip the text encoder too. The folder also gets
`silence_latents.safetensors` (the latents of digital silence, used to pad batches as the official pre-encoded data
set does) and `index.json` (shards and the settings used).

Example:

    python training_examples/pre_encode.py --pretrained_model_name_or_path path/to/stable-audio-3-medium-base \
        --train_data_dir my_clips --output_dir my_clips_latents --encode_text
"""

import argparse
import json
import math
import os

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from diffusers_sa3 import StableAudio3Pipeline
from diffusers_sa3.training.flow_data import SHARD_INDEX_NAME, SILENCE_LATENTS_NAME, CaptionedAudioDataset


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(
        description="Pre-encode captioned audio into SAME latent shards.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Flags in alphabetical order.
    parser.add_argument("--device", type=str, default=None, help="Device of the encoders (default: cuda if present).")
    parser.add_argument("--encode_text", action="store_true", help="Also store the text-encoder states.")
    parser.add_argument("--items_per_shard", type=int, default=256, help="Clips per safetensors shard.")
    parser.add_argument("--max_seconds", type=float, default=380.0, help="Clips are cut to this length (from 0 s).")
    parser.add_argument("--output_dir", type=str, required=True, help="Folder of the shards (created).")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="Allow writing into a non-empty folder.")
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="A diffusers-sa3 StableAudio3Pipeline folder or an official checkpoint folder.",
    )
    parser.add_argument(
        "--silence_seconds", type=float, default=30.0, help="Length of the stored silence latents (tiled as needed)."
    )
    parser.add_argument("--train_data_dir", type=str, required=True, help="Folder of captioned audio files.")
    args = parser.parse_args(input_args)
    if args.items_per_shard < 1:
        raise ValueError(f"`--items_per_shard` must be >= 1, got {args.items_per_shard}.")
    return args


@torch.no_grad()
def encode_audio(pipe, audio: torch.Tensor, num_frames: int) -> torch.Tensor:
    """`(channels, samples)` audio -> `(latent_channels, num_frames)` float32 latents."""
    ratio, alignment = pipe.downsampling_ratio, pipe.latent_alignment
    padded_frames = math.ceil(num_frames / alignment) * alignment
    device = pipe.vae.device
    audio = torch.nn.functional.pad(audio, (0, padded_frames * ratio - audio.shape[-1]))
    latents = pipe.vae.encode(audio[None].to(device, pipe.vae.dtype)).latents[0]
    return latents[:, :num_frames].float().cpu()


def main(args):
    # 1. Output folder and models.
    if os.path.isdir(args.output_dir) and os.listdir(args.output_dir) and not args.overwrite_output_dir:
        raise ValueError(
            f"`--output_dir` {args.output_dir!r} exists and is not empty; pass `--overwrite_output_dir` to replace "
            "its shards."
        )
    os.makedirs(args.output_dir, exist_ok=True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = StableAudio3Pipeline.from_pretrained(args.pretrained_model_name_or_path)
    pipe.vae.to(device).eval()
    pipe.text_encoder.to(device).eval()
    ratio, sample_rate = pipe.downsampling_ratio, pipe.sampling_rate

    # 2. Data: whole clips (up to --max_seconds from the start), bad files skipped with a warning.
    dataset = CaptionedAudioDataset(
        args.train_data_dir, sample_rate=sample_rate, max_seconds=args.max_seconds, random_crop=False
    )

    # 3. Silence latents.
    silence_frames = max(1, math.ceil(args.silence_seconds * sample_rate / ratio))
    silence = encode_audio(pipe, torch.zeros(2, silence_frames * ratio), silence_frames)
    save_file({"latents": silence.contiguous()}, os.path.join(args.output_dir, SILENCE_LATENTS_NAME))

    # 4. Shards.
    shards, tensors, records = [], {}, {}

    def flush():
        if not records:
            return
        name = f"shard-{len(shards):05d}.safetensors"
        save_file(tensors, os.path.join(args.output_dir, name), metadata={"items": json.dumps(records)})
        shards.append(name)
        tensors.clear()
        records.clear()

    for index in tqdm(range(len(dataset)), desc="Encoding"):
        item = dataset[index]
        valid_length = math.ceil(item["num_samples"] / ratio)
        key = f"{index:08d}"
        tensors[f"{key}.latents"] = encode_audio(pipe, item["audio"], valid_length).contiguous()
        record = {
            "valid_length": valid_length,
            "seconds_total": item["seconds_total"],
            "prompt": item["prompt"],
            "path": os.path.relpath(item["path"], args.train_data_dir),
        }
        if args.encode_text:
            hidden_states, mask = pipe.encode_prompt([item["prompt"]], torch.device("cpu"))
            tensors[f"{key}.encoder_hidden_states"] = hidden_states[0].float().contiguous()
            tensors[f"{key}.encoder_attention_mask"] = mask[0].long().contiguous()
            record["encoder_hidden_states"] = True
        records[key] = record
        if len(records) >= args.items_per_shard:
            flush()
    flush()

    # 5. Index.
    index = {
        "shards": shards,
        "num_items": len(dataset),
        "skipped_files": dataset.skipped_files,
        "config": {
            "sampling_rate": sample_rate,
            "downsampling_ratio": ratio,
            "latent_channels": int(silence.shape[0]),
            "max_seconds": args.max_seconds,
            "text_states": bool(args.encode_text),
            "pretrained_model_name_or_path": args.pretrained_model_name_or_path,
        },
    }
    with open(os.path.join(args.output_dir, SHARD_INDEX_NAME), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
    print(f"Encoded {len(dataset)} clips into {len(shards)} shard(s) in {args.output_dir}")
    return index


if __name__ == "__main__":
    main(parse_args())
