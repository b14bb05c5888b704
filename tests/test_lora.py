"""LoRA adapters of the Stable Audio 3 pipelines (`StableAudio3LoraLoaderMixin` + the transformer's
`PeftAdapterMixin`): save, load, runtime strength, several adapters, fusing, and clear errors."""

import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from diffusers_sa3 import StableAudio3InpaintPipeline, StableAudio3Pipeline, StableAudio3Transformer
from utils import MEDIUM_BASE_CKPT


TARGETS = ["to_qkv", "to_q", "to_kv", "to_out", "ff.proj_in", "ff.proj_out"]


@pytest.fixture(scope="module")
def pipe():
    return StableAudio3Pipeline.from_pretrained(MEDIUM_BASE_CKPT)


def _write_adapter(transformer_config, path, seed, rank=4):
    """A LoRA with random (non-zero) A and B, written as train_flow.py writes it."""
    torch.manual_seed(seed)
    transformer = StableAudio3Transformer.from_config(transformer_config)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=False)
    transformer.add_adapter(config)
    metadata = config.to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])
    StableAudio3Pipeline.save_lora_weights(
        str(path),
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=metadata,
    )
    return path / "pytorch_lora_weights.safetensors"


def _forward(transformer):
    generator = torch.Generator().manual_seed(0)
    hidden_states = torch.randn(2, 32, 12, generator=generator)
    text = torch.randn(2, 32, 64, generator=generator)
    with torch.no_grad():
        return transformer(
            hidden_states, torch.tensor([0.3, 0.8]), text, torch.ones(2, 32), torch.tensor([1.0, 2.0])
        ).sample


def test_load_strength_and_combination(pipe, tmp_path):
    transformer = pipe.transformer
    base = _forward(transformer)
    file_a = _write_adapter(transformer.config, tmp_path / "a", seed=1)
    file_b = _write_adapter(transformer.config, tmp_path / "b", seed=2)
    state_dict = load_file(str(file_a))
    assert state_dict and all(key.startswith("transformer.") and ".lora_" in key for key in state_dict)

    pipe.load_lora_weights(str(tmp_path / "a"), adapter_name="a")  # a folder
    with_a = _forward(transformer)
    assert (with_a - base).abs().max() > 1e-3
    pipe.load_lora_weights(str(file_b), adapter_name="b")  # a file
    assert pipe.get_list_adapters() == {"transformer": ["a", "b"]}

    pipe.set_adapters(["a", "b"], adapter_weights=[0.0, 0.0])
    torch.testing.assert_close(_forward(transformer), base, rtol=0, atol=0)
    pipe.set_adapters(["a", "b"], adapter_weights=[1.0, 0.0])
    torch.testing.assert_close(_forward(transformer), with_a, rtol=0, atol=0)
    pipe.set_adapters("b")
    with_b = _forward(transformer)
    pipe.set_adapters(["a", "b"], adapter_weights=[1.0, 1.0])
    both = _forward(transformer)
    assert (both - with_a).abs().max() > 1e-4 and (both - with_b).abs().max() > 1e-4

    # Fusing the active adapters gives the same output; unfusing and deleting brings the base back.
    pipe.set_adapters(["a"], adapter_weights=[0.5])
    half = _forward(transformer)
    pipe.fuse_lora(lora_scale=1.0)
    torch.testing.assert_close(_forward(transformer), half, rtol=1e-5, atol=1e-5)
    pipe.unfuse_lora()
    pipe.delete_adapters(["a", "b"])
    # (unfusing subtracts the fp32 delta again: round-off of ~1e-6 on outputs of ~1)
    torch.testing.assert_close(_forward(transformer), base, rtol=1e-5, atol=1e-5)


def test_inpaint_pipeline_loads_the_same_file(tmp_path):
    inpaint = StableAudio3InpaintPipeline.from_pretrained(MEDIUM_BASE_CKPT)
    base = _forward(inpaint.transformer)
    inpaint.load_lora_weights(str(_write_adapter(inpaint.transformer.config, tmp_path, seed=3)), adapter_name="x")
    assert (_forward(inpaint.transformer) - base).abs().max() > 1e-3


def test_bad_lora_files_raise(pipe, tmp_path):
    save_file({"transformer.proj_in.weight": torch.zeros(2, 2)}, str(tmp_path / "not_lora.safetensors"))
    with pytest.raises(ValueError, match="LoRA"):
        pipe.load_lora_weights(str(tmp_path / "not_lora.safetensors"), adapter_name="bad")
    with pytest.raises(ValueError, match="transformer_lora_layers"):
        StableAudio3Pipeline.save_lora_weights(str(tmp_path), transformer_lora_layers={})
