#!/usr/bin/env python
"""Scores text-to-audio models on held-out prompts of the synthetic sound set with plain-DSP metrics.

For `--num_prompts` prompts of the held-out split of `diffusers_sa3.training.synthetic_sounds` (attribute
combinations never seen in training), it generates audio with a base model (Euler, `--base_steps` steps, 50 by
default) and a post-trained model (`--post_trained_steps`, 1 and 8 by default), and measures each column with
`diffusers_sa3.training.audio_metrics`: sound-type accuracy, median pitch error (semitones), median tempo error (BPM;
also with the estimate halved or doubled where nearer, as a beat tracker locked on the bar reads it), stereo side accuracy, duration adherence (the sound ends within +-0.5 s of the requested end), loudness accuracy,
chirp direction (the chirp prompts made a chirp sweeping the asked way: the sound type does not check it), and
the SAME reconstruction SNR of the ground-truth clips through each model's autoencoder. A `reference` column scores
the ground-truth clips themselves (a check of the metrics), and a `same_reconstruction` column their encode-decode
through the first model's autoencoder (with its decode noise: what the DiT's targets can reach at best). The JSON also
has each column's type accuracy per expected label. Targets are reported, not asserted.

Example:

    python training_examples/evaluate.py --base tiny-base --post_trained tiny-post --num_prompts 50 \
        --output_json eval.json
"""

import argparse
import json
import os

import numpy as np
import soundfile as sf
import torch

from diffusers_sa3 import FlowMatchOTScheduler, StableAudio3Pipeline
from diffusers_sa3.training.audio_metrics import score_clip, summarize_scores
from diffusers_sa3.training.evaluation import signal_to_noise_ratio
from diffusers_sa3.training.synthetic_sounds import (
    LEVELS,
    PHASES,
    SAMPLE_RATE,
    TIMINGS,
    TUNINGS,
    split_combinations,
    synthetic_example,
)


# (metric key, row title, target text, format): fractions print as percentages.
ROWS = (
    ("type_accuracy", "type accuracy", ">= 80%", "percent"),
    ("median_pitch_error_semitones", "median pitch error (semitones)", "<= 1", "number"),
    ("median_tempo_error_bpm", "median tempo error (bpm)", "", "number"),
    ("median_tempo_octave_error_bpm", "  the same, half / double allowed", "", "number"),
    ("side_accuracy", "stereo side accuracy", ">= 90%", "percent"),
    ("duration_adherence", "duration adherence (+-0.5 s)", ">= 90%", "percent"),
    ("loudness_accuracy", "loudness accuracy", "", "percent"),
    ("chirp_direction_accuracy", "chirp direction (chirp prompts)", "", "percent"),
    ("same_snr_db", "SAME reconstruction SNR (dB)", "", "number"),
)
TARGETS = {
    "type_accuracy": (">=", 0.8),
    "median_pitch_error_semitones": ("<=", 1.0),
    "side_accuracy": (">=", 0.9),
    "duration_adherence": (">=", 0.9),
}


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(
        description="Evaluate base and post-trained models on held-out synthetic prompts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Flags in alphabetical order.
    parser.add_argument("--base", default=None, help="Base (rectified-flow) pipeline folder, sampled with Euler.")
    parser.add_argument("--base_steps", type=int, default=50, help="Euler steps of the base model.")
    parser.add_argument("--batch_size", type=int, default=4, help="Prompts generated per pipeline call.")
    parser.add_argument("--device", default=None, help="Torch device (default: cuda if available, else cpu).")
    parser.add_argument(
        "--guidance_scale", type=float, default=None, help="CFG scale of the base model (default: the pipeline's)."
    )
    parser.add_argument(
        "--level",
        choices=LEVELS,
        default="peak",
        help="What the loudness of the reference clips sets (as the training set was written: synthetic_sounds.py).",
    )
    parser.add_argument(
        "--max_seconds", type=float, default=None, help="Use only held-out prompts whose clip is at most this long."
    )
    parser.add_argument("--num_prompts", type=int, default=20, help="Number of held-out prompts.")
    parser.add_argument("--output_dir", default=None, help="Also write the generated clips there as WAV files.")
    parser.add_argument("--output_json", default=None, help="Also write the table, per-clip scores and settings.")
    parser.add_argument(
        "--phase",
        choices=PHASES,
        default="random",
        help="Oscillator start phases of the reference clips (as the training set was written: synthetic_sounds.py).",
    )
    parser.add_argument("--post_trained", default=None, help="Post-trained (few-step) pipeline folder.")
    parser.add_argument(
        "--post_trained_steps", type=int, nargs="+", default=[1, 8], help="Step counts of the post-trained model."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the prompts and of the generation noise.")
    parser.add_argument("--split_seed", type=int, default=0, help="Seed of the held-out attribute combinations.")
    parser.add_argument(
        "--timing",
        choices=TIMINGS,
        default="exact",
        help="Drum tempo and chirp sweep of the reference clips (as the training set was written: synthetic_sounds.py).",
    )
    parser.add_argument(
        "--tuning",
        choices=TUNINGS,
        default="equal",
        help="Oscillator tuning of the reference clips (as the training set was written: synthetic_sounds.py).",
    )
    args = parser.parse_args(input_args)
    if args.num_prompts <= 0:
        parser.error(f"`--num_prompts` must be positive, got {args.num_prompts}.")
    if args.max_seconds is not None and args.max_seconds < 1:
        parser.error(f"`--max_seconds` must be at least 1 (the shortest clip), got {args.max_seconds}.")
    if args.batch_size <= 0:
        parser.error(f"`--batch_size` must be positive, got {args.batch_size}.")
    return args


def held_out_prompts(
    num_prompts, seed, split_seed, max_seconds=None, phase="random", level="peak", tuning="equal", timing="exact"
):
    """The first `num_prompts` held-out examples (with audio) whose duration is at most `max_seconds`."""
    combinations = split_combinations("heldout", split_seed)
    examples, index = [], 0
    while len(examples) < num_prompts:
        example = synthetic_example(index, seed, "heldout", split_seed, with_audio=False, combinations=combinations)
        if max_seconds is None or example["attributes"]["duration"] <= max_seconds:
            examples.append(
                synthetic_example(
                    index,
                    seed,
                    "heldout",
                    split_seed,
                    combinations=combinations,
                    phase=phase,
                    level=level,
                    tuning=tuning,
                    timing=timing,
                )
            )
        index += 1
    return examples


def load_pipeline(path, device, euler=False):
    pipe = StableAudio3Pipeline.from_pretrained(path).to(device)
    pipe.set_progress_bar_config(disable=True)
    if euler:
        if not isinstance(pipe.scheduler, FlowMatchOTScheduler):
            raise ValueError(
                f"`--base` {path!r} has a {type(pipe.scheduler).__name__}; give a base (rectified-flow) checkpoint, "
                "which samples with FlowMatchOTScheduler."
            )
        pipe.scheduler = FlowMatchOTScheduler.from_config(pipe.scheduler.config, solver_type="euler")
    return pipe


def generate(pipe, examples, num_inference_steps, seed, batch_size, guidance_scale=None):
    """One `(2, samples)` array per example, each from its own generator (`seed + index`)."""
    device = pipe._execution_device
    audios = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        generators = [torch.Generator(device).manual_seed(seed + start + i) for i in range(len(batch))]
        output = pipe(
            [e["text"] for e in batch],
            duration=[e["attributes"]["duration"] for e in batch],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generators,
            output_type="np",
        )
        audios.extend(np.asarray(audio, dtype=np.float32) for audio in output.audios)
    return audios


@torch.no_grad()
def reconstruction_snr(vae, audios):
    """Mean SNR (dB) of the deterministic SAME reconstruction (no decode noise) of `(2, samples)` arrays."""
    device = next(vae.parameters()).device
    values = []
    for audio in audios:
        target = torch.from_numpy(audio)[None].to(device=device, dtype=vae.dtype)
        prediction = vae.decode(vae.encode(target).latents, add_noise=False).sample[..., : target.shape[-1]]
        values.append(signal_to_noise_ratio(prediction.float(), target.float()))
    return float(np.mean(values))


@torch.no_grad()
def reconstructions(vae, audios, seed):
    """Encode-decode of `(2, samples)` arrays with the official decode noise (seeded), cut to their lengths."""
    device = next(vae.parameters()).device
    out = []
    for index, audio in enumerate(audios):
        target = torch.from_numpy(audio)[None].to(device=device, dtype=vae.dtype)
        generator = torch.Generator(device).manual_seed(seed + index)
        decoded = vae.decode(vae.encode(target).latents, generator=generator).sample[0, :, : target.shape[-1]]
        out.append(decoded.float().cpu().numpy())
    return out


def score_column(audios, examples, sample_rate, level="peak"):
    clips = [score_clip(audio, sample_rate, e["attributes"], level) for audio, e in zip(audios, examples)]
    by_label = {}
    for clip in clips:
        counts = by_label.setdefault(clip["expected_label"], [0, 0])
        counts[0] += int(clip["type_correct"])
        counts[1] += 1
    return {"metrics": summarize_scores(clips), "clips": clips, "type_correct_by_label": by_label}


def format_table(columns):
    """A plain-text table: one row per metric, one column per model setting."""
    names = list(columns)
    header = ["metric", "target"] + names
    rows = []
    for key, title, target, kind in ROWS:
        row = [title, target]
        for name in names:
            value = columns[name]["metrics"].get(key)
            if value is None:
                row.append("-")
            elif kind == "percent":
                row.append(f"{100 * value:.1f}%")
            else:
                row.append(f"{value:.2f}")
        rows.append(row)
    rows.append(["prompts", ""] + [str(columns[name]["metrics"]["num_clips"]) for name in names])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in [header] + rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def meets_targets(metrics):
    met = {}
    for key, (operator, bound) in TARGETS.items():
        value = metrics.get(key)
        met[key] = None if value is None else bool(value >= bound if operator == ">=" else value <= bound)
    return met


def main(args):
    # 1. Held-out prompts and their ground-truth clips.
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    examples = held_out_prompts(
        args.num_prompts,
        args.seed,
        args.split_seed,
        args.max_seconds,
        args.phase,
        args.level,
        args.tuning,
        args.timing,
    )
    columns = {"reference": score_column([e["audio"] for e in examples], examples, SAMPLE_RATE, args.level)}
    columns["reference"]["metrics"]["same_snr_db"] = None

    # 2. Each model: generate, score, and measure its autoencoder on the ground truth.
    settings = []
    if args.base:
        settings.append(("base", args.base, True, [args.base_steps], args.guidance_scale))
    if args.post_trained:
        settings.append(("post_trained", args.post_trained, False, args.post_trained_steps, None))
    for name, path, euler, step_counts, guidance_scale in settings:
        pipe = load_pipeline(path, device, euler=euler)
        snr = reconstruction_snr(pipe.vae, [e["audio"] for e in examples])
        if "same_reconstruction" not in columns:
            audios = reconstructions(pipe.vae, [e["audio"] for e in examples], args.seed)
            columns["same_reconstruction"] = score_column(audios, examples, pipe.sampling_rate, args.level)
            columns["same_reconstruction"]["metrics"]["same_snr_db"] = snr
        for steps in step_counts:
            column = f"{name}_euler_{steps}" if euler else f"{name}_{steps}"
            audios = generate(pipe, examples, steps, args.seed, args.batch_size, guidance_scale)
            columns[column] = score_column(audios, examples, pipe.sampling_rate, args.level)
            columns[column]["metrics"]["same_snr_db"] = snr
            if args.output_dir:
                folder = os.path.join(args.output_dir, column)
                os.makedirs(folder, exist_ok=True)
                for audio, example in zip(audios, examples):
                    sf.write(os.path.join(folder, example["file_name"]), audio.T, pipe.sampling_rate)
        del pipe

    # 3. Report.
    table = format_table(columns)
    print(table)
    for name, column in columns.items():
        print(
            f"{name}: type correct by label "
            + ", ".join(f"{label} {c}/{n}" for label, (c, n) in sorted(column["type_correct_by_label"].items()))
        )
    for column in columns.values():
        column["meets_targets"] = meets_targets(column["metrics"])
    result = {
        "settings": {key: getattr(args, key) for key in sorted(vars(args))},
        "targets": {key: f"{operator} {bound}" for key, (operator, bound) in TARGETS.items()},
        "prompts": [{"file_name": e["file_name"], "text": e["text"], **e["attributes"]} for e in examples],
        "columns": columns,
        "table": table,
    }
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(parse_args())
