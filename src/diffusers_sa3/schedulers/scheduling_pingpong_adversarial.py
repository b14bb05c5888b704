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
"""Ping-pong sampler of the adversarially post-trained Stable Audio 3 (`rf_denoiser`) checkpoints.

Follows the official `sample_flow_pingpong` (`stable_audio_3/inference/sampling.py:308-351`).
"""

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor

from .scheduling_flow_match_ot import build_logsnr_schedule


logger = logging.get_logger(__name__)  # pylint: disable=invalid-name


@dataclass
class PingPongAdversarialSchedulerOutput(BaseOutput):
    """
    Output class for the scheduler's `step` function output.

    Args:
        prev_sample (`torch.Tensor` of shape `(batch, latent_dim, frames)`):
            The predicted clean sample re-noised to the next noise level, `(1 - t_next) x0 + t_next noise`. It is the
            next model input; after the last step (`t_next = 0`) it is the final clean sample.
        pred_original_sample (`torch.Tensor` of shape `(batch, latent_dim, frames)`):
            The predicted clean sample `x0 = x - t v` at the current noise level.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class PingPongAdversarialScheduler(SchedulerMixin, ConfigMixin):
    """
    Ping-pong sampler of the adversarially post-trained (`rf_denoiser`) Stable Audio 3 checkpoints.

    Each step denoises completely, `x0 = x - t v(x, t)`, then re-noises to the next level of the schedule with fresh
    noise, `x <- (1 - t_next) x0 + t_next noise` (official `sample_flow_pingpong`). One step is one-step generation;
    8 steps are the official default. The schedule is the official log-SNR-uniform one shared with
    [`FlowMatchOTScheduler`].

    This model inherits from [`SchedulerMixin`] and [`ConfigMixin`]. Check the superclass documentation for the
    generic methods the library implements for all schedulers such as loading and saving.

    Args:
        logsnr_start (`float`, defaults to -6.2):
            Log-SNR of the first (noisiest) point of the sampling schedule when `sigma_max = 1`.
        logsnr_end (`float`, defaults to 2.0):
            Log-SNR of the last point before the final 0.
    """

    _compatibles = []
    order = 1

    @register_to_config
    def __init__(self, logsnr_start: float = -6.2, logsnr_end: float = 2.0):
        if not logsnr_start < logsnr_end:
            raise ValueError(
                f"`logsnr_start` must be smaller than `logsnr_end`, got {logsnr_start} and {logsnr_end}. The "
                "official values are -6.2 and 2.0."
            )

        # standard deviation of the initial noise distribution
        self.init_noise_sigma = 1.0

        self.num_inference_steps = None
        self.sigmas = build_logsnr_schedule(1, 1.0, logsnr_start, logsnr_end)
        self.timesteps = self.sigmas[:-1].clone()
        self._step_index = None
        self._begin_index = None

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
                The number of model evaluations: 8 is the official default, 1 is one-step generation.
            device (`str` or `torch.device`, *optional*):
                The device of `timesteps`. `sigmas` stay on the CPU.
            sigma_max (`float`, defaults to 1.0):
                The noise level of the first step: 1.0 when starting from noise, the init noise level for
                audio-to-audio.
        """
        self.num_inference_steps = num_inference_steps
        self.sigmas = build_logsnr_schedule(
            num_inference_steps, sigma_max, self.config.logsnr_start, self.config.logsnr_end
        )
        self.timesteps = self.sigmas[:-1].to(device=device)
        self._step_index = None
        self._begin_index = None

    # Copied from diffusers_sa3.schedulers.scheduling_flow_match_ot.FlowMatchOTScheduler.index_for_timestep
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

    # Copied from diffusers_sa3.schedulers.scheduling_flow_match_ot.FlowMatchOTScheduler._init_step_index
    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        if self.begin_index is None:
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    # Copied from diffusers_sa3.schedulers.scheduling_flow_match_ot.FlowMatchOTScheduler.scale_model_input
    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Returns `sample` unchanged (the flow model takes the sample as it is)."""
        return sample

    # Copied from diffusers_sa3.schedulers.scheduling_flow_match_ot.FlowMatchOTScheduler._check_step_inputs
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
        generator: torch.Generator | list[torch.Generator] | None = None,
        noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> PingPongAdversarialSchedulerOutput | tuple:
        """
        Denoises `sample` completely and re-noises it to the next noise level of the schedule.

        Args:
            model_output (`torch.Tensor` of shape `(batch, latent_dim, frames)`):
                The velocity `v = noise - x0` predicted by the model at `timestep` (after guidance).
            timestep (`float` or `torch.Tensor`):
                The current entry of `scheduler.timesteps` (a scalar or the same value per sample).
            sample (`torch.Tensor` of shape `(batch, latent_dim, frames)`):
                The current sample `x_t`.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                Generator(s) of the re-noising draw.
            noise (`torch.Tensor`, *optional*):
                The re-noising draw to use instead of drawing one (to replay recorded draws).
            return_dict (`bool`, defaults to `True`):
                Whether to return a [`PingPongAdversarialSchedulerOutput`] or a tuple `(prev_sample,
                pred_original_sample)`.

        Returns:
            [`PingPongAdversarialSchedulerOutput`] or `tuple`.

        As official, the noise is drawn at every step, including the last one where it is multiplied by `t_next = 0`,
        so a generator advances by `num_inference_steps` draws, and the noise levels are cast to the dtype of `sample`
        before use (`sampling.py:326-349`).
        """
        self._check_step_inputs(timestep, sample, model_output)
        if noise is not None and noise.shape != sample.shape:
            raise ValueError(
                f"`noise` must have the shape of `sample`, got {tuple(noise.shape)} and {tuple(sample.shape)}."
            )
        sigma = self.sigmas[self.step_index].to(device=sample.device, dtype=sample.dtype)
        sigma_next = self.sigmas[self.step_index + 1].to(device=sample.device, dtype=sample.dtype)

        pred_original_sample = sample - sigma * model_output
        if noise is None:
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        else:
            noise = noise.to(device=sample.device, dtype=sample.dtype)
        prev_sample = (1 - sigma_next) * pred_original_sample + sigma_next * noise

        self._step_index += 1
        prev_sample = prev_sample.to(sample.dtype)
        pred_original_sample = pred_original_sample.to(sample.dtype)

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return PingPongAdversarialSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
