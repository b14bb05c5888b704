"""Tests of the SAME training pieces: the audio-folder data set, the evaluation helper, and the real training script
run through `accelerate launch` on CPU with a tiny SAME-S (the official-layout fixture) and generated audio."""

import importlib.util
import json
import logging
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open

from diffusers_sa3 import SAMEAutoencoderModel
from diffusers_sa3.training.audio_data import AudioFolderDataset, load_audio
from diffusers_sa3.training.evaluation import evaluate_reconstruction, signal_to_noise_ratio
from diffusers_sa3.training.evaluation import main as evaluation_main
from utils import SMALL_CKPT


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "training_examples", "train_autoencoder.py")
# Small spectral / discriminator resolutions: the clips are 16384 samples (4 latent frames).
TINY_FLAGS = [
    "--segment_seconds", "0.37",
    "--discriminator_fft_sizes", "512", "256", "128",
    "--discriminator_channels", "8",
    "--discriminator_num_layers", "2",
    "--stft_fft_sizes", "1024", "256", "64",
    "--mel_fft_sizes", "1024", "256",
    "--mel_bins", "40", "10",
    "--aux_hidden_channels", "32",
    "--validation_steps", "0",
    "--report_to", "none",
]  # fmt: skip


def _clip(sample_rate, seconds, frequencies, channels, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    mono = sum(0.2 * np.sin(2 * np.pi * f * t) for f in frequencies)
    audio = np.stack([mono * (1 - 0.3 * c) for c in range(channels)], axis=1)
    return (audio + 0.01 * rng.standard_normal(audio.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("same_training")
    data = root / "data"
    data.mkdir()
    sf.write(data / "a.wav", _clip(44100, 0.5, [220, 660], 2, 0), 44100)
    sf.write(data / "b.wav", _clip(22050, 0.5, [330], 1, 1), 22050)  # mono, other rate
    sf.write(data / "c.flac", _clip(48000, 0.5, [440, 1500], 2, 2), 48000)
    sf.write(data / "d.wav", _clip(44100, 0.5, [110, 3000], 2, 3), 44100)
    (data / "broken.wav").write_bytes(b"this is not audio")
    good_files = sorted(str(data / name) for name in ("a.wav", "b.wav", "c.flac", "d.wav"))
    model_dir = root / "model"
    SAMEAutoencoderModel.from_single_file(SMALL_CKPT).save_pretrained(model_dir)
    return {"root": root, "data": str(data), "model": str(model_dir), "files": good_files}


def launch(workspace, output_dir, *flags, mode="full", steps=3, check=True):
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", "1", "--num_machines", "1", "--cpu", "--mixed_precision", "no", "--dynamo_backend", "no",
        SCRIPT,
        "--pretrained_model_name_or_path", workspace["model"],
        "--train_data_dir", workspace["data"],
        "--output_dir", str(output_dir),
        "--training_mode", mode,
        "--max_train_steps", str(steps),
        "--train_batch_size", "2",
        "--learning_rate", "1e-3",
        *TINY_FLAGS,
        *flags,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if check and result.returncode != 0:
        raise AssertionError(
            f"training failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result, elapsed


def read_losses(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def encoder_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("encoder.", "bottleneck."))}


def load_script_module():
    spec = importlib.util.spec_from_file_location("train_autoencoder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------------------------
# Data and evaluation
# ----------------------------------------------------------------------------------------------------------------------


def test_audio_folder_dataset(workspace, caplog):
    with caplog.at_level(logging.WARNING):
        dataset = AudioFolderDataset(workspace["data"], segment_samples=16384, seed=0)
    assert dataset.paths == workspace["files"]
    assert len(dataset.skipped_files) == 1 and "broken.wav" in dataset.skipped_files[0]
    assert "broken.wav" in caplog.text
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["audio"].shape == (2, 16384) and item["audio"].dtype == torch.float32
        assert item["num_samples"] == 16384  # every file is 0.5 s = 22050 samples at 44.1 kHz
    # Mono at 22.05 kHz comes back as two identical channels at 44.1 kHz, with the file's duration.
    full = load_audio(workspace["files"][1])
    assert full.shape == (2, 22050) and torch.equal(full[0], full[1])
    # The 330 Hz tone survives resampling: the spectrum peaks at 330 Hz.
    spectrum = np.abs(np.fft.rfft(full[0].numpy()))
    assert abs(np.argmax(spectrum) * 44100 / full.shape[-1] - 330) < 3
    # Seeded random crops are reproducible per (epoch, index) and change with the epoch.
    again = AudioFolderDataset(workspace["data"], segment_samples=16384, seed=0)
    assert torch.equal(dataset[2]["audio"], again[2]["audio"])
    again.set_epoch(1)
    assert not torch.equal(dataset[2]["audio"], again[2]["audio"])
    # Long segments are zero-padded and report the valid length.
    padded = AudioFolderDataset(workspace["files"][:1], segment_samples=30000, random_crop=False)[0]
    assert padded["num_samples"] == 22050 and padded["audio"][:, 22050:].abs().max() == 0
    torch.testing.assert_close(padded["audio"][:, :22050], load_audio(workspace["files"][0]))
    with pytest.raises(ValueError, match="No readable audio"):
        AudioFolderDataset([os.path.join(workspace["data"], "broken.wav")])


def test_aligned_crops(workspace):
    # Offsets a multiple of `crop_multiple`: each crop equals the file's audio from a multiple of 2048 (files of 22050
    # samples, segments of 4096: offsets 0, 2048, ..., 16384), and the offsets differ over epochs. The two 44.1 kHz
    # files: no resampling, so the crop is exactly a slice of the file.
    files = [path for path in workspace["files"] if path.endswith(("a.wav", "d.wav"))]
    dataset = AudioFolderDataset(files, segment_samples=4096, seed=0, crop_multiple=2048)
    offsets = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        for index, path in enumerate(dataset.paths):
            crop, full = dataset[index]["audio"], load_audio(path)
            matches = [o for o in range(0, 22050 - 4096 + 1) if torch.equal(full[:, o : o + 4096], crop)]
            assert matches and all(o % 2048 == 0 for o in matches), (epoch, index, matches)
            offsets.add(matches[0])
    assert len(offsets) > 2
    # Unaligned crops (the default) take offsets off the grid.
    plain = AudioFolderDataset(files, segment_samples=4096, seed=0)
    full = load_audio(plain.paths[0])
    assert not any(torch.equal(full[:, o : o + 4096], plain[0]["audio"]) for o in range(0, 22050 - 4096 + 1, 2048))
    for bad in (0, -2048, 2.5, True):
        with pytest.raises(ValueError, match="crop_multiple"):
            AudioFolderDataset(workspace["files"], segment_samples=4096, crop_multiple=bad)


class _IdentityAutoencoder(torch.nn.Module):
    """Stands in for a perfect autoencoder: `decode(encode(x)) == x`."""

    class _Config:
        sampling_rate = 44100
        audio_channels = 2

    config = _Config()

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def encode(self, audio, chunked=None):
        return type("Out", (), {"latents": audio})

    def decode(self, latents, generator=None, add_noise=True, chunked=None):
        return type("Out", (), {"sample": torch.nn.functional.pad(latents, (0, 100))})


def test_evaluation_metrics(workspace, tmp_path):
    target = torch.tensor([[[1.0, -1.0, 2.0]]])
    prediction = torch.tensor([[[1.0, 0.0, 2.0]]])
    assert signal_to_noise_ratio(prediction, target) == pytest.approx(10 * np.log10(6 / 1))
    perfect = evaluate_reconstruction(_IdentityAutoencoder(), workspace["files"], output_dir=str(tmp_path / "wav"))
    assert perfect["mean"]["stft"] == 0.0 and perfect["mean"]["mel"] == 0.0 and perfect["mean"]["snr_db"] > 100
    assert len(os.listdir(tmp_path / "wav")) == 4
    # The CLI on the tiny model: per-file rows and the mean, written to JSON; evaluation is deterministic.
    output = tmp_path / "metrics.json"
    cli_args = ["--model", workspace["model"], "--audio_dir", workspace["data"], "--output_json", str(output)]
    metrics = evaluation_main(cli_args)
    assert [row["path"] for row in metrics["files"]] == workspace["files"]
    assert json.loads(output.read_text())["mean"] == metrics["mean"]
    assert evaluation_main(cli_args)["mean"] == metrics["mean"]


def test_output_dir_is_not_overwritten(workspace, tmp_path):
    script = load_script_module()
    (tmp_path / "keep.txt").write_text("previous run")
    args = script.parse_args(
        [
            "--pretrained_model_name_or_path", workspace["model"],
            "--train_data_dir", workspace["data"],
            "--output_dir", str(tmp_path),
        ]
    )  # fmt: skip
    with pytest.raises(ValueError, match="overwrite_output_dir"):
        script.main(args)
    assert (tmp_path / "keep.txt").read_text() == "previous run"


# ----------------------------------------------------------------------------------------------------------------------
# The training script through accelerate launch
# ----------------------------------------------------------------------------------------------------------------------


def test_full_training_overfits_and_freezes_the_bottleneck(workspace, tmp_path):
    initial = SAMEAutoencoderModel.from_pretrained(workspace["model"])
    before = evaluate_reconstruction(initial, workspace["files"], chunked=False)["mean"]
    output_dir = tmp_path / "full"
    _, elapsed = launch(
        workspace,
        output_dir,
        "--train_batch_size", "4",
        "--learning_rate", "3e-3",
        "--adversarial_start_step", "30",
        "--checkpointing_steps", "20",
        "--validation_steps", "40",
        "--num_validation_clips", "2",
        "--loss_log", str(tmp_path / "losses.jsonl"),
        steps=40,
    )  # fmt: skip
    trained = SAMEAutoencoderModel.from_pretrained(output_dir)
    after = evaluate_reconstruction(trained, workspace["files"], chunked=False)["mean"]
    print(f"full training: 40 steps in {elapsed:.1f} s (launch included); before {before}, after {after}")
    # The reconstruction of the training clips improves clearly (measured: STFT 4.34 -> ~2.6).
    assert after["stft"] <= 0.7 * before["stft"]
    assert after["mel"] < before["mel"]

    losses = read_losses(tmp_path / "losses.jsonl")
    assert [row["step"] for row in losses] == list(range(1, 41))
    expected_keys = {"ae/stft", "ae/mel", "ae/kl", "align/diffusion", "sem/chroma", "sem/ild", "contrast/infonce"}
    assert expected_keys <= set(losses[0])
    assert {"adv/d_loss", "adv/g_loss", "adv/feat"} <= set(losses[-1]) and "adv/d_loss" not in losses[0]

    # The running_std EMA moved during training and the saved model is frozen: encoding is deterministic even in
    # training mode.
    assert trained.config.freeze_bottleneck is True
    assert trained.bottleneck.running_std.item() != initial.bottleneck.running_std.item()
    trained.train()
    audio = load_audio(workspace["files"][0])[None]
    std_before = trained.bottleneck.running_std.clone()
    torch.testing.assert_close(trained.encode(audio).latents, trained.encode(audio).latents, rtol=0, atol=0)
    assert torch.equal(trained.bottleneck.running_std, std_before)

    # Checkpoints carry a save_pretrained model; validation reconstructions are WAV files.
    assert (output_dir / "checkpoint-20" / "autoencoder" / "config.json").is_file()
    wavs = sorted(os.listdir(output_dir / "validation" / "step-0000040"))
    assert len(wavs) == 2 and all(name.endswith(".wav") for name in wavs)


def test_decoder_only_keeps_encoder_and_latents(workspace, tmp_path):
    output_dir = tmp_path / "decoder_only"
    loss_log = tmp_path / "decoder_only.jsonl"
    launch(
        workspace,
        output_dir,
        "--checkpointing_steps", "100", "--lambda_level", "1", "--lambda_wave", "1", "--loss_log", str(loss_log),
        mode="decoder_only",
        steps=3,
    )  # fmt: skip
    # The level loss is a decoder loss: computed (and logged) in decoder-only mode, finite.
    # So is the waveform L1.
    for key in ("ae/level", "ae/wave"):
        values = [row[key] for row in read_losses(loss_log)]
        assert len(values) == 3 and all(math.isfinite(v) and v > 0 for v in values), key
    initial = SAMEAutoencoderModel.from_pretrained(workspace["model"])
    trained = SAMEAutoencoderModel.from_pretrained(output_dir)
    before, after = encoder_state(initial), encoder_state(trained)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    audio = torch.stack([load_audio(path) for path in workspace["files"]])
    assert torch.equal(initial.encode(audio).latents, trained.encode(audio).latents)
    decoder_changed = [
        k
        for k, v in trained.state_dict().items()
        if k.startswith("decoder.") and not torch.equal(v, initial.state_dict()[k])
    ]
    assert decoder_changed


def test_trainable_parameters_restrict_the_decoder(workspace, tmp_path):
    output_dir = tmp_path / "conv_out_only"
    result, _ = launch(
        workspace,
        output_dir,
        "--checkpointing_steps", "100", "--trainable_parameters", "decoder.conv_out.*", "--align_crops",
        mode="decoder_only",
        steps=2,
    )  # fmt: skip
    initial = SAMEAutoencoderModel.from_pretrained(workspace["model"]).state_dict()
    trained = SAMEAutoencoderModel.from_pretrained(output_dir).state_dict()
    changed = sorted(k for k in initial if not torch.equal(initial[k], trained[k]))
    assert changed and all(k.startswith("decoder.conv_out.") for k in changed), changed
    # A pattern that selects nothing in the decoder, or that is used outside decoder_only mode, is refused before
    # anything is written.
    for flags, mode, message in (
        (["--trainable_parameters", "decoder.no_such_layer.*"], "decoder_only", "matches no parameter"),
        (["--trainable_parameters", "encoder.*"], "decoder_only", "outside the decoder"),
        (["--trainable_parameters", "decoder.conv_out.*"], "full", "--training_mode decoder_only"),
    ):
        refused = tmp_path / f"refused_{mode}_{len(message)}"
        result, _ = launch(workspace, refused, *flags, mode=mode, steps=1, check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
        assert not (refused / "diffusion_pytorch_model.safetensors").exists()


def test_reinit_decoder_learns_a_fresh_decoder_for_the_frozen_latents(workspace, tmp_path):
    # Learning rate 0: the saved decoder is the fresh initialisation itself.
    pretrained = SAMEAutoencoderModel.from_pretrained(workspace["model"]).state_dict()
    decoders = {}
    for seed in (0, 1):
        output_dir = tmp_path / f"fresh_{seed}"
        launch(
            workspace,
            output_dir,
            "--reinit_decoder", "--learning_rate", "0", "--seed", str(seed), "--checkpointing_steps", "100",
            mode="decoder_only",
            steps=1,
        )  # fmt: skip
        state = SAMEAutoencoderModel.from_pretrained(output_dir).state_dict()
        assert all(torch.equal(state[k], v) for k, v in pretrained.items() if not k.startswith("decoder."))
        decoders[seed] = {k: v for k, v in state.items() if k.startswith("decoder.")}
        # A fresh feed-forward writes nothing (zero-initialised output projection); the pretrained one does.
        projections = [k for k in decoders[seed] if k.endswith("ff.proj_out.weight")]
        assert projections and all(not decoders[seed][k].any() and pretrained[k].any() for k in projections)
        assert not torch.equal(decoders[seed]["decoder.proj_in.weight"], pretrained["decoder.proj_in.weight"])
    # The initialisation follows --seed.
    assert not torch.equal(decoders[0]["decoder.conv_out.weight_v"], decoders[1]["decoder.conv_out.weight_v"])
    for flags, mode, message in (
        (["--reinit_decoder"], "full", "--training_mode decoder_only"),
        (["--reinit_decoder", "--from_scratch"], "decoder_only", "without `--from_scratch`"),
        (["--reinit_decoder", "--trainable_parameters", "decoder.conv_out.*"], "decoder_only", "drop one of them"),
    ):
        refused = tmp_path / f"refused_{len(flags)}_{mode}"
        result, _ = launch(workspace, refused, *flags, mode=mode, steps=1, check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
        assert not (refused / "diffusion_pytorch_model.safetensors").exists()


def test_lora_on_the_decoder(workspace, tmp_path):
    output_dir = tmp_path / "lora"
    launch(workspace, output_dir, "--lora_rank", "4", "--checkpointing_steps", "100", mode="lora", steps=3)
    path = output_dir / "decoder_lora.safetensors"
    base_size = os.path.getsize(os.path.join(workspace["model"], "diffusion_pytorch_model.safetensors"))
    assert path.is_file() and os.path.getsize(path) < base_size / 5
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("decoder.") and ".lora_" in k for k in keys)

    script = load_script_module()
    base = SAMEAutoencoderModel.from_pretrained(workspace["model"]).eval()
    adapted = script.load_decoder_lora(SAMEAutoencoderModel.from_pretrained(workspace["model"]), str(path)).eval()
    audio = load_audio(workspace["files"][0])[None]
    latents = base.encode(audio).latents
    assert torch.equal(latents, adapted.encode(audio).latents)
    base_audio = base.decode(latents, add_noise=False).sample
    adapted_audio = adapted.decode(latents, add_noise=False).sample
    assert (base_audio - adapted_audio).abs().max() > 1e-6


def test_resume_reproduces_the_losses(workspace, tmp_path):
    # Every loss is on (adversarial from step 0). Uninterrupted: 5 steps. Interrupted: 3 steps, then resumed to 5
    # (4 clips, batch 2: step 4 resumes in the middle of an epoch).
    flags = ["--checkpointing_steps", "3", "--adversarial_start_step", "0"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    launch(workspace, straight, *flags, "--loss_log", str(tmp_path / "straight.jsonl"), steps=5)
    launch(workspace, stopped, *flags, "--loss_log", str(tmp_path / "stopped.jsonl"), steps=3)
    launch(
        workspace,
        stopped,
        *flags,
        "--loss_log", str(tmp_path / "stopped.jsonl"),
        "--resume_from_checkpoint", "latest",
        steps=5,
    )  # fmt: skip
    reference, resumed = read_losses(tmp_path / "straight.jsonl"), read_losses(tmp_path / "stopped.jsonl")
    assert [row["step"] for row in resumed] == [1, 2, 3, 4, 5]
    assert "adv/d_loss" in reference[0] and "contrast/infonce" in reference[0]
    for ref_row, row in zip(reference, resumed):
        assert ref_row.keys() == row.keys()
        for key in ref_row:
            assert row[key] == pytest.approx(ref_row[key], rel=1e-6, abs=1e-7), (row["step"], key)
    final_straight = SAMEAutoencoderModel.from_pretrained(straight).state_dict()
    final_resumed = SAMEAutoencoderModel.from_pretrained(stopped).state_dict()
    for key in final_straight:
        torch.testing.assert_close(final_resumed[key], final_straight[key], rtol=1e-6, atol=1e-7)


def test_flags_are_sorted_and_documented():
    script = load_script_module()
    with open(SCRIPT) as f:
        source = f.read()
    flags = re.findall(r'add_argument\(\s*"(--[a-z0-9_]+)"', source)
    assert flags == sorted(flags)
    parser_help = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True).stdout
    for flag in flags:
        assert flag in parser_help
    assert script.parse_args(["--pretrained_model_name_or_path", "m", "--train_data_dir", "d"]).report_to in (
        "none",
        "tensorboard",
    )


def test_spectral_log_floors_reach_the_losses(workspace, tmp_path):
    # Same model, crops and noise: only the floors inside the logs of ae/stft and ae/mel differ, so only those two
    # first-step losses may change (a higher floor ignores more of the near-silent bins: a smaller distance).
    rows = {}
    for name, flags in (("default", []), ("raised", ["--stft_eps", "1.0", "--mel_eps", "1e-2"])):
        log = tmp_path / f"{name}.jsonl"
        launch(workspace, tmp_path / name, "--lambda_wave", "1", "--loss_log", str(log), *flags, steps=1)
        (rows[name],) = read_losses(log)
    for key in ("ae/stft", "ae/mel"):
        assert rows["raised"][key] < rows["default"][key], key
    assert rows["raised"]["ae/wave"] == rows["default"]["ae/wave"]
    script = load_script_module()
    required = ["--pretrained_model_name_or_path", "m", "--train_data_dir", "d"]
    for flag, value in (("--stft_eps", "0"), ("--mel_eps", "-1")):
        with pytest.raises(ValueError, match=f"`{flag}` must be positive.*got {float(value)}"):
            script.parse_args([*required, flag, value])
