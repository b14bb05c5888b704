"""Classifier-free guidance of Stable Audio 3: CFG in denoised space with adaptive projected guidance (APG).

Official `DiffusionTransformer.forward` / `apg_project` (`stable_audio_3/models/dit.py:311-343,573-613`), rectified flow
(`x_t = (1 - t) x_0 + t noise`, velocity `v = noise - x_0`, so the denoised estimate is `x_t - t v`).
"""

import math
from typing import Optional, Tuple, Union

import torch


# The checkpoints' default CFG scales when a pipeline's config sets none: the official sampling defaults for base
# (rectified-flow) models, and no guidance for post-trained ones (it is distilled into them).
BASE_GUIDANCE_SCALE = 7.0
POST_TRAINED_GUIDANCE_SCALE = 1.0


def check_default_guidance_scale(value: Optional[float]) -> Optional[float]:
    """Validates a pipeline's `default_guidance_scale` config: `None` (the checkpoint kind's default) or a finite
    number >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1.0:
        raise ValueError(
            f"`default_guidance_scale` must be a finite number >= 1.0 (1.0 = off) or None (the default of the "
            f"checkpoint kind: {BASE_GUIDANCE_SCALE} for base models, {POST_TRAINED_GUIDANCE_SCALE} for post-trained "
            f"ones), got {value!r}."
        )
    return float(value)


def resolve_default_guidance_scale(configured: Optional[float], is_post_trained: bool) -> float:
    """The CFG scale of a call that gives none: a pipeline config's `default_guidance_scale` where it sets one, else
    the checkpoint kind's ([`BASE_GUIDANCE_SCALE`] or [`POST_TRAINED_GUIDANCE_SCALE`])."""
    if configured is not None:
        return float(configured)
    return POST_TRAINED_GUIDANCE_SCALE if is_post_trained else BASE_GUIDANCE_SCALE


def apg_project(
    vector: torch.Tensor, direction: torch.Tensor, valid_mask: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Splits `vector` into the components parallel and orthogonal to `direction`, per sample over `(channels, frames)`,
    in float32 (APG, Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High Guidance Scales", §3).

    Args:
        vector (`torch.Tensor` of shape `(batch, channels, frames)`): The tensor to project.
        direction (`torch.Tensor` of shape `(batch, channels, frames)`): The reference direction.
        valid_mask (`torch.Tensor` of shape `(batch, frames)`, *optional*): 1 = valid frame. Only valid frames count
            in the projection, and the orthogonal part is zeroed on padding frames (official behaviour).

    Returns:
        `(parallel, orthogonal)`, in the dtype of `vector`.
    """
    dtype = vector.dtype
    vector, direction = vector.float(), direction.float()
    if valid_mask is None:
        direction = torch.nn.functional.normalize(direction, dim=[-1, -2])
        parallel = (vector * direction).sum(dim=[-1, -2], keepdim=True) * direction
        orthogonal = vector - parallel
    else:
        mask = valid_mask.to(device=vector.device, dtype=torch.float32)[:, None, :]
        vector_masked, direction_masked = vector * mask, direction * mask
        norm = direction_masked.norm(dim=[-1, -2], keepdim=True).clamp(min=1e-8)
        direction_unit = direction_masked / norm
        parallel = (vector_masked * direction_unit).sum(dim=[-1, -2], keepdim=True) * direction_unit
        # The direction is zero on padding, so only valid frames enter the dot product.
        orthogonal = (vector - (vector * direction_unit).sum(dim=[-1, -2], keepdim=True) * direction_unit) * mask
    return parallel.to(dtype), orthogonal.to(dtype)


def _guided_difference(difference, direction, apg_scale, valid_mask):
    if apg_scale == 0.0:
        return difference
    _, orthogonal = apg_project(difference, direction, valid_mask)
    if apg_scale == 1.0:
        return orthogonal
    return apg_scale * orthogonal + (1 - apg_scale) * difference


def apply_guidance(
    sample: torch.Tensor,
    timestep: Union[torch.Tensor, float],
    velocity_cond: torch.Tensor,
    velocity_uncond: torch.Tensor,
    guidance_scale: float,
    apg_scale: float = 1.0,
    valid_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """
    Official Stable Audio 3 guidance: CFG on the denoised estimates, with APG keeping only the part of the guidance
    difference orthogonal to the conditional estimate.

    ```
    d_c = x - t v_c,  d_u = x - t v_u,  diff = d_c - d_u
    diff' = diff (apg 0) | orth(diff, d_c) (apg 1) | apg orth(diff, d_c) + (1 - apg) diff (in between)
    v = (x - (d_c + (guidance_scale - 1) diff')) / t
    ```

    Args:
        sample (`torch.Tensor` of shape `(batch, latent_dim, frames)`): The model input `x_t`.
        timestep (`torch.Tensor` of shape `(batch,)` or `float`): Flow time `t` of `sample`.
        velocity_cond (`torch.Tensor`): Velocity predicted with the prompt.
        velocity_uncond (`torch.Tensor`): Velocity of the unconditional (all-zero context) or negative-prompt branch.
        guidance_scale (`float`): CFG scale; 1 returns `velocity_cond` unchanged (the official code skips CFG).
        apg_scale (`float`, defaults to 1.0): 0 = plain CFG in denoised space, 1 = full APG, in between = blend.
        valid_mask (`torch.Tensor` of shape `(batch, frames)`, *optional*): 1 = valid frame; the projection only uses
            valid frames and is zero on padding.

    Returns:
        `torch.Tensor`: the guided velocity, shape of `sample`, dtype of `velocity_cond`.

    At `t = 0` the official formula divides 0 by 0. There we return its limit for `t -> 0`,
    `v_c + (guidance_scale - 1) diff'(v_c - v_u)` with the projection direction `d_c = x` (the samplers of the official
    code never evaluate the model at `t = 0`).
    """
    if guidance_scale == 1.0:
        return velocity_cond
    if not 0.0 <= apg_scale <= 1.0:
        raise ValueError(f"`apg_scale` must be in [0, 1], got {apg_scale}.")
    if velocity_cond.shape != sample.shape or velocity_uncond.shape != sample.shape:
        raise ValueError(
            f"`velocity_cond` {tuple(velocity_cond.shape)} and `velocity_uncond` {tuple(velocity_uncond.shape)} must "
            f"have the shape of `sample` {tuple(sample.shape)}."
        )
    batch_size = sample.shape[0]
    sigma = torch.as_tensor(timestep, device=sample.device).float().reshape(-1).expand(batch_size)[:, None, None]

    cond_denoised = sample - velocity_cond * sigma
    uncond_denoised = sample - velocity_uncond * sigma
    difference = _guided_difference(cond_denoised - uncond_denoised, cond_denoised, apg_scale, valid_mask)
    guided_denoised = cond_denoised + (guidance_scale - 1) * difference
    velocity = (sample - guided_denoised) / sigma

    at_zero = sigma == 0
    if bool(at_zero.any()):
        limit = velocity_cond + (guidance_scale - 1) * _guided_difference(
            velocity_cond - velocity_uncond, cond_denoised, apg_scale, valid_mask
        )
        velocity = torch.where(at_zero, limit.to(velocity.dtype), velocity)
    return velocity.to(velocity_cond.dtype)
