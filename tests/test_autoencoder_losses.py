"""Unit tests of the SAME training losses: each against an independent computation on small tensors (numpy or by
hand), and each shown to be minimisable."""

import math

import numpy as np
import pytest
import torch

from diffusers_sa3.training.autoencoder_losses import (
    LatentDenoiser,
    SAMEAuxiliaryHeads,
    augment_audio,
    chroma_targets,
    discriminator_loss,
    feature_matching_loss,
    flow_matching_alignment_loss,
    frame_level_loss,
    frame_regression_loss,
    generator_adversarial_loss,
    info_nce_loss,
    interaural_level_difference,
    mel_filterbank,
    multi_resolution_mel_loss,
    multi_resolution_stft_loss,
    stft_magnitude,
    waveform_l1_loss,
    with_mid_side,
)
from diffusers_sa3.training.discriminators import MultiResolutionSpectrogramDiscriminator


def numpy_stft_magnitude(x: np.ndarray, n_fft: int, eps: float = 1e-7) -> np.ndarray:
    """Independent STFT: zero-pad n_fft/2 on both sides, frames every n_fft/4, periodic Hann, |rfft|."""
    hop = n_fft // 4
    padded = np.pad(x, n_fft // 2)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = [padded[i : i + n_fft] * window for i in range(0, len(padded) - n_fft + 1, hop)]
    power = np.abs(np.fft.rfft(np.stack(frames), axis=-1)) ** 2
    return np.sqrt(np.maximum(power, eps)).T  # (freq, frames)


def numpy_mid_side(audio: np.ndarray) -> np.ndarray:
    # audio (B, 2, N) -> (B, 4, N) written out channel by channel
    left, right = audio[:, 0], audio[:, 1]
    return np.stack([left, right, 0.5 * left + 0.5 * right, 0.5 * left - 0.5 * right], axis=1)


def random_stereo(seed: int, samples: int = 96, batch: int = 2) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((batch, 2, samples)).astype(np.float32))


def test_with_mid_side_by_hand():
    audio = torch.tensor([[[1.0, 2.0], [3.0, -2.0]]])
    expected = torch.tensor([[[1.0, 2.0], [3.0, -2.0], [2.0, 0.0], [-1.0, 2.0]]])
    torch.testing.assert_close(with_mid_side(audio), expected)
    with pytest.raises(ValueError, match="stereo"):
        with_mid_side(torch.zeros(1, 1, 4))


def test_stft_magnitude_matches_numpy():
    audio = random_stereo(0, samples=50, batch=1)
    ours = stft_magnitude(audio, 16)
    for channel in range(2):
        reference = numpy_stft_magnitude(audio[0, channel].double().numpy(), 16)
        np.testing.assert_allclose(ours[0, channel].numpy(), reference, rtol=1e-5, atol=1e-5)


def test_multi_resolution_stft_loss_matches_numpy_and_is_zero_for_perfect_reconstruction():
    target, prediction = random_stereo(1), random_stereo(2)
    sizes = (16, 8)
    expected = []
    t_all, p_all = numpy_mid_side(target.double().numpy()), numpy_mid_side(prediction.double().numpy())
    for n_fft in sizes:
        t = np.stack([[numpy_stft_magnitude(c, n_fft) for c in item] for item in t_all])
        p = np.stack([[numpy_stft_magnitude(c, n_fft) for c in item] for item in p_all])
        convergence = np.sqrt(((t - p) ** 2).sum()) / np.sqrt((t**2).sum())
        expected.append(convergence + np.abs(np.log(t) - np.log(p)).mean())
    loss = multi_resolution_stft_loss(prediction, target, sizes)
    assert abs(loss.item() - np.mean(expected)) < 1e-5 * np.mean(expected)
    assert multi_resolution_stft_loss(target, target, sizes).item() == 0.0
    # Without mid/side only the two input channels count.
    no_ms = multi_resolution_stft_loss(prediction, target, sizes, use_mid_side=False)
    assert abs(no_ms.item() - loss.item()) > 1e-3


def _frame_levels_numpy(audio, frame, hop, floor_db):
    samples = audio.shape[-1]
    padding = (-(samples - frame) % hop) if samples > frame else frame - samples
    padded = np.pad(audio, [(0, 0), (0, 0), (0, padding)])
    starts = range(0, padded.shape[-1] - frame + 1, hop)
    power = np.stack([np.mean(padded[..., s : s + frame] ** 2, axis=-1) for s in starts], axis=-1)
    return 10 * np.log10(np.maximum(power, 10 ** (floor_db / 10)))


def test_frame_level_loss_matches_numpy_and_measures_gain_and_balance():
    rng = np.random.default_rng(0)
    target = rng.standard_normal((2, 2, 5000)).astype(np.float32) * 0.1
    target[1, :, 3000:] = 0.0  # a silent tail
    prediction = (target * rng.uniform(0.2, 1.5, size=(2, 2, 1))).astype(np.float32)
    prediction[0, 1, :1000] += 0.05
    expected = (
        np.mean(np.abs(_frame_levels_numpy(prediction, 1024, 256, -60) - _frame_levels_numpy(target, 1024, 256, -60)))
        / 20
    )
    loss = frame_level_loss(torch.from_numpy(prediction), torch.from_numpy(target), 1024, 256)
    assert abs(float(loss) - expected) < 1e-5

    x = torch.from_numpy(target)
    assert float(frame_level_loss(x, x)) == 0.0
    # A uniform gain of 1/2 is 6.02 dB everywhere the clip sounds (the silent tail stays at the floor for both).
    sounding = torch.randn(1, 2, 8192) * 0.1
    assert abs(float(frame_level_loss(sounding / 2, sounding)) - 20 * math.log10(2) / 20) < 1e-4
    # Swapping the channels of a panned clip costs its level difference; a mono copy costs half of it.
    panned = torch.cat([sounding[:, :1], sounding[:, :1] / 4], dim=1)
    swapped = panned.flip(1)
    assert abs(float(frame_level_loss(swapped, panned)) - 20 * math.log10(4) / 20) < 1e-3
    mono = panned.mean(1, keepdim=True).expand_as(panned)
    assert 0.2 < float(frame_level_loss(mono, panned)) < 0.4
    # Both silent: no loss and no gradient.
    silence = torch.zeros(1, 2, 4096, requires_grad=True)
    frame_level_loss(silence * 1.0, torch.zeros(1, 2, 4096)).backward()
    assert float(silence.grad.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        frame_level_loss(x, x[..., :100])


def test_mel_filterbank_by_hand():
    # sr 16000, n_fft 8 -> bins at 0, 2000, 4000, 6000, 8000 Hz; 2 mel filters between 0 and 8000 Hz.
    filters = mel_filterbank(16000, 8, 2).double().numpy()
    top = 2595 * math.log10(1 + 8000 / 700)
    edges_hz = [700 * (10 ** (m / 2595) - 1) for m in (0.0, top / 3, 2 * top / 3, top)]
    bins = [0.0, 2000.0, 4000.0, 6000.0, 8000.0]
    for m in range(2):
        low, center, high = edges_hz[m : m + 3]
        for k, f in enumerate(bins):
            if low <= f <= center:
                value = (f - low) / (center - low)
            elif center < f <= high:
                value = (high - f) / (high - center)
            else:
                value = 0.0
            assert abs(filters[m, k] - value) < 1e-6, (m, k)


def test_multi_resolution_mel_loss_matches_numpy_and_is_zero_for_perfect_reconstruction():
    target, prediction = random_stereo(3), random_stereo(4)
    fft_sizes, n_mels = (16, 8), (4, 2)
    t_all, p_all = numpy_mid_side(target.double().numpy()), numpy_mid_side(prediction.double().numpy())
    expected = []
    for n_fft, mels in zip(fft_sizes, n_mels):
        filters = mel_filterbank(44100, n_fft, mels).double().numpy()
        t = np.stack([[filters @ numpy_stft_magnitude(c, n_fft) for c in item] for item in t_all])
        p = np.stack([[filters @ numpy_stft_magnitude(c, n_fft) for c in item] for item in p_all])
        expected.append(np.abs(np.log10(np.maximum(t, 1e-5)) - np.log10(np.maximum(p, 1e-5))).mean())
    loss = multi_resolution_mel_loss(prediction, target, 44100, fft_sizes, n_mels)
    assert abs(loss.item() - np.mean(expected)) < 1e-5 * np.mean(expected)
    assert multi_resolution_mel_loss(target, target, 44100, fft_sizes, n_mels).item() == 0.0
    with pytest.raises(ValueError, match="same length"):
        multi_resolution_mel_loss(prediction, target, 44100, (16, 8), (4,))


def test_spectral_losses_can_be_minimised():
    torch.manual_seed(0)
    target = random_stereo(5, samples=256)
    prediction = torch.nn.Parameter(0.1 * torch.randn_like(target))
    optimizer = torch.optim.Adam([prediction], lr=3e-2)

    def total():
        return multi_resolution_stft_loss(prediction, target, (64, 32)) + multi_resolution_mel_loss(
            prediction, target, 44100, (64, 32), (8, 4)
        )

    start = total().item()
    for _ in range(150):
        optimizer.zero_grad()
        loss = total()
        loss.backward()
        optimizer.step()
    assert total().item() < 0.3 * start


def test_adversarial_losses_by_hand():
    real = [torch.tensor([2.0, 0.5]), torch.tensor([[1.0], [-1.0]])]
    fake = [torch.tensor([-2.0, 0.0]), torch.tensor([[0.5], [-3.0]])]
    # hinge D: disc 1: mean(relu(1-2), relu(1-.5)) = 0.25, mean(relu(1-2), relu(1+0)) = 0.5 -> 0.75
    #          disc 2: mean(0, 2) = 1, mean(1.5, 0) = 0.75 -> 1.75; average 1.25
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(1.25)
    # lsgan D: disc 1: mean(1, .25) + mean(4, 0) = 2.625; disc 2: mean(0, 4) + mean(.25, 9) = 6.625; average 4.625
    assert discriminator_loss(real, fake, "lsgan").item() == pytest.approx(4.625)
    # hinge G: disc 1: mean(relu(3), relu(1)) = 2; disc 2: mean(0.5, 4) = 2.25; average 2.125
    assert generator_adversarial_loss(fake, "hinge").item() == pytest.approx(2.125)
    # lsgan G: disc 1: mean(9, 1) = 5; disc 2: mean(.25, 16) = 8.125; average 6.5625
    assert generator_adversarial_loss(fake, "lsgan").item() == pytest.approx(6.5625)
    # Minimal: a discriminator with margins achieves 0, a generator that fools it achieves 0.
    assert discriminator_loss([torch.tensor([1.5])], [torch.tensor([-1.0])]).item() == 0.0
    assert generator_adversarial_loss([torch.tensor([1.0, 3.0])]).item() == 0.0
    with pytest.raises(ValueError, match="loss_type"):
        discriminator_loss(real, fake, "wgan")


def test_feature_matching_by_hand_and_detaches_real():
    real = [[torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([0.0])], [torch.tensor([[1.0, 1.0]])]]
    fake = [[torch.tensor([2.0, 0.0], requires_grad=True), torch.tensor([4.0])], [torch.tensor([[1.0, 3.0]])]]
    # pairs: mean(1, 2) = 1.5; 4; mean(0, 2) = 1 -> (1.5 + 4 + 1) / 3
    loss = feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx(6.5 / 3)
    loss.backward()
    assert real[0][0].grad is None and fake[0][0].grad is not None
    assert feature_matching_loss(real, real).item() == 0.0


def test_discriminator_shapes_and_gradients():
    torch.manual_seed(0)
    discriminator = MultiResolutionSpectrogramDiscriminator((64, 32), audio_channels=2, channels=4, num_layers=2)
    audio = torch.randn(2, 2, 512, requires_grad=True)
    outputs = discriminator(audio)
    assert len(outputs) == 2
    for (logits, features), n_fft in zip(outputs, (64, 32)):
        frames = 512 // (n_fft // 4) + 1
        assert logits.shape[:3] == (2, 1, frames)
        assert len(features) == 1 + 2 + 1
    sum(logits.mean() for logits, _ in outputs).backward()
    assert audio.grad is not None and audio.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="fft_sizes"):
        MultiResolutionSpectrogramDiscriminator(())


def test_flow_matching_alignment_by_hand():
    latents = torch.tensor([[[1.0, -1.0]], [[0.5, 2.0]]], requires_grad=True)  # (B=2, C=1, T=2)
    noise = torch.tensor([[[0.0, 1.0]], [[1.0, 1.0]]])
    timestep = torch.tensor([0.25, 1.0])
    seen = {}

    def zero_denoiser(x, t):
        seen["x"], seen["t"] = x.detach(), t
        return torch.zeros_like(x)

    loss = flow_matching_alignment_loss(zero_denoiser, latents, noise, timestep)
    # velocity = noise - latents = [[-1, 2]], [[0.5, -1]] -> mean of squares (1 + 4 + .25 + 1) / 4
    assert loss.item() == pytest.approx(6.25 / 4)
    # x_t = (1 - t) z + t eps: [[.75, -.5]], [[1, 1]]
    torch.testing.assert_close(seen["x"], torch.tensor([[[0.75, -0.5]], [[1.0, 1.0]]]))
    loss.backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0  # reaches the encoder side

    def oracle(x, t):
        return noise - latents

    assert flow_matching_alignment_loss(oracle, latents, noise, timestep).item() == 0.0


def test_latent_denoiser_can_be_trained():
    torch.manual_seed(0)
    latents = torch.randn(4, 8, 6)
    denoiser = LatentDenoiser(8, hidden_channels=32, num_layers=1)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(latents.shape, generator=generator)
    timestep = torch.rand(4, generator=generator)
    start = flow_matching_alignment_loss(denoiser, latents, noise, timestep).item()
    for _ in range(100):
        optimizer.zero_grad()
        loss = flow_matching_alignment_loss(denoiser, latents, noise, timestep)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * start
    assert denoiser(latents, timestep).shape == latents.shape


def test_chroma_targets_match_numpy():
    # frame 32 samples at 3200 Hz: bins every 100 Hz.
    rng = np.random.default_rng(6)
    audio = rng.standard_normal((1, 2, 70)).astype(np.float32)
    ours = chroma_targets(torch.from_numpy(audio), sample_rate=3200, frame_length=32, f_min=55.0, f_max=1600.0)
    mono = audio[0].mean(axis=0)
    mono = np.concatenate([mono, np.zeros(96 - 70)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(32) / 32)
    expected = np.zeros((12, 3))
    for frame in range(3):
        power = np.abs(np.fft.rfft(mono[frame * 32 : (frame + 1) * 32] * window)) ** 2
        for k, p in enumerate(power):
            f = k * 100.0
            if 55.0 <= f <= 1600.0:
                expected[int(round(12 * math.log2(f / 440.0) + 9)) % 12, frame] += p
        expected[:, frame] /= expected[:, frame].max()
    assert ours.shape == (1, 12, 3)
    np.testing.assert_allclose(ours[0].numpy(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("frequency, pitch_class", [(440.0, 9), (261.63, 0), (392.0, 7)])
def test_chroma_of_a_sine_peaks_at_its_pitch_class(frequency, pitch_class):
    t = torch.arange(8192) / 44100
    audio = torch.sin(2 * math.pi * frequency * t).repeat(1, 2, 1)
    chroma = chroma_targets(audio)
    assert chroma.shape == (1, 12, 2)
    assert chroma[0, :, 0].argmax().item() == pitch_class
    assert chroma[0, pitch_class, 0].item() == pytest.approx(1.0)


def test_interaural_level_difference_by_hand():
    rng = np.random.default_rng(7)
    right = rng.standard_normal(64).astype(np.float32)
    audio = torch.from_numpy(np.stack([2 * right, right]))[None]  # left 6.02 dB louder
    ild = interaural_level_difference(audio, sample_rate=3200, frame_length=32, band_edges_hz=(0, 800, 1600))
    assert ild.shape == (1, 2, 2)
    np.testing.assert_allclose(ild.numpy(), 10 * math.log10(4) / 20, rtol=1e-4)
    # Silent right channel clamps at +max_db -> +1; a silent band gives 0.
    audio = torch.zeros(1, 2, 32)
    audio[0, 0] = 1.0  # DC on the left only: energy in the lowest band only
    ild = interaural_level_difference(audio, sample_rate=3200, frame_length=32, band_edges_hz=(0, 150, 1600))
    assert ild[0, 0, 0].item() == pytest.approx(1.0)
    # A periodic Hann window's spectrum has energy in bins 0 and 1 only, so the 150-1600 Hz band (bins >= 2) is
    # silent on both sides (up to float32 rounding of the FFT).
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(32) / 32)
    assert (np.abs(np.fft.rfft(window)) ** 2)[2:].sum() < 1e-20
    assert ild[0, 1, 0].item() == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="stereo"):
        interaural_level_difference(torch.zeros(1, 1, 32))


def test_frame_regression_loss_by_hand():
    prediction = torch.tensor([[[1.0, 2.0, 9.0]]])  # one extra latent frame past the audio
    target = torch.tensor([[[0.0, 4.0]]])
    assert frame_regression_loss(prediction, target).item() == pytest.approx((1 + 4) / 2)
    assert frame_regression_loss(target, target).item() == 0.0


def test_semantic_heads_can_fit_targets():
    torch.manual_seed(0)
    latents = torch.randn(2, 8, 5)
    audio = torch.randn(2, 2, 5 * 4096)
    heads = SAMEAuxiliaryHeads(8, hidden_channels=32, diffusion=False, contrastive=False)
    chroma, ild = chroma_targets(audio), interaural_level_difference(audio)
    optimizer = torch.optim.Adam(heads.parameters(), lr=1e-2)

    def total():
        return frame_regression_loss(heads.chroma(latents), chroma) + frame_regression_loss(heads.ild(latents), ild)

    start = total().item()
    for _ in range(200):
        optimizer.zero_grad()
        loss = total()
        loss.backward()
        optimizer.step()
    assert total().item() < 0.1 * start
    assert heads.denoiser is None and heads.projection is None


def test_info_nce_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    # normalised b = [[.6, .8], [0, 1]]; logits = a_n @ b_n.T / 0.5 = [[1.2, 0], [1.6, 2]]
    logits = np.array([[1.2, 0.0], [1.6, 2.0]])

    def cross_entropy(rows):
        return np.mean([-(rows[i, i] - np.log(np.exp(rows[i]).sum())) for i in range(2)])

    expected = (cross_entropy(logits) + cross_entropy(logits.T)) / 2
    assert info_nce_loss(a, b, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)
    # Minimal when the views agree and clips differ: 2 * ... -> log(1 + e^{-1/T}).
    eye = torch.eye(3)
    assert info_nce_loss(eye, eye, temperature=0.05).item() == pytest.approx(math.log(1 + 2 * math.exp(-20)), abs=1e-7)
    with pytest.raises(ValueError, match="at least 2"):
        info_nce_loss(torch.ones(1, 2), torch.ones(1, 2))


def test_augment_audio_bounds_and_determinism():
    audio = random_stereo(8, samples=1000, batch=3)
    first = augment_audio(audio, generator=torch.Generator().manual_seed(1))
    second = augment_audio(audio, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, second)
    assert not torch.equal(first, audio)
    quiet = augment_audio(audio, max_gain_db=6.0, noise_db_range=(-300.0, -300.0))
    ratio = (quiet / audio).abs()
    # Each clip is scaled by one gain in [-6 dB, 0 dB] (the noise is 300 dB down).
    assert ratio.min() >= 10 ** (-6 / 20) - 1e-6 and ratio.max() <= 1 + 1e-6
    assert torch.allclose(ratio.amin(dim=(1, 2)), ratio.amax(dim=(1, 2)), rtol=1e-5)


def test_waveform_l1_loss_matches_numpy_and_reads_gain_sign_and_channels():
    rng = np.random.default_rng(1)
    target = rng.standard_normal((3, 2, 4000)).astype(np.float32) * 0.2
    prediction = target + rng.standard_normal(target.shape).astype(np.float32) * 0.05
    expected = np.abs(prediction - target).sum() / (np.abs(target).sum() + 1e-5)
    loss = waveform_l1_loss(torch.from_numpy(prediction), torch.from_numpy(target))
    assert abs(float(loss) - expected) < 1e-5
    x = torch.from_numpy(target)
    assert float(waveform_l1_loss(x, x)) == 0.0
    assert abs(float(waveform_l1_loss(torch.zeros_like(x), x)) - 1.0) < 1e-5  # silence in place of the target
    assert abs(float(waveform_l1_loss(x / 2, x)) - 0.5) < 1e-5
    assert abs(float(waveform_l1_loss(-x, x)) - 2.0) < 1e-5  # same magnitude spectrum, opposite phase
    # Unlike a magnitude loss, it sees swapped channels of a panned clip and a mono copy of it.
    panned = torch.cat([x[:, :1], x[:, :1] / 4], dim=1)
    assert float(waveform_l1_loss(panned.flip(1), panned)) > 1.0
    mono = panned.mean(1, keepdim=True).expand_as(panned)
    assert float(waveform_l1_loss(mono, panned)) > 0.5
    with pytest.raises(ValueError, match="same shape"):
        waveform_l1_loss(x, x[..., :100])
