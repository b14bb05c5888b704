#!/usr/bin/env python
"""How fast does a fresh tiny DiT learn the stereo side of the prompt on a set of latents?

A ten-minute check of a SAME's latents before an hour-long `train_flow.py` run (training_examples/README, stop 21).
It trains the pipeline's DiT in process with the recipe's flow loss (`flow_objective.flow_matching_loss`, batch
`--train_batch_size`, AdamW) on the latents of `pre_encode.py` (with `--encode_text`), and every `--sample_every`
steps samples `--prompts_per_side` training prompts of each side (left, right, centre) with plain Euler (guidance 1,
`--sampling_steps` steps from t = 1 to 0, seed 0), decodes them with the pipeline's SAME and scores the side with
`audio_metrics.stereo_side` (left/right energy beyond +-3 dB), as `evaluate.py` does.

`--code` chooses what the DiT is trained on, at the same prompts and lengths:

- `real`: the pre-encoded latents as they are;
- `realnorm`: the same, each clip scaled to unit RMS (removes the loudness range of a linear SAME's latents);
- `const`: a constant code of the side (a text-dependent mean; the other codes carry the side in their variance);
- `gauss`: fresh Gaussian noise per item with the side as its per-channel scale;
- `gausslevel`: `gauss` scaled to each clip's own latent RMS.

The three synthetic codes put the side as the principal-component SAME lays out its latents
(`tiny_components.pca_initialise_same`: even channels left, odd right), far channel at 0.25, so they decode to
audio of that side only through such a SAME.

Example:

    python training_examples/probe_side.py --pretrained_model_name_or_path RUN/init_trained_same \
        --latents_dir RUN/latents --metadata RUN/data/train/metadata.jsonl --code realnorm --max_train_steps 300
"""

import argparse
import json
import math
import os

import numpy as np
import torch

from diffusers_sa3 import StableAudio3Pipeline
from diffusers_sa3.training.audio_metrics import stereo_balance_db, stereo_side
from diffusers_sa3.training.flow_data import LatentShardDataset, collate_latents, pad_latents
from diffusers_sa3.training.flow_objective import ConditionedTransformer, flow_matching_loss
from diffusers_sa3.training.synthetic_sounds import SIDES


CODES = ("real", "realnorm", "const", "gauss", "gausslevel")
# Channel gains (left, right) of the synthetic codes: the far channel at -12 dB, as in the synthetic set.
SIDE_GAINS = {"left": (1.0, 0.25), "right": (0.25, 1.0), "centre": (1.0, 1.0)}


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(
        description="Probe how fast a fresh tiny DiT learns the prompt's stereo side on a set of latents.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Flags in alphabetical order.
    parser.add_argument(
        "--code", default="real", choices=CODES, help="What the DiT is trained on (see the docstring)."
    )
    parser.add_argument("--latents_dir", required=True, help="Folder of `pre_encode.py --encode_text`.")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="AdamW learning rate.")
    parser.add_argument("--max_train_steps", type=int, default=300, help="Training steps.")
    parser.add_argument("--metadata", required=True, help="`metadata.jsonl` of the clips, with their `side`.")
    parser.add_argument("--output_json", default=None, help="Write every sampling round here (a new file).")
    parser.add_argument(
        "--padding_seconds",
        type=float,
        default=6.0,
        help="Silence latents appended to each batch, as `train_flow.py`.",
    )
    parser.add_argument(
        "--pretrained_model_name_or_path", required=True, help="Pipeline whose DiT is trained and whose SAME decodes."
    )
    parser.add_argument("--prompts_per_side", type=int, default=4, help="Sampled training prompts of each side.")
    parser.add_argument("--sample_every", type=int, default=100, help="Steps between sampling rounds.")
    parser.add_argument("--sampling_steps", type=int, default=20, help="Euler steps of each sample.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the batches, the codes and the DiT's noise.")
    parser.add_argument("--timestep_sampler", default="uniform", help="Training noise levels (`sample_timesteps`).")
    parser.add_argument("--train_batch_size", type=int, default=16, help="Items per training step.")
    args = parser.parse_args(input_args)
    if not math.isfinite(args.padding_seconds) or args.padding_seconds < 0:
        parser.error(f"--padding_seconds must be a finite number >= 0, got {args.padding_seconds}.")
    for name in ("max_train_steps", "prompts_per_side", "sample_every", "sampling_steps", "train_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.output_json is not None and os.path.exists(args.output_json):
        parser.error(f"--output_json {args.output_json} exists; give a new path so nothing is overwritten.")
    return args


def side_code(latents: torch.Tensor, side: str, code: str, generator: torch.Generator) -> torch.Tensor:
    """The training target of one clip's `(channels, frames)` latents for `code` (see the module docstring)."""
    if code not in CODES:
        raise ValueError(f"`code` must be one of {', '.join(CODES)}, got {code!r}.")
    if side not in SIDE_GAINS:
        raise ValueError(f"`side` must be one of {', '.join(SIDE_GAINS)}, got {side!r}.")
    if code == "real":
        return latents
    if code == "realnorm":
        return latents / latents.pow(2).mean().sqrt().clamp_min(1e-8)
    left, right = SIDE_GAINS[side]
    code_latents = torch.ones_like(latents) if code == "const" else torch.randn(latents.shape, generator=generator)
    code_latents[0::2] *= left
    code_latents[1::2] *= right
    if code == "gausslevel":
        code_latents = code_latents * latents.pow(2).mean().sqrt() / code_latents.pow(2).mean().sqrt()
    return code_latents


def load_sides(metadata_path: str) -> dict:
    """`file_name` -> `side` of every row of `metadata_path`."""
    sides = {}
    with open(metadata_path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"`--metadata` {metadata_path} line {number} is not JSON ({error}).") from None
            if not isinstance(row, dict) or row.get("side") not in SIDES or "file_name" not in row:
                raise ValueError(
                    f"`--metadata` {metadata_path} line {number} has no `file_name` or no `side` in {SIDES}: write it "
                    "with `training_examples/synthetic_sounds.py`."
                )
            sides[os.path.basename(row["file_name"])] = row["side"]
    return sides


@torch.no_grad()
def sample_sides(pipe, fixed, num_steps: int) -> list:
    """Euler samples (guidance 1, seed 0) of the `fixed` batch, decoded; `(side, balance dB)` per item."""
    transformer = pipe.transformer
    context, global_condition = transformer.encode_conditioning(
        fixed["encoder_hidden_states"], fixed["encoder_attention_mask"], fixed["seconds_total"]
    )
    latents = torch.randn(fixed["latents"].shape, generator=torch.Generator().manual_seed(0))
    times = torch.linspace(1.0, 0.0, num_steps + 1)
    for start, end in zip(times[:-1], times[1:]):
        velocity = transformer(
            latents,
            torch.full((latents.shape[0],), float(start)),
            cross_attention_context=context,
            global_condition=global_condition,
            return_dict=False,
        )[0]
        latents = latents + (end - start) * velocity
    results = []
    for item, valid_length in zip(latents, fixed["valid_length"].tolist()):
        audio = pipe.vae.decode(item[None, :, :valid_length], add_noise=False).sample[0].float().numpy()
        results.append((stereo_side(audio), stereo_balance_db(audio)))
    return results


def main(args):
    torch.manual_seed(args.seed)
    pipe = StableAudio3Pipeline.from_pretrained(args.pretrained_model_name_or_path)
    pipe.set_progress_bar_config(disable=True)
    dataset = LatentShardDataset(args.latents_dir, seed=args.seed)
    sides = load_sides(args.metadata)
    item_sides = []
    for index in range(len(dataset)):
        name = os.path.basename(dataset[index]["path"])
        if name not in sides:
            raise ValueError(f"`--metadata` {args.metadata} has no row for {name} of `--latents_dir`.")
        item_sides.append(sides[name])
    fixed_indices = []
    for side in SIDES:
        of_side = [index for index, item_side in enumerate(item_sides) if item_side == side]
        if len(of_side) < args.prompts_per_side:
            raise ValueError(
                f"`--latents_dir` {args.latents_dir} holds {len(of_side)} clips on the {side}, fewer than "
                f"`--prompts_per_side` {args.prompts_per_side}: lower it or pre-encode more clips."
            )
        fixed_indices += of_side[: args.prompts_per_side]
    generator = torch.Generator().manual_seed(args.seed)

    def item(index):
        example = dict(dataset[index])
        if "encoder_hidden_states" not in example:
            raise ValueError(
                f"`--latents_dir` {args.latents_dir} has no text states: pre-encode with `--encode_text`."
            )
        example["latents"] = side_code(example["latents"], item_sides[index], args.code, generator)
        return example

    padding = dataset.silence_latents
    padding_frames = math.ceil(args.padding_seconds * pipe.sampling_rate / pipe.downsampling_ratio)
    fixed = collate_latents([item(i) for i in fixed_indices], padding)
    targets = [item_sides[i] for i in fixed_indices]
    model = ConditionedTransformer(pipe.transformer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(0.9, 0.95), weight_decay=0.01)
    rng = np.random.default_rng(args.seed)
    rounds = []
    for step in range(args.max_train_steps + 1):
        if step % args.sample_every == 0 or step == args.max_train_steps:
            model.eval()
            results = sample_sides(pipe, fixed, args.sampling_steps)
            model.train()
            correct = sum(side == target for (side, _), target in zip(results, targets))
            rounds.append(
                {
                    "step": step,
                    "side_accuracy": correct / len(targets),
                    "targets": targets,
                    "sides": [side for side, _ in results],
                    "balance_db": [round(balance, 2) for _, balance in results],
                }
            )
            print(
                f"step {step}: side {correct}/{len(targets)}, balance (dB) "
                + " ".join(f"{balance:+.1f}" for _, balance in results),
                flush=True,
            )
        if step == args.max_train_steps:
            break
        batch = collate_latents([item(int(i)) for i in rng.choice(len(dataset), args.train_batch_size)], padding)
        # `padding_seconds` of silence latents, then up to the pipeline's alignment, as `train_flow.py` pads.
        alignment = pipe.latent_alignment
        num_frames = math.ceil((batch["latents"].shape[-1] + padding_frames) / alignment) * alignment
        loss, _ = flow_matching_loss(
            model,
            pipe.scheduler,
            pad_latents(batch["latents"], num_frames, padding),
            None,
            None,
            batch["valid_length"],
            batch["seconds_total"],
            timestep_sampler=args.timestep_sampler,
            encoder_hidden_states=batch["encoder_hidden_states"],
            encoder_attention_mask=batch["encoder_attention_mask"],
        )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    if args.output_json is not None:
        with open(args.output_json, "x") as f:
            json.dump({"settings": vars(args), "rounds": rounds}, f, indent=2)
    return rounds


if __name__ == "__main__":
    main(parse_args())
