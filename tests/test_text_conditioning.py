"""Text and duration conditioning: the bundled T5Gemma + `StableAudio3Transformer.encode_conditioning` against the
official conditioner outputs (`reference/text_cond_<ckpt>.safetensors`).

Measured (fp32 comparisons, 2-core CPU, transformers 5.24): token ids and masks identical; `t5_last_hidden_state`
bit-identical with the encoder in its checkpoint dtype (bf16); `prompt_embeds`, `cross_attn_cond`, `global_cond`
errors 0.0 for small and medium_base.
"""

import json
import os

import pytest
import torch

from diffusers_sa3.conversion.convert_text_encoder import load_official_text_encoder
from diffusers_sa3.models.transformer_stable_audio3 import StableAudio3Transformer
from utils import MEDIUM_BASE_CKPT, SMALL_CKPT, assert_parity, load_reference


CHECKPOINTS = {"small": SMALL_CKPT, "medium_base": MEDIUM_BASE_CKPT}


def _max_length(checkpoint_dir: str) -> int:
    with open(os.path.join(checkpoint_dir, "model_config.json")) as f:
        configs = json.load(f)["model"]["conditioning"]["configs"]
    return next(c for c in configs if c["id"] == "prompt")["config"]["max_length"]


@pytest.fixture(scope="module")
def text_encoder():
    return load_official_text_encoder(SMALL_CKPT)


@pytest.fixture(scope="module")
def encoded(text_encoder):
    tokenizer, encoder = text_encoder
    _, info = load_reference("text_cond_small")
    tokens = tokenizer(
        info["prompts"],
        truncation=True,
        max_length=_max_length(SMALL_CKPT),
        padding="max_length",
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden_states = encoder(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).last_hidden_state
    return tokens, hidden_states, info


def test_text_encoder_loads_like_the_official_conditioner(text_encoder):
    _, encoder = text_encoder
    assert encoder.dtype == torch.bfloat16  # checkpoint dtype, as transformers 5 `dtype="auto"`
    assert encoder.config.is_encoder_decoder is False
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    with pytest.raises(ValueError, match="`folder`"):
        load_official_text_encoder(os.path.dirname(SMALL_CKPT))


def test_tokens_and_encoder_states(encoded):
    tokens, hidden_states, _ = encoded
    ref, _ = load_reference("text_cond_small")
    assert torch.equal(tokens["input_ids"], ref["input_ids"])
    assert torch.equal(tokens["attention_mask"].bool(), ref["attention_mask"])
    assert hidden_states.dtype == torch.bfloat16
    assert_parity(hidden_states.float(), ref["t5_last_hidden_state"], "t5_last_hidden_state")
    # The fp32 encoder is measurably different (README §6.5): the dtype matters.
    assert not torch.equal(ref["diag_t5_fp32_last_hidden_state"], ref["t5_last_hidden_state"])


@pytest.mark.parametrize("checkpoint", list(CHECKPOINTS))
def test_encode_conditioning_matches_official_conditioner(encoded, checkpoint):
    tokens, hidden_states, info = encoded
    ref, _ = load_reference(f"text_cond_{checkpoint}")
    model = StableAudio3Transformer.from_single_file(CHECKPOINTS[checkpoint])
    with torch.no_grad():
        context, global_condition = model.encode_conditioning(
            hidden_states, tokens["attention_mask"], torch.tensor(info["seconds_total"])
        )
        zeros_context, _ = model.encode_conditioning(
            hidden_states, tokens["attention_mask"], info["seconds_total"], prompt_padding="zeros"
        )
    num_tokens = ref["prompt_embeds"].shape[1]
    assert context.dtype == torch.float32
    assert_parity(context[:, :num_tokens], ref["prompt_embeds"], f"{checkpoint} prompt_embeds")
    assert_parity(context[:, num_tokens:], ref["seconds_embeds"], f"{checkpoint} seconds_embeds")
    assert_parity(context, ref["cross_attn_cond"], f"{checkpoint} cross_attn_cond")
    assert_parity(global_condition, ref["global_cond"], f"{checkpoint} global_cond")
    # Negative-prompt branch of CFG: masked prompt tokens become 0, the duration token stays.
    expected = torch.where(ref["cross_attn_mask"].bool()[:, :, None], ref["cross_attn_cond"], 0.0)
    assert_parity(zeros_context, expected, f"{checkpoint} zero-padded context")


@pytest.mark.parametrize("change", ["drop_encoder_key", "extra_key", "wrong_shape"])
def test_truncated_or_wrong_text_encoder_is_an_error(tmp_path, change):
    """The bundled T5Gemma loads strictly: only its decoder tensors may go unused."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "t5gemma-b-b-ul2"
    shutil.copytree(os.path.join(SMALL_CKPT, "t5gemma-b-b-ul2"), folder)
    tensors = load_file(folder / "model.safetensors")
    key = "model.encoder.layers.0.self_attn.q_proj.weight"
    assert key in tensors
    if change == "drop_encoder_key":
        del tensors[key]
        expected = "missing"
    elif change == "extra_key":
        tensors["model.encoder.extra.weight"] = torch.zeros(2)
        expected = "model.encoder.extra.weight"
    else:
        tensors[key] = torch.zeros(3, 3, dtype=tensors[key].dtype)
        expected = "mis-shaped"
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=expected) as error:
        load_official_text_encoder(tmp_path)
    assert str(folder) in str(error.value)
