#!/usr/bin/env python
"""Stage 2 of Stable Audio 3 training: distillation warm-up of a one-step student from a base flow teacher.

What the paper says. The SA3 model overview (`docs/guides/model-overview.md`, "Training happens in three phases",
phase 2 "Distillation Warmup") says only: "we learn to perform the full trajectory in one step. This effectively
straightens it, but produces outputs that lack fine-grained detail"; stage 3 (adversarial post-training, ARC, Novack
et al. 2025, arXiv:2505.08175) then refines the student. ARC itself post-trains without distillation; the SA3 warm-up
is the "offline distillation" that ARC §1 describes (teacher trajectories mapped to one step). No official code or
hyper-parameters exist for this stage (reference §5, §9).

What this script does (each choice below is ours, where the sources leave it open):

1. Teacher: a frozen base (`rectified_flow`) model, e.g. `tests/fixtures/sa3_official_tiny/medium_base`, sampling
   with flow DPM-Solver++(2M) (`FlowMatchOTScheduler(solver_type="dpmpp_2m")`, the official `dpmpp` sampler) for
   `--num_teacher_steps 15` steps on the official log-SNR schedule, with guidance `--guidance_scale 5` (the official
   denoised-space CFG with APG `--apg_scale 1.0`, unconditional context = `zeros_like(context)`, same duration and
   inpainting conditioning in both halves).
2. Trajectory inputs: the data item's valid latent frames fix the length (no 6 s headroom), its prompt and
   `seconds_total` the conditioning; initial noise is drawn per item from `(seed, item index)` (cached mode) or from
   the step seed (online mode). With `--inpaint_mask_probabilities` the teacher also gets an inpainting mask drawn by
   stage 1's `sample_inpaint_masks` and the masked real latents, and the student is trained on the same condition.
3. Student: initialised from the teacher (same weights, conditioning parameters included); it predicts the velocity
   `v` at any state `x_t` of a trajectory (the state index is uniform over the `--num_teacher_steps` states, `t = 1`
   included; with `--one_step_probability p` the state is the trajectory's start, pure noise at `t = 1`, with
   probability `p` and uniform otherwise, to weigh one-step generation more) and its one-step estimate
   `x0 = x_t - t v` is pulled to the teacher's final output with an MSE averaged over valid frames. The student sees
   only the conditional context (guidance is distilled into it; no CFG dropout).
4. Trajectories are generated online each step, or, with `--trajectory_cache_dir`, once per item before training and
   stored as safetensors (`distillation.TrajectoryCache`, keyed by a fingerprint of the teacher's weights and the
   sampler settings: a teacher retrained in place makes new trajectories); several processes split the items.
5. The output folder is a `StableAudio3Pipeline` whose scheduler is `PingPongAdversarialScheduler` (the student is a
   one-step model; 1 step = one-step generation, more steps = ping-pong).

Like stage 1: variable length (padding masks into the transformer's attention and the loss), inpainting masks,
mixed precision (`--mixed_precision`), checkpoints with `--resume_from_checkpoint latest` (identical losses after a
resume: every step's randomness is seeded from `(seed, epoch, batch)`), DDP through `accelerate launch`.

Example:

    accelerate launch training_examples/train_distill.py \
        --pretrained_model_name_or_path path/to/stable-audio-3-medium-base --train_data_dir path/to/captioned_audio \
        --output_dir sa3-distilled --trajectory_cache_dir sa3-trajectories --max_train_steps 10000
"""

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import shutil
import zlib

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.utils import is_tensorboard_available
from tqdm.auto import tqdm

from diffusers_sa3 import StableAudio3Pipeline
from diffusers_sa3.training import flow_data
from diffusers_sa3.training.checkpointing import (
    check_output_dir,
    checkpoint_dirs,
    resume_training_state,
)
from diffusers_sa3.training.distillation import (
    TrajectoryCache,
    TrajectoryDataset,
    batch_latents,
    collate_trajectories,
    generate_teacher_trajectory,
    one_step_distillation_loss,
    save_pingpong_pipeline,
    teacher_digest,
    teacher_fingerprint,
)
from diffusers_sa3.training.flow_objective import sample_inpaint_masks


logger = get_logger(__name__)


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(
        description="Stage 2: distil a base SA3 teacher into a one-step student.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Flags in alphabetical order.
    parser.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    parser.add_argument("--adam_beta2", type=float, default=0.95, help="AdamW beta2 (official LoRA script: 0.95).")
    parser.add_argument("--adam_weight_decay", type=float, default=0.01, help="AdamW weight decay.")
    parser.add_argument("--apg_scale", type=float, default=1.0, help="APG blend of the teacher's guidance.")
    parser.add_argument("--checkpointing_steps", type=int, default=500, help="Save a state every N steps.")
    parser.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most this many.")
    parser.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per step.")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="Recompute student blocks.")
    parser.add_argument("--guidance_scale", type=float, default=5.0, help="Teacher CFG scale.")
    parser.add_argument(
        "--inpaint_mask_probabilities",
        type=float,
        nargs="+",
        default=None,
        help="Probabilities of stage 1's inpainting mask types (see flow_objective.sample_inpaint_masks); "
        "default: no inpainting conditioning.",
    )
    parser.add_argument(
        "--latent_data_path", type=str, default=None, help="Pre-encoded latents (stage 1's LatentShardDataset)."
    )
    parser.add_argument("--learning_rate", type=float, default=1e-5, help="Student learning rate.")
    parser.add_argument("--loss_log", type=str, default=None, help="Append each step's losses to this JSONL file.")
    parser.add_argument("--lr_scheduler", type=str, default="constant", help="diffusers scheduler name.")
    parser.add_argument("--lr_warmup_steps", type=int, default=0, help="Warm-up steps.")
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm.")
    parser.add_argument("--max_seconds", type=float, default=30.0, help="Audio items are cut to this length.")
    parser.add_argument("--max_train_steps", type=int, default=10000, help="Total optimizer steps.")
    parser.add_argument(
        "--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="Overrides accelerate's config."
    )
    parser.add_argument("--num_teacher_steps", type=int, default=15, help="Teacher solver steps.")
    parser.add_argument(
        "--one_step_probability",
        type=float,
        default=0.0,
        help="Probability that a student's input is the trajectory's start (pure noise, t = 1); otherwise the state "
        "is uniform over the teacher's steps (t = 1 included).",
    )
    parser.add_argument("--output_dir", type=str, default="sa3-distilled", help="Checkpoints and final pipeline.")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="Allow a non-empty output dir.")
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="Teacher: a base (rectified_flow) pipeline folder or official checkpoint folder.",
    )
    parser.add_argument(
        "--report_to",
        type=str,
        default="tensorboard" if is_tensorboard_available() else "none",
        help="accelerate tracker ('tensorboard', 'wandb', 'all' or 'none').",
    )
    parser.add_argument("--resume_from_checkpoint", type=str, default=None, help="A checkpoint dir or 'latest'.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of noise, masks and every step's draws.")
    parser.add_argument(
        "--solver_type", choices=["dpmpp_2m", "euler"], default="dpmpp_2m", help="Teacher solver (official dpmpp)."
    )
    parser.add_argument("--train_batch_size", type=int, default=4, help="Items per micro-batch and process.")
    parser.add_argument(
        "--train_data_dir", type=str, default=None, help="Captioned audio (stage 1's CaptionedAudioDataset)."
    )
    parser.add_argument(
        "--trajectory_cache_dir",
        type=str,
        default=None,
        help="Precompute one teacher trajectory per item into this folder (safetensors) and train from it.",
    )
    args = parser.parse_args(input_args)
    if (args.train_data_dir is None) == (args.latent_data_path is None):
        raise ValueError("Pass exactly one of `--train_data_dir` (audio) and `--latent_data_path` (latents).")
    if args.num_teacher_steps < 1:
        raise ValueError(f"`--num_teacher_steps` must be >= 1, got {args.num_teacher_steps}.")
    if not 0.0 <= args.one_step_probability <= 1.0:
        raise ValueError(
            f"`--one_step_probability` must be in [0, 1], got {args.one_step_probability}; 0 (the default) draws the "
            "state uniformly."
        )
    if args.guidance_scale < 1.0:
        raise ValueError(f"`--guidance_scale` must be >= 1 (1 = off), got {args.guidance_scale}.")
    return args


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def step_seed(seed: int, *keys) -> int:
    """A seed that is a function of `(seed, keys)` only, so a resumed run draws the same numbers."""
    return zlib.crc32(":".join(str(k) for k in (seed, *keys)).encode()) % (2**31)


def pick_states(batch_size: int, num_states: int, one_step_probability: float, generator: torch.Generator):
    """
    Index of each item's trajectory state (`states[:, 0]` is the initial noise, `t = 1`): uniform over the
    `num_states`, or, with probability `one_step_probability`, the initial noise. With probability 0 it draws exactly
    what the uniform draw alone did (same generator calls), so older runs repeat.
    """
    pick = torch.randint(0, num_states, (batch_size,), generator=generator)
    if one_step_probability > 0:
        start = torch.rand(batch_size, generator=generator) < one_step_probability
        pick = torch.where(start, torch.zeros_like(pick), pick)
    return pick


def build_source_dataset(args, sample_rate: int):
    """Stage 1's data sets: captioned audio (encoded by the VAE here) or pre-encoded latent shards."""
    if args.latent_data_path is not None:
        return flow_data.LatentShardDataset(args.latent_data_path), flow_data.collate_latents
    dataset = flow_data.CaptionedAudioDataset(
        args.train_data_dir, sample_rate=sample_rate, max_seconds=args.max_seconds, random_crop=False, seed=args.seed
    )
    return dataset, flow_data.collate_audio


def draw_inpaint_conditioning(latents, valid_length, probabilities, generator):
    """`(inpaint_mask (B, 1, T), inpaint_latents (B, C, T))`: stage 1's masks, or all zeros (text-to-audio)."""
    batch_size, _, frames = latents.shape
    if probabilities is None:
        mask = latents.new_zeros(batch_size, 1, frames)
    else:
        mask = sample_inpaint_masks(valid_length, frames, probabilities=probabilities, generator=generator).to(latents)
    return mask, latents * mask


def teacher_batch(args, pipe, latents, valid_length, prompts, seconds_total, noise, generator):
    """Teacher trajectories of a padded batch (states zeroed on padding) as a training batch dict."""
    device = latents.device
    frames = latents.shape[-1]
    attention_mask = torch.arange(frames, device=device)[None, :] < valid_length[:, None]
    inpaint_mask, inpaint_latents = draw_inpaint_conditioning(
        latents, valid_length, args.inpaint_mask_probabilities, generator
    )
    hidden, text_mask = pipe.encode_prompt(list(prompts), device)
    context, global_condition = pipe.transformer.encode_conditioning(hidden, text_mask, seconds_total.to(device))
    noise = noise * attention_mask[:, None, :]
    trajectory = generate_teacher_trajectory(
        pipe.transformer,
        noise,
        context,
        global_condition,
        attention_mask=attention_mask,
        inpaint_mask=inpaint_mask,
        inpaint_latents=inpaint_latents,
        num_inference_steps=args.num_teacher_steps,
        guidance_scale=args.guidance_scale,
        apg_scale=args.apg_scale,
        solver_type=args.solver_type,
    )
    return {
        "states": trajectory.states * attention_mask[:, None, None, :],
        "timesteps": trajectory.timesteps.to(device)[None].expand(latents.shape[0], -1),
        "final": trajectory.final,
        "inpaint_mask": inpaint_mask,
        "inpaint_latents": inpaint_latents,
        "attention_mask": attention_mask,
        "valid_length": valid_length,
        "seconds_total": seconds_total,
        "prompt": list(prompts),
    }


def fill_trajectory_cache(args, accelerator, pipe, dataset, collate_fn, cache):
    """Generates the missing trajectories, one item at a time; process `r` of `n` handles items `r, r + n, ...`."""
    todo = [i for i in range(len(dataset)) if i % accelerator.num_processes == accelerator.process_index]
    todo = [i for i in todo if not cache.has(i)]
    for index in tqdm(todo, desc="Teacher trajectories", disable=not accelerator.is_local_main_process):
        batch = collate_fn([dataset[index]])
        latents, valid = batch_latents(batch, pipe.vae, accelerator.device)
        latents = latents[..., : int(valid[0])]
        generator = torch.Generator().manual_seed(step_seed(args.seed, "trajectory", index))
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        seconds = torch.as_tensor(batch["seconds_total"], dtype=torch.float32).reshape(-1)
        item = teacher_batch(args, pipe, latents, valid, batch["prompt"], seconds, noise, generator)
        tensors = {key: item[key][0] for key in ("states", "final", "inpaint_mask", "inpaint_latents")}
        tensors["timesteps"] = item["timesteps"][0]
        cache.save(index, tensors, item["prompt"][0], float(seconds[0]))
    accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


def main(args):
    # 1. Output dir guard, accelerator, logging and seed.
    check_output_dir(args.output_dir, args.overwrite_output_dir, args.resume_from_checkpoint)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    # 2. Teacher pipeline (frozen) and student (a trainable copy of the teacher's transformer).
    pipe = StableAudio3Pipeline.from_pretrained(args.pretrained_model_name_or_path)
    if pipe.is_post_trained:
        raise ValueError(
            f"`--pretrained_model_name_or_path` {args.pretrained_model_name_or_path!r} is a post-trained "
            "(rf_denoiser) model; the teacher must be a base (rectified_flow) model."
        )
    pipe.to(accelerator.device)
    for module in (pipe.vae, pipe.transformer, pipe.text_encoder):
        module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    student = copy.deepcopy(pipe.transformer).train().requires_grad_(True)
    if args.gradient_checkpointing:
        student.enable_gradient_checkpointing()

    # 3. Data: trajectories from the cache, or stage-1 batches turned into trajectories online.
    source, source_collate = build_source_dataset(args, pipe.sampling_rate)
    if args.trajectory_cache_dir:
        # The cache key: the teacher's content (hashing every weight is only worth it when trajectories are stored).
        settings = {
            "teacher": teacher_digest(pipe),
            "steps": args.num_teacher_steps,
            "guidance_scale": args.guidance_scale,
            "apg_scale": args.apg_scale,
            "solver": args.solver_type,
            "inpaint": args.inpaint_mask_probabilities,
            "seed": args.seed,
            "max_seconds": args.max_seconds,
            "data": os.path.abspath(args.train_data_dir or args.latent_data_path),
        }
        cache = TrajectoryCache(args.trajectory_cache_dir, teacher_fingerprint(settings))
        fill_trajectory_cache(args, accelerator, pipe, source, source_collate, cache)
        dataset, collate_fn = TrajectoryDataset(cache, len(source)), collate_trajectories
    else:
        dataset, collate_fn = source, source_collate
    if len(dataset) < args.train_batch_size * accelerator.num_processes:
        raise ValueError(
            f"`--train_batch_size` {args.train_batch_size} x {accelerator.num_processes} process(es) exceeds the "
            f"{len(dataset)} training items; lower the batch size."
        )
    train_dataloader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
    )

    # 4. Optimizer, schedule, accelerate.
    optimizer = torch.optim.AdamW(
        student.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    student, optimizer, lr_scheduler, train_dataloader = accelerator.prepare(
        student, optimizer, lr_scheduler, train_dataloader
    )
    unwrapped = accelerator.unwrap_model(student)

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            unwrapped.save_pretrained(os.path.join(output_dir, "transformer"))

    accelerator.register_save_state_pre_hook(save_model_hook)

    updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    num_epochs = math.ceil(args.max_train_steps / updates_per_epoch)
    if accelerator.is_main_process and args.report_to != "none":
        config = {k: (str(v) if isinstance(v, (list, tuple)) or v is None else v) for k, v in vars(args).items()}
        accelerator.init_trackers("train_distill", config=config)

    # 5. Resume.
    global_step = resume_training_state(accelerator, args.output_dir, args.resume_from_checkpoint, logger)
    first_epoch = global_step // updates_per_epoch
    skip_batches = (global_step % updates_per_epoch) * args.gradient_accumulation_steps
    loss_log = None
    if args.loss_log and accelerator.is_main_process:
        loss_log = open(args.loss_log, "a" if global_step > 0 else "w")

    # 6. Training loop.
    logger.info(
        f"***** Distillation: {len(dataset)} items, {args.max_train_steps} steps, {num_epochs} epochs, "
        f"{'cached' if args.trajectory_cache_dir else 'online'} trajectories *****"
    )
    progress_bar = tqdm(
        range(args.max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    window, t_window = [], []
    for epoch in range(first_epoch, num_epochs):
        if global_step >= args.max_train_steps:
            break
        student.train()
        if hasattr(source, "set_epoch"):
            source.set_epoch(epoch)
        train_dataloader.set_epoch(epoch)
        loader, start = train_dataloader, 0
        if epoch == first_epoch and skip_batches:
            loader = accelerator.skip_first_batches(train_dataloader, skip_batches)
            start = skip_batches
        for batch_index, batch in enumerate(loader, start=start):
            seed = step_seed(args.seed, epoch, batch_index, accelerator.process_index)
            set_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            device = accelerator.device
            if "states" not in batch:
                latents, valid = batch_latents(batch, pipe.vae, device)
                noise = torch.randn(latents.shape, generator=generator).to(latents)
                seconds = torch.as_tensor(batch["seconds_total"], dtype=torch.float32).reshape(-1)
                batch = teacher_batch(args, pipe, latents, valid, batch["prompt"], seconds, noise, generator)
            batch_size, num_states = batch["states"].shape[:2]
            pick = pick_states(batch_size, num_states, args.one_step_probability, generator).to(device)
            rows = torch.arange(batch_size, device=device)
            sample = batch["states"].to(device)[rows, pick]
            timestep = batch["timesteps"].to(device)[rows, pick]
            attention_mask = batch["attention_mask"].to(device)

            with accelerator.accumulate(student):
                hidden, text_mask = pipe.encode_prompt(batch["prompt"], device)
                with accelerator.autocast():
                    context, global_condition = unwrapped.encode_conditioning(
                        hidden, text_mask, batch["seconds_total"].to(device)
                    )
                    velocity = student(
                        sample,
                        timestep,
                        inpaint_mask=batch["inpaint_mask"].to(device),
                        inpaint_latents=batch["inpaint_latents"].to(device),
                        attention_mask=None if bool(attention_mask.all()) else attention_mask,
                        cross_attention_context=context,
                        global_condition=global_condition,
                        return_dict=False,
                    )[0]
                loss = one_step_distillation_loss(
                    velocity, sample, timestep, batch["final"].to(device), frame_mask=attention_mask
                )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(student.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            window.append(loss.detach().float())
            t_window.append(timestep.detach().float().mean())

            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress_bar.update(1)
            mean = accelerator.reduce(torch.stack(window).mean(), reduction="mean")
            mean_t = accelerator.reduce(torch.stack(t_window).mean(), reduction="mean")
            window, t_window = [], []
            logs = {"distill/mse": float(mean), "distill/mean_t": float(mean_t), "lr": lr_scheduler.get_last_lr()[0]}
            accelerator.log(logs, step=global_step)
            progress_bar.set_postfix(mse=f"{logs['distill/mse']:.4f}")
            if loss_log is not None:
                loss_log.write(json.dumps({"step": global_step, **logs}) + "\n")
                loss_log.flush()
            if global_step % args.checkpointing_steps == 0:
                if accelerator.is_main_process and args.checkpoints_total_limit is not None:
                    existing = checkpoint_dirs(args.output_dir)
                    for name in existing[: max(0, len(existing) - args.checkpoints_total_limit + 1)]:
                        shutil.rmtree(os.path.join(args.output_dir, name))
                save_path = os.path.join(args.output_dir, f"checkpoint-{global_step}")
                accelerator.save_state(save_path)
                logger.info(f"Saved state to {save_path}")
            if global_step >= args.max_train_steps:
                break

    # 7. Save the student as a ping-pong pipeline.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with contextlib.suppress(AttributeError):
            unwrapped.disable_gradient_checkpointing()
        save_pingpong_pipeline(pipe, unwrapped.eval(), args.output_dir)
        logger.info(f"Saved the student pipeline to {args.output_dir}")
    if loss_log is not None:
        loss_log.close()
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
