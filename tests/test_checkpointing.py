"""Output-folder and resume rules of the training scripts (`diffusers_sa3.training.checkpointing`): nothing already
written is lost by a mistyped flag."""

import importlib.util
import os

import pytest

from diffusers_sa3.training.checkpointing import (
    check_output_dir,
    checkpoint_dirs,
    checkpoint_step,
    resolve_resume_checkpoint,
)
from utils import MEDIUM_BASE_CKPT


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_checkpoint_dirs_are_numerically_ordered(tmp_path):
    for name in ("checkpoint-100", "checkpoint-20", "checkpoint-3", "checkpoint-x", "logs"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-7").write_text("a file, not a checkpoint")
    assert checkpoint_dirs(str(tmp_path)) == ["checkpoint-3", "checkpoint-20", "checkpoint-100"]
    assert checkpoint_dirs(str(tmp_path / "missing")) == []
    assert checkpoint_step(str(tmp_path / "checkpoint-20") + os.sep) == 20
    with pytest.raises(ValueError, match="checkpoint-N"):
        checkpoint_step(str(tmp_path / "logs"))


def test_output_dir_rules(tmp_path):
    empty, used, resumable = tmp_path / "empty", tmp_path / "used", tmp_path / "resumable"
    empty.mkdir()
    used.mkdir()
    (used / "model_index.json").write_text("{}")
    (resumable / "checkpoint-5").mkdir(parents=True)
    # Allowed: a new or empty folder, overwrite, latest with a checkpoint.
    for output_dir, overwrite, resume in [
        (tmp_path / "new", False, None),
        (empty, False, None),
        (empty, False, "latest"),
        (used, True, None),
        (resumable, False, "latest"),
        (used, False, str(resumable / "checkpoint-5")),
    ]:
        check_output_dir(str(output_dir), overwrite, resume)
    # Refused, and the folder is untouched.
    with pytest.raises(ValueError, match="overwrite_output_dir"):
        check_output_dir(str(used), False, None)
    with pytest.raises(ValueError, match="holds no `checkpoint-N`"):
        check_output_dir(str(used), False, "latest")
    with pytest.raises(ValueError, match="is not a folder") as error:
        check_output_dir(str(tmp_path / "new"), False, str(resumable / "checkpoint-50"))
    assert "checkpoint-50" in str(error.value)
    assert os.listdir(used) == ["model_index.json"]

    assert resolve_resume_checkpoint(str(resumable), None) is None
    assert resolve_resume_checkpoint(str(tmp_path / "new"), "latest") is None
    assert resolve_resume_checkpoint(str(resumable), "latest") == str(resumable / "checkpoint-5")
    with pytest.raises(ValueError, match="is not a folder"):
        resolve_resume_checkpoint(str(resumable), str(resumable / "checkpoint-6"))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "training_examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT_ARGS = {
    "train_flow": ["--pretrained_model_name_or_path", MEDIUM_BASE_CKPT, "--train_data_dir", "AUDIO"],
    "train_distill": ["--pretrained_model_name_or_path", MEDIUM_BASE_CKPT, "--train_data_dir", "AUDIO"],
    "train_adversarial": [
        "--pretrained_model_name_or_path", MEDIUM_BASE_CKPT, "--discriminator_model_name_or_path", MEDIUM_BASE_CKPT,
        "--train_data_dir", "AUDIO", "--lambda_clap", "0",
    ],
    "train_autoencoder": ["--pretrained_model_name_or_path", MEDIUM_BASE_CKPT, "--train_data_dir", "AUDIO"],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SCRIPT_ARGS))
def test_every_script_refuses_to_clobber_a_finished_run(tmp_path, name):
    """A finished run's folder: neither a plain rerun, nor `latest` (no checkpoint left), nor a mistyped checkpoint
    path writes into it."""
    script = _load(name)
    (tmp_path / "model_index.json").write_text('{"previous": "run"}')
    for extra, expected in [
        ([], "overwrite_output_dir"),
        (["--resume_from_checkpoint", "latest"], "holds no `checkpoint-N`"),
        (["--resume_from_checkpoint", str(tmp_path / "checkpoint-1000")], "is not a folder"),
    ]:
        args = script.parse_args(SCRIPT_ARGS[name] + ["--output_dir", str(tmp_path)] + extra)
        with pytest.raises(ValueError, match=expected):
            script.main(args)
    assert os.listdir(tmp_path) == ["model_index.json"]
    assert (tmp_path / "model_index.json").read_text() == '{"previous": "run"}'
