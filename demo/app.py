"""Gradio demo for Stable Audio 3: text-to-audio and audio editing (inpainting, continuation, variation).

Run locally with `python demo/app.py [--model PATH] [--host 127.0.0.1] [--port N] [--share]`, or as a Hugging Face
Space (see `demo/README.md`). The model is `--model`, else `$DIFFUSERS_SA3_MODEL`, else the shipped tiny pipeline
`pipelines/sa3-tiny`. Any diffusers-sa3 folder or official checkpoint folder works; the model kind decides the
controls: base checkpoints get a negative prompt and a guidance scale, post-trained ones do not.

The app keeps no state beyond the loaded pipeline: `generate` and `edit` are plain functions that take the pipeline
as their first argument and are bound to it with `functools.partial` in `build_demo`. Every request gets its own
`torch.Generator`.
"""

import argparse
import functools
import math
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import gradio as gr
import numpy as np
import soundfile as sf
import torch

from diffusers_sa3 import StableAudio3InpaintPipeline, StableAudio3Pipeline
from diffusers_sa3.cli import DEFAULT_MODEL_ENV, default_model_path
from diffusers_sa3.pipelines.audio_utils import prepare_reference_audio


MAX_VARIATIONS = 4
MAX_SEED = 2**31 - 1
DEFAULT_MAX_FILE_SIZE = "20mb"
CROSSFADE_SECONDS = 0.01
# Each request writes its WAV/FLAC files to a folder of its own here; folders older than an hour are removed.
OUTPUT_ROOT = Path(tempfile.gettempdir()) / "sa3-demo"
OUTPUT_MAX_AGE_SECONDS = 3600.0
EDIT_MODES = ("Regenerate regions", "Continue", "Vary")
REGION_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*[-:]\s*(\d+(?:\.\d*)?|\.\d+)\s*$")


# ---------------------------------------------------------------------------------------------------- model loading


def resolve_model_path(model: Optional[str]) -> str:
    """`model`, else `$DIFFUSERS_SA3_MODEL`, else the shipped `pipelines/sa3-tiny`; raises a clear error if none."""
    if model:
        return model
    resolved = default_model_path()
    if resolved is None:
        shipped = Path(__file__).resolve().parents[1] / "pipelines" / "sa3-tiny"
        if (shipped / "model_index.json").is_file():
            return str(shipped)
        raise SystemExit(
            "error: no model to serve: pass --model PATH (a diffusers-sa3 folder or an official Stable Audio 3 "
            f"checkpoint folder) or set ${DEFAULT_MODEL_ENV}; the shipped tiny model {str(shipped)!r} was not found."
        )
    return resolved


def load_pipeline(model: Optional[str] = None) -> StableAudio3Pipeline:
    """Loads the text-to-audio pipeline once; the editing pipeline shares its components (see `inpaint_pipeline`)."""
    path = resolve_model_path(model)
    pipe = StableAudio3Pipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inpaint_pipeline(pipe: StableAudio3Pipeline) -> StableAudio3InpaintPipeline:
    """The editing pipeline on the same loaded components and length settings (no weights are copied)."""
    edit_pipe = StableAudio3InpaintPipeline(
        **pipe.components,
        max_text_length=pipe.config.max_text_length,
        max_sample_size=pipe.config.max_sample_size,
        headroom_seconds=pipe.config.headroom_seconds,
    )
    edit_pipe.set_progress_bar_config(disable=True)
    return edit_pipe


# ---------------------------------------------------------------------------------------------------- helpers


class UserError(gr.Error):
    """A message for the UI about bad input; the server logs no stack trace for it."""

    def __init__(self, message: str):
        super().__init__(message, print_exception=False)


def parse_regions(text: str) -> List[Tuple[float, float]]:
    """Parses `"0.5-1.0, 2-3"` (or `2:3`) into `[(0.5, 1.0), (2.0, 3.0)]`; range checks are the pipeline's."""
    regions = []
    for part in (text or "").replace(";", ",").split(","):
        if not part.strip():
            continue
        match = REGION_PATTERN.match(part)
        if match is None:
            raise UserError(
                f"Could not read the region {part.strip()!r}: write regions as START-END in seconds, separated by "
                "commas, e.g. `0.5-1.0, 2-3`."
            )
        regions.append((float(match.group(1)), float(match.group(2))))
    return regions


def _whole_number(value) -> Optional[int]:
    """`value` as an int if it is a finite whole number (a UI field may send a float or text), else `None`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None


def resolve_seed(seed, randomize: bool) -> int:
    if randomize:
        return secrets.randbelow(MAX_SEED)
    value = _whole_number(seed)
    if value is None or not 0 <= value <= MAX_SEED:
        raise UserError(f"The seed must be an integer between 0 and {MAX_SEED}, got {seed!r}.")
    return value


def check_prompt(prompt: Optional[str]) -> str:
    if prompt is None or not prompt.strip():
        raise UserError("The prompt is empty: describe the sound you want, e.g. `rain on a tin roof`.")
    return prompt.strip()


def check_count(value, name: str, low: int, high: int) -> int:
    number = _whole_number(value)
    if number is None or not low <= number <= high:
        raise UserError(f"{name} must be an integer from {low} to {high}, got {value!r}.")
    return number


def progress_callback(progress: gr.Progress, total: int, desc: str):
    """A `callback_on_step_end` that reports each denoising step to the Gradio progress bar."""

    def callback(pipe, step, timestep, callback_kwargs):
        progress((step + 1, total), desc=desc, unit="steps")
        return callback_kwargs

    return callback


def sampling_kwargs(pipe, negative_prompt, guidance_scale, steps, seed: int, num_variations: int, progress):
    """Arguments shared by `generate` and `edit`: one generator per waveform, guidance only for base models."""
    steps = check_count(steps, "Steps", 1, 500)
    num_variations = check_count(num_variations, "Variations", 1, MAX_VARIATIONS)
    kwargs = {
        "num_inference_steps": steps,
        "num_waveforms_per_prompt": num_variations,
        "generator": [torch.Generator().manual_seed(seed + i) for i in range(num_variations)],
        "output_type": "np",
        "callback_on_step_end": progress_callback(progress, steps, "Denoising"),
    }
    if not pipe.is_post_trained:
        kwargs["guidance_scale"] = float(guidance_scale) if guidance_scale is not None else None
        kwargs["negative_prompt"] = negative_prompt.strip() if negative_prompt and negative_prompt.strip() else None
    return kwargs


def render_plot(audio: np.ndarray, sampling_rate: int):
    """Waveform (top) and log-magnitude spectrogram (bottom) of a (channels, samples) clip as a PIL image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    mono = audio.mean(axis=0)
    seconds = np.arange(mono.shape[-1]) / sampling_rate
    fig, (ax_wave, ax_spec) = plt.subplots(2, 1, figsize=(8, 4), dpi=80, sharex=True)
    ax_wave.plot(seconds, mono, linewidth=0.5, color="#4f46e5")
    ax_wave.set_ylim(-1, 1)
    ax_wave.set_ylabel("amplitude")
    n_fft = 1024 if mono.shape[-1] >= 1024 else 2 ** max(int(math.log2(max(mono.shape[-1], 16))), 4)
    ax_spec.specgram(mono + 1e-9, NFFT=n_fft, Fs=sampling_rate, noverlap=n_fft // 2, cmap="magma")
    ax_spec.set_ylabel("Hz")
    ax_spec.set_xlabel("seconds")
    fig.tight_layout()
    fig.canvas.draw()
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return image


def prune_outputs(root: Path, max_age_seconds: float) -> None:
    """Removes request folders under `root` older than `max_age_seconds` (Gradio has served its copies by then)."""
    now = time.time()
    for folder in root.glob("request-*"):
        try:
            if now - folder.stat().st_mtime > max_age_seconds:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:  # removed by another request meanwhile
            pass


def write_outputs(audios: np.ndarray, sampling_rate: int, stem: str):
    """WAV (for the players) and FLAC (download) files, 16-bit, in a fresh temporary folder per request."""
    OUTPUT_ROOT.mkdir(parents=True, exist_ok=True)
    prune_outputs(OUTPUT_ROOT, OUTPUT_MAX_AGE_SECONDS)
    folder = Path(tempfile.mkdtemp(prefix="request-", dir=OUTPUT_ROOT))
    wavs, downloads = [], []
    for i, audio in enumerate(audios):
        # Quantize once, as soundfile reads 16-bit PCM (x / 32768), so both files hold the same samples and a clip
        # read from a 16-bit file is written back bit-exactly.
        pcm = np.clip(np.round(audio.T * 32768.0), -32768, 32767).astype(np.int16)
        wav = folder / f"{stem}_{i}.wav"
        flac = folder / f"{stem}_{i}.flac"
        sf.write(wav, pcm, sampling_rate, format="WAV", subtype="PCM_16")
        sf.write(flac, pcm, sampling_rate, format="FLAC", subtype="PCM_16")
        wavs.append(str(wav))
        downloads += [str(wav), str(flac)]
    return wavs, downloads


def ui_outputs(audios: np.ndarray, sampling_rate: int, stem: str, seed: int, message: str):
    """Values for the output components: MAX_VARIATIONS players, MAX_VARIATIONS plots, the files, seed, message."""
    wavs, downloads = write_outputs(audios, sampling_rate, stem)
    players = [gr.update(value=w, visible=True) for w in wavs]
    plots = [gr.update(value=render_plot(a, sampling_rate), visible=True) for a in audios]
    hidden = [gr.update(value=None, visible=False)] * (MAX_VARIATIONS - len(wavs))
    return (*players, *hidden, *plots, *hidden, downloads, seed, message)


def run_pipeline(pipe, **kwargs) -> np.ndarray:
    """Calls a pipeline; its `ValueError`s (bad duration, regions, ...) become a message in the UI."""
    try:
        audios = pipe(**kwargs).audios
    except ValueError as e:
        raise UserError(str(e)) from None
    return np.asarray(audios, dtype=np.float32)


def read_clip(path: Optional[str], max_seconds: float) -> Tuple[np.ndarray, int]:
    """Reads an uploaded or recorded clip as (channels, samples) float32; rejects non-audio and over-long clips."""
    if not path:
        raise UserError("Upload or record a clip to edit first.")
    try:
        info = sf.info(path)
    except (RuntimeError, sf.LibsndfileError):
        raise UserError(
            f"The file {Path(path).name!r} is not audio that can be read; upload WAV, FLAC, OGG or MP3."
        ) from None
    if info.frames == 0 or info.samplerate <= 0:
        raise UserError(f"The file {Path(path).name!r} holds no audio samples.")
    seconds = info.frames / info.samplerate
    if seconds > max_seconds + 1e-6:
        raise UserError(
            f"The clip is {seconds:.1f} s long; this demo accepts clips of at most {max_seconds:.1f} s. Trim it first."
        )
    audio, sampling_rate = sf.read(path, dtype="float32", always_2d=True)
    return np.ascontiguousarray(audio.T), int(sampling_rate)


def keep_weights(regions: Sequence[Tuple[float, float]], clip_samples: int, num_samples: int, sampling_rate: int):
    """Per-sample weight of the original clip: 1 outside the regions (and 0 past the clip), ramping from 1 to 0 over
    `CROSSFADE_SECONDS` just inside each region edge, so audio outside the regions is kept exactly."""
    weights = np.ones(num_samples, dtype=np.float32)
    fade = max(int(CROSSFADE_SECONDS * sampling_rate), 1)
    for start, end in regions:
        lo, hi = min(int(start * sampling_rate), num_samples), min(int(end * sampling_rate), num_samples)
        weights[lo:hi] = 0.0
        length = min(fade, (hi - lo) // 2)
        if length > 0:
            ramp = np.linspace(1.0, 0.0, length + 2, dtype=np.float32)[1:-1]
            weights[lo : lo + length] = ramp
            weights[hi - length : hi] = ramp[::-1]
    weights[clip_samples:] = 0.0
    return weights


def paste_back(
    audios: np.ndarray, clip: np.ndarray, clip_rate: int, regions, model_rate: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Crossfades the original clip back outside the regions; returns the results and the weights used."""
    num_samples = audios.shape[-1]
    original = prepare_reference_audio(clip, clip_rate, model_rate, num_samples)[0].numpy()
    clip_samples = min(round(clip.shape[-1] * model_rate / clip_rate), num_samples)
    weights = keep_weights(regions, clip_samples, num_samples, model_rate)
    return weights * original[None] + (1.0 - weights) * audios, weights


# ---------------------------------------------------------------------------------------------------- endpoints


def generate(
    pipe: StableAudio3Pipeline,
    prompt: str,
    negative_prompt: str,
    guidance_scale: float,
    duration: float,
    steps: int,
    seed: int,
    randomize_seed: bool,
    num_variations: int,
    progress=gr.Progress(),
):
    """Text to audio. Returns the players, the waveform/spectrogram images, the WAV+FLAC files, the seed, a message."""
    prompt = check_prompt(prompt)
    seed = resolve_seed(seed, randomize_seed)
    kwargs = sampling_kwargs(pipe, negative_prompt, guidance_scale, steps, seed, num_variations, progress)
    audios = run_pipeline(pipe, prompt=prompt, duration=float(duration) if duration is not None else None, **kwargs)
    message = f"Generated {len(audios)} x {audios.shape[-1] / pipe.sampling_rate:.2f} s with seed {seed}."
    return ui_outputs(audios, pipe.sampling_rate, "generated", seed, message)


def edit(
    pipe: StableAudio3InpaintPipeline,
    audio_path: Optional[str],
    mode: str,
    regions_text: str,
    continue_to: float,
    noise_level: float,
    keep_outside: bool,
    prompt: str,
    negative_prompt: str,
    guidance_scale: float,
    steps: int,
    seed: int,
    randomize_seed: bool,
    num_variations: int,
    max_clip_seconds: float = 60.0,
    progress=gr.Progress(),
):
    """Edits a clip: regenerate regions, continue it to a longer duration, or vary it (audio-to-audio)."""
    if mode not in EDIT_MODES:
        raise UserError(f"Unknown edit mode {mode!r}; choose one of {', '.join(EDIT_MODES)}.")
    prompt = check_prompt(prompt)
    clip, clip_rate = read_clip(audio_path, max_clip_seconds)
    clip_seconds = clip.shape[-1] / clip_rate
    seed = resolve_seed(seed, randomize_seed)
    kwargs = sampling_kwargs(pipe, negative_prompt, guidance_scale, steps, seed, num_variations, progress)
    kwargs.update(prompt=prompt, sampling_rate=clip_rate)

    regions = []
    if mode == "Regenerate regions":
        regions = parse_regions(regions_text)
        if not regions:
            raise UserError("Give at least one region to regenerate, e.g. `0.5-1.0, 2-3` (seconds).")
        kwargs.update(audio=clip, inpaint_regions=regions)
    elif mode == "Continue":
        if continue_to is None or float(continue_to) <= clip_seconds:
            raise UserError(
                f"To continue the clip, the new duration must be longer than the clip ({clip_seconds:.2f} s), got "
                f"{continue_to!r} s."
            )
        regions = [(clip_seconds, float(continue_to))]
        kwargs.update(audio=clip, duration=float(continue_to))
    else:
        if noise_level is None or not 0 < float(noise_level) <= 1:
            raise UserError(f"The noise level must be in (0, 1], got {noise_level!r}: higher varies the clip more.")
        kwargs.update(init_audio=clip, init_noise_level=float(noise_level))
    audios = run_pipeline(pipe, **kwargs)

    message = f"Edited ({mode.lower()}) {len(audios)} x {audios.shape[-1] / pipe.sampling_rate:.2f} s, seed {seed}"
    if keep_outside and mode != "Vary":
        audios, _ = paste_back(audios, clip, clip_rate, regions, pipe.sampling_rate)
        message += "; audio outside the regions kept from the input"
    return ui_outputs(audios, pipe.sampling_rate, "edited", seed, message + ".")


# ---------------------------------------------------------------------------------------------------- UI


def _output_panel():
    """One row per variation (player, waveform/spectrogram image), then downloads, seed and a message."""
    players, plots = [], []
    for i in range(MAX_VARIATIONS):
        with gr.Row(equal_height=True):
            players.append(
                gr.Audio(label=f"Result {i + 1}", type="filepath", interactive=False, visible=i == 0, scale=1)
            )
            plots.append(
                gr.Image(
                    label=f"Waveform and spectrogram {i + 1}",
                    type="pil",
                    format="png",
                    interactive=False,
                    visible=i == 0,
                    scale=2,
                )
            )
    files = gr.File(label="Download (WAV and FLAC)", file_count="multiple", interactive=False)
    with gr.Row():
        seed_used = gr.Number(label="Seed used", precision=0, interactive=False)
        message = gr.Markdown()
    return [*players, *plots, files, seed_used, message]


def _edit_mode_visibility(mode: str):
    """Shows the controls of the chosen edit mode (regions, target duration or noise level)."""
    return (
        gr.update(visible=mode == "Regenerate regions"),
        gr.update(visible=mode == "Continue"),
        gr.update(visible=mode == "Vary"),
        gr.update(visible=mode != "Vary"),
    )


def _sampling_controls(pipe):
    """Controls shared by both tabs. Negative prompt and guidance exist for base models only."""
    base = not pipe.is_post_trained
    negative = gr.Textbox(label="Negative prompt", visible=base, placeholder="What to avoid (base models)")
    with gr.Row():
        guidance = gr.Slider(1.0, 15.0, value=pipe.default_guidance_scale, step=0.5, label="Guidance", visible=base)
        steps = gr.Slider(1, 100, value=pipe.default_num_inference_steps, step=1, label="Steps")
    with gr.Row():
        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
        randomize = gr.Checkbox(label="Randomize seed", value=True)
        variations = gr.Slider(1, MAX_VARIATIONS, value=1, step=1, label="Variations")
    return negative, guidance, steps, seed, randomize, variations


def build_demo(
    pipe: StableAudio3Pipeline, max_clip_seconds: Optional[float] = None, default_duration: float = 10.0
) -> gr.Blocks:
    """The Blocks app around one loaded pipeline. `max_clip_seconds` caps edit uploads (default: the model's limit)."""
    edit_pipe = inpaint_pipeline(pipe)
    max_duration = float(math.floor(pipe.max_duration))
    max_clip_seconds = float(max_clip_seconds or max_duration)
    kind = "post-trained (guidance distilled)" if pipe.is_post_trained else "base (guidance, negative prompt)"

    # Gradio's own cache of served files is cleared of files older than a day, checked every hour.
    with gr.Blocks(title="Stable Audio 3", delete_cache=(3600, 86400)) as demo:
        gr.Markdown(
            f"# Stable Audio 3\nModel kind: **{kind}**, {pipe.sampling_rate} Hz stereo, at most {max_duration:.0f} s."
        )
        with gr.Tab("Generate"):
            prompt = gr.Textbox(label="Prompt", placeholder="e.g. warm analog synth pad, slow attack", lines=2)
            duration = gr.Slider(
                1.0, max_duration, value=min(default_duration, max_duration), step=0.5, label="Seconds"
            )
            negative, guidance, steps, seed, randomize, variations = _sampling_controls(pipe)
            run = gr.Button("Generate", variant="primary")
            outputs = _output_panel()
            run.click(
                functools.partial(generate, pipe),
                inputs=[prompt, negative, guidance, duration, steps, seed, randomize, variations],
                outputs=outputs,
                api_name="generate",
            )

        with gr.Tab("Edit"):
            clip = gr.Audio(label="Clip", sources=["upload", "microphone"], type="filepath")
            mode = gr.Radio(list(EDIT_MODES), value=EDIT_MODES[0], label="Edit")
            regions = gr.Textbox(label="Regions to regenerate (seconds)", value="0.5-1.0", placeholder="0.5-1.0, 2-3")
            continue_to = gr.Slider(
                1.0,
                max_duration,
                value=min(2 * default_duration, max_duration),
                step=0.5,
                label="Continue to (s)",
                visible=False,
            )
            noise = gr.Slider(0.05, 1.0, value=0.7, step=0.05, label="Noise level (vary)", visible=False)
            keep = gr.Checkbox(label="Keep the audio outside the regions exactly", value=True)
            edit_prompt = gr.Textbox(label="Prompt", placeholder="what the edited audio should sound like", lines=2)
            e_negative, e_guidance, e_steps, e_seed, e_randomize, e_variations = _sampling_controls(pipe)
            mode.change(
                _edit_mode_visibility, inputs=mode, outputs=[regions, continue_to, noise, keep], api_name=False
            )
            run_edit = gr.Button("Edit", variant="primary")
            edit_outputs = _output_panel()
            run_edit.click(
                functools.partial(edit, edit_pipe, max_clip_seconds=max_clip_seconds),
                inputs=[
                    clip,
                    mode,
                    regions,
                    continue_to,
                    noise,
                    keep,
                    edit_prompt,
                    e_negative,
                    e_guidance,
                    e_steps,
                    e_seed,
                    e_randomize,
                    e_variations,
                ],
                outputs=edit_outputs,
                api_name="edit",
            )
    return demo


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Stable Audio 3 Gradio demo.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="Bind address.")
    parser.add_argument("--max-clip-seconds", type=float, default=None, help="Longest edit upload (default: model's).")
    parser.add_argument("--max-file-size", default=DEFAULT_MAX_FILE_SIZE, help="Largest upload (default 20mb).")
    parser.add_argument("--model", default=None, help=f"Model folder (default: ${DEFAULT_MODEL_ENV}, then sa3-tiny).")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)), help="Port.")
    parser.add_argument("--queue-size", type=int, default=16, help="Requests waiting at most (default 16).")
    parser.add_argument("--share", action="store_true", help="Create a public gradio.live link (off by default).")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    pipe = load_pipeline(args.model)
    demo = build_demo(pipe, max_clip_seconds=args.max_clip_seconds)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size=args.max_file_size,
        ssr_mode=False,
    )


if __name__ == "__main__":
    sys.exit(main())
