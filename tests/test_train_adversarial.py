"""Stage 3 (ARC post-training) through `accelerate launch` on CPU: the generator is a stage-2 pipeline folder built
from the tiny official `medium_base` fixture, the discriminator starts from the same base model, CLAP is a tiny random
`ClapModel` saved locally, and the data are generated captioned WAVs."""

import os
import shutil

import numpy as np
import pytest
import torch
from test_adversarial_losses import tiny_clap
from test_train_distill import launch, read_losses, write_captioned_clips
from transformers import AutoTokenizer, ClapFeatureExtractor

from diffusers_sa3 import PingPongAdversarialScheduler, StableAudio3Pipeline
from diffusers_sa3.training.distillation import save_pingpong_pipeline
from utils import MEDIUM_BASE_CKPT


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "training_examples", "train_adversarial.py")
KEYS = ("adv/d_loss", "adv/d_contrastive", "adv/g_loss", "adv/g_clap")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("adversarial")
    data = write_captioned_clips(root / "data")
    # Stage-2 output stand-in: the base model saved as a ping-pong pipeline (what stage 2 writes before training).
    base = StableAudio3Pipeline.from_pretrained(MEDIUM_BASE_CKPT)
    save_pingpong_pipeline(base, base.transformer, str(root / "student"))
    clap_dir = root / "clap"
    tiny_clap().save_pretrained(clap_dir)
    ClapFeatureExtractor(feature_size=16, max_length_s=1, truncation="rand_trunc").save_pretrained(clap_dir)
    AutoTokenizer.from_pretrained(os.path.join(MEDIUM_BASE_CKPT, "t5gemma-b-b-ul2")).save_pretrained(clap_dir)
    common = [
        "--pretrained_model_name_or_path", str(root / "student"),
        "--discriminator_model_name_or_path", MEDIUM_BASE_CKPT,
        "--clap_model_path", str(clap_dir), "--train_data_dir", data, "--train_batch_size", "3",
        "--learning_rate", "1e-4", "--discriminator_learning_rate", "1e-4", "--lambda_clap", "1.0",
        "--inpaint_mask_probabilities", "0.3", "0.4", "0.3", "--seed", "5",
    ]  # fmt: skip
    seconds = launch(
        SCRIPT, *common, "--output_dir", str(root / "out"), "--max_train_steps", "4", "--checkpointing_steps", "2",
        "--loss_log", str(root / "loss.jsonl"),
    )  # fmt: skip
    return {"root": root, "common": common, "seconds": seconds}


def test_losses_are_logged(run):
    losses = read_losses(run["root"] / "loss.jsonl")
    assert [entry["step"] for entry in losses] == [1, 2, 3, 4]
    for entry in losses:
        assert all(key in entry and np.isfinite(entry[key]) for key in KEYS)
    # The discriminator head starts at zero: both relativistic losses are exactly log 2 at the first step.
    assert losses[0]["adv/d_loss"] == pytest.approx(np.log(2), abs=1e-6)
    assert losses[0]["adv/d_contrastive"] == pytest.approx(np.log(2), abs=1e-6)
    # ... and the weighted totals are the flag-weighted sums (lambda_clap = 1 here).
    for entry in losses:
        assert entry["adv/g_total"] == pytest.approx(entry["adv/g_loss"] + entry["adv/g_clap"], rel=1e-5)
        assert entry["adv/d_total"] == pytest.approx(entry["adv/d_loss"] + entry["adv/d_contrastive"], rel=1e-5)
    print(f"\nARC losses: {losses}; launch took {run['seconds']:.1f} s")


def test_output_pipeline_samples_in_one_to_eight_steps(run):
    pipe = StableAudio3Pipeline.from_pretrained(run["root"] / "out")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, PingPongAdversarialScheduler)
    student = StableAudio3Pipeline.from_pretrained(run["root"] / "student").transformer
    changed = any(
        not torch.equal(a, b) for a, b in zip(pipe.transformer.state_dict().values(), student.state_dict().values())
    )
    assert changed, "the generator was not updated"
    for steps in (1, 2, 8):
        audio = pipe(
            "a crackling campfire", duration=0.3, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).audios  # fmt: skip
        assert audio.shape == (1, 2, int(0.3 * 44100)) and torch.isfinite(audio).all()


def test_resume_repeats_the_losses(run):
    root = run["root"]
    resumed = root / "resumed"
    resumed.mkdir()
    shutil.copytree(root / "out" / "checkpoint-2", resumed / "checkpoint-2")
    launch(
        SCRIPT, *run["common"], "--output_dir", str(resumed), "--max_train_steps", "4",
        "--resume_from_checkpoint", "latest", "--loss_log", str(root / "resumed.jsonl"),
    )  # fmt: skip
    original = {entry["step"]: entry for entry in read_losses(root / "loss.jsonl")}
    again = read_losses(root / "resumed.jsonl")
    assert [entry["step"] for entry in again] == [3, 4]
    for entry in again:
        for key in KEYS:
            assert entry[key] == pytest.approx(original[entry["step"]][key], rel=1e-5, abs=1e-7), key
