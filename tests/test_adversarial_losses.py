"""Stage-3 (ARC) pieces checked against values computed by hand: the relativistic and contrastive losses, the CLAP
loss, the derangement of prompts, the differentiable resampler and CLAP log-mel, and the discriminator."""

import math

import numpy as np
import pytest
import torch
from transformers import ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapTextConfig

from diffusers_sa3 import StableAudio3Transformer
from diffusers_sa3.training.adversarial import (
    ClapLogMel,
    SincResampler,
    StableAudio3Discriminator,
    clap_alignment_loss,
    contrastive_discriminator_loss,
    relativistic_discriminator_loss,
    relativistic_generator_loss,
    shuffled_prompt_indices,
)
from utils import MEDIUM_BASE_CKPT


def softplus(x):
    return math.log1p(math.exp(x))


REAL = [0.5, -1.0, 2.0]
FAKE = [1.5, -0.25, -3.0]


def test_relativistic_losses_by_hand():
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)
    expected_d = sum(softplus(-(r - f)) for r, f in zip(REAL, FAKE)) / 3
    expected_g = sum(softplus(-(f - r)) for r, f in zip(REAL, FAKE)) / 3
    assert relativistic_discriminator_loss(real, fake).item() == pytest.approx(expected_d, rel=1e-6)
    assert relativistic_generator_loss(real, fake).item() == pytest.approx(expected_g, rel=1e-6)
    # Equal logits give log 2 for both sides; a confident discriminator has a small loss, the generator a large one.
    assert relativistic_discriminator_loss(real, real).item() == pytest.approx(math.log(2), rel=1e-6)
    assert (
        relativistic_discriminator_loss(fake + 10, fake).item() < 1e-4 < relativistic_generator_loss(fake + 10, fake)
    )
    with pytest.raises(ValueError, match="real_logits"):
        relativistic_discriminator_loss(real, fake[:2])


def test_contrastive_loss_by_hand():
    paired, shuffled = torch.tensor(REAL), torch.tensor(FAKE)
    terms = [softplus(-(p - s)) for p, s in zip(REAL, FAKE)]
    assert contrastive_discriminator_loss(paired, shuffled).item() == pytest.approx(sum(terms) / 3, rel=1e-6)
    valid = torch.tensor([True, False, True])
    expected = (terms[0] + terms[2]) / 2
    assert contrastive_discriminator_loss(paired, shuffled, valid).item() == pytest.approx(expected, rel=1e-6)
    assert contrastive_discriminator_loss(paired, shuffled, torch.zeros(3, dtype=torch.bool)).item() == 0.0


def test_shuffled_prompts_are_a_derangement():
    prompts = ["a", "b", "c", "a", "d"]
    for seed in range(20):
        index, valid = shuffled_prompt_indices(prompts, torch.Generator().manual_seed(seed))
        assert sorted(index.tolist()) == list(range(5))
        assert all(int(j) != i for i, j in enumerate(index))
        assert valid.tolist() == [prompts[i] != prompts[int(j)] for i, j in enumerate(index)]
    with pytest.raises(ValueError, match="at least 2"):
        shuffled_prompt_indices(["only one"])


def test_clap_alignment_loss_by_hand():
    audio = np.array([[1.0, 0.0, 1.0], [0.2, -0.5, 0.1]])
    text = np.array([[1.0, 1.0, 0.0], [0.4, -1.0, 0.2]])
    cos = (audio * text).sum(1) / (np.linalg.norm(audio, axis=1) * np.linalg.norm(text, axis=1))
    expected = float(np.mean(1 - cos))
    loss = clap_alignment_loss(torch.tensor(audio, dtype=torch.float32), torch.tensor(text, dtype=torch.float32))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx((1 - 0.5) / 2, abs=1e-6)  # row 0: cos 0.5; row 1: cos 1


def test_sinc_resampler_matches_the_band_limited_signal():
    resampler = SincResampler(44100, 48000)
    assert (resampler.orig, resampler.new) == (147, 160)
    t_in = torch.arange(44100, dtype=torch.float64) / 44100
    frequencies, amplitudes = (1000.0, 9000.0, 17000.0), (0.5, 0.3, 0.1)
    signal = sum(a * torch.sin(2 * math.pi * f * t_in) for f, a in zip(frequencies, amplitudes)).float()
    signal.requires_grad_(True)
    out = resampler(signal)
    assert out.shape == (48000,)
    t_out = torch.arange(48000, dtype=torch.float64) / 48000
    exact = sum(a * torch.sin(2 * math.pi * f * t_out) for f, a in zip(frequencies, amplitudes))
    error = (out.double() - exact)[1000:-1000].abs().max().item()  # away from the zero-padded edges
    assert error < 2e-3, f"resampling error {error:.2e}"
    out.square().sum().backward()
    assert signal.grad is not None and signal.grad.abs().sum() > 0
    # Batched input, odd length.
    assert resampler(torch.randn(2, 3, 1001)).shape == (2, 3, math.ceil(1001 * 160 / 147))


@pytest.mark.parametrize("truncation", ["fusion", "rand_trunc"])
@pytest.mark.parametrize("seconds", [0.3, 1.5])
def test_clap_log_mel_matches_the_feature_extractor(truncation, seconds):
    extractor = ClapFeatureExtractor(feature_size=16, max_length_s=1, truncation=truncation, padding="repeatpad")
    features = ClapLogMel(extractor)
    waveform = np.random.default_rng(0).standard_normal(int(48000 * seconds)).astype(np.float32) * 0.3
    # Longer clips: ours takes the first max_length_s seconds, so compare with the extractor on that crop.
    reference_input = waveform[: extractor.nb_max_samples]
    reference = extractor(reference_input, sampling_rate=48000, return_tensors="pt")
    input_features, is_longer = features([torch.from_numpy(waveform).requires_grad_(True)])
    assert input_features.shape == reference["input_features"].shape
    error = (input_features - reference["input_features"]).abs().max().item()
    assert error < 1e-3, f"log-mel differs from ClapFeatureExtractor by {error:.2e} dB"
    assert not bool(is_longer.any())


def test_clap_log_mel_is_differentiable():
    extractor = ClapFeatureExtractor(feature_size=16, max_length_s=1, truncation="rand_trunc")
    waveform = torch.randn(20000, requires_grad=True)
    input_features, _ = ClapLogMel(extractor)([waveform])
    input_features.mean().backward()
    assert waveform.grad.abs().sum() > 0


def tiny_clap():
    text = ClapTextConfig(
        vocab_size=256, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64, projection_dim=16, pad_token_id=0,
    )  # fmt: skip
    audio = ClapAudioConfig(
        window_size=4, num_mel_bins=16, spec_size=64, patch_size=4, patch_stride=(4, 4), num_classes=4, hidden_size=32,
        projection_dim=16, depths=[1, 1], num_attention_heads=[1, 2], enable_fusion=False, patch_embeds_hidden_size=16,
    )  # fmt: skip
    torch.manual_seed(0)
    return ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)).eval()


def test_clap_audio_embedding_through_our_features_matches_the_extractor_path():
    model = tiny_clap()
    extractor = ClapFeatureExtractor(feature_size=16, max_length_s=1, truncation="rand_trunc")
    waveform = np.random.default_rng(1).standard_normal(30000).astype(np.float32) * 0.3
    reference = model.get_audio_features(**extractor(waveform, sampling_rate=48000, return_tensors="pt"))
    input_features, is_longer = ClapLogMel(extractor)([torch.from_numpy(waveform)])
    ours = model.get_audio_features(input_features=input_features, is_longer=is_longer)
    torch.testing.assert_close(ours.pooler_output, reference.pooler_output, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def discriminator():
    torch.manual_seed(0)
    return StableAudio3Discriminator(StableAudio3Transformer.from_single_file(MEDIUM_BASE_CKPT))


def test_discriminator_logits(discriminator):
    torch.manual_seed(1)
    batch, frames = 3, 7
    latents, context, global_condition = torch.randn(batch, 32, frames), torch.randn(batch, 33, 64), torch.randn(3, 64)
    timestep = torch.rand(batch)
    logits = discriminator(latents, timestep, context, global_condition)
    assert logits.shape == (batch,) and logits.dtype == torch.float32
    assert torch.count_nonzero(logits) == 0  # zero-initialised last layer
    torch.nn.init.normal_(discriminator.head[-1].weight)
    # Variable length: a sample in a padded batch gives its logit alone, whatever the padding holds.
    mask = torch.ones(batch, frames, dtype=torch.bool)
    mask[1, 4:] = False
    padded = latents.clone()
    padded[1, :, 4:] = 100.0
    batched = discriminator(padded, timestep, context, global_condition, attention_mask=mask)
    alone = discriminator(latents[1:2, :, :4], timestep[1:2], context[1:2], global_condition[1:2])
    torch.testing.assert_close(batched[1:2], alone, atol=1e-5, rtol=1e-5)
    # Text conditioning matters, and gradients reach the trunk and the input.
    shuffled = discriminator(latents, timestep, context.flip(0), global_condition)
    assert not torch.allclose(shuffled, discriminator(latents, timestep, context, global_condition))
    latents.requires_grad_(True)
    discriminator(latents, timestep, context, global_condition).sum().backward()
    assert latents.grad.abs().sum() > 0
    assert all(p.grad is not None for p in discriminator.transformer.transformer_blocks[0].parameters())
