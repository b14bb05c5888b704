"""`diffusers-sa3` command line: `generate` audio from text (with inpainting and continuation) and `convert`
official checkpoints to diffusers-format folders."""

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List, Optional


DEFAULT_MODEL_ENV = "DIFFUSERS_SA3_MODEL"
AUDIO_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


def default_model_path() -> Optional[str]:
    """The model used when `--model` is not given: `$DIFFUSERS_SA3_MODEL`, else the shipped tiny pipeline."""
    if os.environ.get(DEFAULT_MODEL_ENV):
        return os.environ[DEFAULT_MODEL_ENV]
    shipped = Path(__file__).resolve().parents[2] / "pipelines" / "sa3-tiny"
    return str(shipped) if (shipped / "model_index.json").is_file() else None


def _parse_regions(values: Optional[List[str]]):
    regions = []
    for value in values or []:
        try:
            start, end = (float(v) for v in value.split(":"))
        except ValueError:
            raise SystemExit(f"error: --inpaint-region must look like START:END in seconds, got {value!r}.")
        regions.append((start, end))
    return regions


def _write_audio_atomically(path: Path, audio, sampling_rate: int, overwrite: bool) -> None:
    """Writes with soundfile through a temporary file in the same folder, so a failure never leaves a partial file."""
    import soundfile as sf

    if path.suffix.lower() not in AUDIO_FORMATS:
        raise SystemExit(f"error: -o/--output must end in .wav or .flac, got {str(path)!r}.")
    if path.exists() and not overwrite:
        raise SystemExit(f"error: {str(path)!r} exists; pass --overwrite to replace it or choose another -o.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, audio.T, sampling_rate, format=AUDIO_FORMATS[path.suffix.lower()], subtype="PCM_16")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load_pipeline(pipeline_class, path: str, flag: str):
    """Loads a pipeline; a folder that cannot be loaded ends the command with its reason, not a traceback."""
    try:
        return pipeline_class.from_pretrained(path)
    except (ValueError, OSError) as error:
        raise SystemExit(
            f"error: {flag} {path!r} could not be loaded: {error} Pass a diffusers-sa3 folder (model_index.json), an "
            "official checkpoint folder (model_config.json + model.safetensors + t5gemma-b-b-ul2/) or a Hub repo id."
        ) from None


def cmd_generate(args) -> int:
    import numpy as np
    import torch

    from . import StableAudio3InpaintPipeline, StableAudio3Pipeline

    model = args.model or default_model_path()
    if model is None:
        raise SystemExit(
            "error: no model: pass --model PATH (a diffusers-sa3 folder or an official checkpoint folder) or set "
            f"${DEFAULT_MODEL_ENV}."
        )
    outputs = [Path(args.output)]
    if args.num_waveforms > 1:
        outputs = [Path(args.output).with_stem(f"{Path(args.output).stem}_{i}") for i in range(args.num_waveforms)]
    for out in outputs:  # fail before any work, never after
        if out.suffix.lower() not in AUDIO_FORMATS:
            raise SystemExit(f"error: -o/--output must end in .wav or .flac, got {str(out)!r}.")
        if out.exists() and not args.overwrite:
            raise SystemExit(f"error: {str(out)!r} exists; pass --overwrite to replace it or choose another -o.")

    edit = args.audio is not None or args.init_audio is not None
    pipeline_class = StableAudio3InpaintPipeline if edit else StableAudio3Pipeline
    if args.quiet:  # the loaders' own progress bars too
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    pipe = _load_pipeline(pipeline_class, model, "--model")
    pipe.set_progress_bar_config(disable=args.quiet)
    generator = torch.Generator().manual_seed(args.seed)
    kwargs = {
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "num_waveforms_per_prompt": args.num_waveforms,
        "generator": generator,
        "output_type": "np",
    }
    try:
        if edit:
            import soundfile as sf

            reference, sampling_rate = (None, None)
            if args.audio is not None:
                reference, sampling_rate = sf.read(args.audio, dtype="float32", always_2d=True)
                reference = reference.T
            init = None
            if args.init_audio is not None:
                init, init_rate = sf.read(args.init_audio, dtype="float32", always_2d=True)
                init = init.T
                if sampling_rate is not None and init_rate != sampling_rate:
                    raise SystemExit("error: --audio and --init-audio must have the same sample rate.")
                sampling_rate = init_rate
            audios = pipe(
                audio=reference,
                sampling_rate=int(sampling_rate),
                duration=args.duration,
                inpaint_regions=_parse_regions(args.inpaint_region) or None,
                init_audio=init,
                init_noise_level=args.init_noise_level,
                **kwargs,
            ).audios
        else:
            audios = pipe(duration=args.duration if args.duration is not None else 10.0, **kwargs).audios
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    for out, audio in zip(outputs, np.asarray(audios)):
        _write_audio_atomically(out, audio, pipe.sampling_rate, args.overwrite)
        print(f"wrote {out} ({audio.shape[-1] / pipe.sampling_rate:.2f} s, {pipe.sampling_rate} Hz stereo)")
    return 0


def cmd_convert(args) -> int:
    from . import StableAudio3Pipeline
    from .conversion.official import is_official_checkpoint

    src, dst = Path(args.src), Path(args.dst)
    if not is_official_checkpoint(str(src)):
        raise SystemExit(
            f"error: SRC {str(src)!r} is not an official checkpoint folder (model_config.json + model.safetensors)."
        )
    if dst.exists() and any(dst.iterdir()) and not args.overwrite:
        raise SystemExit(f"error: DST {str(dst)!r} exists and is not empty; pass --overwrite or choose another DST.")
    pipe = _load_pipeline(StableAudio3Pipeline, str(src), "SRC")
    # Write into a temporary sibling folder and swap it in only when complete.
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if args.config_only:
            for weights in tmp.rglob("*.safetensors"):
                weights.unlink()
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(f"wrote {dst}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusers-sa3", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="Generate (or edit) audio from a text prompt and write WAV/FLAC.")
    gen.add_argument("prompt", help="The text prompt.")
    gen.add_argument(
        "--audio", default=None, help="Reference clip to inpaint or continue (any format soundfile reads)."
    )
    gen.add_argument("--duration", type=float, default=None, help="Seconds of audio (default 10, or the clip length).")
    gen.add_argument(
        "--guidance-scale", type=float, default=None, help="CFG scale (default: from the checkpoint kind)."
    )
    gen.add_argument("--init-audio", default=None, help="Clip to vary (audio-to-audio).")
    gen.add_argument("--init-noise-level", type=float, default=0.9, help="Noise level for --init-audio (default 0.9).")
    gen.add_argument(
        "--inpaint-region", action="append", help="START:END seconds to regenerate in --audio; repeat for several."
    )
    gen.add_argument("--model", default=None, help="Pipeline folder, official checkpoint folder or Hub repo.")
    gen.add_argument("--negative-prompt", default=None, help="Negative prompt (base checkpoints with guidance).")
    gen.add_argument("--num-waveforms", type=int, default=1, help="Waveforms to generate (files get _0, _1, ...).")
    gen.add_argument("-o", "--output", default="output.wav", help="Output .wav or .flac path (default output.wav).")
    gen.add_argument("--overwrite", action="store_true", help="Replace an existing output file.")
    gen.add_argument("--quiet", action="store_true", help="No progress bars (sampling and loading).")
    gen.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    gen.add_argument("--steps", type=int, default=None, help="Sampling steps (default: from the checkpoint kind).")
    gen.set_defaults(func=cmd_generate)

    conv = sub.add_parser("convert", help="Convert an official checkpoint folder to a diffusers-format folder.")
    conv.add_argument("src", help="Official folder: model_config.json, model.safetensors, t5gemma-b-b-ul2/.")
    conv.add_argument("dst", help="Output folder (must not exist or be empty unless --overwrite).")
    conv.add_argument("--config-only", action="store_true", help="Write configs and tokenizer only, no weights.")
    conv.add_argument("--overwrite", action="store_true", help="Replace a non-empty DST.")
    conv.set_defaults(func=cmd_convert)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
