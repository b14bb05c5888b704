"""Tests of `training_examples/make_tiny_model.sh`'s stage control (the stages themselves are tested elsewhere)."""

import json
import os
import subprocess
import sys

import pytest
import torch


SCRIPT = os.path.join(os.path.dirname(__file__), "..", "training_examples", "make_tiny_model.sh")


def _run(run_dir, **settings):
    env = {**os.environ, "RUN_DIR": str(run_dir), "NUM_TRAIN": "3", "NUM_HELDOUT": "2", **settings}
    # The script's `python` must be this interpreter (the one with the package installed).
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    return subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=300)


def _stage_names(run_dir):
    with open(run_dir / "stages.tsv") as f:
        return [line.split("\t")[0] for line in f]


def test_stop_after_runs_the_stages_up_to_it_and_resumes_past_done_ones(tmp_path):
    run_dir = tmp_path / "run"
    result = _run(run_dir, STOP_AFTER="data_heldout")
    assert result.returncode == 0, result.stderr
    assert "stopped after data_heldout (STOP_AFTER)" in result.stdout
    assert _stage_names(run_dir) == ["data_train", "data_heldout"]
    assert (run_dir / "data" / "heldout" / "metadata.jsonl").exists() and not (run_dir / "init").exists()

    # Again: both stages are done, so they are skipped and the script still stops there (it does not build on).
    result = _run(run_dir, STOP_AFTER="data_heldout")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("done already, skipped") == 2
    assert "stopped after data_heldout" in result.stdout
    assert _stage_names(run_dir) == ["data_train", "data_heldout"] and not (run_dir / "init").exists()


@pytest.mark.parametrize("stop_after", ["pre-encode", "flow"])
def test_stop_after_must_name_a_stage(tmp_path, stop_after):
    result = _run(tmp_path / "run", STOP_AFTER=stop_after)
    assert result.returncode == 2
    assert f"STOP_AFTER={stop_after} is not a stage of this recipe" in result.stderr
    assert "pre_encode" in result.stderr and "train_flow" in result.stderr
    assert not (tmp_path / "run").exists()  # nothing written


def test_same_from_replaces_the_built_same_and_the_set_has_grid_timing(tmp_path):
    """`SAME_FROM`: the run's SAME is that folder's, byte for byte once stored in float16 again, not the one built
    from this run's clips (which differs: its level statistics come from the clips); the data stages write the set
    with `--timing grid` by default."""
    shipped = os.path.join(os.path.dirname(SCRIPT), "..", "pipelines", "sa3-tiny", "vae")
    run_dir = tmp_path / "run"
    result = _run(run_dir, SAME_FROM=shipped, STOP_AFTER="half_vae_trained_same")
    assert result.returncode == 0, result.stdout + result.stderr
    weights = "diffusion_pytorch_model.safetensors"
    with open(os.path.join(shipped, weights), "rb") as f:
        expected = f.read()
    assert (run_dir / "init_trained_same" / "vae" / weights).read_bytes() == expected
    assert (run_dir / "init" / "vae" / weights).read_bytes() != expected
    with open(run_dir / "stages.tsv") as f:
        commands = dict(line.rstrip("\n").split("\t")[::2] for line in f)
    assert "--timing grid" in commands["data_train"] and "--timing grid" in commands["data_heldout"]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"SAME_FROM": "no/such/folder"}, "SAME_FROM=no/such/folder is not a SAME folder"),
        ({"SAME_FROM": "pipelines/sa3-tiny/vae", "SAME_INIT": "pca", "AE_STEPS": "2"}, "AE_STEPS and DEC_STEPS must"),
        ({"ADV_LR": "3e-6x"}, "ADV_LR=3e-6x must be a finite number > 0"),
        ({"ADV_D_LR": "0"}, "ADV_D_LR=0 must be a finite number > 0"),
        ({"ADV_CONTRASTIVE": "-1"}, "ADV_CONTRASTIVE=-1 must be a finite number >= 0"),
        ({"ADV_LR": "nan"}, "ADV_LR=nan must be a finite number > 0"),
        ({"AE_LAMBDA_STFT": "-1"}, "AE_LAMBDA_STFT=-1 must be a finite number >= 0"),
        ({"AE_LR": "0"}, "AE_LR=0 must be a finite number > 0"),
        ({"AE_ALIGN_CROPS": "yes"}, "AE_ALIGN_CROPS=yes must be 0 or 1"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, settings, message):
    """SAME_FROM, and the SAME's and the adversarial stage's rates and loss weights (a typo would otherwise fail only
    after the stages before them)."""
    result = _run(tmp_path / "run", **settings)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_type_weights_reach_the_train_set_only(tmp_path):
    run_dir = tmp_path / "run"
    result = _run(
        run_dir, TYPE_WEIGHTS="drums=1 tone=0 chord=0 noise=0 chirp=0", NUM_TRAIN="6", STOP_AFTER="data_heldout"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with open(run_dir / "stages.tsv") as f:
        commands = dict(line.rstrip("\n").split("\t")[::2] for line in f)
    assert "--type_weights drums=1 tone=0 chord=0 noise=0 chirp=0" in commands["data_train"]
    assert "--type_weights" not in commands["data_heldout"]
    with open(run_dir / "data" / "train" / "metadata.jsonl") as f:
        assert {json.loads(line)["type"] for line in f} == {"drums"}


@pytest.mark.parametrize(
    "type_weights, message",
    [
        ("drums=0.5 snare=1", "unknown sound type 'snare'"),
        ("drums", "entry 'drums' is not TYPE=WEIGHT"),
        ("drums=-1", "must be a finite number >= 0, got -1.0"),
    ],
)
def test_bad_type_weights_fail_before_anything_is_written(tmp_path, type_weights, message):
    result = _run(tmp_path / "run", TYPE_WEIGHTS=type_weights)
    assert result.returncode == 2
    assert f'TYPE_WEIGHTS="{type_weights}"' in result.stderr and message in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_adversarial_settings_in_range_are_accepted(tmp_path):
    """The values stop 31 shipped with (and a realness-only discriminator) pass the check; the run goes on."""
    run_dir = tmp_path / "run"
    result = _run(run_dir, ADV_LR="3e-6", ADV_D_LR="3e-5", ADV_CONTRASTIVE="0", STOP_AFTER="data_train")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _stage_names(run_dir) == ["data_train"]


def test_same_loss_settings_reach_train_autoencoder(tmp_path):
    """A from-scratch SAME with the stop-32 losses (waveform L1 and level only, frame-aligned crops): the stage's
    recorded command carries them and the loss log has the waveform and level terms and no spectral ones; the
    trained SAME is then stored whole in float16 (the size budget) before anything is encoded with it."""
    run_dir = tmp_path / "run"
    result = _run(
        run_dir,
        SAME_INIT="random",
        SAME_HEADS="1",
        SAME_LAYERS="1",
        SAME_DECODER_LAYERS="1",
        SAME_PATCH="256",
        SAME_MLP_RATIO="2",
        LATENT_CHANNELS="8",
        DIT_LAYERS="1",
        AE_STEPS="2",
        AE_BATCH="2",
        AE_SEGMENT="0.1",
        AE_LAMBDA_STFT="0",
        AE_LAMBDA_MEL="0",
        AE_LAMBDA_LEVEL="1",
        AE_LAMBDA_CHROMA="0",
        AE_LAMBDA_ILD="0",
        AE_ALIGN_CROPS="1",
        AE_LR_SCHEDULER="cosine",
        AE_WARMUP="1",
        STOP_AFTER="half_vae_trained_same",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with open(run_dir / "stages.tsv") as f:
        commands = dict(line.rstrip("\n").split("\t")[::2] for line in f)
    command = commands["train_autoencoder"]
    assert "--lambda_stft 0 --lambda_mel 0 --lambda_level 1 --lambda_chroma 0 --lambda_ild 0 --align_crops" in command
    assert "--lr_scheduler cosine --lr_warmup_steps 1" in command, command
    with open(run_dir / "same" / "config.json") as f:
        assert json.load(f)["mlp_ratio"] == 2.0  # SAME_MLP_RATIO reached the init
    with open(run_dir / "same_loss.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [row["step"] for row in rows] == [1, 2]
    assert all("ae/wave" in row and "ae/level" in row for row in rows)
    assert not any(name in row for row in rows for name in ("ae/stft", "ae/mel", "sem/chroma", "sem/ild"))
    assert "--all_weights" in commands["half_vae_trained_same"]
    from safetensors import safe_open

    with safe_open(str(run_dir / "init_trained_same" / "vae" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(name).dtype for name in f.keys()}
    assert dtypes == {torch.float16}, dtypes
