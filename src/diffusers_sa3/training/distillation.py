"""Stage 2 of Stable Audio 3 training ("distillation warm-up"): teacher trajectories and the one-step student loss.

A frozen base (rectified-flow) teacher samples with flow DPM-Solver++(2M) and classifier-free guidance (the official
denoised-space CFG with APG, unconditional context = zeros). Every intermediate state `x_t` of a trajectory, with its
noise level `t`, is a training input; the trajectory's final output is the target of the student's one-step estimate
`x0 = x_t - t v`. Trajectories can be cached to disk as one safetensors file per data item.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from diffusers.utils import logging
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from ..pipelines.guidance import apply_guidance
from ..schedulers.scheduling_flow_match_ot import FlowMatchOTScheduler
from .flow_objective import masked_mse


logger = logging.get_logger(__name__)


@dataclass
class TeacherTrajectory:
    """
    Args:
        states (`torch.Tensor` of shape `(batch, num_steps, latent_dim, frames)`): the sampler's input at each step
            (`states[:, 0]` is the initial noise).
        timesteps (`torch.Tensor` of shape `(num_steps,)`): the noise level `t` of each state.
        final (`torch.Tensor` of shape `(batch, latent_dim, frames)`): the sampler's output (t = 0).
    """

    states: torch.Tensor
    timesteps: torch.Tensor
    final: torch.Tensor


@torch.no_grad()
def generate_teacher_trajectory(
    transformer,
    noise: torch.Tensor,
    cross_attention_context: torch.Tensor,
    global_condition: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    inpaint_mask: Optional[torch.Tensor] = None,
    inpaint_latents: Optional[torch.Tensor] = None,
    num_inference_steps: int = 15,
    guidance_scale: float = 5.0,
    apg_scale: float = 1.0,
    solver_type: str = "dpmpp_2m",
) -> TeacherTrajectory:
    """
    Samples with the teacher from `noise` and records every state.

    Guidance as the official sampler and [`StableAudio3Pipeline`]: the batch runs as `[cond, uncond]` with the
    unconditional context `zeros_like(cross_attention_context)` and the same global and inpainting conditioning, then
    [`apply_guidance`] (denoised-space CFG, APG over the valid frames of `attention_mask`).

    Args:
        transformer ([`StableAudio3Transformer`]): the frozen teacher.
        noise (`torch.Tensor` of shape `(batch, latent_dim, frames)`): the initial state (t = 1).
        cross_attention_context, global_condition: from `transformer.encode_conditioning`.
        attention_mask (`torch.Tensor` of shape `(batch, frames)`, *optional*): 1 = valid frame.
        inpaint_mask (`torch.Tensor` of shape `(batch, 1, frames)`), inpaint_latents (*optional*): inpainting
            conditioning (1 = frame given by the reference, the reference already multiplied by the mask).
        num_inference_steps (`int`, defaults to 15): solver steps.
        guidance_scale (`float`, defaults to 5.0): CFG scale (1 = no guidance, no unconditional pass).
        apg_scale (`float`, defaults to 1.0): APG blend (official default).
        solver_type (`str`, defaults to `"dpmpp_2m"`): `FlowMatchOTScheduler` solver.
    """
    scheduler = FlowMatchOTScheduler(solver_type=solver_type)
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    batch_size = noise.shape[0]
    do_cfg = guidance_scale != 1.0
    model_mask = attention_mask
    if model_mask is not None and bool(model_mask.all()):
        model_mask = None

    def doubled(tensor):
        return None if tensor is None else torch.cat([tensor, tensor])

    if do_cfg:
        model_context = torch.cat([cross_attention_context, torch.zeros_like(cross_attention_context)])
        model_global, model_attention = doubled(global_condition), doubled(model_mask)
        model_inpaint_mask, model_inpaint_latents = doubled(inpaint_mask), doubled(inpaint_latents)
    else:
        model_context, model_global, model_attention = cross_attention_context, global_condition, model_mask
        model_inpaint_mask, model_inpaint_latents = inpaint_mask, inpaint_latents

    latents = noise
    states = []
    for t in scheduler.timesteps:
        states.append(latents)
        t_batch = t.expand(batch_size).to(latents.dtype)
        velocity = transformer(
            torch.cat([latents, latents]) if do_cfg else latents,
            torch.cat([t_batch, t_batch]) if do_cfg else t_batch,
            inpaint_mask=model_inpaint_mask,
            inpaint_latents=model_inpaint_latents,
            attention_mask=model_attention,
            cross_attention_context=model_context,
            global_condition=model_global,
            return_dict=False,
        )[0]
        if do_cfg:
            velocity_cond, velocity_uncond = velocity.chunk(2)
            velocity = apply_guidance(
                latents,
                t_batch,
                velocity_cond,
                velocity_uncond,
                guidance_scale=guidance_scale,
                apg_scale=apg_scale,
                valid_mask=attention_mask,
            )
        latents = scheduler.step(velocity, t, latents).prev_sample
    if attention_mask is not None:
        latents = latents * attention_mask[:, None, :].to(latents.dtype)
    return TeacherTrajectory(
        states=torch.stack(states, dim=1), timesteps=scheduler.timesteps.float().clone(), final=latents
    )


def one_step_distillation_loss(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    target: torch.Tensor,
    frame_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """
    MSE between the student's one-step estimate `x0 = x_t - t v` and the teacher's final output, averaged over the
    valid frames of each sample (all channels) and then over the batch (stage 1's `masked_mse`).

    Args:
        velocity (`torch.Tensor` of shape `(batch, latent_dim, frames)`): the student's prediction `v`.
        sample (`torch.Tensor`): the trajectory state `x_t`, same shape.
        timestep (`torch.Tensor` of shape `(batch,)`): `t` of each state.
        target (`torch.Tensor`): the teacher's final output, same shape.
        frame_mask (`torch.Tensor` of shape `(batch, frames)`, *optional*): 1 = frame counted in the loss.
    """
    if not velocity.shape == sample.shape == target.shape:
        raise ValueError(
            f"`velocity`, `sample` and `target` must have one shape, got {tuple(velocity.shape)}, "
            f"{tuple(sample.shape)} and {tuple(target.shape)}."
        )
    estimate = sample.float() - timestep.float().reshape(-1, 1, 1) * velocity.float()
    if frame_mask is None:
        return ((estimate - target.float()) ** 2).mean()
    return masked_mse(estimate, target, frame_mask)


# ----------------------------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------------------------


def teacher_digest(pipeline) -> str:
    """
    SHA-256 of what a teacher pipeline computes trajectories with, wherever its files are: every tensor (name, dtype,
    shape, bytes) of its transformer and text encoder, their configs, the scheduler's config and the tokenizer's
    vocabulary. A teacher retrained or re-stored in place gets a new digest; a copy elsewhere keeps it.
    """

    def settings(config) -> bytes:
        # Configs also carry where they were loaded from (`_name_or_path`), library versions, the class names of the
        # checkpoint (`architectures`) and its storage dtype: not what is computed (the tensors carry their dtype).
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        metadata = ("transformers_version", "architectures", "torch_dtype", "dtype")
        kept = {k: v for k, v in config.items() if not k.startswith("_") and k not in metadata}
        return json.dumps(kept, sort_keys=True, default=str).encode()

    digest = hashlib.sha256()
    for module in (pipeline.transformer, pipeline.text_encoder):
        digest.update(settings(module.config))
        for name, tensor in module.state_dict().items():
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    digest.update(settings(pipeline.scheduler.config))
    digest.update(json.dumps(sorted(pipeline.tokenizer.get_vocab().items())).encode())
    return digest.hexdigest()


def teacher_fingerprint(settings: Dict) -> str:
    """A short hash of the teacher and sampler settings; a cache folder holds trajectories of one fingerprint."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class TrajectoryCache:
    """
    A folder of teacher trajectories, one `trajectory-<index>.safetensors` per data item, each with the tensors
    `states (num_steps, latent_dim, frames)`, `timesteps (num_steps,)`, `final (latent_dim, frames)`,
    `inpaint_mask (1, frames)`, `inpaint_latents (latent_dim, frames)` and the metadata `prompt`, `seconds_total`,
    `valid_length` and `fingerprint`. The item's frames are its valid frames only (no padding is stored).

    Args:
        cache_dir (`str`): the folder (created if missing).
        fingerprint (`str`): [`teacher_fingerprint`] of the settings; files written with other settings are refused.
    """

    def __init__(self, cache_dir: str, fingerprint: str):
        self.cache_dir = cache_dir
        self.fingerprint = fingerprint
        os.makedirs(cache_dir, exist_ok=True)

    def path(self, index: int) -> str:
        return os.path.join(self.cache_dir, f"trajectory-{int(index):08d}.safetensors")

    def has(self, index: int) -> bool:
        path = self.path(index)
        if not os.path.isfile(path):
            return False
        with safe_open(path, framework="pt") as f:
            found = f.metadata().get("fingerprint")
        if found != self.fingerprint:
            raise ValueError(
                f"`--trajectory_cache_dir` {self.cache_dir!r} holds trajectories of other teacher settings "
                f"(fingerprint {found}, expected {self.fingerprint}); use another folder or empty this one."
            )
        return True

    def save(self, index: int, tensors: Dict[str, torch.Tensor], prompt: str, seconds_total: float) -> None:
        valid_length = tensors["final"].shape[-1]
        metadata = {
            "prompt": prompt,
            "seconds_total": repr(float(seconds_total)),
            "valid_length": str(valid_length),
            "fingerprint": self.fingerprint,
        }
        tensors = {key: value.detach().float().contiguous().cpu() for key, value in tensors.items()}
        tmp = self.path(index) + ".tmp"
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, self.path(index))

    def load(self, index: int) -> Dict:
        path = self.path(index)
        item = {}
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata()
            for key in f.keys():
                item[key] = f.get_tensor(key)
        if metadata.get("fingerprint") != self.fingerprint:
            raise ValueError(f"Trajectory {path!r} was written with other teacher settings; empty the cache folder.")
        item["prompt"] = metadata["prompt"]
        item["seconds_total"] = float(metadata["seconds_total"])
        item["valid_length"] = int(metadata["valid_length"])
        return item


class TrajectoryDataset(Dataset):
    """The cached trajectories of items `0 .. num_items - 1` as a data set (see [`TrajectoryCache`])."""

    def __init__(self, cache: TrajectoryCache, num_items: int):
        missing = [i for i in range(num_items) if not cache.has(i)]
        if missing:
            raise ValueError(
                f"The trajectory cache {cache.cache_dir!r} lacks {len(missing)} of {num_items} items (first: "
                f"{missing[:5]}); run the script again to fill it."
            )
        self.cache = cache
        self.num_items = num_items

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, index: int) -> Dict:
        return self.cache.load(index)


def collate_trajectories(items: List[Dict]) -> Dict:
    """Right-pads every tensor's last (frame) axis with zeros to the longest item; adds `attention_mask (B, T)`."""
    frames = max(item["valid_length"] for item in items)
    batch = {}
    for key in ("states", "final", "inpaint_mask", "inpaint_latents"):
        batch[key] = torch.stack(
            [torch.nn.functional.pad(item[key], (0, frames - item[key].shape[-1])) for item in items]
        )
    batch["timesteps"] = torch.stack([item["timesteps"] for item in items])
    lengths = torch.tensor([item["valid_length"] for item in items])
    batch["valid_length"] = lengths
    batch["attention_mask"] = torch.arange(frames)[None, :] < lengths[:, None]
    batch["seconds_total"] = torch.tensor([item["seconds_total"] for item in items], dtype=torch.float32)
    batch["prompt"] = [item["prompt"] for item in items]
    return batch


# ----------------------------------------------------------------------------------------------------------------------
# Shared by the stage-2 and stage-3 scripts
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def batch_latents(batch: Dict, vae, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    `(latents (B, C, T), valid_length (B,))` of a stage-1 batch (`flow_data.collate_latents` or `collate_audio`):
    latents are taken as they are; audio is encoded unchunked by `vae` and its valid length is
    `ceil(num_samples / downsampling_ratio)` frames. Frames past the valid length are zeroed.
    """
    if "latents" in batch:
        latents = batch["latents"].to(device).float()
        valid = torch.as_tensor(batch["valid_length"]).to(device)
    else:
        audio = batch["audio"].to(device=device, dtype=vae.dtype)
        latents = vae.encode(audio, chunked=False).latents.float()
        ratio = vae.downsampling_ratio
        valid = torch.as_tensor(batch["num_samples"], device=device).add(ratio - 1).div(ratio, rounding_mode="floor")
        valid = valid.clamp(max=latents.shape[-1])
    mask = torch.arange(latents.shape[-1], device=device)[None, :] < valid[:, None]
    return latents * mask[:, None, :], valid


def save_pingpong_pipeline(pipe, transformer, path: str) -> None:
    """Saves `pipe` with `transformer` and a [`PingPongAdversarialScheduler`] (one-step / ping-pong sampling)."""
    from ..pipelines.pipeline_stable_audio3 import StableAudio3Pipeline
    from ..schedulers.scheduling_pingpong_adversarial import PingPongAdversarialScheduler

    StableAudio3Pipeline(
        vae=pipe.vae,
        transformer=transformer,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        scheduler=PingPongAdversarialScheduler(),
        max_text_length=pipe.config.max_text_length,
        max_sample_size=pipe.config.max_sample_size,
        headroom_seconds=pipe.config.headroom_seconds,
    ).save_pretrained(path)
