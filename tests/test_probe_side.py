"""Tests of `training_examples/probe_side.py`: its training codes, and a short in-process run on a tiny pipeline."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from diffusers_sa3.training.synthetic_sounds import SIDES, write_synthetic_dataset
from diffusers_sa3.training.tiny_components import build_initial_pipeline


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "training_examples", "probe_side.py")
PRE_ENCODE = os.path.join(ROOT, "training_examples", "pre_encode.py")


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = load_module(SCRIPT, "probe_side")


def _balance_db(latents):
    return 10 * torch.log10(latents[0::2].pow(2).mean() / latents[1::2].pow(2).mean()).item()


def test_side_codes():
    generator = torch.Generator().manual_seed(0)
    latents = 0.05 * torch.randn(8, 400, generator=torch.Generator().manual_seed(1))
    assert probe.side_code(latents, "left", "real", generator) is latents
    unit = probe.side_code(latents, "left", "realnorm", generator)
    torch.testing.assert_close(unit, latents / latents.pow(2).mean().sqrt())
    const = probe.side_code(latents, "right", "const", generator)
    assert const[0::2].eq(0.25).all() and const[1::2].eq(1.0).all()
    for side, expected in (("left", 12.04), ("right", -12.04), ("centre", 0.0)):
        gauss = probe.side_code(latents, side, "gauss", generator)
        assert gauss.mean().abs() < 0.1 and abs(_balance_db(gauss) - expected) < 1.0, side
        level = probe.side_code(latents, side, "gausslevel", generator)
        assert abs(_balance_db(level) - expected) < 1.0
        torch.testing.assert_close(level.pow(2).mean().sqrt(), latents.pow(2).mean().sqrt())
    # Fresh noise per call.
    assert not torch.equal(probe.side_code(latents, "left", "gauss", generator), gauss)
    with pytest.raises(ValueError, match="`code`.*'noise'"):
        probe.side_code(latents, "left", "noise", generator)
    with pytest.raises(ValueError, match="`side`.*'up'"):
        probe.side_code(latents, "up", "const", generator)


def test_flags_are_sorted_and_documented():
    with open(SCRIPT) as f:
        source = f.read()
    flags = re.findall(r'add_argument\(\s*"(--[a-z0-9_]+)"', source)
    assert flags == sorted(flags)
    help_text = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True).stdout
    assert all(flag in help_text for flag in flags)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    data = root / "data"
    write_synthetic_dataset(str(data), 9, seed=0)
    rows = [json.loads(line) for line in open(data / "metadata.jsonl")]
    assert {row["side"] for row in rows} == set(SIDES)
    options = {"latent_channels": 32, "same_heads": 4, "same_layers": 1, "same_patch_size": 256}
    pipe = build_initial_pipeline(str(data), same_init="pca", same_resampling_stride=1, dit_layers=1, **options)
    pipe.save_pretrained(str(root / "init"))
    pre_encode = load_module(PRE_ENCODE, "pre_encode")
    pre_encode.main(
        pre_encode.parse_args(
            ["--pretrained_model_name_or_path", str(root / "init"), "--train_data_dir", str(data),
             "--output_dir", str(root / "latents"), "--encode_text", "--max_seconds", "1.5"]
        )
    )  # fmt: skip
    return root, rows


def _args(root, *extra):
    return probe.parse_args(
        ["--pretrained_model_name_or_path", str(root / "init"), "--latents_dir", str(root / "latents"),
         "--metadata", str(root / "data" / "metadata.jsonl"), "--max_train_steps", "2", "--sample_every", "1",
         "--sampling_steps", "2", "--train_batch_size", "2", "--prompts_per_side", "1", "--padding_seconds", "0.5",
         *extra]
    )  # fmt: skip


def test_probe_runs_scores_and_keeps_files(workspace):
    """Three sampling rounds (steps 0, 1, 2), one prompt per side, each scored like `evaluate.py`; the JSON is
    written once and never overwritten; wrong inputs are errors that name the argument."""
    root, rows = workspace
    output = root / "rounds.json"
    rounds = probe.main(_args(root, "--code", "const", "--output_json", str(output)))
    assert [r["step"] for r in rounds] == [0, 1, 2]
    for r in rounds:
        assert r["targets"] == list(SIDES)
        assert set(r["sides"]) <= set(SIDES) and len(r["balance_db"]) == 3
        expected = sum(side == target for side, target in zip(r["sides"], r["targets"])) / 3
        assert r["side_accuracy"] == expected
    assert json.load(open(output))["rounds"] == json.loads(json.dumps(rounds))
    before = output.read_bytes()
    with pytest.raises(SystemExit):
        _args(root, "--output_json", str(output))
    assert output.read_bytes() == before
    with pytest.raises(ValueError, match="--prompts_per_side"):
        probe.main(_args(root, "--prompts_per_side", "9"))
    bad = root / "bad.jsonl"
    bad.write_text("\n".join(json.dumps({k: v for k, v in row.items() if k != "side"}) for row in rows))
    with pytest.raises(ValueError, match="--metadata"):
        probe.main(_args(root, "--metadata", str(bad)))
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="--metadata.*line 1 is not JSON"):
        probe.main(_args(root, "--metadata", str(bad)))
