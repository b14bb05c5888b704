"""Text-to-audio pipeline for Stable Audio 3, with the official `generate()` length handling and guidance."""

import math
import os
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput, DiffusionPipeline
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedTokenizerBase, T5GemmaEncoderModel

from ..loaders.lora import StableAudio3LoraLoaderMixin
from ..models.autoencoder_same import SAMEAutoencoderModel
from ..models.transformer_stable_audio3 import StableAudio3Transformer
from ..schedulers.scheduling_flow_match_ot import FlowMatchOTScheduler
from ..schedulers.scheduling_pingpong_adversarial import PingPongAdversarialScheduler
from .audio_utils import latent_frames_for_duration, valid_latent_frames
from .guidance import apply_guidance, check_default_guidance_scale, resolve_default_guidance_scale
from .loading import load_pipeline_components
from .prompt_inputs import PromptBatch, parse_prompts


logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("np", "pt", "latent")


class StableAudio3Pipeline(DiffusionPipeline, StableAudio3LoraLoaderMixin):
    r"""
    Text-to-audio generation with Stable Audio 3.

    Components:
        vae ([`SAMEAutoencoderModel`]): the SAME autoencoder (44.1 kHz stereo <-> latents at 4096x downsampling).
        transformer ([`StableAudio3Transformer`]): the DiT, which also owns the prompt padding embedding and the
            duration embedder of the official conditioner.
        text_encoder ([`~transformers.T5GemmaEncoderModel`]): the frozen T5Gemma encoder, run in its checkpoint dtype
            (bf16 for the released one) as the official code does.
        tokenizer: the T5Gemma tokenizer; prompts are padded to `max_text_length` tokens and truncated.
        scheduler ([`FlowMatchOTScheduler`] or [`PingPongAdversarialScheduler`]): Euler for base (`rectified_flow`)
            checkpoints, ping-pong for post-trained (`rf_denoiser`) checkpoints.

    Config (`model_index.json`): `max_text_length`, `max_sample_size` (longest output, in samples),
    `headroom_seconds` (generated past the longest requested duration) and `default_guidance_scale` (the CFG scale of a
    call that gives none; `None`: 7.0 for base checkpoints, 1.0 for post-trained ones).

    Load with `diffusers_sa3.StableAudio3Pipeline.from_pretrained(...)`, never with
    `diffusers.DiffusionPipeline.from_pretrained` (upstream owns the class name and would load its own port).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    # Without them the pipeline generates from precomputed `prompt_embeds` (see `encode_prompt`).
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
        # The official length rule aligns latents to `chunk_size // stride` of the encoder (default 32 // 16 = 2), for
        # SAME-L too (its config has no chunk_size and the official code falls back to 32).
        self.latent_alignment = getattr(vae, "latent_alignment", 2) if vae is not None else 2

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], **kwargs):
        r"""
        Loads a diffusers-format folder or Hub repo, or an official Stability checkpoint folder (`model_config.json`,
        `model.safetensors` and `t5gemma-b-b-ul2/`), detected automatically. Official folders are converted on the
        fly; the text encoder is always taken from the folder's `t5gemma-b-b-ul2/`, never from the network.
        """
        components = load_pipeline_components(pretrained_model_name_or_path, **kwargs)
        if components is None:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls(**components)

    # ------------------------------------------------------------------ properties

    @property
    def is_post_trained(self) -> bool:
        """True for `rf_denoiser` (adversarially post-trained) checkpoints, which sample with ping-pong."""
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
        """Longest duration in seconds (the official `sample_size` cap)."""
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

    # ------------------------------------------------------------------ steps

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

    def _prompt_states(self, prompts: PromptBatch, device):
        if prompts.texts is not None:
            return self.encode_prompt(prompts.texts, device)
        return prompts.embeds.to(device=device, dtype=torch.float32), prompts.mask.to(device)

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

    def num_latent_frames(self, max_seconds: float) -> int:
        return latent_frames_for_duration(
            max_seconds,
            self.sampling_rate,
            self.downsampling_ratio,
            self.latent_alignment,
            self.config.max_sample_size,
            self.config.headroom_seconds,
        )

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

    def check_inputs(
        self,
        prompt,
        duration,
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
        """Validates every argument before any work is done; returns `(prompts, durations, negative_prompts)`, the
        prompts as [`PromptBatch`]es."""
        prompts, negative_prompts = parse_prompts(
            self,
            prompt,
            prompt_embeds,
            attention_mask,
            negative_prompt,
            negative_prompt_embeds,
            negative_attention_mask,
        )

        if isinstance(duration, (list, tuple)):
            durations = list(duration)
            if len(durations) != len(prompts):
                raise ValueError(
                    f"`duration` has {len(durations)} values but there are {len(prompts)} prompts; give one duration "
                    "per prompt or a single number for all."
                )
        else:
            durations = [duration] * len(prompts)
        for d in durations:
            if isinstance(d, bool) or not isinstance(d, (int, float, np.floating, np.integer)):
                raise ValueError(f"`duration` must be a number of seconds, got {d!r}.")
            if not math.isfinite(d) or d <= 0:
                raise ValueError(
                    f"`duration` must be a positive, finite number of seconds, got {d}; pass the length "
                    "to generate in seconds, e.g. `duration=10.0`."
                )
            if d > self.max_duration + 1e-6:
                raise ValueError(
                    f"`duration` {d} s is beyond this model's maximum of {self.max_duration:.2f} s; ask for at most "
                    f"{self.max_duration:.2f} s (or generate in parts with the inpaint pipeline's continuation)."
                )
        durations = [float(d) for d in durations]

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
                f"{len(prompts) * num_waveforms_per_prompt} waveforms (prompts x num_waveforms_per_prompt); pass one "
                "generator per waveform or a single generator."
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
        if negative_prompts is not None and (guidance_scale or self.default_guidance_scale) == 1.0:
            logger.warning("`negative_prompt` has no effect without guidance (`guidance_scale` 1.0); it is ignored.")
        return prompts, durations, negative_prompts

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

    # ------------------------------------------------------------------ call

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str]] = None,
        duration: Union[float, List[float]] = 10.0,
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
        Generates audio from text.

        Args:
            prompt (`str` or `List[str]`): the prompt(s).
            duration (`float` or `List[float]`, defaults to 10.0): seconds of audio per prompt. Different durations run
                as one batch with padding masks; each output is trimmed to its own duration (a list is returned then).
            negative_prompt (`str` or `List[str]`, *optional*): used with guidance (base checkpoints).
            num_inference_steps (`int`, *optional*): defaults to 50 for base checkpoints, 8 for post-trained ones.
            guidance_scale (`float`, *optional*): official denoised-space CFG with APG; defaults to the pipeline's
                `default_guidance_scale` (its config's, else 7.0 for base checkpoints and 1.0 (off) for post-trained
                ones).
            apg_scale (`float`, defaults to 1.0): 1.0 = full APG (official default), 0.0 = vanilla CFG.
            num_waveforms_per_prompt (`int`, defaults to 1): waveforms per prompt.
            generator (`torch.Generator` or list): every random draw (initial noise, ping-pong noise, decode noise)
                comes from it. A list (one per waveform) makes each waveform independent of the rest of the batch.
            latents (`torch.Tensor`, *optional*): initial noise of shape (batch, latent channels, frames).
            output_type (`str`, defaults to `"np"`): `"np"`, `"pt"` or `"latent"` (untrimmed latents).
            return_dict (`bool`, defaults to True): return an [`AudioPipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, *optional*): called as `callback(pipe, i, t, callback_kwargs)` after
                every step; may return a dict with new `latents`.
            callback_on_step_end_tensor_inputs (`List[str]`): tensors passed to the callback.
            add_decode_noise (`bool`, defaults to True): the official decode-time noise of SAME (from `generator`).
            chunked_decode (`bool`, *optional*): force chunked decoding on or off (default: the VAE config).
            prompt_embeds (`torch.Tensor`, *optional*): T5Gemma states (batch, tokens, channels) instead of `prompt`,
                from [`~StableAudio3Pipeline.encode_prompt`]; with `attention_mask` (batch, tokens), its second output.
                They give exactly the audio of the text prompts, and need no text encoder in the pipeline.
            negative_prompt_embeds, negative_attention_mask (`torch.Tensor`, *optional*): the same for the negative
                prompt (a batch of 1 is used for every prompt).

        Returns:
            [`AudioPipelineOutput`] with `audios` of shape (batch, 2, samples), or a list of (2, samples_i) arrays when
            durations differ.
        """
        # 1. Check inputs
        prompts, durations, negative_prompts = self.check_inputs(
            prompt,
            duration,
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
        durations = [d for d in durations for _ in range(num_waveforms_per_prompt)]
        if negative_prompts is not None:
            negative_prompts = negative_prompts.repeat(num_waveforms_per_prompt)
        batch_size = len(prompts)

        # 2. Encode the prompt, the duration and the unconditional branch
        context, global_condition, uncond_context = self.encode_conditioning(
            prompts, negative_prompts, durations, device, self.do_classifier_free_guidance
        )

        # 3. Lengths: latent frames, valid frames (padding mask) per sample
        num_frames = self.num_latent_frames(max(durations))
        alone_frames = [self.num_latent_frames(d) for d in durations]
        valid_frames = valid_latent_frames(
            durations, self.sampling_rate, self.downsampling_ratio, num_frames, self.config.headroom_seconds
        )
        frame_mask = torch.arange(num_frames, device=device)[None] < torch.tensor(valid_frames, device=device)[:, None]

        # 4. Prepare the initial noise
        # The sampling state is float32 (at least): with a bf16 / fp16 transformer the same seed draws the same
        # noise as in float32, and only the transformer's inputs are cast.
        dtype = torch.promote_types(self.transformer.dtype, torch.float32)
        latents = self.prepare_latents(
            batch_size,
            self.transformer.config.in_channels,
            num_frames,
            alone_frames,
            dtype,
            device,
            generator,
            latents,
        )

        # 5. Timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)

        # 6. Denoising loop
        latents = self.denoise(
            latents,
            context.to(dtype),
            global_condition.to(dtype),
            None if uncond_context is None else uncond_context.to(dtype),
            frame_mask,
            None,
            None,
            self._guidance_scale,
            apg_scale,
            generator,
            alone_frames,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )

        # 7. Decode
        if output_type == "latent":
            self.maybe_free_model_hooks()
            return AudioPipelineOutput(audios=latents) if return_dict else (latents,)
        audios = self.decode_latents(
            latents, valid_frames, alone_frames, durations, generator, add_decode_noise, chunked_decode
        )
        self.maybe_free_model_hooks()
        return self.format_output(audios, output_type, return_dict)
