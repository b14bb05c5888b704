#!/usr/bin/env python
"""Stage 3 of Stable Audio 3 training: adversarial relativistic-contrastive (ARC) post-training with a CLAP loss.

What the papers say. ARC post-training (Novack et al. 2025, "Fast Text-to-Audio Generation with Adversarial
Post-Training", arXiv:2505.08175, §3): a generator `G` (initialised from the flow model) denoises a noisy real
sample `x_t` in one step; a discriminator `D` (initialised from the same flow model) judges re-noised real and
generated samples at a noise level `s`; the relativistic loss `L_R` (Eq. 5, RpGAN) pairs each real sample with the
sample generated from it, and the contrastive loss `L_C` (Eq. 8) trains `D` to prefer correctly paired text-audio over
prompts shuffled within the batch; the objective is `min_G max_D L_R + lambda L_C`; the teacher is not used. The SA3
model overview (`docs/guides/model-overview.md`, "3. Adversarial Post-Training") adds a CLAP loss that "gives the
generator an explicit text-alignment signal", and starts from the distillation warm-up (stage 2). No official code
exists for this stage (reference §5, §9).

Our implementation (every choice the sources leave open is marked "choice"):

1. Generator: the stage-2 student (`--pretrained_model_name_or_path`, a pipeline folder); it predicts `v` at
   `(x_t, t)` and its output is `x0_hat = x_t - t v`. Choice: `t = 1` (pure noise, one-step generation) with
   probability `--generator_one_step_probability` (0.5), else log-SNR uniform on the inference schedule's range
   [-6.2, 2.0] (`t = sigmoid(-logsnr)`), so the generator is trained at the noise levels ping-pong sampling visits.
2. Discriminator (`training.adversarial.StableAudio3Discriminator`): the base flow model's transformer
   (`--discriminator_model_name_or_path`), whose per-frame output (`latent_dim` features) is mean-pooled over valid
   frames and fed to a head `Linear -> SiLU -> Linear(1)` (choice; the last layer starts at zero, so `D = 0` at the
   start). It sees text
   and duration through its own cross-attention / global conditioning and the generator's inpainting conditioning.
3. Re-noising: real `x0` and generated `x0_hat` are both moved to the same `s` per pair, with independent noise
   (choice), `s` drawn by `FlowMatchOTScheduler.sample_timesteps(--discriminator_timestep_sampler)` (default
   `logit_normal`, choice).
4. Losses (`training.adversarial`): `adv/d_loss = mean softplus(-(D(real_s) - D(fake_s)))`, `adv/g_loss` its mirror;
   `adv/d_contrastive = mean softplus(-(D(real_s, c) - D(real_s, c_shuffled)))` with `c_shuffled` a random cycle of
   the batch's prompts (duration kept; pairs whose shuffled prompt is the same text are left out); `adv/g_clap =
   mean(1 - cos(CLAP_audio(decode(x0_hat)), CLAP_text(prompt)))`. Weights: `--lambda_adv`, `--lambda_d_adv`,
   `--lambda_contrastive`, `--lambda_clap`. The discriminator steps first (on detached generator outputs), then the
   generator (discriminator frozen), each with its own AdamW, clipping and LR schedule.
5. CLAP path (differentiable end to end, choice of method): the generated latents are decoded by the frozen SAME
   decoder with gradients (no decode noise), cut to each item's valid length, mixed to mono, resampled 44.1 -> 48 kHz
   with a fixed polyphase Hann-windowed-sinc filter (`SincResampler`: 147/160 phases, 16 zero crossings, roll-off
   0.945, applied as one strided conv1d), then turned into CLAP's log-mel features in torch (`ClapLogMel`: the
   extractor's own mel filter bank, periodic Hann STFT with reflect padding, power, floor 1e-10, 10 log10; clips
   repeat-padded to `max_length_s`, longer clips cut to their first `max_length_s` seconds, `is_longer` False). CLAP
   (`--clap_model_path`, a local `ClapModel` folder with its feature extractor and tokenizer) is frozen and in eval
   mode.

Like stages 1 and 2: variable length (attention masks, pooling and losses over valid frames), inpainting masks
(`--inpaint_mask_probabilities`), mixed precision, checkpoints and `--resume_from_checkpoint latest` (identical losses
after a resume), DDP via `accelerate launch`. The output is a `StableAudio3Pipeline` folder with the
`PingPongAdversarialScheduler` (1 step = one-step generation; 2-8 steps = ping-pong).

Example:

    accelerate launch training_examples/train_adversarial.py \
        --pretrained_model_name_or_path sa3-distilled --discriminator_model_name_or_path path/to/medium-base \
        --train_data_dir path/to/captioned_audio --clap_model_path path/to/clap --output_dir sa3-arc
"""

import argparse
import contextlib
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

from diffusers_sa3 import FlowMatchOTScheduler, StableAudio3Pipeline
from diffusers_sa3.training import flow_data
from diffusers_sa3.training.adversarial import (
    ClapAlignment,
    StableAudio3Discriminator,
    contrastive_discriminator_loss,
    relativistic_discriminator_loss,
    relativistic_generator_loss,
    shuffled_prompt_indices,
)
from diffusers_sa3.training.checkpointing import (
    check_output_dir,
    checkpoint_dirs,
    resume_training_state,
)
from diffusers_sa3.training.distillation import batch_latents, save_pingpong_pipeline
from diffusers_sa3.training.flow_objective import sample_inpaint_masks


logger = get_logger(__name__)

LOSS_WEIGHT_FLAGS = {
    "adv/d_loss": "lambda_d_adv",
    "adv/d_contrastive": "lambda_contrastive",
    "adv/g_loss": "lambda_adv",
    "adv/g_clap": "lambda_clap",
}


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(
        description="Stage 3: ARC adversarial post-training of a distilled SA3 student.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Flags in alphabetical order.
    parser.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1 of both optimizers.")
    parser.add_argument("--adam_beta2", type=float, default=0.99, help="AdamW beta2 of both optimizers.")
    parser.add_argument("--adam_weight_decay", type=float, default=0.0, help="AdamW weight decay of both.")
    parser.add_argument("--checkpointing_steps", type=int, default=500, help="Save a state every N steps.")
    parser.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most this many.")
    parser.add_argument("--clap_model_path", type=str, default=None, help="Local ClapModel folder (for L_CLAP).")
    parser.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes.")
    parser.add_argument("--discriminator_head_dim", type=int, default=None, help="Head width (default: trunk).")
    parser.add_argument("--discriminator_learning_rate", type=float, default=1e-5, help="Discriminator LR.")
    parser.add_argument(
        "--discriminator_model_name_or_path",
        type=str,
        required=True,
        help="Base flow model (pipeline or official folder) whose transformer initialises the discriminator.",
    )
    parser.add_argument(
        "--discriminator_timestep_sampler",
        type=str,
        default="logit_normal",
        help="FlowMatchOTScheduler.sample_timesteps sampler of the re-noising level s.",
    )
    parser.add_argument(
        "--generator_one_step_probability",
        type=float,
        default=0.5,
        help="Probability that the generator's input is pure noise (t = 1).",
    )
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per step.")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="Recompute transformer blocks.")
    parser.add_argument(
        "--inpaint_mask_probabilities",
        type=float,
        nargs="+",
        default=None,
        help="Stage 1's inpainting mask probabilities (random segments, full, causal); default: none.",
    )
    parser.add_argument("--lambda_adv", type=float, default=1.0, help="Weight of adv/g_loss.")
    parser.add_argument("--lambda_clap", type=float, default=0.1, help="Weight of adv/g_clap (0: no CLAP).")
    parser.add_argument("--lambda_contrastive", type=float, default=1.0, help="Weight of adv/d_contrastive.")
    parser.add_argument("--lambda_d_adv", type=float, default=1.0, help="Weight of adv/d_loss.")
    parser.add_argument(
        "--latent_data_path", type=str, default=None, help="Pre-encoded latents (stage 1's LatentShardDataset)."
    )
    parser.add_argument("--learning_rate", type=float, default=1e-5, help="Generator learning rate.")
    parser.add_argument("--loss_log", type=str, default=None, help="Append each step's losses to this JSONL file.")
    parser.add_argument("--lr_scheduler", type=str, default="constant", help="diffusers scheduler name.")
    parser.add_argument("--lr_warmup_steps", type=int, default=0, help="Warm-up steps of both schedules.")
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm of both.")
    parser.add_argument("--max_seconds", type=float, default=30.0, help="Audio items are cut to this length.")
    parser.add_argument("--max_train_steps", type=int, default=10000, help="Total optimizer steps.")
    parser.add_argument(
        "--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="Overrides accelerate's config."
    )
    parser.add_argument("--output_dir", type=str, default="sa3-arc", help="Checkpoints and final pipeline.")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="Allow a non-empty output dir.")
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="The generator: the stage-2 output pipeline folder.",
    )
    parser.add_argument(
        "--report_to",
        type=str,
        default="tensorboard" if is_tensorboard_available() else "none",
        help="accelerate tracker ('tensorboard', 'wandb', 'all' or 'none').",
    )
    parser.add_argument("--resume_from_checkpoint", type=str, default=None, help="A checkpoint dir or 'latest'.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of every step's draws.")
    parser.add_argument("--train_batch_size", type=int, default=4, help="Items per micro-batch (>= 2).")
    parser.add_argument(
        "--train_data_dir", type=str, default=None, help="Captioned audio (stage 1's CaptionedAudioDataset)."
    )
    args = parser.parse_args(input_args)
    if (args.train_data_dir is None) == (args.latent_data_path is None):
        raise ValueError("Pass exactly one of `--train_data_dir` (audio) and `--latent_data_path` (latents).")
    if args.lambda_clap and args.clap_model_path is None:
        raise ValueError("`--lambda_clap` is non-zero but `--clap_model_path` is not set; pass it or set 0.")
    if args.lambda_contrastive and args.train_batch_size < 2:
        raise ValueError("`--lambda_contrastive` needs `--train_batch_size` >= 2 (shuffled prompts).")
    if not 0.0 <= args.generator_one_step_probability <= 1.0:
        raise ValueError(
            f"`--generator_one_step_probability` must be in [0, 1], got {args.generator_one_step_probability}."
        )
    return args


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def step_seed(seed: int, *keys) -> int:
    """A seed that is a function of `(seed, keys)` only, so a resumed run draws the same numbers."""
    return zlib.crc32(":".join(str(k) for k in (seed, *keys)).encode()) % (2**31)


@contextlib.contextmanager
def frozen_parameters(module: torch.nn.Module):
    """Turns off `requires_grad` of `module`'s parameters inside the block (the generator step's discriminator)."""
    states = [(p, p.requires_grad) for p in module.parameters()]
    for parameter, _ in states:
        parameter.requires_grad_(False)
    try:
        yield module
    finally:
        for parameter, state in states:
            parameter.requires_grad_(state)


def sample_generator_timesteps(batch_size, one_step_probability, scheduler, generator):
    """`t = 1` with `one_step_probability`, else `sigmoid(-logsnr)` with logsnr uniform on the sampling range."""
    config = scheduler.config
    logsnr = config.logsnr_start + torch.rand(batch_size, generator=generator) * (
        config.logsnr_end - config.logsnr_start
    )
    t = torch.sigmoid(-logsnr)
    one_step = torch.rand(batch_size, generator=generator) < one_step_probability
    return torch.where(one_step, torch.ones_like(t), t)


def renoise(latents, noise, timesteps, frame_mask):
    """`(1 - s) x + s noise`, zero on padding frames."""
    s = timesteps.to(latents).reshape(-1, 1, 1)
    return ((1 - s) * latents + s * noise) * frame_mask[:, None, :].to(latents)


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
    device = accelerator.device

    # 2. Generator (the stage-2 student) with its frozen VAE and text encoder; discriminator from the base model.
    pipe = StableAudio3Pipeline.from_pretrained(args.pretrained_model_name_or_path)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.eval().requires_grad_(False)
    pipe.text_encoder.eval().requires_grad_(False)
    generator_model = pipe.transformer.train().requires_grad_(True)
    base = StableAudio3Pipeline.from_pretrained(args.discriminator_model_name_or_path)
    discriminator = StableAudio3Discriminator(base.transformer, args.discriminator_head_dim).to(device).train()
    del base
    if args.gradient_checkpointing:
        generator_model.enable_gradient_checkpointing()
        discriminator.transformer.enable_gradient_checkpointing()
    clap = ClapAlignment(args.clap_model_path, pipe.sampling_rate).to(device) if args.lambda_clap else None
    weights = {key: getattr(args, flag) for key, flag in LOSS_WEIGHT_FLAGS.items()}
    noise_scheduler = FlowMatchOTScheduler()

    # 3. Data (stage 1's data sets).
    if args.latent_data_path is not None:
        dataset, collate_fn = (
            flow_data.LatentShardDataset(args.latent_data_path, seed=args.seed),
            flow_data.collate_latents,
        )
    else:
        dataset = flow_data.CaptionedAudioDataset(
            args.train_data_dir, sample_rate=pipe.sampling_rate, max_seconds=args.max_seconds, seed=args.seed
        )
        collate_fn = flow_data.collate_audio
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

    # 4. Optimizers and schedules (one each), accelerate.
    betas = (args.adam_beta1, args.adam_beta2)
    optimizer_g = torch.optim.AdamW(
        generator_model.parameters(), lr=args.learning_rate, betas=betas, weight_decay=args.adam_weight_decay
    )
    d_parameters = [p for p in discriminator.parameters() if p.requires_grad]
    optimizer_d = torch.optim.AdamW(
        d_parameters, lr=args.discriminator_learning_rate, betas=betas, weight_decay=args.adam_weight_decay
    )
    schedule_kwargs = {
        "num_warmup_steps": args.lr_warmup_steps * accelerator.num_processes,
        "num_training_steps": args.max_train_steps * accelerator.num_processes,
    }
    lr_scheduler_g = get_scheduler(args.lr_scheduler, optimizer=optimizer_g, **schedule_kwargs)
    lr_scheduler_d = get_scheduler(args.lr_scheduler, optimizer=optimizer_d, **schedule_kwargs)
    (
        generator_model,
        discriminator,
        optimizer_g,
        optimizer_d,
        lr_scheduler_g,
        lr_scheduler_d,
        train_dataloader,
    ) = accelerator.prepare(
        generator_model, discriminator, optimizer_g, optimizer_d, lr_scheduler_g, lr_scheduler_d, train_dataloader
    )
    raw_generator = accelerator.unwrap_model(generator_model)
    raw_discriminator = accelerator.unwrap_model(discriminator)

    def save_model_hook(models, weights_, output_dir):
        if accelerator.is_main_process:
            raw_generator.save_pretrained(os.path.join(output_dir, "transformer"))

    accelerator.register_save_state_pre_hook(save_model_hook)

    updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    num_epochs = math.ceil(args.max_train_steps / updates_per_epoch)
    if accelerator.is_main_process and args.report_to != "none":
        config = {k: (str(v) if isinstance(v, (list, tuple)) or v is None else v) for k, v in vars(args).items()}
        accelerator.init_trackers("train_adversarial", config=config)

    # 5. Resume.
    global_step = resume_training_state(accelerator, args.output_dir, args.resume_from_checkpoint, logger)
    first_epoch = global_step // updates_per_epoch
    skip_batches = (global_step % updates_per_epoch) * args.gradient_accumulation_steps
    loss_log = None
    if args.loss_log and accelerator.is_main_process:
        loss_log = open(args.loss_log, "a" if global_step > 0 else "w")

    # 6. Training loop: discriminator step, then generator step.
    logger.info(f"***** ARC post-training: {len(dataset)} items, {args.max_train_steps} steps *****")
    progress_bar = tqdm(
        range(args.max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    window = {}
    for epoch in range(first_epoch, num_epochs):
        if global_step >= args.max_train_steps:
            break
        generator_model.train()
        discriminator.train()
        dataset.set_epoch(epoch)
        train_dataloader.set_epoch(epoch)
        loader, start = train_dataloader, 0
        if epoch == first_epoch and skip_batches:
            loader = accelerator.skip_first_batches(train_dataloader, skip_batches)
            start = skip_batches
        for batch_index, batch in enumerate(loader, start=start):
            seed = step_seed(args.seed, epoch, batch_index, accelerator.process_index)
            set_seed(seed)
            rng = torch.Generator().manual_seed(seed)

            # Inputs: real latents, masks, conditioning, the generator's noisy input and the re-noising level.
            real, valid = batch_latents(batch, pipe.vae, device)
            batch_size, _, frames = real.shape
            frame_mask = torch.arange(frames, device=device)[None, :] < valid[:, None]
            attention_mask = None if bool(frame_mask.all()) else frame_mask
            prompts, seconds = batch["prompt"], torch.as_tensor(batch["seconds_total"]).float().to(device)
            if args.inpaint_mask_probabilities is None:
                inpaint_mask = real.new_zeros(batch_size, 1, frames)
            else:
                inpaint_mask = sample_inpaint_masks(
                    valid, frames, probabilities=args.inpaint_mask_probabilities, generator=rng
                ).to(real)
            inpaint_latents = real * inpaint_mask
            hidden, text_mask = pipe.encode_prompt(prompts, device)
            t = sample_generator_timesteps(batch_size, args.generator_one_step_probability, noise_scheduler, rng)
            t = t.to(device)
            generator_input = renoise(real, torch.randn(real.shape, generator=rng).to(real), t, frame_mask)
            s = noise_scheduler.sample_timesteps(batch_size, args.discriminator_timestep_sampler, generator=rng)
            s = s.to(device)
            noise_real = torch.randn(real.shape, generator=rng).to(real)
            noise_fake = torch.randn(real.shape, generator=rng).to(real)
            real_s = renoise(real, noise_real, s, frame_mask)
            shuffle_index, shuffle_valid = shuffled_prompt_indices(prompts, generator=rng)
            shuffle_index = shuffle_index.to(device)

            def generate(model):
                context, global_condition = raw_generator.encode_conditioning(hidden, text_mask, seconds)
                velocity = model(
                    generator_input,
                    t,
                    inpaint_mask=inpaint_mask,
                    inpaint_latents=inpaint_latents,
                    attention_mask=attention_mask,
                    cross_attention_context=context,
                    global_condition=global_condition,
                    return_dict=False,
                )[0]
                fake = generator_input.float() - t.reshape(-1, 1, 1) * velocity.float()
                return fake * frame_mask[:, None, :]

            def judge(model, samples, shuffled_prompts):
                """D logits of each `(batch, C, T)` tensor in `samples` (all at level `s`), in one forward; entry `i`
                is judged with the shuffled prompts where `shuffled_prompts[i]`, else with its own."""
                d_raw = raw_discriminator.transformer
                context, global_condition = d_raw.encode_conditioning(hidden, text_mask, seconds)
                if any(shuffled_prompts):
                    shuffled, _ = d_raw.encode_conditioning(hidden[shuffle_index], text_mask[shuffle_index], seconds)
                contexts = [shuffled if flag else context for flag in shuffled_prompts]
                n = len(samples)
                return model(
                    torch.cat(samples),
                    s.repeat(n),
                    cross_attention_context=torch.cat(contexts),
                    global_condition=global_condition.repeat(n, 1),
                    attention_mask=None if attention_mask is None else attention_mask.repeat(n, 1),
                    inpaint_mask=inpaint_mask.repeat(n, 1, 1),
                    inpaint_latents=inpaint_latents.repeat(n, 1, 1),
                ).chunk(n)

            losses = {}
            with accelerator.accumulate(generator_model, discriminator):
                # Discriminator step (generator outputs detached); real and fake in one forward.
                with torch.no_grad(), accelerator.autocast():
                    fake = generate(raw_generator)
                fake_s = renoise(fake, noise_fake, s, frame_mask)
                use_contrastive = weights["adv/d_contrastive"] != 0
                with accelerator.autocast():
                    if use_contrastive:
                        real_logits, fake_logits, shuffled_logits = judge(
                            discriminator, [real_s, fake_s, real_s], [False, False, True]
                        )
                    else:
                        real_logits, fake_logits = judge(discriminator, [real_s, fake_s], [False, False])
                losses["adv/d_loss"] = relativistic_discriminator_loss(real_logits, fake_logits)
                if use_contrastive:
                    losses["adv/d_contrastive"] = contrastive_discriminator_loss(
                        real_logits, shuffled_logits, shuffle_valid.to(device)
                    )
                d_total = sum(weights[k] * losses[k] for k in ("adv/d_loss", "adv/d_contrastive") if k in losses)
                accelerator.backward(d_total)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(d_parameters, args.max_grad_norm)
                optimizer_d.step()
                lr_scheduler_d.step()
                optimizer_d.zero_grad()

                # Generator step (discriminator frozen).
                with accelerator.autocast():
                    fake = generate(generator_model)
                fake_s = renoise(fake, noise_fake, s, frame_mask)
                with frozen_parameters(raw_discriminator), accelerator.autocast():
                    real_logits, fake_logits = judge(raw_discriminator, [real_s, fake_s], [False, False])
                losses["adv/g_loss"] = relativistic_generator_loss(real_logits.detach(), fake_logits)
                if clap is not None:
                    audio = pipe.vae.decode(fake.to(pipe.vae.dtype), add_noise=False, chunked=False).sample
                    num_samples = (valid * pipe.vae.downsampling_ratio).tolist()
                    if "num_samples" in batch:
                        num_samples = [min(a, int(b)) for a, b in zip(num_samples, batch["num_samples"])]
                    losses["adv/g_clap"] = clap.loss(audio, num_samples, prompts)
                g_total = sum(weights[k] * losses[k] for k in ("adv/g_loss", "adv/g_clap") if k in losses)
                accelerator.backward(g_total)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(generator_model.parameters(), args.max_grad_norm)
                optimizer_g.step()
                lr_scheduler_g.step()
                optimizer_g.zero_grad()
            losses["adv/d_total"], losses["adv/g_total"] = d_total, g_total
            for key, value in losses.items():
                total_value, count = window.get(key, (0.0, 0))
                window[key] = (total_value + value.detach().float(), count + 1)

            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress_bar.update(1)
            keys = sorted(window)
            means = accelerator.reduce(torch.stack([window[k][0] / window[k][1] for k in keys]), reduction="mean")
            logs = {key: float(value) for key, value in zip(keys, means)}
            logs["lr"] = lr_scheduler_g.get_last_lr()[0]
            window = {}
            accelerator.log(logs, step=global_step)
            progress_bar.set_postfix(d=f"{logs['adv/d_loss']:.4f}", g=f"{logs['adv/g_loss']:.4f}")
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

    # 7. Save the generator as a ping-pong pipeline.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with contextlib.suppress(AttributeError):
            raw_generator.disable_gradient_checkpointing()
        save_pingpong_pipeline(pipe, raw_generator.eval(), args.output_dir)
        logger.info(f"Saved the post-trained pipeline to {args.output_dir}")
    if loss_log is not None:
        loss_log.close()
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
