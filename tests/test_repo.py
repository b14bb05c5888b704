"""Repository contracts: the README's commands are what CI runs; our folders never load through upstream's class."""

import os
import re

import pytest

from utils import SMALL_CKPT


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_readme_starts_with_setup_and_test_commands_that_ci_runs():
    setup, test = _readme_commands()[:2]
    assert "pip install" in setup
    assert "diffusers-sa3 generate" in setup  # the main job (tests/test_sa3_tiny.py runs it)
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert test in ci.splitlines(), f"README's test command {test!r} must appear verbatim as a line of .ci/run"


def test_diffusion_pipeline_from_pretrained_does_not_give_our_class(tmp_path):
    """Upstream owns the class name `StableAudio3Pipeline`: `DiffusionPipeline.from_pretrained` resolves it to
    upstream's port, which is why users must load through `diffusers_sa3`."""
    import diffusers
    from diffusers import DiffusionPipeline

    from diffusers_sa3 import StableAudio3Pipeline
    from diffusers_sa3.cli import main

    main(["convert", SMALL_CKPT, str(tmp_path / "pipe")])
    ours = StableAudio3Pipeline.from_pretrained(tmp_path / "pipe")
    assert type(ours) is StableAudio3Pipeline
    try:
        other = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    except Exception:  # upstream's class cannot take our components: that is the point
        return
    assert type(other) is diffusers.StableAudio3Pipeline and type(other) is not StableAudio3Pipeline


@pytest.mark.parametrize("name", ["StableAudio3Pipeline", "StableAudio3InpaintPipeline", "SAMEAutoencoderModel"])
def test_public_names_resolve(name):
    import diffusers_sa3

    assert getattr(diffusers_sa3, name).__module__.startswith("diffusers_sa3.")
