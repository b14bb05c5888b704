#!/usr/bin/env python
"""Trains or fine-tunes the SAME autoencoder of Stable Audio 3 with accelerate.

Three modes (`--training_mode`):

- `full`: encoder, bottleneck and decoder are trained. The soft-norm bottleneck is unfrozen while training, so its
  `running_std` follows the official EMA (`0.999 r + 0.001 std(x)`, reference §2.4) and its affine is learned; the
  saved model has `freeze_bottleneck=True`, so encoding is deterministic afterwards.
- `decoder_only`: encoder and bottleneck are frozen (latents unchanged, existing DiTs keep working); only the
  decoder is trained (or, with `--trainable_parameters`, only the decoder parameters whose names match). With
  `--reinit_decoder` the decoder starts from a fresh random initialisation (seeded by `--seed`): a new decoder learnt
  for a fixed latent space.
- `lora`: PEFT LoRA on every `nn.Linear` of the decoder; the result is a small `decoder_lora.safetensors`.

Losses (all in one dict, each weighted by its `--lambda_*` flag; a loss with weight 0 is not computed):
`ae/stft`, `ae/mel` (multi-resolution spectral, L/R/mid/side), `ae/level` (per-channel loudness envelope), `ae/wave`
(relative waveform L1: phase and stereo, which magnitudes do not pin), `ae/kl`
(official soft-norm regulariser), `adv/d_loss`, `adv/g_loss`, `adv/feat` (multi-resolution STFT discriminator, hinge
or LSGAN, feature matching), `align/diffusion` (flow matching of a small denoiser head on the latents), `sem/chroma`,
`sem/ild` (regression heads), `contrast/infonce` (two augmented views). Each step runs the discriminator step first,
then the generator step.

Example:

    accelerate launch training_examples/train_autoencoder.py \
        --pretrained_model_name_or_path path/to/same --train_data_dir path/to/audio --output_dir same-finetuned \
        --training_mode decoder_only --segment_seconds 2.97 --train_batch_size 8 --max_train_steps 10000
"""

import argparse
import contextlib
import fnmatch
import inspect
import json
import logging
import math
import os
import shutil
import zlib
from typing import List, Sequence

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.utils import is_tensorboard_available
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from diffusers_sa3 import SAMEAutoencoderModel
from diffusers_sa3.training.audio_data import AudioFolderDataset
from diffusers_sa3.training.autoencoder_losses import (
    SAMEAuxiliaryHeads,
    augment_audio,
    chroma_targets,
    discriminator_loss,
    feature_matching_loss,
    flow_matching_alignment_loss,
    frame_level_loss,
    frame_regression_loss,
    generator_adversarial_loss,
    info_nce_loss,
    interaural_level_difference,
    multi_resolution_mel_loss,
    multi_resolution_stft_loss,
    waveform_l1_loss,
)
from diffusers_sa3.training.checkpointing import (
    check_output_dir,
    checkpoint_dirs,
    resume_training_state,
)
from diffusers_sa3.training.discriminators import MultiResolutionSpectrogramDiscriminator
from diffusers_sa3.training.evaluation import evaluate_reconstruction


logger = get_logger(__name__)

LOSS_WEIGHT_FLAGS = {
    "ae/stft": "lambda_stft",
    "ae/mel": "lambda_mel",
    "ae/level": "lambda_level",
    "ae/wave": "lambda_wave",
    "ae/kl": "lambda_kl",
    "adv/g_loss": "lambda_adv",
    "adv/feat": "lambda_feat",
    "align/diffusion": "lambda_align",
    "sem/chroma": "lambda_chroma",
    "sem/ild": "lambda_ild",
    "contrast/infonce": "lambda_contrast",
}
ENCODER_LOSSES = ("ae/kl", "align/diffusion", "sem/chroma", "sem/ild", "contrast/infonce")
LORA_WEIGHTS_NAME = "decoder_lora.safetensors"


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(
        description="Train or fine-tune the SAME autoencoder.", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    # Flags in alphabetical order.
    parser.add_argument("--adam_beta1", type=float, default=0.8, help="AdamW beta1 of both optimizers (DAC: 0.8).")
    parser.add_argument("--adam_beta2", type=float, default=0.99, help="AdamW beta2 of both optimizers (DAC: 0.99).")
    parser.add_argument("--adam_weight_decay", type=float, default=0.0, help="AdamW weight decay of both optimizers.")
    parser.add_argument(
        "--adversarial_loss", choices=["hinge", "lsgan"], default="hinge", help="GAN loss of the discriminator."
    )
    parser.add_argument(
        "--adversarial_start_step",
        type=int,
        default=0,
        help="Optimizer step from which the discriminator is trained and adv/* losses are used.",
    )
    parser.add_argument(
        "--align_crops",
        action="store_true",
        help="Random crops start on whole latent frames (offsets a multiple of the downsampling ratio), as the "
        "model frames whole files; for material whose events sit on that grid.",
    )
    parser.add_argument("--aux_hidden_channels", type=int, default=128, help="Width of the auxiliary latent heads.")
    parser.add_argument(
        "--checkpointing_steps", type=int, default=500, help="Save an accelerate state every N optimizer steps."
    )
    parser.add_argument(
        "--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints."
    )
    parser.add_argument("--contrastive_temperature", type=float, default=0.1, help="Temperature of the InfoNCE loss.")
    parser.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes.")
    parser.add_argument("--discriminator_channels", type=int, default=32, help="Hidden width of each discriminator.")
    parser.add_argument(
        "--discriminator_fft_sizes",
        type=int,
        nargs="+",
        default=[2048, 1024, 512, 256, 128],
        help="One spectrogram discriminator per STFT size.",
    )
    parser.add_argument(
        "--discriminator_learning_rate", type=float, default=1e-4, help="Learning rate of the discriminator."
    )
    parser.add_argument("--discriminator_num_layers", type=int, default=3, help="Strided convs per discriminator.")
    parser.add_argument(
        "--freeze_bottleneck",
        action="store_true",
        help="In full mode, keep the soft-norm bottleneck (affine and running_std EMA) frozen.",
    )
    parser.add_argument(
        "--from_scratch", action="store_true", help="Only take the config of the pretrained model; initialise anew."
    )
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    parser.add_argument(
        "--gradient_checkpointing", action="store_true", help="Recompute transformer blocks in the backward pass."
    )
    parser.add_argument("--lambda_adv", type=float, default=1.0, help="Weight of adv/g_loss.")
    parser.add_argument("--lambda_align", type=float, default=0.1, help="Weight of align/diffusion (full mode).")
    parser.add_argument("--lambda_chroma", type=float, default=0.1, help="Weight of sem/chroma (full mode).")
    parser.add_argument("--lambda_contrast", type=float, default=0.1, help="Weight of contrast/infonce (full mode).")
    parser.add_argument("--lambda_feat", type=float, default=2.0, help="Weight of adv/feat (feature matching).")
    parser.add_argument("--lambda_ild", type=float, default=0.1, help="Weight of sem/ild (full mode).")
    parser.add_argument("--lambda_kl", type=float, default=1e-2, help="Weight of ae/kl, the soft-norm regulariser.")
    parser.add_argument(
        "--lambda_level", type=float, default=0.0, help="Weight of ae/level (per-channel loudness envelope, dB / 20)."
    )
    parser.add_argument("--lambda_mel", type=float, default=1.0, help="Weight of ae/mel.")
    parser.add_argument("--lambda_stft", type=float, default=1.0, help="Weight of ae/stft.")
    parser.add_argument(
        "--lambda_wave", type=float, default=0.0, help="Weight of ae/wave (relative waveform L1: phase and stereo)."
    )
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="Learning rate of the autoencoder.")
    parser.add_argument("--lora_alpha", type=int, default=None, help="LoRA alpha (default: the rank).")
    parser.add_argument("--lora_rank", type=int, default=16, help="LoRA rank (lora mode).")
    parser.add_argument(
        "--loss_log", type=str, default=None, help="Append every optimizer step's losses to this JSONL file."
    )
    parser.add_argument("--lr_scheduler", type=str, default="constant", help="diffusers scheduler name.")
    parser.add_argument("--lr_warmup_steps", type=int, default=0, help="Warm-up steps of the schedulers.")
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm of both optimizers.")
    parser.add_argument("--max_train_steps", type=int, default=10000, help="Total optimizer steps.")
    parser.add_argument(
        "--mel_bins", type=int, nargs="+", default=[160, 80, 40, 20, 10], help="Mel bins per size of ae/mel."
    )
    parser.add_argument(
        "--mel_eps",
        type=float,
        default=inspect.signature(multi_resolution_mel_loss).parameters["eps"].default,
        help="Floor of the mel magnitudes inside ae/mel's log10 (raise it to stop near-silent bands dominating).",
    )
    parser.add_argument(
        "--mel_fft_sizes",
        type=int,
        nargs="+",
        default=[2048, 1024, 512, 256, 128],
        help="STFT sizes of ae/mel.",
    )
    parser.add_argument(
        "--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="Overrides accelerate's config."
    )
    parser.add_argument(
        "--num_validation_clips", type=int, default=2, help="Clips reconstructed and saved at each validation."
    )
    parser.add_argument("--output_dir", type=str, default="same-autoencoder", help="Checkpoints and final model.")
    parser.add_argument(
        "--overwrite_output_dir", action="store_true", help="Allow writing into an existing non-empty output dir."
    )
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="save_pretrained folder (or official checkpoint folder with model_config.json) of the autoencoder.",
    )
    parser.add_argument(
        "--reinit_decoder",
        action="store_true",
        help="decoder_only mode: initialise the decoder anew (seeded by --seed) and learn it for the pretrained, "
        "frozen encoder's latents.",
    )
    parser.add_argument(
        "--report_to",
        type=str,
        default="tensorboard" if is_tensorboard_available() else "none",
        help="accelerate tracker ('tensorboard', 'wandb', 'all' or 'none').",
    )
    parser.add_argument(
        "--resume_from_checkpoint", type=str, default=None, help="A checkpoint dir, or 'latest' in the output dir."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of initialisation, crops and every step's noise.")
    parser.add_argument(
        "--segment_seconds", type=float, default=2.0, help="Training crop length (rounded up to whole latents)."
    )
    parser.add_argument(
        "--stft_eps",
        type=float,
        default=inspect.signature(multi_resolution_stft_loss).parameters["eps"].default,
        help="Floor of the STFT power inside ae/stft's log (raise it to stop near-silent bins dominating).",
    )
    parser.add_argument(
        "--stft_fft_sizes",
        type=int,
        nargs="+",
        default=[2048, 1024, 512, 256, 128],
        help="STFT sizes of ae/stft.",
    )
    parser.add_argument("--subfolder", type=str, default=None, help="Subfolder of the pretrained model (e.g. vae).")
    parser.add_argument("--train_batch_size", type=int, default=4, help="Clips per micro-batch and process.")
    parser.add_argument("--train_data_dir", type=str, required=True, help="Folder of audio files (recursive).")
    parser.add_argument(
        "--trainable_parameters",
        type=str,
        nargs="+",
        default=None,
        help="decoder_only mode: train only the decoder parameters whose names match one of these fnmatch patterns "
        "(e.g. 'decoder.conv_out.*'); the others stay frozen.",
    )
    parser.add_argument(
        "--training_mode", choices=["full", "decoder_only", "lora"], default="full", help="What is trained."
    )
    parser.add_argument(
        "--validation_dir", type=str, default=None, help="Audio folder for validation (default: training files)."
    )
    parser.add_argument(
        "--validation_seconds", type=float, default=10.0, help="Validation clips are cut to this length."
    )
    parser.add_argument(
        "--validation_steps", type=int, default=500, help="Validate and save WAVs every N steps (0: never)."
    )
    args = parser.parse_args(input_args)

    for name in ("stft_eps", "mel_eps"):
        if not getattr(args, name) > 0:
            raise ValueError(
                f"`--{name}` must be positive (a floor inside a log), got {getattr(args, name)}; the default is "
                f"{parser.get_default(name)}."
            )
    if args.gradient_accumulation_steps < 1:
        raise ValueError(f"`--gradient_accumulation_steps` must be >= 1, got {args.gradient_accumulation_steps}.")
    if args.segment_seconds <= 0:
        raise ValueError(f"`--segment_seconds` must be positive, got {args.segment_seconds}.")
    if args.trainable_parameters is not None and args.training_mode != "decoder_only":
        raise ValueError(
            f"`--trainable_parameters` {args.trainable_parameters} selects decoder parameters of `--training_mode "
            f"decoder_only`, got `--training_mode {args.training_mode}`; add `--training_mode decoder_only` or drop "
            "`--trainable_parameters`."
        )
    if args.reinit_decoder and (args.training_mode != "decoder_only" or args.from_scratch):
        raise ValueError(
            f"`--reinit_decoder` gives a fresh decoder to a pretrained encoder in `--training_mode decoder_only`, got "
            f"`--training_mode {args.training_mode}`{' with `--from_scratch`' if args.from_scratch else ''}; use "
            "`--training_mode decoder_only` without `--from_scratch` (which initialises the whole model anew)."
        )
    if args.reinit_decoder and args.trainable_parameters is not None:
        raise ValueError(
            f"`--reinit_decoder` trains the whole fresh decoder, got `--trainable_parameters` "
            f"{args.trainable_parameters} too; drop one of them (a part-trained random decoder cannot decode)."
        )
    if len(args.mel_fft_sizes) != len(args.mel_bins):
        raise ValueError(
            f"`--mel_fft_sizes` and `--mel_bins` must have the same length, got {args.mel_fft_sizes} and "
            f"{args.mel_bins}."
        )
    return args


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def set_bottleneck_frozen(autoencoder: SAMEAutoencoderModel, frozen: bool) -> None:
    """(Un)freezes the soft-norm bottleneck: its affine's gradients, its `running_std` EMA and the saved config."""
    bottleneck = autoencoder.bottleneck
    bottleneck.freeze = frozen
    # `noise_scale` (the official, empty `noise_scaling_factor`) is never used, so it stays without gradient.
    for parameter in (bottleneck.scale, bottleneck.bias):
        parameter.requires_grad_(not frozen)
    autoencoder.register_to_config(freeze_bottleneck=frozen)


def restrict_decoder_training(autoencoder: SAMEAutoencoderModel, patterns: Sequence[str]) -> List[str]:
    """
    Leaves only the decoder parameters whose names match one of the fnmatch `patterns` trainable (decoder-only mode)
    and returns their names. Every pattern must match a decoder parameter: a pattern that matches nothing, or only
    encoder / bottleneck parameters (which would change the latents), is an error.
    """
    names = [name for name, _ in autoencoder.named_parameters()]
    decoder = [name for name in names if name.startswith("decoder.")]
    selected = set()
    for pattern in patterns:
        matches = fnmatch.filter(decoder, pattern)
        selected.update(matches)
        if not matches:
            outside = fnmatch.filter(names, pattern)
            found = f"it matches only {outside[:3]}, outside the decoder" if outside else "it matches no parameter"
            raise ValueError(
                f"`--trainable_parameters` pattern {pattern!r} selects no decoder parameter ({found}); the decoder's "
                f"parameters are named like {decoder[:2] + decoder[-2:]}: use a pattern such as 'decoder.conv_out.*'."
            )
    for name, parameter in autoencoder.named_parameters():
        parameter.requires_grad_(name in selected)
    return [name for name in decoder if name in selected]


def save_autoencoder(autoencoder: SAMEAutoencoderModel, path: str) -> None:
    """`save_pretrained` with `freeze_bottleneck=True`, so that the saved model encodes deterministically."""
    frozen = autoencoder.config.freeze_bottleneck
    autoencoder.register_to_config(freeze_bottleneck=True)
    autoencoder.save_pretrained(path)
    autoencoder.register_to_config(freeze_bottleneck=frozen)


def add_decoder_lora(autoencoder: SAMEAutoencoderModel, rank: int, alpha: int):
    """Injects PEFT LoRA adapters into every `nn.Linear` of the decoder and makes only them trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = [
        f"decoder.{name}" for name, module in autoencoder.decoder.named_modules() if isinstance(module, nn.Linear)
    ]
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=True)
    inject_adapter_in_model(config, autoencoder)
    for name, parameter in autoencoder.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return config


def save_decoder_lora(autoencoder: SAMEAutoencoderModel, path: str, config) -> None:
    """Saves only the LoRA weights, with rank, alpha and targets in the safetensors metadata."""
    from peft import get_peft_model_state_dict

    state_dict = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(autoencoder).items()}
    metadata = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules)}
    save_file(state_dict, path, metadata={"lora_config": json.dumps(metadata)})


def load_decoder_lora(autoencoder: SAMEAutoencoderModel, path: str) -> SAMEAutoencoderModel:
    """Loads a file written by `save_decoder_lora` into `autoencoder` (adapters injected, weights set)."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    with safe_open(path, framework="pt") as f:
        metadata = json.loads(f.metadata()["lora_config"])
    config = LoraConfig(r=metadata["r"], lora_alpha=metadata["lora_alpha"], target_modules=metadata["target_modules"])
    inject_adapter_in_model(config, autoencoder)
    result = set_peft_model_state_dict(autoencoder, load_file(path))
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"`{path}` has unexpected LoRA keys: {result.unexpected_keys}.")
    return autoencoder


@contextlib.contextmanager
def frozen_parameters(module: nn.Module):
    """Turns off `requires_grad` of `module`'s parameters inside the block (the generator step's discriminator)."""
    states = [(p, p.requires_grad) for p in module.parameters()]
    for parameter, _ in states:
        parameter.requires_grad_(False)
    try:
        yield module
    finally:
        for parameter, state in states:
            parameter.requires_grad_(state)


@contextlib.contextmanager
def paused_bottleneck_ema(autoencoder: SAMEAutoencoderModel):
    """Stops the bottleneck's `running_std` EMA inside the block."""
    frozen = autoencoder.bottleneck.freeze
    autoencoder.bottleneck.freeze = True
    try:
        yield
    finally:
        autoencoder.bottleneck.freeze = frozen


def step_seed(seed: int, epoch: int, batch_index: int) -> int:
    """Seed of one micro-step: a function of (seed, epoch, batch) only, so a resumed run draws the same noise."""
    return zlib.crc32(f"{seed}:{epoch}:{batch_index}".encode()) % (2**31)


class SAMETrainingModule(nn.Module):
    """
    The autoencoder and its auxiliary heads in one module, so that a single (DDP-wrapped) forward computes the
    reconstruction and every latent loss. Returns a dict with `reconstruction`, `latents` and the latent losses.
    """

    def __init__(self, autoencoder, heads, train_encoder: bool, contrastive_temperature: float):
        super().__init__()
        self.autoencoder = autoencoder
        self.heads = heads
        self.train_encoder = train_encoder
        self.contrastive_temperature = contrastive_temperature

    def forward(self, audio: torch.Tensor, views: torch.Tensor = None, use_kl: bool = False):
        autoencoder = self.autoencoder
        with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
            latents = autoencoder.encode(audio, chunked=False).latents
        reconstruction = autoencoder.decode(latents, add_noise=True, chunked=False).sample[..., : audio.shape[-1]]
        outputs = {"reconstruction": reconstruction, "latents": latents}
        if use_kl:
            outputs["ae/kl"] = autoencoder.bottleneck.regularization_loss(latents)
        heads = self.heads
        if heads is None:
            return outputs
        sample_rate, ratio = autoencoder.config.sampling_rate, autoencoder.downsampling_ratio
        if heads.denoiser is not None:
            outputs["align/diffusion"] = flow_matching_alignment_loss(heads.denoiser, latents)
        if heads.chroma is not None:
            target = chroma_targets(audio, sample_rate, frame_length=ratio)
            outputs["sem/chroma"] = frame_regression_loss(heads.chroma(latents), target)
        if heads.ild is not None:
            edges = (0.0, 500.0, 2000.0, 8000.0, sample_rate / 2)
            target = interaural_level_difference(audio, sample_rate, frame_length=ratio, band_edges_hz=edges)
            outputs["sem/ild"] = frame_regression_loss(heads.ild(latents), target)
        if heads.projection is not None:
            # The running_std EMA is a statistic of the training clips only: pause it for the augmented views (and
            # avoid a second in-place update of a tensor the first encode saved for backward).
            with paused_bottleneck_ema(autoencoder):
                view_latents = autoencoder.encode(views, chunked=False).latents
            embeddings_a, embeddings_b = heads.projection(view_latents).chunk(2)
            outputs["contrast/infonce"] = info_nce_loss(embeddings_a, embeddings_b, self.contrastive_temperature)
        return outputs


def load_autoencoder(args) -> SAMEAutoencoderModel:
    folder = args.pretrained_model_name_or_path
    if args.subfolder:
        folder = os.path.join(folder, args.subfolder)
    if os.path.isfile(os.path.join(folder, "model_config.json")):
        autoencoder = SAMEAutoencoderModel.from_single_file(folder)
    else:
        autoencoder = SAMEAutoencoderModel.from_pretrained(
            args.pretrained_model_name_or_path, subfolder=args.subfolder
        )
    if args.from_scratch:
        autoencoder = SAMEAutoencoderModel.from_config(autoencoder.config)
    elif args.reinit_decoder:
        fresh = SAMEAutoencoderModel.from_config(autoencoder.config)
        autoencoder.decoder.load_state_dict(fresh.decoder.state_dict(), strict=True)
    return autoencoder


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

    # 2. Autoencoder and training mode.
    autoencoder = load_autoencoder(args)
    train_encoder = args.training_mode == "full"
    lora_config = None
    if args.training_mode == "full":
        set_bottleneck_frozen(autoencoder, args.freeze_bottleneck)
    else:
        set_bottleneck_frozen(autoencoder, True)
        autoencoder.encoder.requires_grad_(False)
        autoencoder.bottleneck.requires_grad_(False)
        if args.training_mode == "lora":
            lora_config = add_decoder_lora(autoencoder, args.lora_rank, args.lora_alpha or args.lora_rank)
        elif args.trainable_parameters is not None:
            selected = restrict_decoder_training(autoencoder, args.trainable_parameters)
            logger.info(f"Training {len(selected)} decoder parameter tensors: {selected}")
    if args.gradient_checkpointing:
        autoencoder.enable_gradient_checkpointing()
    weights = {key: getattr(args, flag) for key, flag in LOSS_WEIGHT_FLAGS.items()}
    if not train_encoder:
        ignored = [key for key in ENCODER_LOSSES if weights[key] != 0]
        if ignored:
            logger.info(f"Mode {args.training_mode!r} keeps the latents fixed; not computing {ignored}.")
        weights.update(dict.fromkeys(ENCODER_LOSSES, 0.0))
    if weights["contrast/infonce"] and args.train_batch_size < 2:
        raise ValueError(
            "`--lambda_contrast` needs `--train_batch_size` >= 2 (InfoNCE); set it to 0 or raise the batch."
        )

    # 3. Auxiliary heads and discriminator.
    heads = None
    if any(weights[key] for key in ENCODER_LOSSES[1:]):
        heads = SAMEAuxiliaryHeads(
            autoencoder.config.latent_channels,
            args.aux_hidden_channels,
            diffusion=weights["align/diffusion"] != 0,
            chroma=weights["sem/chroma"] != 0,
            ild=weights["sem/ild"] != 0,
            contrastive=weights["contrast/infonce"] != 0,
        )
    generator = SAMETrainingModule(autoencoder, heads, train_encoder, args.contrastive_temperature)
    use_adversarial = weights["adv/g_loss"] != 0 or weights["adv/feat"] != 0
    discriminator = None
    if use_adversarial:
        discriminator = MultiResolutionSpectrogramDiscriminator(
            args.discriminator_fft_sizes,
            autoencoder.config.audio_channels,
            args.discriminator_channels,
            args.discriminator_num_layers,
        )

    # 4. Optimizers and learning-rate schedules.
    betas = (args.adam_beta1, args.adam_beta2)
    generator_parameters = [p for p in generator.parameters() if p.requires_grad]
    logger.info(f"Trainable autoencoder/head parameters: {sum(p.numel() for p in generator_parameters):,}")
    optimizer_g = torch.optim.AdamW(
        generator_parameters, lr=args.learning_rate, betas=betas, weight_decay=args.adam_weight_decay
    )
    scheduler_kwargs = {
        "num_warmup_steps": args.lr_warmup_steps * accelerator.num_processes,
        "num_training_steps": args.max_train_steps * accelerator.num_processes,
    }
    lr_scheduler_g = get_scheduler(args.lr_scheduler, optimizer=optimizer_g, **scheduler_kwargs)
    if use_adversarial:
        optimizer_d = torch.optim.AdamW(
            discriminator.parameters(), lr=args.discriminator_learning_rate, betas=betas, weight_decay=0.0
        )
        lr_scheduler_d = get_scheduler(args.lr_scheduler, optimizer=optimizer_d, **scheduler_kwargs)

    # 5. Data: random crops of whole latent frames.
    ratio = autoencoder.downsampling_ratio
    sample_rate = autoencoder.config.sampling_rate
    segment_samples = math.ceil(args.segment_seconds * sample_rate / ratio) * ratio
    dataset = AudioFolderDataset(
        args.train_data_dir,
        sample_rate=sample_rate,
        channels=autoencoder.config.audio_channels,
        segment_samples=segment_samples,
        random_crop=True,
        seed=args.seed,
        crop_multiple=ratio if args.align_crops else 1,
    )
    if len(dataset) < args.train_batch_size * accelerator.num_processes:
        raise ValueError(
            f"`--train_batch_size` {args.train_batch_size} x {accelerator.num_processes} process(es) exceeds the "
            f"{len(dataset)} readable files in `--train_data_dir`; lower the batch size."
        )
    train_dataloader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.dataloader_num_workers,
    )

    # 6. Prepare everything with accelerate.
    if use_adversarial:
        generator, discriminator, optimizer_g, optimizer_d, lr_scheduler_g, lr_scheduler_d, train_dataloader = (
            accelerator.prepare(
                generator, discriminator, optimizer_g, optimizer_d, lr_scheduler_g, lr_scheduler_d, train_dataloader
            )
        )
    else:
        generator, optimizer_g, lr_scheduler_g, train_dataloader = accelerator.prepare(
            generator, optimizer_g, lr_scheduler_g, train_dataloader
        )
    unwrapped = accelerator.unwrap_model(generator)

    def save_model_hook(models, weights_, output_dir):
        # Checkpoints also carry a usable model: a save_pretrained folder (or the LoRA file) next to the state.
        if accelerator.is_main_process:
            if lora_config is not None:
                save_decoder_lora(unwrapped.autoencoder, os.path.join(output_dir, LORA_WEIGHTS_NAME), lora_config)
            else:
                save_autoencoder(unwrapped.autoencoder, os.path.join(output_dir, "autoencoder"))

    accelerator.register_save_state_pre_hook(save_model_hook)

    # 7. Trackers.
    updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    num_epochs = math.ceil(args.max_train_steps / updates_per_epoch)
    if accelerator.is_main_process and args.report_to != "none":
        config = {k: (str(v) if isinstance(v, (list, tuple)) or v is None else v) for k, v in vars(args).items()}
        accelerator.init_trackers("train_autoencoder", config=config)

    # 8. Resume.
    global_step = resume_training_state(accelerator, args.output_dir, args.resume_from_checkpoint, logger)
    first_epoch = global_step // updates_per_epoch
    skip_batches = (global_step % updates_per_epoch) * args.gradient_accumulation_steps
    loss_log = None
    if args.loss_log and accelerator.is_main_process:
        loss_log = open(args.loss_log, "a" if global_step > 0 else "w")

    validation_files = None
    if args.validation_steps > 0 and accelerator.is_main_process:
        source = dataset.paths if args.validation_dir is None else AudioFolderDataset(args.validation_dir).paths
        validation_files = source[: args.num_validation_clips]

    def validate(step):
        folder = os.path.join(args.output_dir, "validation", f"step-{step:07d}")
        metrics = evaluate_reconstruction(
            unwrapped.autoencoder,
            validation_files,
            max_seconds=args.validation_seconds,
            chunked=False,
            output_dir=folder,
        )["mean"]
        accelerator.log({f"val/{key}": value for key, value in metrics.items()}, step=step)
        logger.info(f"step {step} validation: {metrics} (WAVs in {folder})")

    # 9. Training loop: discriminator step, then generator step.
    logger.info(
        f"***** Training: mode {args.training_mode}, {len(dataset)} files, segment {segment_samples} samples, "
        f"{args.max_train_steps} steps, {num_epochs} epochs *****"
    )
    progress_bar = tqdm(
        range(args.max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    raw_discriminator = accelerator.unwrap_model(discriminator) if use_adversarial else None
    window = {}
    for epoch in range(first_epoch, num_epochs):
        if global_step >= args.max_train_steps:
            break
        generator.train()
        if use_adversarial:
            discriminator.train()
        dataset.set_epoch(epoch)
        train_dataloader.set_epoch(epoch)
        loader = train_dataloader
        start = 0
        if epoch == first_epoch and skip_batches:
            loader = accelerator.skip_first_batches(train_dataloader, skip_batches)
            start = skip_batches
        for batch_index, batch in enumerate(loader, start=start):
            set_seed(step_seed(args.seed, epoch, batch_index), device_specific=True)
            audio = batch["audio"]
            models = (generator, discriminator) if use_adversarial else (generator,)
            with accelerator.accumulate(*models):
                views = None
                if weights["contrast/infonce"]:
                    views = torch.cat([augment_audio(audio), augment_audio(audio)])
                outputs = generator(audio, views=views, use_kl=weights["ae/kl"] != 0)
                reconstruction = outputs["reconstruction"]
                losses = {key: outputs[key] for key in ENCODER_LOSSES if key in outputs}
                adversarial_on = use_adversarial and global_step >= args.adversarial_start_step

                # Discriminator step.
                if adversarial_on:
                    real_outputs = discriminator(audio)
                    fake_outputs = discriminator(reconstruction.detach())
                    losses["adv/d_loss"] = discriminator_loss(
                        [logits.float() for logits, _ in real_outputs],
                        [logits.float() for logits, _ in fake_outputs],
                        args.adversarial_loss,
                    )
                    accelerator.backward(losses["adv/d_loss"])
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(discriminator.parameters(), args.max_grad_norm)
                    optimizer_d.step()
                    lr_scheduler_d.step()
                    optimizer_d.zero_grad()

                # Generator step. The spectral losses run in fp32 (outside autocast).
                if weights["ae/stft"]:
                    losses["ae/stft"] = multi_resolution_stft_loss(
                        reconstruction, audio, args.stft_fft_sizes, eps=args.stft_eps
                    )
                if weights["ae/mel"]:
                    losses["ae/mel"] = multi_resolution_mel_loss(
                        reconstruction, audio, sample_rate, args.mel_fft_sizes, args.mel_bins, eps=args.mel_eps
                    )
                if weights["ae/level"]:
                    losses["ae/level"] = frame_level_loss(reconstruction, audio)
                if weights["ae/wave"]:
                    losses["ae/wave"] = waveform_l1_loss(reconstruction, audio)
                if adversarial_on:
                    with accelerator.autocast(), frozen_parameters(raw_discriminator):
                        fake_outputs = raw_discriminator(reconstruction)
                        with torch.no_grad():
                            real_outputs = raw_discriminator(audio)
                    losses["adv/g_loss"] = generator_adversarial_loss(
                        [logits.float() for logits, _ in fake_outputs], args.adversarial_loss
                    )
                    losses["adv/feat"] = feature_matching_loss(
                        [[f.float() for f in features] for _, features in real_outputs],
                        [[f.float() for f in features] for _, features in fake_outputs],
                    )
                total = sum(weights[key] * value for key, value in losses.items() if weights.get(key))
                losses["gen/total"] = total
                accelerator.backward(total)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(generator_parameters, args.max_grad_norm)
                optimizer_g.step()
                lr_scheduler_g.step()
                optimizer_g.zero_grad()

            for key, value in losses.items():
                total_value, count = window.get(key, (0.0, 0))
                window[key] = (total_value + value.detach().float(), count + 1)

            if not accelerator.sync_gradients:
                continue
            # One optimizer step done.
            global_step += 1
            progress_bar.update(1)
            keys = sorted(window)
            means = torch.stack([window[key][0] / window[key][1] for key in keys])
            means = accelerator.reduce(means, reduction="mean")
            logs = {key: float(value) for key, value in zip(keys, means)}
            logs["lr"] = lr_scheduler_g.get_last_lr()[0]
            window = {}
            accelerator.log(logs, step=global_step)
            progress_bar.set_postfix(**{k: f"{v:.4f}" for k, v in logs.items() if k in ("ae/stft", "gen/total")})
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
            if validation_files and global_step % args.validation_steps == 0:
                validate(global_step)
            if global_step >= args.max_train_steps:
                break

    # 10. Save the final model (bottleneck frozen) or the decoder LoRA.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        autoencoder = unwrapped.autoencoder
        if lora_config is not None:
            save_decoder_lora(autoencoder, os.path.join(args.output_dir, LORA_WEIGHTS_NAME), lora_config)
        else:
            set_bottleneck_frozen(autoencoder, True)
            autoencoder.save_pretrained(args.output_dir)
        logger.info(f"Saved the final model to {args.output_dir}")
    if loss_log is not None:
        loss_log.close()
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
