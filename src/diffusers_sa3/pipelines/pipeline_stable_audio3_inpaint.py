"""Inpainting, continuation and audio-to-audio for Stable Audio 3, following the official `generate()` procedures."""

import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput, DiffusionPipeline
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedTokenizerBase, T5GemmaEncoderModel

from ..loaders.lora import StableAudio3LoraLoaderMixin
from ..models.autoencoder_same import SAMEAutoencoderModel
from ..models.transformer_stable_audio3 import StableAudio3Transformer
from ..schedulers.scheduling_flow_match_ot import FlowMatchOTScheduler
from ..schedulers.scheduling_pingpong_adversarial import PingPongAdversarialScheduler
from .audio_utils import (
    AudioLike,
    audio_to_tensor,
    latent_frames_for_duration,
    normalize_regions,
    prepare_reference_audio,
    valid_latent_frames,
)
from .guidance import apply_guidance, check_default_guidance_scale, resolve_default_guidance_scale
from .loading import load_pipeline_components
from .prompt_inputs import PromptBatch, parse_prompts


logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("np", "pt", "latent")


class StableAudio3InpaintPipeline(DiffusionPipeline, StableAudio3LoraLoaderMixin):
    r"""
    Audio editing with Stable Audio 3: regenerate regions of a clip (inpainting), extend a clip to a longer duration
    (continuation), or make a variation of a clip (audio-to-audio, `init_audio` + `init_noise_level`).

    The procedures are those of the official `StableAudioModel.generate()`: the keep-mask is built at the sample rate
    (1 = keep, 0 = regenerate), zeroed past the requested duration, reduced to latent frames by nearest interpolation,
    and given to every DiT block as `[mask | masked reference latents]`; nothing is pasted back, the model regenerates
    the kept regions too. Audio-to-audio starts from `init * (1 - s) + noise * s` with the schedule starting at `s`.

    Same components as [`StableAudio3Pipeline`]. Load with `diffusers_sa3.StableAudio3InpaintPipeline.from_pretrained`.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        vae: SAMEAutoencoderModel,
        transformer: StableAudio3Transformer,
        text_encoder: T5GemmaEncoderModel,
        tokenizer: PreTrainedTokenizerBase,
        scheduler: Union[FlowMatchOTScheduler, PingPongAdversarialScheduler],
        max_text_length: int = 256,
        max_sample_size: int = 5292032,
        headroom_seconds: float = 6.0,
        default_guidance_scale: Optional[float] = None,
    ):
        super().__init__()
        default_guidance_scale = check_default_guidance_scale(default_guidance_scale)
        self.register_modules(
            vae=vae, transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
        )
        self.register_to_config(
            max_text_length=max_text_length,
            max_sample_size=max_sample_size,
            headroom_seconds=headroom_seconds,
            default_guidance_scale=default_guidance_scale,
        )
        self.sampling_rate = getattr(getattr(vae, "config", None), "sampling_rate", 44100)
        self.downsampling_ratio = getattr(vae, "downsampling_ratio", 4096)
        self.latent_alignment = getattr(vae, "latent_alignment", 2) if vae is not None else 2

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], **kwargs):
        r"""Loads a diffusers-format folder or Hub repo, or an official checkpoint folder (see `StableAudio3Pipeline`)."""
        components = load_pipeline_components(pretrained_model_name_or_path, **kwargs)
        if components is None:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls(**components)

    @property
    def is_post_trained(self) -> bool:
        return isinstance(self.scheduler, PingPongAdversarialScheduler)

    @property
    def default_num_inference_steps(self) -> int:
        return 8 if self.is_post_trained else 50

    @property
    def default_guidance_scale(self) -> float:
        """The CFG scale used when a call gives none: the config's `default_guidance_scale` where it sets one (a
        fine-tuned model's own), else 7.0 for base checkpoints and 1.0 for post-trained ones."""
        return resolve_default_guidance_scale(
            getattr(self.config, "default_guidance_scale", None), self.is_post_trained
        )

    @property
    def max_duration(self) -> float:
        return self.config.max_sample_size / self.sampling_rate

    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self):
        return self._guidance_scale != 1.0

    @property
    def num_timesteps(self):
        return self._num_timesteps

    # Copied from diffusers_sa3.pipelines.pipeline_stable_audio3.StableAudio3Pipeline.encode_prompt
    def encode_prompt(
        self,
        prompt: Union[str, List[str]],
        device: Optional[torch.device] = None,
    ):
        """Tokenizes exactly as the official conditioner (`padding="max_length"`, truncation) and runs T5Gemma.

        Returns `(last_hidden_state (B, L, C) in float32, attention_mask (B, L))`. The encoder runs in its own dtype;
        its bf16 output converts to float32 exactly, as the official `torch.where` with the fp32 padding does. Pass
        them to the pipeline as `prompt_embeds` / `attention_mask` to generate without the text encoder: e.g. encode
        once, then drop it with `pipe.text_encoder = None` to save its memory.
        """
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError(
                "`encode_prompt` needs the text encoder and tokenizer, but this pipeline has `text_encoder` / "
                "`tokenizer` None; load the pipeline with them."
            )
        prompt = [prompt] if isinstance(prompt, str) else list(prompt)
        device = self._execution_device if device is None else device
        text_inputs = self.tokenizer(
            prompt,
            truncation=True,
            max_length=self.config.max_text_length,
            padding="max_length",
            return_tensors="pt",
        )
        encoder_device = self.text_encoder.device
        input_ids = text_inputs.input_ids.to(encoder_device)
        attention_mask = text_inputs.attention_mask.to(encoder_device)
        with torch.no_grad():
            hidden_states = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden_states.to(device=device, dtype=torch.float32), attention_mask.to(device)

    # Copied from diffusers_sa3.pipelines.pipeline_stable_audio3.StableAudio3Pipeline._prompt_states
    def _prompt_states(self, prompts: PromptBatch, device):
        if prompts.texts is not None:
            return self.encode_prompt(prompts.texts, device)
        return prompts.embeds.to(device=device, dtype=torch.float32), prompts.mask.to(device)

    # Copied from diffusers_sa3.pipelines.pipeline_stable_audio3.StableAudio3Pipeline.encode_conditioning
    def encode_conditioning(
        self,
        prompts: PromptBatch,
        negative_prompts: Optional[PromptBatch],
        durations,
        device,
        do_classifier_free_guidance,
    ):
        """Conditional context and global condition, plus the unconditional (or negative) context for guidance."""
        duration_tensor = torch.tensor(durations, dtype=torch.float32, device=device)
        hidden_states, attention_mask = self._prompt_states(prompts, device)
        # `encode_conditioning` is not `forward`, so run the transformer's accelerate hook (model CPU offload) first:
        # it moves the transformer, and its conditioning parameters, to the execution device.
        hook = getattr(self.transformer, "_hf_hook", None)
        if hook is not None:
            hook.pre_forward(self.transformer)
        context, global_condition = self.transformer.encode_conditioning(
            hidden_states, attention_mask, duration_tensor, prompt_padding="learned"
        )
        uncond_context = None
        if do_classifier_free_guidance:
            if negative_prompts is None:
                # Official uncond branch: the whole context (prompt tokens, pads and seconds token) set to zeros.
                uncond_context = torch.zeros_like(context)
            else:
                # Official negative branch: masked negative tokens become 0 instead of the learned padding.
                neg_hidden, neg_mask = self._prompt_states(negative_prompts, device)
                uncond_context, _ = self.transformer.encode_conditioning(
                    neg_hidden, neg_mask, duration_tensor, prompt_padding="zeros"
                )
        return context, global_condition, uncond_context

    # Copied from diffusers_sa3.pipelines.pipeline_stable_audio3.StableAudio3Pipeline.num_latent_frames
    def num_latent_frames(self, max_seconds: float) -> int:
        return latent_frames_for_duration(
            max_seconds,
            self.sampling_rate,
            self.downsampling_ratio,
            self.latent_alignment,
            self.config.max_sample_size,
            self.config.headroom_seconds,
        )

    # Copied from diffusers_sa3.pipelines.pipeline_stable_audio3.StableAudio3Pipeline.prepare_latents
    def prepare_latents(
        self, batch_size, num_channels, num_frames, alone_frames, dtype, device, generator, latents=None
    ):
        """Initial noise (B, C, T).

        With one generator (or none) it is one `randn` of the whole batch, as the official `generate()` draws it, so a
        CPU generator seeded like the official seed gives the official noise. With a list of generators, sample `i`
        draws `(1, C, T_i)` at the length `T_i` it would have alone and is zero-padded: a prompt then gives the same
        audio in a mixed-duration batch as alone.
        """
        if latents is not None:
            expected = (batch_size, num_channels, num_frames)
            if tuple(latents.shape) != expected:
                raise ValueError(
                    f"`latents` must have shape {expected} (batch, latent channels, frames) for these prompts and "
                    f"durations, got {tuple(latents.shape)}."
                )
            return latents.to(device=device, dtype=dtype)
        return self._draw_noise((batch_size, num_channels, num_frames), alone_frames, generator, device, dtype)

    # Copied from diffusers_sa3.pipelines.pipeline_stable_audio3.StableAudio3Pipeline._draw_noise
    @staticmethod
    def _draw_noise(shape, alone_frames, generator, device, dtype):
        if isinstance(generator, list):
            batch_size, channels, frames = shape
            noise = torch.zeros(shape, device=device, dtype=dtype)
            for i, (gen, length) in enumerate(zip(generator, alone_frames)):
                noise[i, :, :length] = randn_tensor((1, channels, length), generator=gen, device=device, dtype=dtype)[
                    0
                ]
            return noise
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    # Copied from diffusers_sa3.pipelines.pipeline_stable_audio3.StableAudio3Pipeline.denoise
    def denoise(
        self,
        latents: torch.Tensor,
        context: torch.Tensor,
        global_condition: torch.Tensor,
        uncond_context: Optional[torch.Tensor],
        attention_mask: torch.Tensor,
        inpaint_mask: Optional[torch.Tensor],
        inpaint_latents: Optional[torch.Tensor],
        guidance_scale: float,
        apg_scale: float,
        generator,
        alone_frames: List[int],
        callback_on_step_end: Optional[Callable],
        callback_on_step_end_tensor_inputs: List[str],
    ) -> torch.Tensor:
        """The sampling loop shared by text-to-audio, inpainting, continuation and audio-to-audio."""
        batch_size = latents.shape[0]
        do_cfg = guidance_scale != 1.0 and uncond_context is not None
        if do_cfg:
            model_context = torch.cat([context, uncond_context])
            model_global = torch.cat([global_condition, global_condition])
            model_attention_mask = torch.cat([attention_mask, attention_mask])
            model_inpaint_mask = None if inpaint_mask is None else torch.cat([inpaint_mask, inpaint_mask])
            model_inpaint_latents = None if inpaint_latents is None else torch.cat([inpaint_latents, inpaint_latents])
        else:
            model_context, model_global, model_attention_mask = context, global_condition, attention_mask
            model_inpaint_mask, model_inpaint_latents = inpaint_mask, inpaint_latents
        # All-valid masks are dropped: the transformer then takes its dense path.
        if bool(model_attention_mask.all()):
            model_attention_mask = None
        valid_mask = attention_mask

        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        # The text context is the same tensor at every step: its cross-attention keys/values are computed once.
        with self.progress_bar(total=len(timesteps)) as progress_bar, self.transformer.cache_context():
            for i, t in enumerate(timesteps):
                t_batch = t.expand(batch_size).to(latents.dtype)
                model_input = torch.cat([latents, latents]) if do_cfg else latents
                # A half-precision transformer casts its inputs itself; the sampling state stays float32.
                velocity = self.transformer(
                    model_input,
                    torch.cat([t_batch, t_batch]) if do_cfg else t_batch,
                    inpaint_mask=model_inpaint_mask,
                    inpaint_latents=model_inpaint_latents,
                    attention_mask=model_attention_mask,
                    cross_attention_context=model_context,
                    global_condition=model_global,
                    return_dict=False,
                )[0].to(latents.dtype)
                if do_cfg:
                    velocity_cond, velocity_uncond = velocity.chunk(2)
                    velocity = apply_guidance(
                        latents,
                        t_batch,
                        velocity_cond,
                        velocity_uncond,
                        guidance_scale=guidance_scale,
                        apg_scale=apg_scale,
                        valid_mask=valid_mask,
                    )

                step_kwargs = {}
                if isinstance(self.scheduler, PingPongAdversarialScheduler):
                    if isinstance(generator, list):
                        step_kwargs["noise"] = self._draw_noise(
                            latents.shape, alone_frames, generator, latents.device, latents.dtype
                        )
                    else:
                        step_kwargs["generator"] = generator
                latents = self.scheduler.step(velocity, t, latents, **step_kwargs).prev_sample

                if callback_on_step_end is not None:
                    step_tensors = {"latents": latents}
                    callback_kwargs = {k: step_tensors[k] for k in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                progress_bar.update()
        return latents

    # Copied from diffusers_sa3.pipelines.pipeline_stable_audio3.StableAudio3Pipeline.decode_latents
    def decode_latents(
        self,
        latents: torch.Tensor,
        valid_frames: List[int],
        alone_frames: List[int],
        durations: List[float],
        generator,
        add_decode_noise: bool,
        chunked_decode: Optional[bool],
    ) -> List[torch.Tensor]:
        """Decodes, zeroes audio past each valid length, clamps to [-1, 1] and trims each to its duration.

        Equal durations with one generator decode as one batch (the official order of decode-noise draws). Mixed
        durations, or one generator per waveform, decode each waveform alone at its own length, so the cost follows
        the requested durations and each result equals the waveform generated alone.
        """
        vae_dtype = next(self.vae.parameters()).dtype
        # Only the frames that reach the trimmed output are decoded (the official 6 s headroom is not): the result is
        # the same, the windows' noise draws stay official (`SAMEAutoencoderModel.decode(output_frames=...)`).
        trimmed = valid_latent_frames(durations, self.sampling_rate, self.downsampling_ratio, latents.shape[-1], 0.0)
        needed = [min(valid, frames) for valid, frames in zip(valid_frames, trimmed)]
        if isinstance(generator, list) or len(set(alone_frames)) > 1:
            generators = generator if isinstance(generator, list) else [generator] * len(alone_frames)
            audio = [
                self.vae.decode(
                    latents[i : i + 1, :, :frames].to(vae_dtype),
                    generator=generators[i],
                    add_noise=add_decode_noise,
                    chunked=chunked_decode,
                    output_frames=min(needed[i], frames),
                ).sample[0]
                for i, frames in enumerate(alone_frames)
            ]
        else:
            audio = self.vae.decode(
                latents.to(vae_dtype),
                generator=generator,
                add_noise=add_decode_noise,
                chunked=chunked_decode,
                output_frames=min(max(needed), latents.shape[-1]),
            ).sample
        outputs = []
        for i, (valid, seconds) in enumerate(zip(valid_frames, durations)):
            sample = audio[i].float()[:, : valid * self.downsampling_ratio].clamp(-1, 1)
            outputs.append(sample[:, : int(seconds * self.sampling_rate)])
        return outputs

    # Copied from diffusers_sa3.pipelines.pipeline_stable_audio3.StableAudio3Pipeline.format_output
    @staticmethod
    def format_output(audios: List[torch.Tensor], output_type: str, return_dict: bool):
        """Stacks equal-length waveforms into (B, 2, N); returns a list when durations differ."""
        same_length = len({a.shape[-1] for a in audios}) == 1
        if output_type == "np":
            audios = [a.cpu().numpy() for a in audios]
            audios = np.stack(audios) if same_length else audios
        else:
            audios = torch.stack(audios) if same_length else audios
        if not return_dict:
            return (audios,)
        return AudioPipelineOutput(audios=audios)

    def check_inputs(
        self,
        prompt,
        audio,
        sampling_rate,
        duration,
        inpaint_regions,
        init_audio,
        init_noise_level,
        negative_prompt,
        prompt_embeds,
        attention_mask,
        negative_prompt_embeds,
        negative_attention_mask,
        num_inference_steps,
        guidance_scale,
        num_waveforms_per_prompt,
        generator,
        output_type,
        callback_on_step_end_tensor_inputs,
    ):
        """Validates every argument before any work; returns prompts, negatives ([`PromptBatch`]es), duration, regions
        and clip tensors."""
        prompts, negative_prompts = parse_prompts(
            self,
            prompt,
            prompt_embeds,
            attention_mask,
            negative_prompt,
            negative_prompt_embeds,
            negative_attention_mask,
        )
        if audio is None and init_audio is None:
            raise ValueError(
                "Pass `audio` (a reference clip to inpaint or continue) and/or `init_audio` (a clip to vary); got "
                "neither. For text-to-audio use `StableAudio3Pipeline`."
            )
        if not isinstance(sampling_rate, (int, np.integer)) or isinstance(sampling_rate, bool) or sampling_rate <= 0:
            raise ValueError(
                f"`sampling_rate` must be a positive integer (Hz) of the given clips, got {sampling_rate!r}."
            )
        reference = audio_to_tensor(audio, "audio") if audio is not None else None
        init = audio_to_tensor(init_audio, "init_audio") if init_audio is not None else None
        clip_seconds = (reference if reference is not None else init).shape[-1] / float(sampling_rate)

        if duration is None:
            duration = clip_seconds
        if isinstance(duration, bool) or not isinstance(duration, (int, float, np.floating, np.integer)):
            raise ValueError(f"`duration` must be one number of seconds for the edited clip, got {duration!r}.")
        duration = float(duration)
        if not math.isfinite(duration) or duration <= 0:
            raise ValueError(
                f"`duration` must be a positive, finite number of seconds, got {duration}; pass the length "
                "to generate in seconds, e.g. `duration=10.0`."
            )
        if duration > self.max_duration + 1e-6:
            raise ValueError(
                f"`duration` {duration} s is beyond this model's maximum of {self.max_duration:.2f} s; ask for at most "
                f"{self.max_duration:.2f} s."
            )

        regions = normalize_regions(inpaint_regions, max(duration, clip_seconds), "inpaint_regions")
        if reference is not None and not regions:
            if duration > clip_seconds + 1e-9:
                regions = [(clip_seconds, duration)]  # continuation: generate what follows the clip
            elif init is None:
                raise ValueError(
                    "`inpaint_regions` is empty and `duration` is not longer than `audio`, so nothing would be "
                    "regenerated; pass regions as [(start, end), ...] in seconds, a longer `duration` to continue the "
                    "clip, or `init_audio` for a variation."
                )
        if reference is None and regions:
            raise ValueError("`inpaint_regions` needs the reference clip as `audio`; pass `audio=`.")

        if init is not None:
            if isinstance(init_noise_level, bool) or not isinstance(init_noise_level, (int, float)):
                raise ValueError(f"`init_noise_level` must be a number in (0, 1], got {init_noise_level!r}.")
            if not (0.0 < float(init_noise_level) <= 1.0):
                raise ValueError(
                    f"`init_noise_level` must be in (0, 1] (1.0 = pure noise, lower keeps more of `init_audio`), got "
                    f"{init_noise_level}."
                )

        if num_inference_steps is not None and (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, int)
            or num_inference_steps < 1
        ):
            raise ValueError(
                f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}; leave it unset for the "
                f"checkpoint's default ({self.default_num_inference_steps})."
            )
        if guidance_scale is not None and (
            not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 1.0
        ):
            raise ValueError(f"`guidance_scale` must be a finite number >= 1.0 (1.0 = off), got {guidance_scale!r}.")
        if not isinstance(num_waveforms_per_prompt, int) or num_waveforms_per_prompt < 1:
            raise ValueError(
                f"`num_waveforms_per_prompt` must be an integer >= 1, got {num_waveforms_per_prompt!r}; pass 1 for one "
                "waveform per prompt."
            )
        if isinstance(generator, list) and len(generator) != len(prompts) * num_waveforms_per_prompt:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators, but the batch has "
                f"{len(prompts) * num_waveforms_per_prompt} waveforms; pass one generator per waveform or a single one."
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(
                f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}; use 'np' for numpy audio, 'pt' "
                "for torch tensors or 'latent' for the latents."
            )
        if callback_on_step_end_tensor_inputs is not None and not all(
            k in self._callback_tensor_inputs for k in callback_on_step_end_tensor_inputs
        ):
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, but found "
                f"{[k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]}"
            )
        if self.is_post_trained and guidance_scale is not None and guidance_scale != 1.0:
            logger.warning(
                f"`guidance_scale`={guidance_scale} on a post-trained (rf_denoiser) checkpoint: guidance is distilled "
                "into these models and the official default is 1.0; using the given value anyway."
            )
        return prompts, negative_prompts, duration, regions, reference, init

    def build_keep_mask(
        self, regions: Sequence[Tuple[float, float]], duration: float, num_samples: int
    ) -> torch.Tensor:
        """Official keep-mask at sample resolution: ones, regions set to 0, and 0 past the requested duration."""
        mask = torch.ones(1, num_samples)
        for start, end in regions:
            mask[
                :, min(int(start * self.sampling_rate), num_samples) : min(int(end * self.sampling_rate), num_samples)
            ] = 0
        mask[:, int(duration * self.sampling_rate) :] = 0
        return mask

    def encode_audio(self, audio: torch.Tensor, sampling_rate: int, num_samples: int, name: str) -> torch.Tensor:
        """Resample, pad/crop to `num_samples`, stereo, then SAME-encode: (1, C, T)."""
        prepared = prepare_reference_audio(audio, sampling_rate, self.sampling_rate, num_samples, name)
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(prepared.to(self._execution_device, vae_dtype)).latents

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str]] = None,
        audio: Optional[AudioLike] = None,
        sampling_rate: int = 44100,
        duration: Optional[float] = None,
        inpaint_regions: Optional[Union[Tuple[float, float], List[Tuple[float, float]]]] = None,
        init_audio: Optional[AudioLike] = None,
        init_noise_level: float = 1.0,
        negative_prompt: Optional[Union[str, List[str]]] = None,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        apg_scale: float = 1.0,
        num_waveforms_per_prompt: int = 1,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[[Any, int, torch.Tensor, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        add_decode_noise: bool = True,
        chunked_decode: Optional[bool] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        negative_attention_mask: Optional[torch.Tensor] = None,
    ):
        r"""
        Edits audio.

        Args:
            prompt (`str` or `List[str]`): the prompt(s); every prompt edits the same clip.
            audio (`np.ndarray` or `torch.Tensor`, *optional*): the reference clip, (samples,) or (channels, samples),
                at `sampling_rate`; resampled with soxr, mono made stereo.
            sampling_rate (`int`, defaults to 44100): sample rate of `audio` and `init_audio`.
            duration (`float`, *optional*): seconds of the result; defaults to the clip's length. Longer than `audio`
                with no regions = continuation (the part after the clip is generated).
            inpaint_regions (`(start, end)` or a list of them, *optional*): seconds to regenerate; inside the result,
                start < end, not overlapping.
            init_audio (*optional*): a clip to vary (audio-to-audio); may be the same as `audio`.
            init_noise_level (`float`, defaults to 1.0): how much noise replaces `init_audio` (1.0 = all).
            Other arguments: as [`StableAudio3Pipeline.__call__`].

        Returns:
            [`AudioPipelineOutput`] with `audios` of shape (batch, 2, samples).
        """
        # 1. Check inputs
        prompts, negative_prompts, duration, regions, reference, init = self.check_inputs(
            prompt,
            audio,
            sampling_rate,
            duration,
            inpaint_regions,
            init_audio,
            init_noise_level,
            negative_prompt,
            prompt_embeds,
            attention_mask,
            negative_prompt_embeds,
            negative_attention_mask,
            num_inference_steps,
            guidance_scale,
            num_waveforms_per_prompt,
            generator,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        num_inference_steps = num_inference_steps or self.default_num_inference_steps
        self._guidance_scale = float(guidance_scale if guidance_scale is not None else self.default_guidance_scale)
        device = self._execution_device
        prompts = prompts.repeat(num_waveforms_per_prompt)
        if negative_prompts is not None:
            negative_prompts = negative_prompts.repeat(num_waveforms_per_prompt)
        batch_size = len(prompts)
        durations = [duration] * batch_size

        # 2. Encode the prompt, the duration and the unconditional branch
        context, global_condition, uncond_context = self.encode_conditioning(
            prompts, negative_prompts, durations, device, self.do_classifier_free_guidance
        )

        # 3. Lengths
        num_frames = self.num_latent_frames(duration)
        num_samples = num_frames * self.downsampling_ratio
        valid_frames = valid_latent_frames(
            durations, self.sampling_rate, self.downsampling_ratio, num_frames, self.config.headroom_seconds
        )
        frame_mask = torch.arange(num_frames, device=device)[None] < torch.tensor(valid_frames, device=device)[:, None]

        # 4. Initial noise (drawn before the clips are encoded, as official)
        # The sampling state is float32 (at least): with a bf16 / fp16 transformer the same seed draws the same
        # noise as in float32, and only the transformer's inputs are cast.
        dtype = torch.promote_types(self.transformer.dtype, torch.float32)
        latents = self.prepare_latents(
            batch_size,
            self.transformer.config.in_channels,
            num_frames,
            [num_frames] * batch_size,
            dtype,
            device,
            generator,
            latents,
        )

        # 5. Reference clip -> inpaint conditioning [mask | masked latents]
        inpaint_mask = inpaint_latents = None
        if reference is not None:
            keep = self.build_keep_mask(regions, duration, num_samples)
            reference_latents = self.encode_audio(reference, sampling_rate, num_samples, "audio").to(dtype)
            keep = F.interpolate(keep[None], size=reference_latents.shape[-1], mode="nearest")[0]
            inpaint_mask = keep[None].to(device=device, dtype=dtype).expand(batch_size, 1, -1)
            inpaint_latents = reference_latents.expand(batch_size, -1, -1) * inpaint_mask

        # 6. Init clip -> starting point and schedule
        sigma_max = 1.0
        if init is not None:
            sigma_max = float(init_noise_level)
            init_latents = self.encode_audio(init, sampling_rate, num_samples, "init_audio").to(dtype)
            latents = init_latents * (1 - sigma_max) + latents * sigma_max
        self.scheduler.set_timesteps(num_inference_steps, device=device, sigma_max=sigma_max)

        # 7. Denoising loop
        latents = self.denoise(
            latents,
            context.to(dtype),
            global_condition.to(dtype),
            None if uncond_context is None else uncond_context.to(dtype),
            frame_mask,
            inpaint_mask,
            inpaint_latents,
            self._guidance_scale,
            apg_scale,
            generator,
            [num_frames] * batch_size,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )

        # 8. Decode
        if output_type == "latent":
            self.maybe_free_model_hooks()
            return AudioPipelineOutput(audios=latents) if return_dict else (latents,)
        audios = self.decode_latents(
            latents, valid_frames, [num_frames] * batch_size, durations, generator, add_decode_noise, chunked_decode
        )
        self.maybe_free_model_hooks()
        return self.format_output(audios, output_type, return_dict)
