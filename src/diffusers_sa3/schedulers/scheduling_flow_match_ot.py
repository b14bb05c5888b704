# Copyright 2025 Stability AI and The HuggingFace Team. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Rectified-flow (optimal-transport path) scheduler of Stable Audio 3 base (`rectified_flow`) checkpoints.

Sampling follows the official `stable_audio_3/inference/sampling.py` (`build_schedule`, `sample_discrete_euler`,
`sample_flow_dpmpp`); the training helpers follow `stable_audio_3/training/diffusion.py` and
`stable_audio_3/inference/distribution_shift.py`.
"""

import math
import numbers
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor


logger = logging.get_logger(__name__)  # pylint: disable=invalid-name


TIMESTEP_SAMPLERS = ("uniform", "logit_normal", "trunc_logit_normal", "log_snr", "log_snr_uniform")


def build_logsnr_schedule(
    num_inference_steps: int,
    sigma_max: float = 1.0,
    logsnr_start: float = -6.2,
    logsnr_end: float = 2.0,
) -> torch.Tensor:
    """
    The official sampling schedule: `steps + 1` noise levels, uniform in log-SNR, ending at 0.

    `u = linspace(sigma_max, 0, steps + 1)`, `logsnr = logsnr_end - u (logsnr_end - logsnr_start)`,
    `t = sigmoid(-logsnr)` with `u = 0` and `u = 1` kept exactly, then `t[0] = sigma_max` (official
    `inference/sampling.py:9-64` `build_schedule` with `LogSNRShift(rate=0, anchor_logsnr=-6.2, logsnr_end=2.0)`,
    `inference/distribution_shift.py:167-198`, the default of `models/diffusion.py:74-79`). With `sigma_max < 1`
    (audio-to-audio) the second value is above the first, exactly as official.

    Returns:
        `torch.Tensor`: float32 tensor of shape `(num_inference_steps + 1,)` on the CPU.
    """
    if (
        isinstance(num_inference_steps, bool)
        or not isinstance(num_inference_steps, numbers.Integral)
        or num_inference_steps < 1
    ):
        raise ValueError(
            f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}. Pass e.g. 8 (the official "
            "default) or 50 (base models)."
        )
    if not isinstance(sigma_max, numbers.Real) or not 0.0 < float(sigma_max) <= 1.0:
        raise ValueError(
            f"`sigma_max` must be in (0, 1], got {sigma_max!r}. Use 1.0 for generation from noise and the init noise "
            "level (e.g. 0.7) for audio-to-audio."
        )
    sigma_max = float(sigma_max)
    u = torch.linspace(sigma_max, 0.0, int(num_inference_steps) + 1, dtype=torch.float32)
    logsnr = logsnr_end - u * (logsnr_end - logsnr_start)
    t = torch.sigmoid(-logsnr)
    t = torch.where(u <= 0, torch.zeros_like(t), t)
    t = torch.where(u >= 1, torch.ones_like(t), t)
    # Keep the first point at the level the initial latents were mixed with.
    t[0] = sigma_max
    return t


@dataclass
class FlowMatchOTSchedulerOutput(BaseOutput):
    """
    Output class for the scheduler's `step` function output.

    Args:
        prev_sample (`torch.Tensor` of shape `(batch, latent_dim, frames)`):
            The sample at the next noise level. `prev_sample` is the next model input in the denoising loop.
        pred_original_sample (`torch.Tensor` of shape `(batch, latent_dim, frames)`):
            The predicted clean sample `x0 = x - t v` from the model output at the current noise level.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class FlowMatchOTScheduler(SchedulerMixin, ConfigMixin):
    """
    Rectified-flow scheduler of Stable Audio 3 base (`rectified_flow`) checkpoints.

    The model predicts the velocity `v = noise - x0` of the straight (optimal-transport) path `x_t = (1 - t) x0 + t
    noise`, `t` in [0, 1] with `t = 1` pure noise. Sampling uses the official log-SNR-uniform schedule
    ([`build_logsnr_schedule`]) and either the Euler solver (the official default for base models) or the flow
    DPM-Solver++(2M) (the official `dpmpp` sampler). The scheduler also carries the official training helpers:
    timestep samplers, the length-dependent timestep shift, noising, the velocity target and minibatch OT coupling.

    This model inherits from [`SchedulerMixin`] and [`ConfigMixin`]. Check the superclass documentation for the
    generic methods the library implements for all schedulers such as loading and saving.

    Args:
        logsnr_start (`float`, defaults to -6.2):
            Log-SNR of the first (noisiest) point of the sampling schedule when `sigma_max = 1`.
        logsnr_end (`float`, defaults to 2.0):
            Log-SNR of the last point before the final 0.
        solver_type (`"euler"` or `"dpmpp_2m"`, defaults to `"euler"`):
            `"euler"`: `x <- x + (t_next - t) v` (official `sample_discrete_euler`). `"dpmpp_2m"`: flow
            DPM-Solver++(2M) (official `sample_flow_dpmpp`).
        sampling_rate (`int`, defaults to 44100):
            Audio sampling rate, used by [`~FlowMatchOTScheduler.effective_length`].
        downsampling_ratio (`int`, defaults to 4096):
            Audio samples per latent frame, used by [`~FlowMatchOTScheduler.effective_length`].
        base_shift (`float`, defaults to 0.5):
            Training timestep shift `-mu` at `base_seq_len` latent frames.
        max_shift (`float`, defaults to 1.15):
            Training timestep shift `-mu` at `max_seq_len` latent frames.
        base_seq_len (`int`, defaults to 256):
            Length at and below which the training shift is `base_shift`.
        max_seq_len (`int`, defaults to 4096):
            Length at and above which the training shift is `max_shift`.
    """

    _compatibles = []
    order = 1

    @register_to_config
    def __init__(
        self,
        logsnr_start: float = -6.2,
        logsnr_end: float = 2.0,
        solver_type: Literal["euler", "dpmpp_2m"] = "euler",
        sampling_rate: int = 44100,
        downsampling_ratio: int = 4096,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_seq_len: int = 256,
        max_seq_len: int = 4096,
    ):
        if solver_type not in ("euler", "dpmpp_2m"):
            raise ValueError(f"`solver_type` must be 'euler' or 'dpmpp_2m', got {solver_type!r}.")
        if not logsnr_start < logsnr_end:
            raise ValueError(
                f"`logsnr_start` must be smaller than `logsnr_end`, got {logsnr_start} and {logsnr_end}. The "
                "official values are -6.2 and 2.0."
            )
        if not 0 < base_seq_len < max_seq_len:
            raise ValueError(
                f"`base_seq_len` must be positive and smaller than `max_seq_len`, got {base_seq_len} and "
                f"{max_seq_len}. The official values are 256 and 4096."
            )

        # standard deviation of the initial noise distribution
        self.init_noise_sigma = 1.0

        self.num_inference_steps = None
        self.sigmas = build_logsnr_schedule(1, 1.0, logsnr_start, logsnr_end)
        self.timesteps = self.sigmas[:-1].clone()
        self._step_index = None
        self._begin_index = None
        # The previous x0 prediction (DPM-Solver++(2M) only).
        self._last_pred_original_sample = None

    @property
    def step_index(self) -> int | None:
        """The index of the current timestep. It increases by 1 after each `step`."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The index of the first timestep. It should be set from the pipeline with `set_begin_index`."""
        return self._begin_index

    # Copied from diffusers.schedulers.scheduling_dpmsolver_multistep.DPMSolverMultistepScheduler.set_begin_index
    def set_begin_index(self, begin_index: int = 0):
        """
        Sets the begin index for the scheduler. This function should be run from pipeline before the inference.

        Args:
            begin_index (`int`, defaults to `0`):
                The begin index for the scheduler.
        """
        self._begin_index = begin_index

    def set_timesteps(
        self,
        num_inference_steps: int,
        device: str | torch.device | None = None,
        sigma_max: float = 1.0,
    ):
        """
        Sets the sampling schedule (to be run before inference).

        Args:
            num_inference_steps (`int`):
                The number of model evaluations (50 is the documented setting for base models).
            device (`str` or `torch.device`, *optional*):
                The device of `timesteps`. `sigmas` stay on the CPU.
            sigma_max (`float`, defaults to 1.0):
                The noise level of the first step: 1.0 when starting from noise, the init noise level for
                audio-to-audio (the initial latents are then `add_noise(init_latents, noise, sigma_max)`).
        """
        self.num_inference_steps = num_inference_steps
        self.sigmas = build_logsnr_schedule(
            num_inference_steps, sigma_max, self.config.logsnr_start, self.config.logsnr_end
        )
        self.timesteps = self.sigmas[:-1].to(device=device)
        self._step_index = None
        self._begin_index = None
        self._last_pred_original_sample = None

    def index_for_timestep(
        self, timestep: float | torch.Tensor, schedule_timesteps: torch.Tensor | None = None
    ) -> int:
        """
        The index of the schedule entry closest to `timestep` (the first element if `timestep` is per sample).

        The closest rather than an exactly equal entry is taken so that a timestep cast to the model dtype still finds
        its step.
        """
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        timestep = torch.as_tensor(timestep).flatten()[0].to(device=schedule_timesteps.device, dtype=torch.float32)
        return (schedule_timesteps.float() - timestep).abs().argmin().item()

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        if self.begin_index is None:
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Returns `sample` unchanged (the flow model takes the sample as it is)."""
        return sample

    def _check_step_inputs(self, timestep, sample: torch.Tensor, model_output: torch.Tensor):
        if self.num_inference_steps is None:
            raise ValueError(
                "The number of inference steps is `None`: call `set_timesteps(num_inference_steps)` before `step`."
            )
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError(
                f"`timestep` must be one of `scheduler.timesteps` (a float in [0, 1]), got the integer {timestep!r}. "
                "Pass `t` from `for t in scheduler.timesteps`, not an index from `enumerate`."
            )
        if model_output.shape != sample.shape:
            raise ValueError(
                f"`model_output` must have the shape of `sample`, got {tuple(model_output.shape)} and "
                f"{tuple(sample.shape)}."
            )
        if self.step_index is None:
            self._init_step_index(timestep)
        if self.step_index >= self.num_inference_steps:
            raise ValueError(
                f"`step` was called {self.step_index + 1} times for a schedule of {self.num_inference_steps} steps: "
                "call `set_timesteps` again to start a new sampling run."
            )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> FlowMatchOTSchedulerOutput | tuple:
        """
        Moves `sample` from the current noise level to the next one of the schedule.

        Args:
            model_output (`torch.Tensor` of shape `(batch, latent_dim, frames)`):
                The velocity `v = noise - x0` predicted by the model at `timestep` (after guidance).
            timestep (`float` or `torch.Tensor`):
                The current entry of `scheduler.timesteps` (a scalar or the same value per sample).
            sample (`torch.Tensor` of shape `(batch, latent_dim, frames)`):
                The current sample `x_t`.
            return_dict (`bool`, defaults to `True`):
                Whether to return a [`FlowMatchOTSchedulerOutput`] or a tuple `(prev_sample, pred_original_sample)`.

        Returns:
            [`FlowMatchOTSchedulerOutput`] or `tuple`.

        Euler works in the dtype of `sample`, with both noise levels cast to it before `t_next - t` is taken, as the
        official `sample_discrete_euler` does for the per-sample schedules `generate()` builds (`sampling.py:163-184`).
        DPM-Solver++(2M) works in float32 and returns the dtype of `sample`.
        """
        self._check_step_inputs(timestep, sample, model_output)
        sigma = self.sigmas[self.step_index]
        sigma_next = self.sigmas[self.step_index + 1]

        if self.config.solver_type == "euler":
            sigma = sigma.to(device=sample.device, dtype=sample.dtype)
            sigma_next = sigma_next.to(device=sample.device, dtype=sample.dtype)
            pred_original_sample = sample - sigma * model_output
            prev_sample = sample + (sigma_next - sigma) * model_output
        else:
            sigma_last = self.sigmas[self.step_index - 1] if self.step_index > 0 else None
            prev_sample, pred_original_sample = self._dpmpp_2m_update(
                model_output, sample, sigma, sigma_next, sigma_last
            )
            self._last_pred_original_sample = pred_original_sample

        self._step_index += 1
        prev_sample = prev_sample.to(sample.dtype)
        pred_original_sample = pred_original_sample.to(sample.dtype)

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return FlowMatchOTSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def _dpmpp_2m_update(self, model_output, sample, sigma, sigma_next, sigma_last):
        """
        One flow DPM-Solver++(2M) step (Lu et al. 2022, arXiv:2211.01095, Alg. 2), as the official
        `sample_flow_dpmpp` (`inference/sampling.py:227-306`).

        With `alpha = 1 - t`, `lambda = log(alpha / t)` and `h = lambda(t_next) - lambda(t)`, the first-order update
        is `x <- (t_next / t) x - alpha_next (e^{-h} - 1) x0`, where `e^{-h} - 1 = (t_next - t) / ((1 - t_next) t)`
        is computed directly. Later steps replace `x0` by `(1 + 1/(2r)) x0 - 1/(2r) x0_prev`, `r = h_prev / h`, except
        the last one (`t_next = 0`). Returns float32 `(prev_sample, pred_original_sample)`.
        """
        device = sample.device
        sigma, sigma_next = sigma.to(device), sigma_next.to(device)
        sample = sample.float()
        pred_original_sample = sample - sigma * model_output.float()

        coeff = (sigma_next - sigma) / ((1 - sigma_next).clamp(min=1e-10) * sigma.clamp(min=1e-10))
        if self._last_pred_original_sample is None or sigma_last is None or sigma_next == 0:
            denoised = pred_original_sample
        else:
            # The official log-SNR keeps t away from 0 and 1 with clamps, so a schedule starting at t = 1 gets a
            # finite (large) `h_prev` and the second step is already of second order.
            def log_snr(t):
                return ((1 - t).clamp(min=1e-10) / t.clamp(min=1e-10)).log()

            sigma_last = sigma_last.to(device)
            h = log_snr(sigma_next) - log_snr(sigma)
            h_last = log_snr(sigma) - log_snr(sigma_last)
            r = h_last / h
            denoised = (1 + 1 / (2 * r)) * pred_original_sample - (1 / (2 * r)) * self._last_pred_original_sample
        prev_sample = (sigma_next / sigma.clamp(min=1e-10)) * sample - (1 - sigma_next) * coeff * denoised
        return prev_sample, pred_original_sample

    # Training helpers

    def sample_timesteps(
        self,
        batch_size: int,
        sampler: str = "uniform",
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
        mean_logsnr: float = -1.2,
        std_logsnr: float = 2.0,
        min_logsnr: float = -6.0,
        max_logsnr: float = 5.0,
        left_truncation: float = 0.075,
    ) -> torch.Tensor:
        """
        Draws training noise levels `t` in [0, 1] (official `training/diffusion.py:290-306`).

        Args:
            batch_size (`int`):
                Number of noise levels to draw.
            sampler (`str`, defaults to `"uniform"`):
                - `"uniform"`: scrambled Sobol points (the official default). The official wrapper keeps one
                  `SobolEngine` for the whole run; here each call builds one seeded from `generator`, so every batch is
                  a stratified set of its own.
                - `"logit_normal"`: `sigmoid(N(0, 1))` (Esser et al. 2024, arXiv:2403.03206, §3.1).
                - `"trunc_logit_normal"`: logit-normal with the mass below `left_truncation` removed by inverse-CDF
                  sampling, rescaled to [0, 1] and flipped, `t = 1 - t` (`inference/sampling.py:117-145`; used by the
                  official LoRA script).
                - `"log_snr"`: `t = sigmoid(-lambda)`, `lambda ~ N(mean_logsnr, std_logsnr)`, clamped to [1e-4, 1 - 1e-4]
                  (`inference/sampling.py:67-90`).
                - `"log_snr_uniform"`: `lambda ~ U(min_logsnr, max_logsnr)`, then as `"log_snr"`
                  (`inference/sampling.py:92-115`).
            generator (`torch.Generator`, *optional*):
                Generator of the draws (and of the Sobol seed).
            device (`str` or `torch.device`, *optional*):
                Device of the result.
            mean_logsnr, std_logsnr, min_logsnr, max_logsnr (`float`):
                Parameters of the log-SNR samplers (official `timestep_sampler_options`).
            left_truncation (`float`, defaults to 0.075):
                Left truncation point of `"trunc_logit_normal"` before flipping.

        Returns:
            `torch.Tensor`: float32 `t` of shape `(batch_size,)`. Apply [`~FlowMatchOTScheduler.shift_timesteps`]
            afterwards for the length-dependent shift.
        """
        if sampler not in TIMESTEP_SAMPLERS:
            raise ValueError(f"`sampler` must be one of {', '.join(TIMESTEP_SAMPLERS)}, got {sampler!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
        rand_device = generator.device if generator is not None else torch.device("cpu")

        if sampler == "uniform":
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=rand_device).item())
            engine = torch.quasirandom.SobolEngine(1, scramble=True, seed=seed)
            t = engine.draw(batch_size, dtype=torch.float32)[:, 0]
        elif sampler == "logit_normal":
            t = torch.sigmoid(randn_tensor((batch_size,), generator=generator, device=rand_device))
        elif sampler == "trunc_logit_normal":
            normal = torch.distributions.Normal(0.0, 1.0)
            cdf = normal.cdf(randn_tensor((batch_size,), generator=generator, device=rand_device)).cpu()
            lower = normal.cdf(torch.logit(torch.tensor(left_truncation)))
            upper = normal.cdf(torch.logit(torch.tensor(1.0)))
            truncated = torch.sigmoid(normal.icdf(lower + (upper - lower) * cdf))
            t = 1 - (truncated - left_truncation) / (1.0 - left_truncation)
        elif sampler == "log_snr":
            logsnr = randn_tensor((batch_size,), generator=generator, device=rand_device) * std_logsnr + mean_logsnr
            t = torch.sigmoid(-logsnr).clamp(1e-4, 1 - 1e-4)
        else:
            uniform = torch.rand(batch_size, generator=generator, device=rand_device)
            logsnr = uniform * (max_logsnr - min_logsnr) + min_logsnr
            t = torch.sigmoid(-logsnr).clamp(1e-4, 1 - 1e-4)
        return t.to(device)

    def effective_length(self, seconds_total: float | list[float] | torch.Tensor) -> torch.Tensor:
        """
        Latent frames of each item's content: `ceil(int(seconds_total * sampling_rate) / downsampling_ratio)`
        (official `training/diffusion.py:313-318` and `data/utils.py:215-257`).

        The product is taken in Python floats, as official (its durations come from metadata as Python floats).

        Returns:
            `torch.Tensor`: int64 lengths of shape `(batch,)` (on the device of `seconds_total` if it is a tensor).
        """
        device = seconds_total.device if isinstance(seconds_total, torch.Tensor) else None
        values = torch.as_tensor(seconds_total).flatten().tolist()
        if any(not math.isfinite(s) or s < 0 for s in values):
            raise ValueError(f"`seconds_total` must be finite and non-negative, got {values}.")
        sampling_rate, downsampling_ratio = self.config.sampling_rate, self.config.downsampling_ratio
        lengths = [math.ceil(int(s * sampling_rate) / downsampling_ratio) for s in values]
        return torch.tensor(lengths, dtype=torch.long, device=device)

    def shift_timesteps(self, timesteps: torch.Tensor, effective_length: int | torch.Tensor) -> torch.Tensor:
        """
        The length-dependent ("full") timestep shift of the official training (`inference/distribution_shift.py:85-131`,
        applied in `training/diffusion.py:308-328`).

        With `L = clamp(effective_length, base_seq_len, max_seq_len)` and
        `mu = -(base_shift + (max_shift - base_shift) (L - base_seq_len) / (max_seq_len - base_seq_len))`,
        `t' = 1 - e^mu / (e^mu + t / (1 - t))`, i.e. `t' = s t / (1 + (s - 1) t)` with `s = e^-mu`: longer items are
        trained at higher noise levels.

        Args:
            timesteps (`torch.Tensor`):
                `t` of shape `(batch,)` (one per item) or a schedule of shape `(steps,)`.
            effective_length (`int` or `torch.Tensor`):
                Latent length(s) from [`~FlowMatchOTScheduler.effective_length`]: a scalar, or `(batch,)`. Per-item
                `t` with per-item lengths are shifted element-wise; a `(steps,)` schedule with `(batch,)` lengths of a
                different size gives `(batch, steps)` schedules, as official.
        """
        config = self.config
        timesteps = torch.as_tensor(timesteps)
        if not timesteps.is_floating_point():
            timesteps = timesteps.float()
        seq_len = torch.as_tensor(effective_length, device=timesteps.device).to(timesteps.dtype)
        seq_len = seq_len.clamp(config.base_seq_len, config.max_seq_len)
        if timesteps.ndim == 1 and seq_len.ndim == 1 and timesteps.shape[0] != seq_len.shape[0]:
            timesteps = timesteps.unsqueeze(0)
            seq_len = seq_len.unsqueeze(1)
        mu = -(
            config.base_shift
            + (config.max_shift - config.base_shift)
            * (seq_len - config.base_seq_len)
            / (config.max_seq_len - config.base_seq_len)
        )
        # `1 / (1 - t) - 1` (= t / (1 - t)) as official, which gives exactly 1 at t = 1.
        return 1 - torch.exp(mu) / (torch.exp(mu) + (1 / (1 - timesteps) - 1))

    @staticmethod
    def _per_sample(timesteps: float | torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        timesteps = torch.as_tensor(timesteps, device=reference.device)
        if timesteps.ndim == 1 and timesteps.shape[0] != reference.shape[0]:
            raise ValueError(
                f"`timesteps` must be a scalar or have one value per sample ({reference.shape[0]}), got shape "
                f"{tuple(timesteps.shape)}."
            )
        return timesteps.reshape(-1, *([1] * (reference.ndim - 1))) if timesteps.ndim == 1 else timesteps

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: float | torch.Tensor
    ) -> torch.Tensor:
        """
        The forward process `x_t = (1 - t) x0 + t noise` (official `training/diffusion.py:334-371`; also the
        audio-to-audio start `init (1 - sigma_max) + noise sigma_max`, `inference/sampling.py:463-464`).

        Args:
            original_samples (`torch.Tensor` of shape `(batch, latent_dim, frames)`): clean latents `x0`.
            noise (`torch.Tensor`): standard normal noise of the same shape.
            timesteps (`float` or `torch.Tensor`): `t`, a scalar or one value per sample `(batch,)`.
        """
        if noise.shape != original_samples.shape:
            raise ValueError(
                f"`noise` must have the shape of `original_samples`, got {tuple(noise.shape)} and "
                f"{tuple(original_samples.shape)}."
            )
        sigmas = self._per_sample(timesteps, original_samples)
        alphas = 1 - sigmas
        dtype = original_samples.dtype
        return original_samples * alphas.to(dtype) + noise * sigmas.to(dtype)

    def get_velocity(self, original_samples: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The training target `v = noise - x0` (official `training/diffusion.py:375-376`)."""
        if noise.shape != original_samples.shape:
            raise ValueError(
                f"`noise` must have the shape of `original_samples`, got {tuple(noise.shape)} and "
                f"{tuple(original_samples.shape)}."
            )
        return noise - original_samples

    @torch.no_grad()
    def ot_coupling(
        self,
        original_samples: torch.Tensor,
        noise: torch.Tensor,
        num_iterations: int = 20,
        return_permutation: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """
        Minibatch optimal-transport coupling: reorders `noise` so that each item is paired with nearby noise, which
        straightens the flow paths (MelodyFlow, arXiv:2407.03648v2, §2.5.2; official `training/diffusion.py:343-369`).

        The cost is the squared L2 distance between flattened items and noises, `log P = -C / mean(C)`, followed by
        `num_iterations` Sinkhorn row/column log-normalisations (Cuturi 2013). Rows then pick, in order, their most
        probable noise among those not taken yet, which always gives a permutation. The cost is computed in float32.

        Args:
            original_samples (`torch.Tensor` of shape `(batch, ...)`): clean latents.
            noise (`torch.Tensor`): noise of the same shape.
            num_iterations (`int`, defaults to 20): Sinkhorn iterations.
            return_permutation (`bool`, defaults to `False`): also return the permutation `perm`.

        Returns:
            `noise[perm]`, or `(noise[perm], perm)` with `perm` an int64 tensor of shape `(batch,)`.
        """
        if noise.shape != original_samples.shape:
            raise ValueError(
                f"`noise` must have the shape of `original_samples`, got {tuple(noise.shape)} and "
                f"{tuple(original_samples.shape)}."
            )
        if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 0:
            raise ValueError(f"`num_iterations` must be a non-negative integer, got {num_iterations!r}.")
        batch_size = original_samples.shape[0]
        permutation = torch.arange(batch_size, device=noise.device)
        if batch_size > 1:
            data_flat = original_samples.reshape(batch_size, -1).float()
            noise_flat = noise.reshape(batch_size, -1).float()
            cost = (
                (data_flat * data_flat).sum(dim=1, keepdim=True)
                + (noise_flat * noise_flat).sum(dim=1, keepdim=True).T
                - 2.0 * (data_flat @ noise_flat.T)
            )
            log_p = -cost / cost.mean()
            for _ in range(num_iterations):
                log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True)
                log_p = log_p - torch.logsumexp(log_p, dim=0, keepdim=True)
            p = log_p.exp()
            used = torch.zeros(batch_size, dtype=torch.bool, device=p.device)
            for i in range(batch_size):
                p[i, used] = -1
                permutation[i] = p[i].argmax()
                used[permutation[i]] = True
        coupled_noise = noise[permutation]
        if return_permutation:
            return coupled_noise, permutation
        return coupled_noise
