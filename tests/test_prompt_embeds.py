"""Precomputed prompt states (`prompt_embeds` + `attention_mask`): same audio as text prompts, no text encoder needed."""

import gc

import numpy as np
import pytest
import torch

from diffusers_sa3 import StableAudio3InpaintPipeline, StableAudio3Pipeline
from utils import MEDIUM_BASE_CKPT, SMALL_CKPT


def _load(path, cls=StableAudio3Pipeline):
    pipe = cls.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def small_pipe():
    return _load(SMALL_CKPT)


@pytest.fixture(scope="module")
def medium_pipe():
    return _load(MEDIUM_BASE_CKPT)


def _generate(pipe, seed=0, **kwargs):
    call = {"duration": 0.6, "num_inference_steps": 2, "output_type": "pt"}
    call.update(kwargs)
    return pipe(generator=torch.Generator().manual_seed(seed), **call).audios


def test_embeds_give_the_audio_of_the_text_prompts(small_pipe):
    prompts = ["a crackling campfire", "rain on a tin roof"]
    embeds, mask = small_pipe.encode_prompt(prompts)
    assert embeds.dtype == torch.float32 and mask.shape == embeds.shape[:2] and not bool(mask.all())
    reference = _generate(small_pipe, prompt=prompts, num_waveforms_per_prompt=2)
    audio = _generate(small_pipe, prompt_embeds=embeds, attention_mask=mask, num_waveforms_per_prompt=2)
    assert torch.equal(audio, reference)
    # The mask matters: marking the padding as tokens changes the conditioning and the audio.
    unmasked = _generate(
        small_pipe, prompt_embeds=embeds, attention_mask=torch.ones_like(mask), num_waveforms_per_prompt=2
    )
    assert not torch.allclose(unmasked, reference)


def test_negative_embeds_give_the_audio_of_the_negative_text(medium_pipe):
    prompts = ["a crackling campfire", "rain on a tin roof"]
    kwargs = {"guidance_scale": 5.0, "duration": 0.5}
    reference = _generate(medium_pipe, prompt=prompts, negative_prompt="muffled", **kwargs)
    embeds, mask = medium_pipe.encode_prompt(prompts)
    negative, negative_mask = medium_pipe.encode_prompt("muffled")  # a batch of 1 serves every prompt
    audio = _generate(
        medium_pipe,
        prompt_embeds=embeds,
        attention_mask=mask,
        negative_prompt_embeds=negative,
        negative_attention_mask=negative_mask,
        **kwargs,
    )
    assert torch.equal(audio, reference)
    without_negative = _generate(medium_pipe, prompt=prompts, **kwargs)
    assert not torch.allclose(without_negative, reference)


def test_pipeline_without_text_encoder_generates_from_embeds(tmp_path):
    pipe = _load(SMALL_CKPT)
    embeds, mask = pipe.encode_prompt("a crackling campfire")
    reference = _generate(pipe, prompt="a crackling campfire")
    pipe.text_encoder = None  # e.g. to free its memory once the prompts are encoded
    gc.collect()
    assert torch.equal(_generate(pipe, prompt_embeds=embeds, attention_mask=mask), reference)
    with pytest.raises(ValueError, match="no text encoder.*pass `prompt_embeds`"):
        pipe("a crackling campfire", duration=0.5)
    with pytest.raises(ValueError, match="`encode_prompt` needs the text encoder"):
        pipe.encode_prompt("a crackling campfire")

    # It saves and loads without the encoder, and still gives the same audio.
    pipe.save_pretrained(tmp_path / "no_text_encoder")
    loaded = _load(str(tmp_path / "no_text_encoder"))
    assert loaded.text_encoder is None
    # Reloaded weights may differ in memory layout, which changes float rounding (~1e-6; see test_save_load_round_trip).
    audio = _generate(loaded, prompt_embeds=embeds, attention_mask=mask)
    torch.testing.assert_close(audio, reference, rtol=0, atol=1e-5)


def test_inpaint_pipeline_takes_embeds():
    pipe = _load(SMALL_CKPT, StableAudio3InpaintPipeline)
    clip = (0.3 * np.sin(2 * np.pi * 440 * np.arange(22050) / 44100)).astype(np.float32)
    call = {"audio": clip, "inpaint_regions": [(0.1, 0.3)], "num_inference_steps": 2, "output_type": "pt"}
    reference = pipe("a crackling campfire", generator=torch.Generator().manual_seed(0), **call).audios
    embeds, mask = pipe.encode_prompt(["a crackling campfire"])
    audio = pipe(prompt_embeds=embeds, attention_mask=mask, generator=torch.Generator().manual_seed(0), **call).audios
    assert torch.equal(audio, reference)


def _states(batch=1, tokens=4, width=None, pipe=None):
    width = width or pipe.transformer.config.cross_attention_dim
    return torch.randn(batch, tokens, width), torch.ones(batch, tokens, dtype=torch.long)


@pytest.mark.parametrize(
    "case, match",
    [
        ("both", "either `prompt`.*or `prompt_embeds`"),
        ("neither", "`prompt` is missing"),
        ("no_mask", "`attention_mask` is missing"),
        ("mask_alone", "pass it only together with `prompt_embeds`"),
        ("wrong_width", "has 5 channels but the transformer's `cross_attention_dim` is"),
        ("mask_shape", r"`attention_mask` must be a tensor of shape \(1, 4\).*got \(1, 3\)"),
        ("mask_values", "only 0 \\(padding\\) and 1"),
        ("not_a_tensor", "`prompt_embeds` must be a float tensor"),
        ("negative_batch", "`negative_prompt_embeds` has a batch of 2 but there are 3 prompts"),
        ("negative_mask", "`negative_attention_mask` is missing"),
    ],
)
def test_bad_embeds_raise_clear_errors(small_pipe, case, match):
    embeds, mask = _states(pipe=small_pipe)
    call = {"duration": 0.5, "num_inference_steps": 1}
    if case == "both":
        call.update(prompt="a", prompt_embeds=embeds, attention_mask=mask)
    elif case == "no_mask":
        call.update(prompt_embeds=embeds)
    elif case == "mask_alone":
        call.update(prompt="a", attention_mask=mask)
    elif case == "wrong_width":
        call.update(prompt_embeds=torch.randn(1, 4, 5), attention_mask=mask)
    elif case == "mask_shape":
        call.update(prompt_embeds=embeds, attention_mask=mask[:, :3])
    elif case == "mask_values":
        call.update(prompt_embeds=embeds, attention_mask=mask * 2)
    elif case == "not_a_tensor":
        call.update(prompt_embeds=embeds.tolist(), attention_mask=mask)
    elif case == "negative_batch":
        three, three_mask = _states(batch=3, pipe=small_pipe)
        two, two_mask = _states(batch=2, pipe=small_pipe)
        call.update(prompt_embeds=three, attention_mask=three_mask, negative_prompt_embeds=two)
        call.update(negative_attention_mask=two_mask)
    elif case == "negative_mask":
        call.update(prompt_embeds=embeds, attention_mask=mask, negative_prompt_embeds=embeds)
    with pytest.raises(ValueError, match=match):
        small_pipe(**call)
