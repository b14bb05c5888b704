"""Tests of `training_examples/make_tiny_model.sh`'s stage control (the stages themselves are tested elsewhere)."""

import json
import os
import subprocess
import sys

import pytest


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
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, settings, message):
    """SAME_FROM, and the adversarial stage's rates and weight (a typo would otherwise fail only after the flow and
    distillation stages)."""
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
