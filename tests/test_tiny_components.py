"""Tests of the tiny-model builders (`diffusers_sa3.training.tiny_components`)."""

import json
import math
import os

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from diffusers_sa3 import FlowMatchOTScheduler, PingPongAdversarialScheduler, StableAudio3Pipeline
from diffusers_sa3.training.audio_metrics import classify_sound, score_clip, stereo_side, summarize_scores
from diffusers_sa3.training.synthetic_sounds import (
    ATTRIBUTE_NAMES,
    caption_vocabulary,
    grid_frequency,
    note_to_hz,
    synthesize,
    synthetic_examples,
)
from diffusers_sa3.training.tiny_components import (
    assemble_pipeline,
    build_tiny_same,
    build_tiny_text_encoder,
    build_tiny_transformer,
    build_word_tokenizer,
    gain_shape_initialise_same,
    max_sample_size_for,
    pca_initialise_same,
)


@pytest.fixture(scope="module")
def captions():
    # The recipe's vocabulary: the words of a 2000-clip train set (which covers every word of the grammar).
    train = [e["text"] for e in synthetic_examples(2000, seed=0, with_audio=False)]
    heldout = [e["text"] for e in synthetic_examples(300, seed=1, split="heldout", with_audio=False)]
    return train, heldout


@pytest.fixture(scope="module")
def tokenizer(captions):
    return build_word_tokenizer(caption_vocabulary(captions[0]))


def test_word_tokenizer_encodes_captions(captions, tokenizer):
    train, heldout = captions
    vocabulary = caption_vocabulary(train)
    assert len(tokenizer) == len(vocabulary) + 4
    assert [tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id] == [
        0,
        1,
        2,
        3,
    ]
    for text in train + heldout:
        ids = tokenizer(text).input_ids
        assert ids[0] == 2 and ids[-1] == 1
        assert tokenizer.unk_token_id not in ids, text
        assert len(ids) == len(text.split()) + 2
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    # Lower-cased; unknown words map to <unk>.
    assert tokenizer("LOUD Zebra").input_ids == [2, tokenizer.convert_tokens_to_ids("loud"), 3, 1]
    batch = tokenizer([train[0], "loud"], padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    assert batch.input_ids.shape == (2, 32)
    assert batch.input_ids[1, :3].tolist() == [2, tokenizer.convert_tokens_to_ids("loud"), 1]
    assert batch.input_ids[1, 3:].eq(0).all() and batch.attention_mask[1].sum() == 3


def test_word_tokenizer_round_trips(tmp_path, captions, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    for text in captions[1][:20] + ["LOUD Zebra"]:
        assert reloaded(text).input_ids == tokenizer(text).input_ids
    assert reloaded.padding_side == "right" and reloaded.pad_token_id == 0


def test_word_tokenizer_rejects_bad_vocabulary():
    with pytest.raises(ValueError, match="`vocabulary`"):
        build_word_tokenizer(["two words"])
    with pytest.raises(ValueError, match="`vocabulary`"):
        build_word_tokenizer([])


def test_text_encoder_is_seeded_frozen_bf16(tokenizer):
    first = build_tiny_text_encoder(len(tokenizer), seed=3)
    second = build_tiny_text_encoder(len(tokenizer), seed=3)
    other = build_tiny_text_encoder(len(tokenizer), seed=4)
    assert first.dtype == torch.bfloat16 and not first.training
    assert not any(p.requires_grad for p in first.parameters())
    a, b, c = (dict(m.named_parameters()) for m in (first, second, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    batch = tokenizer(["a loud sine wave", "noise"], padding="max_length", max_length=16, return_tensors="pt")
    states = first(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    assert states.shape == (2, 16, 64) and torch.isfinite(states.float()).all()


def _word_recovery(text_encoder, tokenizer, texts):
    """Fraction of the caption tokens whose state is nearest to the mean state of its own word (over `texts`)."""
    batch = tokenizer(texts, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    with torch.no_grad():
        states = text_encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    mask = batch.attention_mask.bool()
    states, ids = states.float()[mask], batch.input_ids[mask]
    words = ids.unique()
    centroids = torch.stack([states[ids == w].mean(0) for w in words])
    nearest = words[torch.cdist(states, centroids).argmin(dim=1)]
    return (nearest == ids).float().mean().item()


def test_text_encoder_states_keep_their_words(captions, tokenizer):
    # The DiT can only follow a prompt whose words survive the encoder. With token vectors of RMS 8 (the default) the
    # states keep them (besides their context); with the library's 0.02 the post-normed branches swamp the tokens and
    # a state is mostly its sentence's mean (measured: 9.6 % on these 200 training captions).
    texts = captions[0][:200]
    encoder = build_tiny_text_encoder(len(tokenizer))
    assert _word_recovery(encoder, tokenizer, texts) > 0.9
    assert _word_recovery(build_tiny_text_encoder(len(tokenizer), embedding_std=0.02), tokenizer, texts) < 0.3
    embeddings = encoder.get_input_embeddings().weight.float()
    assert embeddings[0].eq(0).all()  # the padding row
    assert abs(embeddings[4:].std().item() * 64**0.5 - 8.0) < 0.4
    with pytest.raises(ValueError, match="`embedding_std`"):
        build_tiny_text_encoder(len(tokenizer), embedding_std=0.0)


def test_tiny_base_scheduler_ends_at_low_noise(tokenizer):
    pipe = assemble_pipeline(
        build_tiny_same(32), build_tiny_transformer(num_layers=1), build_tiny_text_encoder(len(tokenizer)), tokenizer
    )
    pipe.scheduler.set_timesteps(50)
    # The last nonzero noise level: official schedule (log-SNR end 2.0) 0.14, the tiny one's (6.0) below 0.005.
    assert 0 < pipe.scheduler.sigmas[-2].item() < 0.005
    official = FlowMatchOTScheduler(downsampling_ratio=pipe.scheduler.config.downsampling_ratio)
    official.set_timesteps(50)
    assert official.sigmas[-2].item() > 0.1


def test_assemble_rejects_mismatched_widths(tokenizer):
    with pytest.raises(ValueError, match="`cross_attention_dim`"):
        assemble_pipeline(
            build_tiny_same(),
            build_tiny_transformer(cross_attention_dim=32, num_layers=1),
            build_tiny_text_encoder(len(tokenizer)),
            tokenizer,
        )
    with pytest.raises(ValueError, match="`in_channels`"):
        assemble_pipeline(
            build_tiny_same(latent_channels=16),
            build_tiny_transformer(num_layers=1),
            build_tiny_text_encoder(len(tokenizer)),
            tokenizer,
        )


@pytest.mark.parametrize("post_trained", [False, True])
def test_pipeline_saves_reloads_and_generates(tmp_path, tokenizer, post_trained):
    pipe = assemble_pipeline(
        build_tiny_same(num_layers=1),
        build_tiny_transformer(num_layers=2),
        build_tiny_text_encoder(len(tokenizer)),
        tokenizer,
        post_trained=post_trained,
    )
    assert pipe.config.max_sample_size == max_sample_size_for(12.0) and pipe.max_duration >= 18.0
    pipe.save_pretrained(tmp_path)
    reloaded = StableAudio3Pipeline.from_pretrained(tmp_path)
    assert isinstance(reloaded.scheduler, PingPongAdversarialScheduler if post_trained else FlowMatchOTScheduler)
    assert reloaded.is_post_trained == post_trained
    assert reloaded.text_encoder.dtype == torch.bfloat16
    assert reloaded.config.max_text_length == 32
    for name in ("vae", "transformer", "text_encoder"):
        original, loaded = getattr(pipe, name).state_dict(), getattr(reloaded, name).state_dict()
        assert original.keys() == loaded.keys()
        assert all(torch.equal(original[k], loaded[k]) for k in original), name
    prompt = "a loud sine wave at a4 panned left"
    assert reloaded.tokenizer(prompt).input_ids == tokenizer(prompt).input_ids
    output = reloaded(
        [prompt, "quiet white noise on the right"],
        duration=[1.5, 3.0],
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    )
    audios = output.audios
    assert [tuple(a.shape) for a in audios] == [(2, int(1.5 * 44100)), (2, 3 * 44100)]
    assert all(torch.isfinite(a).all() for a in audios)


def test_cli_init_and_swap_vae(tmp_path):
    from diffusers_sa3.training.synthetic_sounds import write_synthetic_dataset
    from diffusers_sa3.training.tiny_components import main

    rows = write_synthetic_dataset(str(tmp_path / "data"), 3, subtype="PCM_16")
    main(["init", "--train_data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "init"),
          "--dit_layers", "1", "--same_layers", "1", "--seed", "1"])  # fmt: skip
    pipe = StableAudio3Pipeline.from_pretrained(tmp_path / "init")
    assert pipe.transformer.config.num_layers == 1 and not pipe.is_post_trained
    assert len(pipe.tokenizer) == len(caption_vocabulary([r["text"] for r in rows])) + 4
    other = build_tiny_same(num_layers=1, seed=7)
    other.save_pretrained(tmp_path / "vae")
    main(["swap-vae", "--pipeline", str(tmp_path / "init"), "--vae", str(tmp_path / "vae"),
          "--output_dir", str(tmp_path / "swapped")])  # fmt: skip
    swapped = StableAudio3Pipeline.from_pretrained(tmp_path / "swapped")
    expected = other.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in swapped.vae.state_dict().items())
    assert all(torch.equal(v, pipe.transformer.state_dict()[k]) for k, v in swapped.transformer.state_dict().items())

    # check-frozen (make_tiny_model.sh's FLOW_INIT check): a re-saved copy (other config paths, another transformer)
    # passes; the swapped SAME is named.
    pipe.register_modules(transformer=build_tiny_transformer(num_layers=1, seed=3))
    pipe.save_pretrained(tmp_path / "resaved")
    main(["check-frozen", "--pipeline", str(tmp_path / "resaved"), "--reference", str(tmp_path / "init")])
    with pytest.raises(SystemExit, match=r"--pipeline .*swapped.* vae/diffusion_pytorch_model\.safetensors"):
        main(["check-frozen", "--pipeline", str(tmp_path / "swapped"), "--reference", str(tmp_path / "init")])
    with pytest.raises(ValueError, match="not a pipeline folder: it has no vae/ subfolder"):
        main(["check-frozen", "--pipeline", str(tmp_path / "vae"), "--reference", str(tmp_path / "init")])

    # set-guidance (make_tiny_model.sh's BASE_GUIDANCE): the folder's default CFG scale, nothing else; a bad value or
    # folder is an error that leaves the file as it was.
    index = tmp_path / "init" / "model_index.json"
    before = json.loads(index.read_text())
    assert StableAudio3Pipeline.from_pretrained(tmp_path / "init").default_guidance_scale == 7.0
    main(["set-guidance", "--pipeline", str(tmp_path / "init"), "--default_guidance_scale", "2"])
    assert json.loads(index.read_text()) == {**before, "default_guidance_scale": 2.0}
    assert StableAudio3Pipeline.from_pretrained(tmp_path / "init").default_guidance_scale == 2.0
    written = index.read_bytes()
    with pytest.raises(SystemExit, match=r"--default_guidance_scale.*must be a finite number >= 1\.0.*got 0\.5"):
        main(["set-guidance", "--pipeline", str(tmp_path / "init"), "--default_guidance_scale", "0.5"])
    assert index.read_bytes() == written
    with pytest.raises(SystemExit, match="not a pipeline folder: it has no model_index.json"):
        main(["set-guidance", "--pipeline", str(tmp_path / "vae"), "--default_guidance_scale", "2"])


def test_cli_replace_decoder(tmp_path, tokenizer):
    # replace-decoder: a decoder fine-tune of the pipeline's SAME goes in, in place;
    # a SAME whose encoder or bottleneck weights differ (other latents) is refused and the folder is left as it was.
    from diffusers_sa3.training.tiny_components import main

    folder = tmp_path / "pipe"
    same = build_tiny_same(num_layers=1, seed=7)
    transformer = build_tiny_transformer(num_layers=1, seed=3)
    assemble_pipeline(same, transformer, build_tiny_text_encoder(len(tokenizer)), tokenizer).save_pretrained(folder)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    original = weights.read_bytes()

    tuned = build_tiny_same(num_layers=1, seed=7)
    with torch.no_grad():
        tuned.decoder.conv_out.bias.add_(0.5)
    tuned.save_pretrained(tmp_path / "tuned")
    other = build_tiny_same(num_layers=1, seed=8)
    other.save_pretrained(tmp_path / "other")

    with pytest.raises(SystemExit, match=r"--vae: .*changes weights outside the decoder.*encoder\."):
        main(["replace-decoder", "--pipeline", str(folder), "--vae", str(tmp_path / "other")])
    assert weights.read_bytes() == original
    with pytest.raises(SystemExit, match="has no SAME"):
        main(["replace-decoder", "--pipeline", str(folder), "--vae", str(tmp_path)])
    assert weights.read_bytes() == original

    main(["replace-decoder", "--pipeline", str(folder), "--vae", str(tmp_path / "tuned")])
    replaced = StableAudio3Pipeline.from_pretrained(folder)
    expected = tuned.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in replaced.vae.state_dict().items())
    assert not torch.equal(replaced.vae.decoder.conv_out.bias, same.decoder.conv_out.bias)
    assert all(torch.equal(v, transformer.state_dict()[k]) for k, v in replaced.transformer.state_dict().items())
    assert sorted(os.listdir(folder)) == sorted(
        ["model_index.json", "scheduler", "text_encoder", "tokenizer", "transformer", "vae"]
    )


def test_tiny_same_with_small_patches_keeps_the_released_frame_rate(tmp_path):
    """The shipped tiny SAME: 64-sample patches at width 128 (4 x 32), 64 patches per latent frame."""
    vae = build_tiny_same(latent_channels=32, num_attention_heads=4, num_layers=1, patch_size=64, resampling_stride=64)
    assert vae.downsampling_ratio == 4096 and vae.config.attention_chunk_size == 128
    audio = torch.randn(1, 2, 3 * 4096 + 100)
    latents = vae.encode(audio).latents
    assert latents.shape[:2] == (1, 32)
    decoded = vae.decode(latents, add_noise=False).sample
    assert decoded.shape[:2] == (1, 2) and decoded.shape[-1] >= audio.shape[-1]
    vae.save_pretrained(tmp_path)
    reloaded = type(vae).from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.decode(latents, add_noise=False).sample, decoded, rtol=0, atol=0)


def _latent_spread_and_dependence(vae):
    """Latent spread across two different clips (over their std) and how much decoding depends on the latents."""
    clips = torch.stack(
        [
            0.3 * torch.sin(2 * torch.pi * 440 * torch.arange(16384) / 44100).expand(2, -1),
            0.1 * torch.randn(2, 16384, generator=torch.Generator().manual_seed(0)),
        ]
    )
    with torch.no_grad():
        latents = vae.encode(clips, chunked=False).latents
        spread = float((latents[0] - latents[1]).std() / latents.std())
        decoded = vae.decode(latents, add_noise=False, chunked=False).sample
        swapped = vae.decode(latents.flip(0), add_noise=False, chunked=False).sample
    return spread, float((decoded - swapped).pow(2).mean() / decoded.pow(2).mean())


def _latent_variation_in_time(vae):
    """How much one clip's latents vary over its frames, relative to how much the channels' means differ."""
    t = torch.arange(44100) / 44100
    clip = (0.3 * torch.sin(2 * torch.pi * 220 * t) * (t > 0.5)).expand(2, -1)[None]  # silence, then a tone
    with torch.no_grad():
        latents = vae.encode(clip, chunked=False).latents
    return float(latents.std(-1).mean() / latents.mean(-1).std())


def test_tiny_same_latents_depend_on_the_input_from_initialisation():
    """With the official initialisation the latents ignore the input exactly (why the tiny SAME did not learn)."""
    kwargs = {
        "latent_channels": 32,
        "num_attention_heads": 4,
        "num_layers": 2,
        "patch_size": 64,
        "resampling_stride": 16,
    }
    # Measured with the defaults (token N(0, 0.1), input gain 20): spread 0.34, time variation 0.14, dependence 1.5e-5.
    default = build_tiny_same(**kwargs)
    spread, dependence = _latent_spread_and_dependence(default)
    variation = _latent_variation_in_time(default)
    assert spread > 0.2 and variation > 0.07 and dependence > 1e-6, (spread, variation, dependence)
    official = _latent_spread_and_dependence(
        build_tiny_same(new_token_std=0, branch_init_std=0, input_gain=1, **kwargs)
    )
    assert official == (0.0, 0.0), official
    # Random branches with the official near-zero token: the token's query is ~0, both differential-attention maps
    # are uniform and cancel, so only the feed-forward path varies.
    branches_only, _ = _latent_spread_and_dependence(build_tiny_same(new_token_std=0, input_gain=1, **kwargs))
    assert branches_only < spread / 5, (branches_only, spread)
    # Stop 12's init (token N(0, 1), no input gain): the token swamps the input (measured spread 0.023, time variation
    # 0.008, 15x and 17x less), and a 1 s clip could not be memorised (0 dB SNR after 300 steps, 11 dB with the defaults).
    stop12 = build_tiny_same(new_token_std=1.0, input_gain=1.0, **kwargs)
    stop12_spread, _ = _latent_spread_and_dependence(stop12)
    assert stop12_spread < spread / 5, (stop12_spread, spread)
    assert _latent_variation_in_time(stop12) < variation / 5


def test_base_scheduler_counts_the_autoencoder_frames(tokenizer):
    """A tiny SAME at 1024 samples per latent gets a flow scheduler that converts seconds with 1024, not 4096."""
    vae = build_tiny_same(num_layers=1, patch_size=64, resampling_stride=16)
    pipe = assemble_pipeline(
        vae, build_tiny_transformer(num_layers=1), build_tiny_text_encoder(len(tokenizer)), tokenizer
    )
    assert vae.downsampling_ratio == 1024 and pipe.scheduler.config.downsampling_ratio == 1024
    assert pipe.scheduler.effective_length([2.0]).tolist() == [math.ceil(2 * 44100 / 1024)]


def _panned_tone():
    """A 440 Hz sine of 344 patches of 256 samples, panned left by 12 dB: `(2, samples)` float32."""
    import numpy as np

    t = np.arange(344 * 256) / 44100
    tone = 0.4 * np.sin(2 * np.pi * 440.0 * t + 0.3)
    return np.stack([tone, 0.25 * tone]).astype(np.float32)


def _assert_principal_component_reconstruction(decoded, audio, basis):
    """`decoded` has the SNR of numpy's per-channel projection of `audio` on `basis` (within 0.1 dB, above 15 dB) and
    the channel balance of `audio` (within 0.5 dB)."""
    import numpy as np

    from diffusers_sa3.training import audio_metrics

    frames = audio.reshape(-1, 256).astype(np.float64)
    reference = (frames @ basis.T @ basis).reshape(audio.shape)

    def snr(x):
        return 10 * np.log10((audio**2).sum() / ((audio - x) ** 2).sum())

    assert snr(reference) > 15.0
    assert abs(snr(decoded) - snr(reference)) < 0.1
    assert abs(audio_metrics.stereo_balance_db(decoded) - audio_metrics.stereo_balance_db(audio)) < 0.5


@pytest.fixture(scope="module")
def pca_same():
    import numpy as np

    clips = [e["audio"] for e in synthetic_examples(40, seed=0)]
    model = build_tiny_same(
        latent_channels=32, num_attention_heads=4, patch_size=256, resampling_stride=1, decoder_kernel_size=1
    )
    info = pca_initialise_same(model, clips, max_frames=10**6)  # every frame, as the reference below
    # Independent reference: numpy's SVD of the same mono frames (no torch), top 16 components per channel.
    frames = np.concatenate([c[:, : c.shape[-1] // 256 * 256].reshape(-1, 256) for c in clips]).astype(np.float64)
    frames = frames[np.abs(frames).max(axis=1) > 1e-4]
    basis = np.linalg.svd(frames, full_matrices=False)[2][:16]
    return model.eval(), basis, info


@torch.no_grad()
def test_pca_initialised_same_is_the_principal_component_coder(pca_same):
    """A stride-1 tiny SAME initialised by `pca_initialise_same` reconstructs audio as numpy's per-channel projection
    on the top components does (same SNR within 0.1 dB), keeps a tone's pitch and its channel balance."""

    from diffusers_sa3.training import audio_metrics

    model, basis, info = pca_same
    assert 0.5 < info["energy_kept"] < 1.0
    audio = _panned_tone()
    decoded = model.decode(model.encode(torch.from_numpy(audio)[None]).latents, add_noise=False).sample[0]
    decoded = decoded[:, : audio.shape[-1]].double().numpy()
    _assert_principal_component_reconstruction(decoded, audio, basis)
    assert abs(audio_metrics.estimate_f0(decoded.mean(axis=0), 44100) - 440.0) < 440.0 * (2 ** (1 / 24) - 1)
    # With the official decode-time noise the decoded silence stays silent (the noise enters 100x below the signal).
    silence = torch.zeros(1, 2, 44100)
    noisy = model.decode(model.encode(silence).latents, generator=torch.Generator().manual_seed(0)).sample
    assert noisy.abs().max() < 1e-3


def test_pca_initialise_same_rejects_unsuited_models():
    clips = [e["audio"] for e in synthetic_examples(4, seed=0)]
    with pytest.raises(ValueError, match="resampling_stride"):
        pca_initialise_same(build_tiny_same(patch_size=64, resampling_stride=16), clips)
    with pytest.raises(ValueError, match="latent_channels"):
        pca_initialise_same(build_tiny_same(latent_channels=33, patch_size=256, resampling_stride=1), clips)
    with pytest.raises(ValueError, match="clips"):
        pca_initialise_same(build_tiny_same(patch_size=256, resampling_stride=1), [torch.zeros(1, 4096)])


@pytest.fixture(scope="module")
def gain_shape_same():
    import numpy as np

    clips = [e["audio"] for e in synthetic_examples(40, seed=0)]
    model = build_tiny_same(
        latent_channels=32,
        num_attention_heads=4,
        num_layers=3,
        num_decoder_layers=2,
        patch_size=256,
        resampling_stride=1,
        decoder_kernel_size=1,
    )
    info = gain_shape_initialise_same(model, clips, max_frames=10**6)  # every frame, as the reference below
    # Independent reference in numpy: the top 15 components per channel of the same mono frames and their scale.
    frames = np.concatenate([c[:, : c.shape[-1] // 256 * 256].reshape(-1, 256) for c in clips]).astype(np.float64)
    frames = frames[np.abs(frames).max(axis=1) > 1e-4]
    basis = np.linalg.svd(frames, full_matrices=False)[2][:15]
    scale = (frames @ basis.T).std(ddof=1)
    return model.eval(), basis, scale, info


@torch.no_grad()
def test_gain_shape_same_codes_each_frame_as_unit_shape_and_log_gain(gain_shape_same):
    """`gain_shape_initialise_same`: the decoded audio is numpy's per-channel projection on the top components (SNR
    within 0.1 dB); the last two latents are each channel's normalised log RMS of the coefficients and the others
    the coefficients divided by that RMS (numpy, within 0.01), also for the tone 20 dB quieter, whose louder channel's
    gain latent is lower by log(10) / std; silence codes as zero shape and decodes to silence."""
    import numpy as np

    model, basis, scale, info = gain_shape_same
    assert info["fit_error"] < 1e-3
    audio = _panned_tone()

    def code(x):
        return model.encode(torch.from_numpy(x)[None]).latents

    latents = code(audio)
    decoded = model.decode(latents, add_noise=False).sample[0, :, : audio.shape[-1]].double().numpy()
    _assert_principal_component_reconstruction(decoded, audio, basis)

    def expected(x):  # numpy's gain and shape latents, the components' signs as the model's basis
        coefficients = (x.reshape(2, -1, 256).astype(np.float64) @ basis.T) / scale  # (channel, frame, component)
        log_gain = 0.5 * np.log((coefficients**2).mean(axis=-1) + 0.01**2)
        shape = (coefficients / np.exp(log_gain)[..., None]).transpose(2, 0, 1)  # (component, channel, frame)
        return (log_gain - info["gain_mean"]) / info["gain_std"], shape

    gain, shape = expected(audio)
    model_shape = latents[0, :30].reshape(15, 2, -1).double().numpy()
    signs = np.sign((model_shape * shape).sum(axis=(1, 2)))[:, None, None]
    assert np.abs(shape).max() > 1.0
    np.testing.assert_allclose(latents[0, 30:].double().numpy(), gain, atol=1e-2)
    np.testing.assert_allclose(model_shape, signs * shape, atol=1e-2)
    assert abs(np.sqrt((model_shape**2).mean(axis=0)).mean() - 1.0) < 0.01  # unit RMS in every frame

    quiet = code(audio / 10)
    gain, shape = expected(audio / 10)
    np.testing.assert_allclose(quiet[0, 30:].double().numpy(), gain, atol=1e-2)
    np.testing.assert_allclose(quiet[0, :30].reshape(15, 2, -1).double().numpy(), signs * shape, atol=1e-2)
    gain_drop = (latents[0, 30:] - quiet[0, 30:]).double().numpy()
    np.testing.assert_allclose(gain_drop[0], math.log(10) / info["gain_std"], atol=1e-2)  # the louder channel

    silence = code(np.zeros((2, 44100), np.float32))
    assert silence[:, :30].abs().max() < 1e-3
    decoded = model.decode(silence, generator=torch.Generator().manual_seed(0)).sample
    assert decoded.abs().max() < 1e-3


def test_gain_shape_initialise_same_rejects_unsuited_models():
    clips = [e["audio"] for e in synthetic_examples(4, seed=0)]
    with pytest.raises(ValueError, match="3 encoder and 2 decoder layers"):
        gain_shape_initialise_same(build_tiny_same(num_attention_heads=4, patch_size=256, resampling_stride=1), clips)
    options = {"num_layers": 3, "num_decoder_layers": 2, "patch_size": 256, "resampling_stride": 1}
    with pytest.raises(ValueError, match="latent_channels"):
        gain_shape_initialise_same(build_tiny_same(latent_channels=64, num_attention_heads=2, **options), clips)
    with pytest.raises(ValueError, match="floor"):
        gain_shape_initialise_same(build_tiny_same(num_attention_heads=4, **options), clips, floor=0.0)


@torch.no_grad()
def test_initial_pipeline_with_pca_same_reads_the_train_folder(tmp_path):
    """`build_initial_pipeline(same_init="pca")` fits the SAME on the folder's audio: a training clip comes back
    with an SNR above 5 dB (the random init gives below 0 dB); a bad `same_init` is named."""
    from diffusers_sa3.training.audio_data import find_audio_files, load_audio
    from diffusers_sa3.training.synthetic_sounds import write_synthetic_dataset
    from diffusers_sa3.training.tiny_components import build_initial_pipeline

    write_synthetic_dataset(str(tmp_path / "data"), 8, seed=0)
    options = {
        "latent_channels": 32,
        "same_heads": 4,
        "same_layers": 1,
        "same_patch_size": 256,
        "same_resampling_stride": 1,
    }
    clip = load_audio(find_audio_files(str(tmp_path / "data"))[0])[None, :, : 64 * 512]

    def snr(pipe):
        vae = pipe.vae.eval()
        out = vae.decode(vae.encode(clip).latents, add_noise=False).sample[..., : clip.shape[-1]]
        return 10 * math.log10(clip.pow(2).sum() / (clip - out).pow(2).sum())

    assert snr(build_initial_pipeline(str(tmp_path / "data"), same_init="pca", **options)) > 5.0
    assert snr(build_initial_pipeline(str(tmp_path / "data"), **options)) < 0.0
    with pytest.raises(ValueError, match="same_init"):
        build_initial_pipeline(str(tmp_path / "data"), same_init="svd", **options)
    gain_shape = {**options, "same_layers": 3, "same_decoder_layers": 2}
    assert snr(build_initial_pipeline(str(tmp_path / "data"), same_init="gain_shape", **gain_shape)) > 5.0


def test_initial_pipeline_with_spectral_same_sets_its_own_geometry(tmp_path):
    """`same_init="spectral"` (the recipe's default): the SAME and the DiT's latent width come from the construction
    fitted to the folder's audio; the size options it would ignore are refused by name. `half-vae` then keeps it
    loadable."""
    from diffusers_sa3.training.synthetic_sounds import write_synthetic_dataset
    from diffusers_sa3.training.tiny_components import build_initial_pipeline, main, synthetic_grid_bins

    write_synthetic_dataset(str(tmp_path / "data"), 6, seed=0, phase="zero", level="rms", tuning="grid")
    main(["init", "--train_data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "init"),
          "--same_init", "spectral", "--dit_layers", "1"])  # fmt: skip
    main(["half-vae", "--pipeline", str(tmp_path / "init")])
    pipe = StableAudio3Pipeline.from_pretrained(tmp_path / "init")
    latent_channels = len(synthetic_grid_bins()) + 32
    assert pipe.vae.config.latent_channels == pipe.transformer.config.in_channels == latent_channels
    assert pipe.vae.config.patch_size == 4096 and pipe.vae.config.resampling_stride == 1
    audio = pipe(["a loud sine tone at a4 on the left"], duration=1.0, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).audios  # fmt: skip
    assert audio.shape == (1, 2, 44100) and np.isfinite(audio).all()
    for name, value in (("latent_channels", 64), ("same_heads", 4), ("same_patch_size", 1024), ("same_mlp_ratio", 2)):
        with pytest.raises(ValueError, match=f"leave {name} unset"):
            build_initial_pipeline(str(tmp_path / "data"), same_init="spectral", **{name: value})
    with pytest.raises(ValueError, match="`same_mlp_ratio` must be positive, got 0"):
        build_initial_pipeline(str(tmp_path / "data"), same_mlp_ratio=0)


def test_half_vae_all_weights_rounds_a_trained_same_whole(tmp_path):
    """`half-vae --all_weights` (a SAME trained from a random init): every weight float16 on disk (the bottleneck's
    empty `noise_scale` included), each the float16 rounding of the original, float32 on load."""
    from safetensors import safe_open

    from diffusers_sa3 import SAMEAutoencoderModel
    from diffusers_sa3.training.tiny_components import main

    model = build_tiny_same(latent_channels=8, num_layers=1)
    model.save_pretrained(tmp_path / "vae")
    path = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    size = path.stat().st_size
    main(["half-vae", "--all_weights", "--pipeline", str(tmp_path)])
    assert path.stat().st_size < 0.55 * size
    with safe_open(str(path), "pt") as f:
        assert {f.get_tensor(name).dtype for name in f.keys()} == {torch.float16}
    loaded = SAMEAutoencoderModel.from_pretrained(tmp_path / "vae")
    for (name, original), (_, reloaded) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert reloaded.dtype == torch.float32, name
        torch.testing.assert_close(reloaded, original.half().float(), rtol=0, atol=0)


def test_store_transformer_half_halves_the_file_and_loads_back_as_float32(tmp_path):
    """`store_transformer_half` (the recipe's `half-transformer` step): the transformer file shrinks to about half,
    loads back as float32 with every weight equal to the float16 rounding of the original, and a missing file is
    named."""
    from diffusers_sa3 import StableAudio3Transformer
    from diffusers_sa3.training.tiny_components import store_transformer_half

    model = build_tiny_transformer(num_layers=1)
    model.save_pretrained(tmp_path / "transformer")
    path = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    size, mode = path.stat().st_size, path.stat().st_mode
    store_transformer_half(str(tmp_path))
    assert path.stat().st_size < 0.55 * size and path.stat().st_mode == mode
    loaded = StableAudio3Transformer.from_pretrained(tmp_path / "transformer")
    for (name, original), (_, reloaded) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert reloaded.dtype == torch.float32, name
        torch.testing.assert_close(reloaded, original.half().float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="transformer"):
        store_transformer_half(str(tmp_path / "missing"))


# ---------------------------------------------------------------------------------------------------- spectral SAME


def _attributes_for(kind, side, duration, loudness="loud", **extra):
    attributes = dict.fromkeys(ATTRIBUTE_NAMES)
    attributes.update(
        type=kind,
        side=side,
        loudness=loudness,
        duration=float(duration),
        seconds_total=duration,
        sound_end_seconds=float(duration),
        **extra,
    )
    if attributes["note"] is not None:
        attributes["pitch_hz"] = note_to_hz(attributes["note"])
    return attributes


def _spectral_reference(info, audio):
    """Numpy reference of the spectral coder (float64), from the matrices the construction returns."""
    frame = 4096
    audio = np.asarray(audio, dtype=np.float64)
    num_frames = -(-audio.shape[1] // frame)
    frames = np.zeros((2, num_frames * frame))
    frames[:, : audio.shape[1]] = audio
    frames = frames.reshape(2, num_frames, frame)
    n = np.arange(frame)
    basis = np.sqrt(2 / frame) * np.sin(2 * np.pi * np.asarray(info["bins"])[:, None] * n / frame)
    levels_u, noise_w = info["level_directions"].numpy(), info["noise_directions"].numpy()
    p_left, p_right = frames[0] @ levels_u.T, frames[1] @ levels_u.T
    n_left, n_right = frames[0] @ noise_w.T, frames[1] @ noise_w.T
    eps = info["floor"] ** 2
    divisor = ((p_left + p_right) ** 2).mean(1) + info["noise_suppression"] * ((n_left + n_right) ** 2).mean(1)
    shape = info["shape_scale"] * ((frames[0] + frames[1]) @ basis.T) / np.sqrt(divisor + eps)[:, None]
    levels = 0.5 * np.log(
        np.stack([(p_left**2).mean(1), (p_right**2).mean(1), (n_left**2).mean(1), (n_right**2).mean(1)], 1) + eps
    )
    latents = info["curve"].to_latent(torch.from_numpy(levels)).numpy()
    return np.concatenate([shape, np.repeat(latents, info["gain_copies"], axis=1)], 1).T, basis


def _spectral_reference_decode(info, latents, eps_noise):
    latents = np.asarray(latents, dtype=np.float64)
    num_bins, num_frames = len(info["bins"]), latents.shape[1]
    n = np.arange(4096)
    basis = np.sqrt(2 / 4096) * np.sin(2 * np.pi * np.asarray(info["bins"])[:, None] * n / 4096)
    levels = latents[num_bins:].T.reshape(num_frames, 4, info["gain_copies"]).mean(-1)
    gains = np.exp(info["curve"].to_level(torch.from_numpy(levels)).numpy())
    tonal = (latents[:num_bins].T / info["shape_scale"]) @ basis
    noise = eps_noise @ info["noise_patterns"].numpy() / np.sqrt(eps_noise.shape[1])
    left = gains[:, :1] * tonal + gains[:, 2:3] * noise
    right = gains[:, 1:2] * tonal + gains[:, 3:4] * noise
    return np.stack([left.reshape(-1), right.reshape(-1)])


@pytest.fixture(scope="module")
def spectral_same():
    from diffusers_sa3.training.tiny_components import build_spectral_same

    clips = [e["audio"] for e in synthetic_examples(40, seed=0, phase="zero", level="rms", tuning="grid")]
    model, info = build_spectral_same(clips)
    return model.eval(), info


def test_spectral_same_matches_its_reference_and_keeps_the_scores(spectral_same):
    """The constructed encoder and decoder against an independent numpy implementation of the coder (float64):
    latents within 1e-3 of their largest value, decoded audio within 2 % of its peak (the fitted SiLU ramps), with
    the decoder's own new-token noise driving the noise patterns; and the reconstructions of held-out grid-tuned
    clips keep their sound type, pitch, side and end (the DSP metrics of the evaluation)."""
    model, info = spectral_same
    assert info["fit_error"] < 0.05
    width = model.config.num_attention_heads * model.config.attention_head_dim
    noise_channels = 1 + 2 * len(info["bins"]) + np.arange(info["noise_patterns"].shape[0])
    examples = synthetic_examples(24, seed=1, split="heldout", phase="zero", level="rms", tuning="grid")
    scores = []
    for index, example in enumerate(examples):
        audio = torch.from_numpy(example["audio"])[None]
        with torch.no_grad():
            latents = model.encode(audio, chunked=False).latents
        expected, _ = _spectral_reference(info, example["audio"])
        frames = expected.shape[1]  # the model pads to whole attention chunks (2 frames)
        assert np.abs(latents[0, :, :frames].double().numpy() - expected).max() <= 1e-3 * np.abs(expected).max()
        draw = torch.randn(latents.shape[-1], 1, width, generator=torch.Generator().manual_seed(index))
        with torch.no_grad():
            decoded = model.decode(latents, noise=(torch.zeros_like(latents), draw), chunked=False).sample[0]
        reference = _spectral_reference_decode(info, latents[0].numpy(), draw[:, 0, noise_channels].double().numpy())
        assert np.abs(decoded.double().numpy() - reference).max() <= 0.02 * np.abs(reference).max()
        scores.append(score_clip(decoded.numpy()[:, : audio.shape[-1]], 44100, example["attributes"], "rms"))
    summary = summarize_scores(scores)
    assert summary["type_accuracy"] >= 0.9 and summary["side_accuracy"] == 1.0, summary
    assert summary["duration_adherence"] == 1.0 and summary["median_pitch_error_semitones"] < 0.6, summary


def test_spectral_same_codes_steady_sounds_as_steady_latents_and_generates_noise(spectral_same):
    model, info = spectral_same
    num_bins, copies = len(info["bins"]), info["gain_copies"]
    tone = _attributes_for("tone", "left", waveform="sawtooth", note="a4", duration=3)
    audio = torch.from_numpy(synthesize(tone, np.random.default_rng(0), phase="zero", level="rms", tuning="grid"))
    with torch.no_grad():
        latents = model.encode(audio[None], chunked=False).latents[0]
    steady = latents[:, 1:-2]  # between the fade-in and the fade-out
    assert (steady - steady[:, :1]).abs().max() < 1e-4 * steady.abs().max()
    # Shape on the tone's harmonics (sawtooth: 1 / k), left 12 dB over right, no noise.
    shape = steady[:num_bins, 0]
    fundamental = round(grid_frequency(note_to_hz("a4")) / (44100 / 4096))
    harmonics = [info["bins"].index(fundamental * k) for k in (1, 2, 3, 4)]
    np.testing.assert_allclose((shape[harmonics] / shape[harmonics[0]]).numpy(), [1, 1 / 2, 1 / 3, 1 / 4], atol=0.01)
    levels = steady[num_bins:, 0].view(4, copies)[:, 0].double()
    left, right, noise_left, noise_right = info["curve"].to_level(levels).tolist()
    assert abs(20 / math.log(10) * (left - right) - 12.04) < 0.2
    assert max(noise_left, noise_right) < math.log(info["floor"]) + 0.5
    # Noise: a flat-spectrum burst decodes (with the decode noise) to noise of the same level and side.
    burst = _attributes_for("noise", "right", duration=3)
    audio = synthesize(burst, np.random.default_rng(1), level="rms")
    with torch.no_grad():
        latents = model.encode(torch.from_numpy(audio)[None], chunked=False).latents
        decoded = model.decode(latents, generator=torch.Generator().manual_seed(0), chunked=False).sample[0].numpy()
        silent = model.decode(latents, add_noise=False, chunked=False).sample[0].numpy()
    decoded = decoded[:, : audio.shape[1]]
    assert classify_sound(decoded, 44100)["label"] == "noise"
    level_db = 10 * np.log10((decoded**2).mean(1) / (audio.astype(np.float64) ** 2).mean(1))
    assert np.abs(level_db).max() < 1.5, level_db
    assert stereo_side(decoded) == "right"
    assert (silent**2).mean() < 0.05 * (audio**2).mean(), "without decode noise only the small tonal part is left"
    # Silence codes as the silence latent and decodes under -90 dBFS.
    with torch.no_grad():
        latents = model.encode(torch.zeros(1, 2, 3 * 4096), chunked=False).latents
        decoded = model.decode(latents, generator=torch.Generator().manual_seed(0), chunked=False).sample
    assert latents[0, :num_bins].abs().max() < 1e-6
    assert torch.allclose(
        latents[0, num_bins:], torch.full_like(latents[0, num_bins:], info["curve"].silence_latent), atol=1e-2
    )
    assert 20 * math.log10(decoded.pow(2).mean().sqrt().item()) < -90


def test_spectral_same_half_storage_and_bad_models(tmp_path, spectral_same):
    """`half-vae`: the analysis and synthesis matrices in float16, the rest float16 only where exact; smaller file,
    float32 on load, reconstruction within 1e-3 of the full-precision model. Unsuited models are refused."""
    from diffusers_sa3 import SAMEAutoencoderModel
    from diffusers_sa3.training.tiny_components import (
        SPECTRAL_LOSSY_WEIGHTS,
        spectral_initialise_same,
        store_weights_half,
    )

    model, info = spectral_same
    model.save_pretrained(tmp_path / "vae")
    path = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    before = path.stat().st_size
    store_weights_half(str(tmp_path), "vae", SPECTRAL_LOSSY_WEIGHTS)
    assert path.stat().st_size < 0.6 * before
    loaded = SAMEAutoencoderModel.from_pretrained(tmp_path / "vae").eval()
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    audio = torch.from_numpy(synthetic_examples(1, seed=5, phase="zero", level="rms", tuning="grid")[0]["audio"])[None]
    with torch.no_grad():
        full = model.decode(model.encode(audio).latents, add_noise=False).sample
        half = loaded.decode(loaded.encode(audio).latents, add_noise=False).sample
    assert (full - half).abs().max() < 1e-3 * full.abs().max()
    with pytest.raises(ValueError, match="no tensors"):
        store_weights_half(str(tmp_path), "vae", ["decoder.missing"])
    with pytest.raises(ValueError, match="build_spectral_same"):
        spectral_initialise_same(build_tiny_same(latent_channels=32), [audio[0].numpy()])
    clips = [audio[0].numpy()]
    wrong = build_tiny_same(
        latent_channels=8,
        num_attention_heads=2,
        num_layers=3,
        num_decoder_layers=2,
        patch_size=4096,
        resampling_stride=1,
        decoder_kernel_size=1,
        decoder_sinusoidal_blocks=2,
    )
    with pytest.raises(ValueError, match="needs `latent_channels`"):
        spectral_initialise_same(wrong, clips)
