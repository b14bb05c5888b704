"""Stage-1 flow-matching training: the data sets, the objective's pieces, and the real `train_flow.py` /
`pre_encode.py` scripts run through `accelerate launch` on CPU with the tiny official-layout `medium_base` fixture (a
base, rectified-flow model) and WAV files written here."""

import importlib.util
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from diffusers_sa3 import FlowMatchOTScheduler, StableAudio3Pipeline
from diffusers_sa3.training.flow_data import CaptionedAudioDataset, LatentShardDataset, collate_audio, collate_latents
from diffusers_sa3.training.flow_objective import (
    augment_valid_lengths,
    drop_conditioning,
    flow_matching_loss,
    masked_mse,
    sample_inpaint_masks,
)
from utils import MEDIUM_BASE_CKPT


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "training_examples", "train_flow.py")
PRE_ENCODE = os.path.join(ROOT, "training_examples", "pre_encode.py")
OVERFIT_STEPS, RESUME_AT, RESUME_TO = 50, 25, 30


def _clip(sample_rate, seconds, frequency, channels, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    mono = 0.3 * np.sin(2 * np.pi * frequency * t)
    audio = np.stack([mono * (1 - 0.3 * c) for c in range(channels)], axis=1)
    return (audio + 0.01 * rng.standard_normal(audio.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow_training")
    data = root / "data"
    data.mkdir()
    sf.write(data / "low.wav", _clip(44100, 0.5, 220, 2, 0), 44100)
    (data / "low.txt").write_text("a low sine tone\n")
    sf.write(data / "high.wav", _clip(22050, 1.2, 880, 1, 1), 22050)  # mono, other rate, > 1 s
    (data / "high.txt").write_text("a high mono tone")
    sf.write(data / "uncaptioned.wav", _clip(44100, 0.5, 440, 2, 2), 44100)
    (data / "broken.wav").write_bytes(b"this is not audio")
    (data / "broken.txt").write_text("never read")
    sf.write(data / "tiny.wav", _clip(44100, 0.01, 440, 2, 3), 44100)
    (data / "tiny.txt").write_text("too short")
    return {"root": root, "data": str(data)}


def launch(output_dir, *flags, processes=1, steps=3, check=True):
    if processes == 1:
        launcher = ["--num_processes", "1", "--cpu"]
        env_extra = {}
    else:
        # `--cpu --num_processes 2` silently runs one process; multi-CPU DDP (gloo) needs --multi_gpu + USE_CPU.
        launcher = ["--multi_gpu", "--num_processes", str(processes)]
        env_extra = {"ACCELERATE_USE_CPU": "true"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *launcher,
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        SCRIPT,
        "--pretrained_model_name_or_path", MEDIUM_BASE_CKPT,
        "--output_dir", str(output_dir),
        "--max_train_steps", str(steps),
        "--report_to", "none",
        "--padding_seconds", "1.0",  # 11 frames of silence after the longest clip (6 s by default): faster steps
        *flags,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env_extra}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if check and result.returncode != 0:
        raise AssertionError(
            f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result, elapsed


def read_rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def test_captioned_dataset_skips_bad_files_with_one_warning(workspace, caplog, tmp_path):
    with caplog.at_level(logging.WARNING):
        dataset = CaptionedAudioDataset(workspace["data"], max_seconds=1.0, seed=0)
    assert [os.path.basename(p) for p in dataset.paths] == ["high.wav", "low.wav"]
    skipped = "\n".join(dataset.skipped_files)
    for name, reason in [("broken.wav", "Error"), ("uncaptioned.wav", "caption"), ("tiny.wav", "too short")]:
        assert name in skipped and name in caplog.text
        assert reason in [line for line in dataset.skipped_files if name in line][0]
    high = dataset[0]
    # 1.2 s of mono 22.05 kHz -> stereo 44.1 kHz, cropped to 1 s; seconds_total is the file's ceil(1.2) = 2 (official).
    assert high["audio"].shape == (2, 44100) and torch.equal(high["audio"][0], high["audio"][1])
    assert high["num_samples"] == 44100 and high["seconds_total"] == 2.0 and high["prompt"] == "a high mono tone"
    low = dataset[1]
    assert low["num_samples"] == 22050 and low["seconds_total"] == 1.0 and low["prompt"] == "a low sine tone"
    batch = collate_audio([high, low])
    assert batch["audio"].shape == (2, 2, 44100) and batch["audio"][1, :, 22050:].abs().max() == 0
    assert batch["num_samples"].tolist() == [44100, 22050] and batch["seconds_total"].tolist() == [2.0, 1.0]

    # Captions from a metadata.jsonl take precedence over .txt files; a folder without usable files says why.
    table = tmp_path / "table"
    table.mkdir()
    shutil.copy(os.path.join(workspace["data"], "low.wav"), table / "x.wav")
    (table / "metadata.jsonl").write_text(json.dumps({"file_name": "x.wav", "text": "from the table"}) + "\n")
    assert CaptionedAudioDataset(str(table))[0]["prompt"] == "from the table"
    (table / "metadata.jsonl").write_text(json.dumps({"file_name": "other.wav", "text": "t"}) + "\n")
    with pytest.raises(ValueError, match="caption"):
        CaptionedAudioDataset(str(table))


def test_file_failing_to_decode_mid_run_is_skipped_with_a_warning(workspace, caplog, monkeypatch):
    """A file whose header reads but whose audio does not decode (e.g. truncated after the check) is skipped with a
    warning naming it, and the next usable item takes its place, instead of killing a long run."""
    from diffusers_sa3.training import flow_data

    dataset = CaptionedAudioDataset(workspace["data"], max_seconds=1.0, seed=0)
    real_load = flow_data.load_audio

    def failing_load(path, *args, **kwargs):
        if os.path.basename(path) == "high.wav":
            raise RuntimeError("Error in the data chunk")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(flow_data, "load_audio", failing_load)
    with caplog.at_level(logging.WARNING):
        first, again = dataset[0], dataset[0]
    assert first["path"].endswith("low.wav") and again["path"].endswith("low.wav")
    assert caplog.text.count("high.wav") == 1 and "failed to decode" in caplog.text  # warned once
    assert dataset.decode_failures == [dataset.paths[0]] and "high.wav" in dataset.skipped_files[-1]
    monkeypatch.setattr(flow_data, "load_audio", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bad")))
    with pytest.raises(RuntimeError, match="No file of `root`"):
        dataset[1]


# ----------------------------------------------------------------------------------------------------------------------
# Objective pieces (the Sinkhorn coupling and the length shift are tested in test_schedulers.py)
# ----------------------------------------------------------------------------------------------------------------------


def test_inpaint_masks_follow_the_official_types():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.full((3000,), 40)
    masks = sample_inpaint_masks(lengths, 50, generator=generator)[:, 0]
    assert masks.shape == (3000, 50)
    assert masks[:, 40:].abs().max() == 0  # frames past the valid length are never given
    full = (masks == 0).all(dim=1)
    # A causal mask is a given prefix followed by zeros; segments leave given frames after a generated one.
    given = masks[:, :40] == 1
    prefix_like = (given.int().diff(dim=1) <= 0).all(dim=1) & ~full
    segments = ~full & ~prefix_like
    frequencies = [segments.float().mean().item(), full.float().mean().item(), prefix_like.float().mean().item()]
    # (A causal prefix of length 0 is all zeros and counts as "full"; segments can look like a prefix.)
    assert abs(frequencies[1] - 0.8) < 0.03 and abs(frequencies[0] - 0.1) < 0.03 and abs(frequencies[2] - 0.1) < 0.03
    only_causal = sample_inpaint_masks(torch.tensor([7, 3]), 9, (0.0, 0.0, 1.0), torch.Generator().manual_seed(1))
    for row, length in zip(only_causal[:, 0], (7, 3)):
        prefix = int(row.sum())
        assert torch.equal(row, (torch.arange(9) < prefix).float()) and prefix <= length
    with pytest.raises(ValueError, match="probabilities"):
        sample_inpaint_masks(lengths, 50, (0.5, 0.5))


def test_silence_extension_and_masked_loss():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.full((20000,), 10)
    extended = augment_valid_lengths(lengths, 10**6, mean_seconds=4.0, generator=generator)
    scale = 4.0 * 44100 / 4096  # mean extension in frames
    # floor(Exp(scale)) has mean 1 / (exp(1/scale) - 1) = scale - 0.5 + O(1/scale).
    assert abs((extended - 10).float().mean().item() - (1 / math.expm1(1 / scale))) < 0.03 * scale
    assert augment_valid_lengths(lengths[:5], 12, generator=generator).max() <= 12
    assert torch.equal(augment_valid_lengths(lengths[:5], 12, mean_seconds=0.0), lengths[:5])

    pred, target = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    expected = (
        ((pred[0, :, :2] - target[0, :, :2]) ** 2).mean() + ((pred[1, :, 1:4] - target[1, :, 1:4]) ** 2).mean()
    ) / 2
    torch.testing.assert_close(masked_mse(pred, target, mask), expected)
    context = torch.ones(1000, 4, 2)
    dropped = drop_conditioning(context, 0.1, torch.Generator().manual_seed(0))
    zeroed = (dropped == 0).all(dim=(1, 2))
    assert abs(zeroed.float().mean().item() - 0.1) < 0.03 and (dropped[~zeroed] == 1).all()


class _RecordingTransformer(torch.nn.Module):
    """Returns `hidden_states * weight` and records the keyword arguments of the last call."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))

    def forward(self, hidden_states, timestep, **kwargs):
        self.calls = {"timestep": timestep, **kwargs}
        return (hidden_states * self.weight,)


def test_flow_matching_loss_masks_padding_and_given_frames():
    scheduler = FlowMatchOTScheduler()
    model = _RecordingTransformer()
    latents = torch.randn(4, 3, 80)
    valid = torch.tensor([10, 30, 50, 80])
    context, global_condition = torch.randn(4, 5, 2), torch.randn(4, 2)
    loss, logs = flow_matching_loss(
        model, scheduler, latents, context, global_condition, valid, torch.tensor([1.0, 3.0, 5.0, 8.0]),
        condition_dropout=1.0, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    calls = model.calls
    attention = calls["attention_mask"]
    assert (attention.sum(dim=1) >= valid).all() and (attention[:, :10]).all()
    inpaint = calls["inpaint_mask"]
    assert (inpaint[:, 0] <= attention).all()  # only valid frames may be given
    torch.testing.assert_close(calls["inpaint_latents"], latents * inpaint)
    assert calls["cross_attention_context"].abs().max() == 0  # dropout 1: the whole context is zeros
    assert torch.equal(calls["global_condition"], global_condition)  # the global condition is never dropped
    assert set(logs) == {"flow/mse", "flow/context_mse", "flow/t_mean", "flow/valid_fraction"}
    # The gradient only comes from the valid frames to generate: padding never contributes.
    loss.backward()
    assert model.weight.grad is not None and torch.isfinite(model.weight.grad)
    # Same draws, without the length shift: the timesteps differ (shift raises t for these lengths).
    flow_matching_loss(
        model, scheduler, latents, context, global_condition, valid, torch.tensor([1.0, 3.0, 5.0, 8.0]),
        use_length_shift=False, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert (calls["timestep"] > model.calls["timestep"]).all()


class _FrameOutputTransformer(torch.nn.Module):
    """Predicts a free parameter per (item, channel, frame): its gradient shows exactly which frames the loss uses."""

    def __init__(self, shape):
        super().__init__()
        self.prediction = torch.nn.Parameter(torch.zeros(shape))

    def forward(self, hidden_states, timestep, **kwargs):
        self.calls = kwargs
        return (self.prediction + 0 * hidden_states,)


@pytest.mark.parametrize("inpainting", [True, False])
def test_flow_matching_loss_uses_exactly_the_valid_frames_to_generate(inpainting):
    scheduler = FlowMatchOTScheduler()
    latents = torch.randn(4, 3, 80)
    valid = torch.tensor([10, 30, 50, 80])
    model = _FrameOutputTransformer(latents.shape)
    loss, _ = flow_matching_loss(
        model, scheduler, latents, torch.randn(4, 5, 2), torch.randn(4, 2), valid, torch.tensor([1.0, 3.0, 5.0, 8.0]),
        inpaint_probabilities=(0.5, 0.0, 0.5) if inpainting else None, generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    loss.backward()
    used = model.prediction.grad.abs().sum(dim=1) > 0  # (batch, frames)
    expected = model.calls["attention_mask"].bool()
    if inpainting:
        given = model.calls["inpaint_mask"][:, 0].bool()
        assert given.any() and (expected & ~given).any()
        expected = expected & ~given
    # Silence augmentation extends the trained region past the content, never past the padded batch.
    assert (model.calls["attention_mask"].sum(dim=1) >= valid).all()
    assert torch.equal(used, expected), (used.sum(dim=1), expected.sum(dim=1))


# ----------------------------------------------------------------------------------------------------------------------
# The scripts
# ----------------------------------------------------------------------------------------------------------------------


def test_output_dir_is_not_overwritten(workspace, tmp_path):
    script = load_module(SCRIPT, "train_flow")
    (tmp_path / "keep.txt").write_text("previous run")
    args = script.parse_args(
        ["--pretrained_model_name_or_path", MEDIUM_BASE_CKPT, "--train_data_dir", workspace["data"],
         "--output_dir", str(tmp_path)]
    )  # fmt: skip
    with pytest.raises(ValueError, match="overwrite_output_dir"):
        script.main(args)
    assert (tmp_path / "keep.txt").read_text() == "previous run"
    with pytest.raises(ValueError, match="exactly one"):
        script.parse_args(["--pretrained_model_name_or_path", "m"])


@pytest.fixture(scope="module")
def overfit_run(workspace):
    """Full fine-tuning on one batch (the 2 usable clips, batch 2) for 50 steps, with checkpoints and validation."""
    output_dir = workspace["root"] / "overfit"
    log = workspace["root"] / "overfit.jsonl"
    result, elapsed = launch(
        output_dir,
        "--train_data_dir", workspace["data"],
        "--training_mode", "full",
        "--train_batch_size", "2",
        "--learning_rate", "2e-3",
        "--max_seconds", "1.0",
        "--checkpointing_steps", str(RESUME_AT),
        "--validation_steps", str(OVERFIT_STEPS),
        "--validation_num_inference_steps", "2",
        "--validation_duration", "0.5",
        "--loss_log", str(log),
        steps=OVERFIT_STEPS,
    )  # fmt: skip
    return {"output_dir": output_dir, "rows": read_rows(log), "stderr": result.stderr, "elapsed": elapsed}


def test_overfitting_one_batch_lowers_the_loss(overfit_run):
    rows = overfit_run["rows"]
    assert [row["step"] for row in rows] == list(range(1, OVERFIT_STEPS + 1))
    first = np.mean([row["flow/mse"] for row in rows[:10]])
    last = np.mean([row["flow/mse"] for row in rows[-10:]])
    print(
        f"overfit: flow/mse mean of steps 1-10 {first:.4f} -> steps 41-50 {last:.4f} ({overfit_run['elapsed']:.1f} s)"
    )
    assert last < 0.5 * first
    # Bad files are skipped with a warning naming them, not a crash.
    assert "broken.wav" in overfit_run["stderr"] and "uncaptioned.wav" in overfit_run["stderr"]

    # The final folder is a whole pipeline that loads with StableAudio3Pipeline.from_pretrained and generates.
    output_dir = overfit_run["output_dir"]
    pipe = StableAudio3Pipeline.from_pretrained(output_dir)
    base = StableAudio3Pipeline.from_pretrained(MEDIUM_BASE_CKPT)
    changed = [
        k for k, v in pipe.transformer.state_dict().items() if not torch.equal(v, base.transformer.state_dict()[k])
    ]
    assert changed
    for name in ("vae", "text_encoder"):  # frozen
        for key, value in getattr(pipe, name).state_dict().items():
            torch.testing.assert_close(value, getattr(base, name).state_dict()[key], rtol=0, atol=0)
    audio = pipe("a low sine tone", duration=0.5, num_inference_steps=2, output_type="pt").audios
    assert audio.shape == (1, 2, 22050) and torch.isfinite(audio).all()
    # Checkpoints carry a loadable transformer; validation clips are WAV files.
    assert (output_dir / f"checkpoint-{RESUME_AT}" / "transformer" / "config.json").is_file()
    wavs = sorted(os.listdir(output_dir / "validation" / f"step-{OVERFIT_STEPS:07d}"))
    assert wavs == ["00.wav", "01.wav"]
    assert sf.info(str(output_dir / "validation" / f"step-{OVERFIT_STEPS:07d}" / "00.wav")).samplerate == 44100


def test_resume_reproduces_the_losses(workspace, overfit_run):
    # A run stopped after step 25 (its checkpoint) and resumed logs the losses of the run that never stopped.
    resumed_dir = workspace["root"] / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(overfit_run["output_dir"] / f"checkpoint-{RESUME_AT}", resumed_dir / f"checkpoint-{RESUME_AT}")
    log = workspace["root"] / "resumed.jsonl"
    launch(
        resumed_dir,
        "--train_data_dir", workspace["data"],
        "--training_mode", "full",
        "--train_batch_size", "2",
        "--learning_rate", "2e-3",
        "--max_seconds", "1.0",
        "--checkpointing_steps", str(RESUME_AT),
        "--loss_log", str(log),
        "--resume_from_checkpoint", "latest",
        "--stop_after_steps", str(RESUME_TO),
        steps=OVERFIT_STEPS,
    )  # fmt: skip
    # --stop_after_steps ended the launch with a checkpoint and no final model.
    assert (resumed_dir / f"checkpoint-{RESUME_TO}").is_dir() and not (resumed_dir / "model_index.json").exists()
    resumed = read_rows(log)
    reference = overfit_run["rows"][RESUME_AT:RESUME_TO]
    assert [row["step"] for row in resumed] == list(range(RESUME_AT + 1, RESUME_TO + 1))
    for ref_row, row in zip(reference, resumed):
        for key in ("flow/loss", "flow/mse", "flow/context_mse", "flow/t_mean", "flow/valid_fraction", "lr"):
            assert row[key] == pytest.approx(ref_row[key], rel=1e-6, abs=1e-7), (row["step"], key)


def test_two_process_ddp(workspace, tmp_path):
    log = tmp_path / "ddp.jsonl"
    result, elapsed = launch(
        tmp_path / "ddp",
        "--train_data_dir", workspace["data"],
        "--training_mode", "full",
        "--train_batch_size", "1",
        "--max_seconds", "1.0",
        "--checkpointing_steps", "2",
        "--loss_log", str(log),
        processes=2,
        steps=3,
    )  # fmt: skip
    print(f"2-process DDP, 3 steps: {elapsed:.1f} s")
    rows = read_rows(log)
    assert [row["step"] for row in rows] == [1, 2, 3] and all(row["world_size"] == 2 for row in rows)
    output = result.stdout + result.stderr
    assert "process 0 of world size 2 started" in output and "process 1 of world size 2 started" in output
    # Both processes end with the same weights (gradients were all-reduced).
    checksums = dict(re.findall(r"process (\d) trainable-parameter checksum (\S+)", output))
    assert set(checksums) == {"0", "1"} and checksums["0"] == checksums["1"]
    assert StableAudio3Pipeline.from_pretrained(tmp_path / "ddp").transformer is not None


def test_pre_encode_then_lora_from_latents(workspace, tmp_path):
    # 1. Pre-encode (in-process) with the text-encoder states.
    pre_encode = load_module(PRE_ENCODE, "pre_encode")
    latents_dir = tmp_path / "latents"
    index = pre_encode.main(
        pre_encode.parse_args(
            ["--pretrained_model_name_or_path", MEDIUM_BASE_CKPT, "--train_data_dir", workspace["data"],
             "--output_dir", str(latents_dir), "--encode_text", "--items_per_shard", "1", "--silence_seconds", "1"]
        )
    )  # fmt: skip
    assert len(index["shards"]) == 2 and len(index["skipped_files"]) == 3
    dataset = LatentShardDataset(str(latents_dir))
    pipe = StableAudio3Pipeline.from_pretrained(MEDIUM_BASE_CKPT)
    audio_dataset = CaptionedAudioDataset(workspace["data"], random_crop=False)
    for i in range(2):
        item, source = dataset[i], audio_dataset[i]
        frames = math.ceil(source["num_samples"] / 4096)
        assert item["latents"].shape == (32, frames) and item["valid_length"] == frames
        assert item["seconds_total"] == source["seconds_total"] and item["prompt"] == source["prompt"]
        padded = torch.nn.functional.pad(
            source["audio"], (0, 2 * math.ceil(frames / 2) * 4096 - source["num_samples"])
        )
        with torch.no_grad():
            expected = pipe.vae.encode(padded[None]).latents[0, :, :frames]
        torch.testing.assert_close(item["latents"], expected)
        hidden, mask = pipe.encode_prompt([source["prompt"]], torch.device("cpu"))
        torch.testing.assert_close(item["encoder_hidden_states"], hidden[0])
    batch = collate_latents([dataset[0], dataset[1]], dataset.silence_latents)
    short = int(batch["valid_length"].argmin())
    pad = batch["latents"][short, :, batch["valid_length"][short] :]
    torch.testing.assert_close(pad, dataset.silence_latents[:, : pad.shape[-1]])

    # 2. LoRA training from the latents (no autoencoder or text encoder in the loop).
    output_dir = tmp_path / "lora"
    launch(
        output_dir,
        "--latents_dir", str(latents_dir),
        "--training_mode", "lora",
        "--lora_rank", "4",
        "--train_batch_size", "2",
        "--learning_rate", "1e-2",
        "--checkpointing_steps", "100",
        steps=3,
    )  # fmt: skip
    lora_file = output_dir / "pytorch_lora_weights.safetensors"
    assert lora_file.is_file()
    assert os.path.getsize(lora_file) < os.path.getsize(os.path.join(MEDIUM_BASE_CKPT, "model.safetensors")) / 10

    # 3. The adapter loads into the pipeline, changes its output, and strength 0 gives the base output exactly.
    def generate():
        return pipe(
            "a low sine tone", duration=0.5, num_inference_steps=2, output_type="latent",
            generator=torch.Generator().manual_seed(0),
        ).audios  # fmt: skip

    base = generate()
    pipe.load_lora_weights(str(output_dir), adapter_name="tone")
    adapted = generate()
    assert (adapted - base).abs().max() > 1e-3
    pipe.set_adapters(["tone"], adapter_weights=[0.0])
    torch.testing.assert_close(generate(), base, rtol=0, atol=0)


def test_flags_are_sorted_and_documented():
    for path in (SCRIPT, PRE_ENCODE):
        with open(path) as f:
            source = f.read()
        flags = re.findall(r'add_argument\(\s*"(--[a-z0-9_]+)"', source)
        assert flags == sorted(flags), path
        help_text = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True).stdout
        for flag in flags:
            assert flag in help_text
        assert len(re.findall(r"help=", source)) >= len(flags)
