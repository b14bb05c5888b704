"""Reconstruction metrics of a SAME autoencoder on audio files, and a command-line entry.

    python -m diffusers_sa3.training.evaluation --model DIR --audio_dir DIR [--output_json metrics.json]

`--model` is a `save_pretrained` folder of [`SAMEAutoencoderModel`] (or an official checkpoint folder with
`model_config.json`).
"""

import argparse
import json
import os
from typing import Dict, List, Optional, Sequence, Union

import soundfile as sf
import torch
from diffusers.utils import logging

from .audio_data import AUDIO_EXTENSIONS, check_audio_files, find_audio_files, load_audio
from .autoencoder_losses import multi_resolution_mel_loss, multi_resolution_stft_loss


logger = logging.get_logger(__name__)


def signal_to_noise_ratio(prediction: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> float:
    """Reconstruction SNR in dB: `10 log10(sum target^2 / sum (target - prediction)^2)` over all samples."""
    signal = target.double().square().sum()
    error = (target.double() - prediction.double()).square().sum()
    return float(10 * torch.log10((signal + eps) / (error + eps)))


@torch.no_grad()
def evaluate_reconstruction(
    model,
    audio: Union[str, Sequence[str]],
    max_seconds: Optional[float] = None,
    chunked: Optional[bool] = None,
    add_noise: bool = False,
    generator: Optional[torch.Generator] = None,
    stft_fft_sizes: Sequence[int] = (2048, 1024, 512, 256, 128),
    mel_fft_sizes: Sequence[int] = (2048, 1024, 512, 256, 128),
    mel_bins: Sequence[int] = (160, 80, 40, 20, 10),
    output_dir: Optional[str] = None,
) -> Dict[str, Union[List[Dict[str, Union[str, float]]], Dict[str, float]]]:
    """
    Encodes and decodes every file and measures the reconstruction.

    Each file is read at the model's `config.sampling_rate` in stereo (see [`load_audio`]), optionally cut to
    `max_seconds`, reconstructed one at a time with the model in eval mode (its mode is restored afterwards), cropped
    to the input length, and compared with [`signal_to_noise_ratio`] (dB), [`multi_resolution_stft_loss`] and
    [`multi_resolution_mel_loss`] (both on L/R/mid/side).

    Args:
        model ([`SAMEAutoencoderModel`]): the autoencoder.
        audio (`str` or list of `str`): a folder (searched recursively; unreadable files are skipped with a warning)
            or a list of audio files (all must be readable).
        max_seconds (`float`, *optional*): evaluate only the first `max_seconds` of each file.
        chunked (`bool`, *optional*): chunked encode / decode; `None` uses the model's config.
        add_noise (`bool`, defaults to `False`): add the official decode-time noise; `False` is deterministic.
        generator (`torch.Generator`, *optional*): source of the decode noise when `add_noise`.
        stft_fft_sizes, mel_fft_sizes, mel_bins: resolutions of the spectral distances.
        output_dir (`str`, *optional*): also write every reconstruction there as a 16-bit WAV named
            `<index>_<file name>.wav`.

    Returns:
        `{"files": [{"path", "snr_db", "stft", "mel"}, ...], "mean": {"snr_db", "stft", "mel"}}`.
    """
    if isinstance(audio, str):
        paths = [path for path, _ in check_audio_files(find_audio_files(audio, AUDIO_EXTENSIONS))[0]]
    else:
        paths = list(audio)
    if not paths:
        raise ValueError(f"`audio` must name at least one audio file, got {audio!r} with none found.")
    sample_rate = model.config.sampling_rate
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results = []
    try:
        for path in paths:
            num_samples = None if max_seconds is None else int(max_seconds * sample_rate)
            target = load_audio(path, sample_rate, model.config.audio_channels, start=0, num_samples=num_samples)
            target = target[None].to(device)
            latents = model.encode(target, chunked=chunked).latents
            prediction = model.decode(latents, generator=generator, add_noise=add_noise, chunked=chunked).sample
            prediction = prediction[..., : target.shape[-1]].float()
            if output_dir is not None:
                os.makedirs(output_dir, exist_ok=True)
                name = f"{len(results)}_{os.path.splitext(os.path.basename(path))[0]}.wav"
                clipped = prediction[0].T.clamp(-1, 1).cpu().numpy()
                sf.write(os.path.join(output_dir, name), clipped, sample_rate, subtype="PCM_16")
            results.append(
                {
                    "path": path,
                    "snr_db": signal_to_noise_ratio(prediction, target),
                    "stft": float(multi_resolution_stft_loss(prediction, target, stft_fft_sizes)),
                    "mel": float(multi_resolution_mel_loss(prediction, target, sample_rate, mel_fft_sizes, mel_bins)),
                }
            )
    finally:
        model.train(was_training)
    mean = {key: sum(r[key] for r in results) / len(results) for key in ("snr_db", "stft", "mel")}
    return {"files": results, "mean": mean}


def _load_model(path: str, subfolder: Optional[str] = None):
    from diffusers_sa3 import SAMEAutoencoderModel

    folder = path if subfolder is None else os.path.join(path, subfolder)
    if os.path.isfile(os.path.join(folder, "model_config.json")):
        return SAMEAutoencoderModel.from_single_file(folder)
    return SAMEAutoencoderModel.from_pretrained(path, subfolder=subfolder)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(
        description="Reconstruction SNR, multi-resolution STFT and mel distances of a SAME autoencoder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--audio_dir", required=True, help="Folder of audio files (searched recursively).")
    parser.add_argument("--device", default="cpu", help="Torch device.")
    parser.add_argument("--max_seconds", type=float, default=None, help="Evaluate only the start of each file.")
    parser.add_argument("--model", required=True, help="save_pretrained folder (or official checkpoint folder).")
    parser.add_argument("--output_json", default=None, help="Also write the metrics to this JSON file.")
    parser.add_argument("--output_dir", default=None, help="Also write the reconstructions there as WAV files.")
    parser.add_argument("--subfolder", default=None, help="Subfolder of --model holding the autoencoder (e.g. vae).")
    args = parser.parse_args(argv)

    model = _load_model(args.model, args.subfolder).to(args.device)
    metrics = evaluate_reconstruction(model, args.audio_dir, max_seconds=args.max_seconds, output_dir=args.output_dir)
    for row in metrics["files"]:
        print(f"{row['snr_db']:9.3f} dB  stft {row['stft']:.4f}  mel {row['mel']:.4f}  {row['path']}")
    mean = metrics["mean"]
    print(f"{mean['snr_db']:9.3f} dB  stft {mean['stft']:.4f}  mel {mean['mel']:.4f}  mean of {len(metrics['files'])}")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(metrics, f, indent=2)
    return metrics


if __name__ == "__main__":
    main()
