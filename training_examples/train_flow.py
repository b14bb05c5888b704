#!/usr/bin/env python
"""Stage-1 flow-matching training and fine-tuning (full or LoRA) of the Stable Audio 3 transformer, with accelerate.

The objective is the official one (`diffusers_sa3.training.flow_objective`, reference §5): velocity target, timestep
sampling with the per-item length shift, minibatch OT coupling, silence augmentation, attention masking of padding, a
loss on the valid frames to generate, per-item inpaint masks and 10% condition dropout. The text encoder and the
autoencoder are frozen.

Data (`--train_data_dir`): audio files with captions (a `.txt` beside each file, or a `metadata.jsonl` / `.csv` with
`file_name` and `text` columns), any rate and channel count; or (`--latents_dir`) a folder written by
`training_examples/pre_encode.py`, so that long runs never run the autoencoder (and, if it holds them, the text
encoder).

Output (`--output_dir`): `checkpoint-N/` accelerate states (`--resume_from_checkpoint latest` continues), validation
WAVs, `losses.jsonl`-style logs (`--loss_log`) and, at the end, a `StableAudio3Pipeline` folder (full mode) or
`pytorch_lora_weights.safetensors` (LoRA mode, load with `pipe.load_lora_weights(output_dir, adapter_name=...)`).

Example:

    accelerate launch training_examples/train_flow.py \
        --pretrained_model_name_or_path path/to/stable-audio-3-medium-base --train_data_dir my_clips \
        --output_dir sa3-lora --training_mode lora --lora_rank 16 --max_train_steps 10000 --mixed_precision bf16
"""

import argparse
import json
import logging
import math
import os
import shutil
import time
import zlib

import soundfile as sf
import torch
from accelerate import Accelerator, DistributedType
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from diffusers_sa3 import FlowMatchOTScheduler, StableAudio3Pipeline, StableAudio3Transformer
from diffusers_sa3.loaders.lora import LORA_WEIGHT_NAME
from diffusers_sa3.training.checkpointing import (
    check_output_dir,
    checkpoint_dirs,
    resume_training_state,
)
from diffusers_sa3.training.flow_data import (
    CaptionedAudioDataset,
    LatentShardDataset,
    collate_audio,
    collate_latents,
    pad_latents,
)
from diffusers_sa3.training.flow_objective import ConditionedTransformer, flow_matching_loss


logger = get_logger(__name__)

DEFAULT_LORA_TARGETS = ["to_qkv", "to_q", "to_kv", "to_out", "ff.proj_in", "ff.proj_out"]


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(
        description="Stage-1 flow-matching training of the Stable Audio 3 transformer.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Flags in alphabetical order.
    parser.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1 (official LoRA script: 0.9).")
    parser.add_argument("--adam_beta2", type=float, default=0.95, help="AdamW beta2 (official LoRA script: 0.95).")
    parser.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon.")
    parser.add_argument("--adam_weight_decay", type=float, default=0.01, help="AdamW weight decay (official: 0.01).")
    parser.add_argument(
        "--checkpointing_steps", type=int, default=500, help="Save an accelerate state every N optimizer steps."
    )
    parser.add_argument(
        "--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints."
    )
    parser.add_argument(
        "--condition_dropout", type=float, default=0.1, help="Probability of zeroing an item's whole text context."
    )
    parser.add_argument(
        "--context_loss_weight",
        type=float,
        default=1.0,
        help="Weight of the MSE on the given (inpaint context) frames; official `mask_loss_weight` (1.0 in its LoRA "
        "script, 0 in the wrapper's default).",
    )
    parser.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes.")
    parser.add_argument("--ema_decay", type=float, default=0.9999, help="Decay of the EMA weights (with --use_ema).")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    parser.add_argument(
        "--gradient_checkpointing", action="store_true", help="Recompute transformer blocks in the backward pass."
    )
    parser.add_argument(
        "--inpaint_probabilities",
        type=float,
        nargs=3,
        default=[0.1, 0.8, 0.1],
        help="Probabilities of the inpaint mask types (random segments, full generation, causal prefix).",
    )
    parser.add_argument(
        "--latents_dir",
        type=str,
        default=None,
        help="Pre-encoded latent folder from pre_encode.py (instead of audio).",
    )
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="Peak learning rate.")
    parser.add_argument(
        "--length_shift",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Shift each item's timestep by its effective length (official `use_effective_length_for_schedule`).",
    )
    parser.add_argument("--lora_alpha", type=float, default=None, help="LoRA alpha (default: the rank).")
    parser.add_argument("--lora_dropout", type=float, default=0.0, help="Dropout on the LoRA input.")
    parser.add_argument("--lora_rank", type=int, default=16, help="LoRA rank (official LoRA script: 16).")
    parser.add_argument(
        "--lora_target_modules",
        type=str,
        nargs="+",
        default=DEFAULT_LORA_TARGETS,
        help="Module-name suffixes of the transformer that get LoRA adapters (PEFT `target_modules`).",
    )
    parser.add_argument("--loss_log", type=str, default=None, help="Append every optimizer step's logs to this JSONL.")
    parser.add_argument("--lr_scheduler", type=str, default="constant", help="diffusers `get_scheduler` name.")
    parser.add_argument("--lr_warmup_steps", type=int, default=0, help="Learning-rate warm-up steps.")
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm.")
    parser.add_argument("--max_seconds", type=float, default=380.0, help="Longest training clip, in seconds.")
    parser.add_argument("--max_train_steps", type=int, default=10000, help="Total optimizer steps.")
    parser.add_argument(
        "--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="Overrides accelerate's config."
    )
    parser.add_argument(
        "--ot_coupling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Minibatch optimal-transport (Sinkhorn) coupling of noise and latents (official LoRA script: on).",
    )
    parser.add_argument("--output_dir", type=str, default="sa3-flow", help="Checkpoints, logs and the final model.")
    parser.add_argument(
        "--overwrite_output_dir", action="store_true", help="Allow writing into an existing non-empty output dir."
    )
    parser.add_argument(
        "--padding_seconds",
        type=float,
        default=6.0,
        help="Silence appended after the longest clip of a batch, so that silence augmentation has room (inference "
        "adds the same 6 s of headroom).",
    )
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="A diffusers-sa3 StableAudio3Pipeline folder or an official checkpoint folder.",
    )
    parser.add_argument(
        "--report_to", type=str, default="none", help="accelerate tracker ('tensorboard', 'wandb', 'all' or 'none')."
    )
    parser.add_argument(
        "--resume_from_checkpoint", type=str, default=None, help="A checkpoint dir, or 'latest' in the output dir."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of initialisation, crops and every step's draws.")
    parser.add_argument(
        "--silence_mean_seconds",
        type=float,
        default=4.0,
        help="Mean of the exponential silence extension of each valid length (0 disables it).",
    )
    parser.add_argument(
        "--stop_after_steps",
        type=int,
        default=None,
        help="End this launch after this optimizer step with a checkpoint (the schedule still follows "
        "--max_train_steps); for time-limited jobs that continue with --resume_from_checkpoint latest.",
    )
    parser.add_argument(
        "--timestep_sampler",
        choices=["uniform", "logit_normal", "trunc_logit_normal", "log_snr", "log_snr_uniform"],
        default="trunc_logit_normal",
        help="Training timestep distribution (official LoRA script: trunc_logit_normal).",
    )
    parser.add_argument("--train_batch_size", type=int, default=1, help="Clips per micro-batch and process.")
    parser.add_argument("--train_data_dir", type=str, default=None, help="Folder of captioned audio files.")
    parser.add_argument("--training_mode", choices=["full", "lora"], default="lora", help="What is trained.")
    parser.add_argument("--use_ema", action="store_true", help="Keep EMA weights (full mode) and save those.")
    parser.add_argument("--validation_duration", type=float, default=10.0, help="Seconds of each validation clip.")
    parser.add_argument(
        "--validation_guidance_scale", type=float, default=None, help="CFG scale of validation (default: pipeline's)."
    )
    parser.add_argument(
        "--validation_num_inference_steps", type=int, default=None, help="Sampling steps (default: pipeline's)."
    )
    parser.add_argument(
        "--validation_prompts",
        type=str,
        nargs="+",
        default=None,
        help="Prompts of the validation clips (default: the first two training prompts).",
    )
    parser.add_argument(
        "--validation_steps", type=int, default=0, help="Generate validation WAVs every N steps (0: never)."
    )
    args = parser.parse_args(input_args)

    if (args.train_data_dir is None) == (args.latents_dir is None):
        raise ValueError("Pass exactly one of `--train_data_dir` (audio) and `--latents_dir` (pre-encoded latents).")
    if args.gradient_accumulation_steps < 1:
        raise ValueError(f"`--gradient_accumulation_steps` must be >= 1, got {args.gradient_accumulation_steps}.")
    if args.max_seconds <= 0 or args.padding_seconds < 0:
        raise ValueError(
            f"`--max_seconds` must be positive and `--padding_seconds` non-negative, got {args.max_seconds} and "
            f"{args.padding_seconds}."
        )
    if args.use_ema and args.training_mode == "lora":
        raise ValueError("`--use_ema` is for full training; LoRA runs keep no EMA (as the official LoRA trainer).")
    return args


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def step_seed(seed: int, epoch: int, batch_index: int, process_index: int) -> int:
    """Seed of one micro-step: a function of (seed, epoch, batch, process) only, so a resumed run draws the same."""
    return zlib.crc32(f"{seed}:{epoch}:{batch_index}:{process_index}".encode()) % (2**31)


def lora_state_dict(transformer):
    from peft import get_peft_model_state_dict

    return {k: v.detach().float().contiguous().cpu() for k, v in get_peft_model_state_dict(transformer).items()}


def save_lora(transformer, lora_config, path: str) -> None:
    metadata = lora_config.to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])
    StableAudio3Pipeline.save_lora_weights(
        path, transformer_lora_layers=lora_state_dict(transformer), transformer_lora_adapter_metadata=metadata
    )


def load_lora_into_training_model(transformer, path: str) -> None:
    """Loads a checkpoint's LoRA file into the training adapter (`default`), strictly."""
    from peft import set_peft_model_state_dict

    state_dict = StableAudio3Pipeline.lora_state_dict(path, weight_name=LORA_WEIGHT_NAME)
    state_dict = {k[len("transformer.") :]: v for k, v in state_dict.items()}
    result = set_peft_model_state_dict(transformer, state_dict)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"The LoRA file in {path!r} has unexpected keys: {result.unexpected_keys[:5]}.")


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
    logger.info(
        f"process {accelerator.process_index} of world size {accelerator.num_processes} started",
        main_process_only=False,
    )
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    is_fsdp = accelerator.distributed_type == DistributedType.FSDP

    # 2. The pipeline: frozen autoencoder and text encoder, the transformer to train.
    pipe = StableAudio3Pipeline.from_pretrained(args.pretrained_model_name_or_path)
    vae, text_encoder, transformer = pipe.vae, pipe.text_encoder, pipe.transformer
    vae.requires_grad_(False).eval()
    text_encoder.requires_grad_(False).eval()
    if isinstance(pipe.scheduler, FlowMatchOTScheduler):
        train_scheduler = FlowMatchOTScheduler.from_config(pipe.scheduler.config)
    else:
        logger.warning(
            "The checkpoint is post-trained (rf_denoiser, ping-pong sampling). Stage-1 flow matching is meant for base "
            "(rectified_flow) checkpoints, as the official LoRA trainer; training anyway."
        )
        train_scheduler = FlowMatchOTScheduler(
            sampling_rate=pipe.sampling_rate, downsampling_ratio=pipe.downsampling_ratio
        )
    lora_config = None
    if args.training_mode == "lora":
        from peft import LoraConfig

        transformer.requires_grad_(False)
        lora_config = LoraConfig(
            r=args.lora_rank,
            lora_alpha=args.lora_alpha if args.lora_alpha is not None else args.lora_rank,
            lora_dropout=args.lora_dropout,
            target_modules=args.lora_target_modules,
            init_lora_weights=True,
        )
        transformer.add_adapter(lora_config)
    transformer.train()
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    vae.to(accelerator.device)
    if weight_dtype != torch.float32:
        vae.to(dtype=weight_dtype)
    text_encoder.to(accelerator.device)
    model = ConditionedTransformer(transformer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    logger.info(f"Trainable parameters: {sum(p.numel() for p in trainable):,} ({args.training_mode})")

    # 3. EMA (full mode).
    ema = None
    if args.use_ema:
        ema = EMAModel(
            transformer.parameters(),
            decay=args.ema_decay,
            model_cls=StableAudio3Transformer,
            model_config=transformer.config,
        )
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    # 4. Optimizer and learning-rate schedule.
    optimizer = torch.optim.AdamW(
        trainable,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )

    # 5. Data: captioned audio (encoded on the fly) or pre-encoded latents.
    ratio, sample_rate = pipe.downsampling_ratio, pipe.sampling_rate
    alignment = pipe.latent_alignment
    max_frames = math.ceil(args.max_seconds * sample_rate / ratio)
    padding_frames = math.ceil(args.padding_seconds * sample_rate / ratio)
    if args.latents_dir is not None:
        dataset = LatentShardDataset(args.latents_dir, max_frames=max_frames, random_crop=True, seed=args.seed)
        padding_latents = dataset.silence_latents
        if padding_latents is None:
            logger.warning(f"{args.latents_dir!r} has no silence latents; padding latents with zeros.")

        def collate_fn(batch):
            return collate_latents(batch, padding_latents)

    else:
        dataset = CaptionedAudioDataset(
            args.train_data_dir,
            sample_rate=sample_rate,
            max_seconds=args.max_seconds,
            random_crop=True,
            seed=args.seed,
        )
        padding_latents = None
        collate_fn = collate_audio
    if len(dataset) < args.train_batch_size * accelerator.num_processes:
        raise ValueError(
            f"`--train_batch_size` {args.train_batch_size} x {accelerator.num_processes} process(es) exceeds the "
            f"{len(dataset)} usable items of the data set; lower the batch size or add data."
        )
    train_dataloader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.dataloader_num_workers,
        collate_fn=collate_fn,
    )
    text_states_in_data = isinstance(dataset, LatentShardDataset) and dataset.has_text_states
    if is_fsdp and args.validation_steps:
        logger.warning(
            "Validation sampling is not supported with FSDP (sharded weights); `--validation_steps` ignored."
        )
        args.validation_steps = 0
    validation_prompts = args.validation_prompts or [dataset[i]["prompt"] for i in range(min(2, len(dataset)))]

    # 6. Prepare everything with accelerate.
    model, optimizer, lr_scheduler, train_dataloader = accelerator.prepare(
        model, optimizer, lr_scheduler, train_dataloader
    )
    unwrapped = accelerator.unwrap_model(model)

    if not is_fsdp:
        # Checkpoints carry a usable model (the transformer's save_pretrained folder, or the LoRA file) instead of a
        # second copy of the weights; FSDP keeps accelerate's own (sharded) model state.
        def save_model_hook(models, weights, output_dir):
            if accelerator.is_main_process:
                for _ in models:
                    if lora_config is not None:
                        save_lora(unwrapped.transformer, lora_config, output_dir)
                    else:
                        unwrapped.transformer.save_pretrained(os.path.join(output_dir, "transformer"))
                    if weights:
                        weights.pop()

        def load_model_hook(models, input_dir):
            while models:
                models.pop()
                if lora_config is not None:
                    load_lora_into_training_model(unwrapped.transformer, input_dir)
                else:
                    loaded = StableAudio3Transformer.from_pretrained(input_dir, subfolder="transformer")
                    unwrapped.transformer.load_state_dict(loaded.state_dict(), strict=True)
                    del loaded

        accelerator.register_save_state_pre_hook(save_model_hook)
        accelerator.register_load_state_pre_hook(load_model_hook)

    # 7. Trackers.
    updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    num_epochs = math.ceil(args.max_train_steps / updates_per_epoch)
    if accelerator.is_main_process and args.report_to != "none":
        config = {k: (str(v) if isinstance(v, (list, tuple)) or v is None else v) for k, v in vars(args).items()}
        accelerator.init_trackers("train_flow", config=config)

    # 8. Resume.
    global_step = resume_training_state(accelerator, args.output_dir, args.resume_from_checkpoint, logger)
    first_epoch = global_step // updates_per_epoch
    skip_batches = (global_step % updates_per_epoch) * args.gradient_accumulation_steps
    loss_log = None
    if args.loss_log and accelerator.is_main_process:
        loss_log = open(args.loss_log, "a" if global_step > 0 else "w")

    def validate(step):
        folder = os.path.join(args.output_dir, "validation", f"step-{step:07d}")
        os.makedirs(folder, exist_ok=True)
        transformer.eval()
        generator = torch.Generator("cpu").manual_seed(args.seed)
        with accelerator.autocast():
            audios = pipe(
                validation_prompts,
                duration=args.validation_duration,
                num_inference_steps=args.validation_num_inference_steps,
                guidance_scale=args.validation_guidance_scale,
                generator=generator,
                output_type="np",
            ).audios
        for i, audio in enumerate(audios):
            sf.write(os.path.join(folder, f"{i:02d}.wav"), audio.T, sample_rate)
        transformer.train()
        logger.info(f"step {step}: validation WAVs in {folder}")

    # 9. Training loop.
    logger.info(
        f"***** Training: mode {args.training_mode}, {len(dataset)} items, batch {args.train_batch_size} x "
        f"{accelerator.num_processes} process(es) x {args.gradient_accumulation_steps} accumulation, "
        f"{args.max_train_steps} steps, {num_epochs} epochs *****"
    )
    progress_bar = tqdm(
        range(args.max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    window, step_start, stopped = {}, time.perf_counter(), False
    for epoch in range(first_epoch, num_epochs):
        if global_step >= args.max_train_steps:
            break
        model.train()
        dataset.set_epoch(epoch)
        train_dataloader.set_epoch(epoch)
        loader, start = train_dataloader, 0
        if epoch == first_epoch and skip_batches:
            loader = accelerator.skip_first_batches(train_dataloader, skip_batches)
            start = skip_batches
        for batch_index, batch in enumerate(loader, start=start):
            generator = torch.Generator("cpu").manual_seed(
                step_seed(args.seed, epoch, batch_index, accelerator.process_index)
            )
            seconds_total = batch["seconds_total"]
            # Latents of the batch, padded with silence past the longest clip (official batches are padded to the
            # full sample size with silence).
            with torch.no_grad():
                if "audio" in batch:
                    audio = batch["audio"]
                    valid_lengths = torch.div(batch["num_samples"] + ratio - 1, ratio, rounding_mode="floor")
                    num_frames = math.ceil(audio.shape[-1] / ratio) + padding_frames
                    num_frames = math.ceil(num_frames / alignment) * alignment
                    audio = torch.nn.functional.pad(audio, (0, num_frames * ratio - audio.shape[-1]))
                    latents = vae.encode(audio.to(weight_dtype)).latents.float()[..., :num_frames]
                else:
                    valid_lengths = batch["valid_length"]
                    num_frames = math.ceil((batch["latents"].shape[-1] + padding_frames) / alignment) * alignment
                    latents = pad_latents(batch["latents"], num_frames, padding_latents).float()
                if text_states_in_data:
                    hidden_states = batch["encoder_hidden_states"]
                    text_mask = batch["encoder_attention_mask"]
                else:
                    hidden_states, text_mask = pipe.encode_prompt(batch["prompt"], accelerator.device)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss, logs = flow_matching_loss(
                        model,
                        train_scheduler,
                        latents,
                        None,
                        None,
                        valid_lengths,
                        seconds_total,
                        timestep_sampler=args.timestep_sampler,
                        use_length_shift=args.length_shift,
                        ot_coupling=args.ot_coupling,
                        silence_mean_seconds=args.silence_mean_seconds,
                        inpaint_probabilities=args.inpaint_probabilities,
                        condition_dropout=args.condition_dropout,
                        context_loss_weight=args.context_loss_weight,
                        encoder_hidden_states=hidden_states.to(accelerator.device),
                        encoder_attention_mask=text_mask.to(accelerator.device),
                        generator=generator,
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()

            logs["flow/loss"] = loss.detach()
            for key, value in logs.items():
                total, count = window.get(key, (0.0, 0))
                window[key] = (total + value.detach().float(), count + 1)
            if not accelerator.sync_gradients:
                continue

            # One optimizer step done.
            global_step += 1
            progress_bar.update(1)
            if ema is not None:
                ema.step(transformer.parameters())
            keys = sorted(window)
            means = torch.stack([window[key][0] / window[key][1] for key in keys]).to(accelerator.device)
            means = accelerator.reduce(means, reduction="mean")
            row = {key: float(value) for key, value in zip(keys, means)}
            row["lr"] = lr_scheduler.get_last_lr()[0]
            window = {}
            accelerator.log(row, step=global_step)
            now = time.perf_counter()
            row.update({"world_size": accelerator.num_processes, "time/step_s": now - step_start})
            step_start = now
            progress_bar.set_postfix(loss=f"{row['flow/loss']:.4f}")
            if loss_log is not None:
                loss_log.write(json.dumps({"step": global_step, **row}) + "\n")
                loss_log.flush()

            if global_step % args.checkpointing_steps == 0:
                if accelerator.is_main_process and args.checkpoints_total_limit is not None:
                    existing = checkpoint_dirs(args.output_dir)
                    for name in existing[: max(0, len(existing) - args.checkpoints_total_limit + 1)]:
                        shutil.rmtree(os.path.join(args.output_dir, name))
                save_path = os.path.join(args.output_dir, f"checkpoint-{global_step}")
                accelerator.save_state(save_path)
                logger.info(f"Saved state to {save_path}")
            if args.validation_steps and global_step % args.validation_steps == 0 and accelerator.is_main_process:
                validate(global_step)
            if args.stop_after_steps is not None and global_step >= args.stop_after_steps < args.max_train_steps:
                if global_step % args.checkpointing_steps != 0:
                    accelerator.save_state(os.path.join(args.output_dir, f"checkpoint-{global_step}"))
                logger.info(f"Stopped after step {global_step}; continue with `--resume_from_checkpoint latest`.")
                stopped = True
            if global_step >= args.max_train_steps or stopped:
                break
        if stopped:
            break

    # 10. Save the final pipeline (full) or the LoRA weights.
    accelerator.wait_for_everyone()
    if stopped:
        if loss_log is not None:
            loss_log.close()
        accelerator.end_training()
        return
    if not is_fsdp:
        # Every process must hold the same weights after a data-parallel run; this line lets one check it.
        checksum = sum(float(p.detach().double().sum()) for p in model.parameters() if p.requires_grad)
        logger.info(
            f"process {accelerator.process_index} trainable-parameter checksum {checksum:.10e}",
            main_process_only=False,
        )
    transformer = unwrapped.transformer
    if is_fsdp:
        # Gather the full state dict (needs `fsdp_state_dict_type: FULL_STATE_DICT`) into a CPU transformer.
        state_dict = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            state_dict = {k[len("transformer.") :]: v for k, v in state_dict.items()}
            transformer = StableAudio3Transformer.from_config(unwrapped.transformer.config)
            if lora_config is not None:
                transformer.add_adapter(lora_config)
            transformer.load_state_dict(state_dict, strict=True)
    if accelerator.is_main_process:
        if lora_config is not None:
            save_lora(transformer, lora_config, args.output_dir)
        else:
            if ema is not None:
                ema.copy_to(transformer.parameters())
            final = StableAudio3Pipeline(
                vae=vae.to("cpu").float(),
                transformer=transformer.to("cpu").float(),
                text_encoder=text_encoder.to("cpu"),
                tokenizer=pipe.tokenizer,
                scheduler=pipe.scheduler,
                max_text_length=pipe.config.max_text_length,
                max_sample_size=pipe.config.max_sample_size,
                headroom_seconds=pipe.config.headroom_seconds,
            )
            final.save_pretrained(args.output_dir)
        logger.info(f"Saved the final model to {args.output_dir}")
    if loss_log is not None:
        loss_log.close()
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
