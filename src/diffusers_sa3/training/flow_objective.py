"""The stage-1 flow-matching objective of Stable Audio 3, as the official `DiffusionCondTrainingWrapper`.

Official references (`Stability-AI/stable-audio-3`): `training/diffusion.py:245-500` (the training step),
`training/utils.py:280-441` (silence augmentation, masked loss), `models/inpainting.py` (inpaint masks),
`models/dit.py:441-445` (condition dropout). One step, for clean latents `x0` `(batch, channels, frames)`:

1. `t` from a timestep sampler, shifted per item by its effective length `ceil(int(seconds_total * sr) / 4096)`
   ([`FlowMatchOTScheduler.shift_timesteps`]).
2. Noise, optionally re-paired with the batch by minibatch OT (Sinkhorn, [`FlowMatchOTScheduler.ot_coupling`]);
   `x_t = (1 - t) x0 + t noise`, target `v = noise - x0`.
3. Silence augmentation: each item's valid length is extended by an exponential draw (mean 4 s), so the model sees
   (and learns to produce) silence after the content; frames past it are masked out of self-attention.
4. An inpaint mask per item (random segments / full generation / causal prefix with probabilities 0.1 / 0.8 / 0.1);
   the given frames are passed as `[mask | x0 * mask]` local conditioning.
5. With probability 0.1 per item, the whole cross-attention context (prompt tokens, padding and duration token) is
   replaced by zeros (classifier-free guidance training); the global duration condition is never dropped.
6. MSE on the valid frames that are to be generated: per-item mean, then batch mean; optionally plus the
   reconstruction loss of the given frames (the official `mask_loss_weight` term, 1.0 in its LoRA script).

Every random draw comes from one `generator`, so a step is reproducible from its seed.
"""

from typing import Dict, Optional, Sequence, Tuple

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import nn


MASK_TYPES = ("random_segments", "full", "causal")


def _rand(shape, generator, device) -> torch.Tensor:
    rand_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=rand_device).to(device)


def _randint(low: int, high: int, generator) -> int:
    """An integer in [low, high] (both included), like `random.randint`."""
    rand_device = generator.device if generator is not None else torch.device("cpu")
    return int(torch.randint(low, high + 1, (1,), generator=generator, device=rand_device).item())


def sample_inpaint_masks(
    valid_lengths: torch.Tensor,
    num_frames: int,
    probabilities: Sequence[float] = (0.1, 0.8, 0.1),
    generator: Optional[torch.Generator] = None,
    max_segments: int = 10,
) -> torch.Tensor:
    """
    Draws one inpaint mask per item, as the official `random_inpaint_mask` with `mask_padding=True`
    (`models/inpainting.py`). 1 = frame given to the model, 0 = frame to generate.

    The type is drawn with `probabilities` over `(random segments, full, causal)`:
        - random segments: `n ~ U{1..max_segments}` segments, each of length `U{1..max(1, L // n)}` at a uniform
          start in the valid region, are set to 0 (they may overlap); the rest of the valid region is given.
        - full: everything 0 (plain text-to-audio).
        - causal: a prefix of length `U{0..L}` is given, the rest of the valid region is generated.
    Frames past the valid length `L` are always 0 (except for `L = 0`, kept all ones as official).

    Args:
        valid_lengths (`torch.Tensor` of shape `(batch,)`): valid frames per item (after silence augmentation).
        num_frames (`int`): frames of the batch.
        probabilities (`Sequence[float]`, defaults to `(0.1, 0.8, 0.1)`): the official `mask_type_probabilities`.
        generator (`torch.Generator`, *optional*): source of every draw.
        max_segments (`int`, defaults to 10): the official `max_mask_segments`.

    Returns:
        `torch.Tensor` of shape `(batch, 1, num_frames)`, float32, on the device of `valid_lengths`.
    """
    if len(probabilities) != 3 or any(p < 0 for p in probabilities) or abs(sum(probabilities) - 1.0) > 1e-6:
        raise ValueError(
            f"`probabilities` must be 3 non-negative numbers summing to 1 (random segments, full, causal), got "
            f"{tuple(probabilities)}."
        )
    valid_lengths = torch.as_tensor(valid_lengths)
    batch_size = valid_lengths.shape[0]
    weights = torch.tensor(probabilities, dtype=torch.float64)
    rand_device = generator.device if generator is not None else torch.device("cpu")
    masks = torch.ones(batch_size, 1, num_frames)
    for i in range(batch_size):
        length = int(valid_lengths[i])
        choice = int(torch.multinomial(weights.to(rand_device), 1, generator=generator).item())
        mask_type = MASK_TYPES[choice]
        if mask_type == "full":
            masks[i] = 0
            continue
        if length == 0:
            continue
        if mask_type == "random_segments":
            num_segments = _randint(1, max_segments, generator)
            max_length = max(1, length // num_segments)
            for _ in range(num_segments):
                segment = _randint(1, max_length, generator)
                if length - segment < 0:
                    continue
                start = _randint(0, length - segment, generator)
                masks[i, :, start : start + segment] = 0
        else:
            prefix = _randint(0, length, generator)
            masks[i, :, prefix:length] = 0
        masks[i, :, length:] = 0
    return masks.to(valid_lengths.device)


def augment_valid_lengths(
    valid_lengths: torch.Tensor,
    num_frames: int,
    mean_seconds: float = 4.0,
    sampling_rate: int = 44100,
    downsampling_ratio: int = 4096,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """
    Silence augmentation (official `create_augmented_padding_mask`, `training/utils.py:280-330`): each valid length
    grows by `floor(Exp(mean = mean_seconds * sampling_rate / downsampling_ratio))` frames, clamped to `num_frames`.
    `mean_seconds <= 0` returns the lengths unchanged.

    Returns:
        `torch.Tensor` of shape `(batch,)`, int64.
    """
    valid_lengths = torch.as_tensor(valid_lengths).long()
    if mean_seconds <= 0:
        return valid_lengths
    scale = mean_seconds * sampling_rate / downsampling_ratio
    uniform = _rand(valid_lengths.shape, generator, valid_lengths.device).double()
    extensions = (-torch.log1p(-uniform) * scale).long()
    return torch.clamp(valid_lengths + extensions, max=num_frames)


def lengths_to_mask(lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """`(batch,)` lengths -> `(batch, num_frames)` bool mask, True on the first `length` frames."""
    positions = torch.arange(num_frames, device=lengths.device)
    return positions[None, :] < lengths[:, None]


def masked_mse(pred: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """
    Mean squared error over the frames where `loss_mask` is True: per item over `(channels, frames in the mask)`,
    then the mean over the batch (official `compute_masked_loss` with attention masking, `training/utils.py:393-441`).
    An item with an empty mask contributes 0.

    Args:
        pred, target (`torch.Tensor` of shape `(batch, channels, frames)`).
        loss_mask (`torch.Tensor` of shape `(batch, frames)` or `(batch, 1, frames)`): bool or 0/1.
    """
    if loss_mask.ndim == 3:
        loss_mask = loss_mask[:, 0]
    loss_mask = loss_mask.to(device=pred.device, dtype=torch.bool)
    squared = (pred.float() - target.float()) ** 2
    total = torch.where(loss_mask[:, None, :], squared, 0.0).sum(dim=(1, 2))
    count = loss_mask.sum(dim=1) * pred.shape[1]
    return (total / (count + 1e-8)).mean()


def drop_conditioning(
    context: torch.Tensor,
    probability: float,
    generator: Optional[torch.Generator] = None,
    drop_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """
    Classifier-free-guidance dropout (official `models/dit.py:441-445`): each item's whole `context`
    `(batch, tokens, dim)` is replaced by zeros with probability `probability` (or where `drop_mask` `(batch,)` is
    True).
    """
    if drop_mask is None:
        if probability <= 0:
            return context
        drop_mask = _rand((context.shape[0],), generator, context.device) < probability
    drop_mask = drop_mask.to(device=context.device, dtype=torch.bool)
    return torch.where(drop_mask[:, None, None], torch.zeros_like(context), context)


class ConditionedTransformer(nn.Module):
    """
    Wraps a [`StableAudio3Transformer`] so that the conditioning (`encode_conditioning`: learned prompt padding and the
    duration embedder) and the condition dropout run inside `forward`. Wrap this module with DDP / FSDP rather than the
    bare transformer when the conditioning parameters are trained: every parameter is then used inside the wrapped
    forward. [`flow_matching_loss`] calls it with `context=None`.
    """

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: Optional[torch.Tensor],
        duration: torch.Tensor,
        drop_mask: Optional[torch.Tensor] = None,
        **kwargs,
    ):
        context, global_condition = self.transformer.encode_conditioning(
            encoder_hidden_states, encoder_attention_mask, duration
        )
        if drop_mask is not None:
            context = drop_conditioning(context, 0.0, drop_mask=drop_mask)
        return self.transformer(
            hidden_states, timestep, cross_attention_context=context, global_condition=global_condition, **kwargs
        )


def flow_matching_loss(
    transformer: nn.Module,
    scheduler,
    latents: torch.Tensor,
    context: Optional[torch.Tensor],
    global_condition: Optional[torch.Tensor],
    valid_lengths: torch.Tensor,
    seconds_total: Optional[torch.Tensor] = None,
    timestep_sampler: str = "trunc_logit_normal",
    use_length_shift: bool = True,
    ot_coupling: bool = True,
    silence_mean_seconds: float = 4.0,
    inpaint_probabilities: Optional[Sequence[float]] = (0.1, 0.8, 0.1),
    condition_dropout: float = 0.1,
    context_loss_weight: float = 0.0,
    encoder_hidden_states: Optional[torch.Tensor] = None,
    encoder_attention_mask: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """
    The official stage-1 loss of one batch (see the module docstring for the steps).

    Args:
        transformer (`nn.Module`):
            A [`StableAudio3Transformer`] (possibly DDP-wrapped) called with the precomputed `context`, or, when
            `context` is `None`, a [`ConditionedTransformer`] called with the text-encoder states.
        scheduler ([`FlowMatchOTScheduler`]): timestep sampling, length shift, noising, target and OT coupling.
        latents (`torch.Tensor` of shape `(batch, channels, frames)`): clean latents; frames past each valid length
            hold the padding (latents of silence).
        context (`torch.Tensor` of shape `(batch, tokens, dim)`, *optional*) and global_condition (`torch.Tensor` of
            shape `(batch, dim)`, *optional*): from `transformer.encode_conditioning`.
        valid_lengths (`torch.Tensor` of shape `(batch,)`): valid latent frames per item.
        seconds_total (`torch.Tensor` of shape `(batch,)`, *optional*): durations for the length shift; without it the
            valid lengths are used (the official fallback). With `context=None` it is also the duration condition.
        timestep_sampler (`str`, defaults to `"trunc_logit_normal"`): see [`FlowMatchOTScheduler.sample_timesteps`]
            (the official LoRA script's choice; the wrapper's default is `"uniform"`).
        use_length_shift (`bool`, defaults to `True`): apply the per-item length shift.
        ot_coupling (`bool`, defaults to `True`): minibatch OT coupling of the noise.
        silence_mean_seconds (`float`, defaults to 4.0): mean of the silence extension; 0 disables it.
        inpaint_probabilities (`Sequence[float]`, *optional*): mask-type probabilities; `None` disables inpainting
            (all-zero local conditioning).
        condition_dropout (`float`, defaults to 0.1): probability of zeroing an item's context.
        context_loss_weight (`float`, defaults to 0.0): weight of the MSE on the given (inpaint context) frames.
        encoder_hidden_states, encoder_attention_mask (`torch.Tensor`, *optional*): text-encoder outputs, used when
            `context` is `None`.
        generator (`torch.Generator`, *optional*): source of every random draw.

    Returns:
        `(loss, logs)`: the scalar loss and detached diagnostics `flow/mse` (generated frames), `flow/context_mse`,
        `flow/t_mean` and `flow/valid_fraction`.
    """
    batch_size, _, num_frames = latents.shape
    device = latents.device
    valid_lengths = torch.as_tensor(valid_lengths, device=device).long()

    # 1. Noise levels, shifted per item by the effective length.
    t = scheduler.sample_timesteps(batch_size, sampler=timestep_sampler, generator=generator, device=device)
    if use_length_shift:
        lengths = scheduler.effective_length(seconds_total.cpu()) if seconds_total is not None else valid_lengths
        t = scheduler.shift_timesteps(t, lengths.to(device))

    # 2. Noise (OT-coupled to the batch), noisy latents and velocity target.
    noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    if ot_coupling and batch_size > 1:
        noise = scheduler.ot_coupling(latents, noise)
    noisy_latents = scheduler.add_noise(latents, noise, t)
    target = scheduler.get_velocity(latents, noise)

    # 3. Silence augmentation: the attended (and trained) region extends past the content.
    augmented_lengths = augment_valid_lengths(
        valid_lengths,
        num_frames,
        silence_mean_seconds,
        scheduler.config.sampling_rate,
        scheduler.config.downsampling_ratio,
        generator,
    )
    attention_mask = lengths_to_mask(augmented_lengths, num_frames)

    # 4. Inpaint masks on the augmented region; the loss covers the frames to generate.
    loss_mask = attention_mask
    model_kwargs = {}
    if inpaint_probabilities is not None:
        inpaint_mask = sample_inpaint_masks(augmented_lengths, num_frames, inpaint_probabilities, generator)
        inpaint_mask = inpaint_mask.to(device=device, dtype=latents.dtype)
        model_kwargs = {"inpaint_mask": inpaint_mask, "inpaint_latents": latents * inpaint_mask}
        loss_mask = attention_mask & ~inpaint_mask[:, 0].bool()

    # 5. Condition dropout and the model.
    drop_mask = _rand((batch_size,), generator, device) < condition_dropout
    if context is not None:
        context = drop_conditioning(context, 0.0, drop_mask=drop_mask)
        prediction = transformer(
            noisy_latents,
            t,
            cross_attention_context=context,
            global_condition=global_condition,
            attention_mask=attention_mask,
            return_dict=False,
            **model_kwargs,
        )[0]
    else:
        if encoder_hidden_states is None or seconds_total is None:
            raise ValueError(
                "Pass `context` and `global_condition`, or `encoder_hidden_states` (+ `encoder_attention_mask`) and "
                "`seconds_total` with a `ConditionedTransformer`."
            )
        prediction = transformer(
            noisy_latents,
            t,
            encoder_hidden_states,
            encoder_attention_mask,
            seconds_total.to(device),
            drop_mask=drop_mask,
            attention_mask=attention_mask,
            return_dict=False,
            **model_kwargs,
        )[0]

    # 6. Loss on the generated frames (+ optionally the given frames).
    mse = masked_mse(prediction, target, loss_mask)
    loss = mse
    context_mse = torch.zeros((), device=device)
    if inpaint_probabilities is not None:
        context_mask = attention_mask & inpaint_mask[:, 0].bool()
        if bool(context_mask.any()):
            context_mse = masked_mse(prediction, target, context_mask)
            if context_loss_weight > 0:
                loss = loss + context_loss_weight * context_mse
    logs = {
        "flow/mse": mse.detach(),
        "flow/context_mse": context_mse.detach(),
        "flow/t_mean": t.detach().float().mean(),
        "flow/valid_fraction": attention_mask.float().mean().detach(),
    }
    return loss, logs


__all__ = [
    "ConditionedTransformer",
    "augment_valid_lengths",
    "drop_conditioning",
    "flow_matching_loss",
    "lengths_to_mask",
    "masked_mse",
    "sample_inpaint_masks",
]
