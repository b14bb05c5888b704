"""The config-only `pipelines/<variant>/` folders are exactly what the generator (and so the converter) writes."""

import filecmp
import json
import os
import subprocess
import sys

import pytest
import torch

from diffusers_sa3 import SAMEAutoencoderModel, StableAudio3Transformer
from diffusers_sa3.conversion.official_configs import VARIANTS


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Official trainable parameter counts (shared/docs/sa3-reference.md §1.4); our DiT also owns the conditioner's
# padding embedding (768) and seconds Linear (197,376).
DIT_PARAMS = {"small": 459_130_880 + 768 + 197_376, "medium": 1_453_170_176 + 768 + 197_376}
SAME_PARAMS = {"small": 108_244_529, "medium": 852_127_073}


def test_committed_folders_are_up_to_date(tmp_path):
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "utils", "make_pipeline_configs.py"), "--output_dir", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for variant in VARIANTS:
        committed = os.path.join(ROOT, "pipelines", variant)
        for sub in ["", "vae", "transformer", "scheduler"]:
            cmp = filecmp.dircmp(os.path.join(committed, sub), os.path.join(tmp_path, variant, sub))
            assert not (cmp.diff_files or cmp.left_only or cmp.right_only), (
                f"pipelines/{variant}/{sub} is stale ({cmp.diff_files + cmp.left_only + cmp.right_only}); run "
                "`python utils/make_pipeline_configs.py`"
            )


@pytest.mark.parametrize("variant", VARIANTS)
def test_folder_builds_the_official_architecture(variant):
    folder = os.path.join(ROOT, "pipelines", variant)
    size = "small" if variant.startswith("small") else "medium"
    with torch.device("meta"):
        vae = SAMEAutoencoderModel.from_config(SAMEAutoencoderModel.load_config(os.path.join(folder, "vae")))
        dit = StableAudio3Transformer.from_config(
            StableAudio3Transformer.load_config(os.path.join(folder, "transformer"))
        )
    assert sum(p.numel() for p in vae.parameters()) == SAME_PARAMS[size]
    assert sum(p.numel() for p in dit.parameters()) == DIT_PARAMS[size]
    index = json.load(open(os.path.join(folder, "model_index.json")))
    expected = "PingPongAdversarialScheduler" if not variant.endswith("-base") else "FlowMatchOTScheduler"
    assert index["scheduler"][1] == expected
    assert index["max_text_length"] == 256
