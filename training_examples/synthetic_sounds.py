#!/usr/bin/env python
"""Writes a folder of the synthetic captioned sound set (`diffusers_sa3.training.synthetic_sounds`).

The folder holds `<split>_<index>.wav` (44.1 kHz stereo, 1 to 12 s), a `.txt` caption beside each, and
`metadata.jsonl` (`file_name`, `text` and the attributes of every clip), and reads with `CaptionedAudioDataset` /
`training_examples/train_flow.py --train_data_dir`. The same `--seed` writes the same bytes.

Example:

    python training_examples/synthetic_sounds.py --output_dir synthetic/train --num_examples 20000
    python training_examples/synthetic_sounds.py --output_dir synthetic/heldout --num_examples 200 --split heldout
"""

import argparse
import collections

from diffusers_sa3.training.synthetic_sounds import (
    DEFAULT_TYPE_WEIGHTS,
    LEVELS,
    PHASES,
    SAMPLE_RATE,
    SPLITS,
    TIMINGS,
    TUNINGS,
    caption_vocabulary,
    parse_type_weights,
    write_synthetic_dataset,
)


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(
        description="Write a synthetic captioned sound data set.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Flags in alphabetical order.
    parser.add_argument(
        "--level",
        choices=LEVELS,
        default="peak",
        help="What the loudness sets: peak (0.1 or 0.8), or rms (the louder channel's RMS at -26 or -16 dBFS).",
    )
    parser.add_argument("--num_examples", type=int, default=1000, help="Number of clips.")
    parser.add_argument("--output_dir", required=True, help="Folder to write (created if missing).")
    parser.add_argument(
        "--phase",
        choices=PHASES,
        default="random",
        help="Oscillator start phases of tones, chords and chirps: random, or zero (deterministic clips).",
    )
    parser.add_argument("--sample_rate", type=int, default=SAMPLE_RATE, help="Sampling rate of the WAV files.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the clips.")
    parser.add_argument(
        "--split", choices=SPLITS, default="train", help="train, or heldout (attribute combinations unseen in train)."
    )
    parser.add_argument("--split_seed", type=int, default=0, help="Seed of the held-out attribute combinations.")
    parser.add_argument("--subtype", choices=["PCM_16", "FLOAT"], default="PCM_16", help="WAV sample format.")
    parser.add_argument(
        "--timing",
        choices=TIMINGS,
        default="exact",
        help="Time structure of drum patterns and chirps: exact (drums at the captioned BPM, chirps a continuous sweep), "
        "or grid (a two-beat drum bar of whole 4096-sample frames, at most 2.6%% off the captioned BPM; a chirp as one "
        "grid-tuned note per 4096-sample frame), so that both repeat or step exactly in the latent frames.",
    )
    parser.add_argument(
        "--type_weights",
        nargs="+",
        default=None,
        metavar="TYPE=WEIGHT",
        help="Relative frequencies of sound types in place of the defaults ("
        + ", ".join(f"{k}={v:g}" for k, v in DEFAULT_TYPE_WEIGHTS.items())
        + "), e.g. drums=0.35 chirp=0.35.",
    )
    parser.add_argument(
        "--tuning",
        choices=TUNINGS,
        default="equal",
        help="Oscillator tuning of tones and chords: equal temperament, or grid (multiples of 44100 / 4096 Hz, so "
        "that a steady sound repeats every 4096 samples).",
    )
    args = parser.parse_args(input_args)
    if args.num_examples <= 0:
        parser.error(f"`--num_examples` must be positive, got {args.num_examples}.")
    try:
        args.type_weights = parse_type_weights(args.type_weights)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(args):
    rows = write_synthetic_dataset(
        args.output_dir,
        args.num_examples,
        seed=args.seed,
        split=args.split,
        split_seed=args.split_seed,
        sample_rate=args.sample_rate,
        subtype=args.subtype,
        phase=args.phase,
        level=args.level,
        tuning=args.tuning,
        timing=args.timing,
        type_weights=args.type_weights,
    )
    counts = collections.Counter(row["type"] for row in rows)
    seconds = sum(row["duration"] for row in rows)
    print(
        f"Wrote {len(rows)} clips ({seconds / 3600:.2f} h; "
        + ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items()))
        + f") to {args.output_dir}; {len(caption_vocabulary(rows))} caption words."
    )
    return rows


if __name__ == "__main__":
    main(parse_args())
