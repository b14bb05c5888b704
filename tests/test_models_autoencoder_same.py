"""SAMEAutoencoderModel: official parity (tiny SAME-S / SAME-L), length rules, decode noise, locality, full-size key
layout on the meta device, strict loading, save/load round trip and gradient checkpointing."""

import json
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from diffusers_sa3.conversion.convert_same import (
    convert_official_same_state_dict,
    convert_upstream_same_state_dict,
    same_config_from_official,
    same_config_from_upstream,
)
from diffusers_sa3.models.autoencoder_same import (
    SAMEAutoencoderModel,
    SAMEAutoencoderOutput,
    SAMEDecoderOutput,
    _pad_to_multiple,
    _patchify,
)
from utils import MANIFESTS, MEDIUM_BASE_CKPT, SMALL_CKPT, assert_parity, load_reference


CHECKPOINTS = {"small": SMALL_CKPT, "medium_base": MEDIUM_BASE_CKPT}
RECORDED_ERRORS = {}


@pytest.fixture(scope="module")
def signals():
    return load_reference("signals")[0]


@pytest.fixture(scope="module", params=["small", "medium_base"])
def variant(request):
    name = request.param
    model = SAMEAutoencoderModel.from_single_file(CHECKPOINTS[name])
    return name, model, load_reference(f"same_{name}")[0]


def _record(record_property, what, err):
    RECORDED_ERRORS[what] = err
    record_property(what, err)
    print(f"{what}: max abs error {err:.3e} x max|ref|")


# ----------------------------------------------------------------------------------------------------------------------
# Parity with the official implementation
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_parity_encode(variant, signals, record_property):
    name, model, ref = variant
    for clip in ("signal", "short"):
        audio = signals[clip][None]
        latents = model.encode(audio, chunked=False).latents
        _record(record_property, f"{name}/{clip}_latents", assert_parity(latents, ref[f"{clip}_latents"], clip))
        patches = _patchify(_pad_to_multiple(audio, model.downsampling_ratio, dim=-1), model.config.patch_size)
        pre = model.encoder(patches)
        err = assert_parity(pre, ref[f"{clip}_encoder_out_pre_bottleneck"], f"{clip} pre-bottleneck")
        _record(record_property, f"{name}/{clip}_encoder_out_pre_bottleneck", err)
        # The config default (`chunked` true, as released) falls back to unchunked below 128 latents.
        assert torch.equal(model.encode(audio).latents, latents)


@torch.no_grad()
def test_parity_decode_noise_off(variant, record_property):
    name, model, ref = variant
    for clip in ("signal", "short"):
        sample = model.decode(ref[f"{clip}_latents"], add_noise=False).sample
        _record(record_property, f"{name}/{clip}_decoded", assert_parity(sample, ref[f"{clip}_decoded"], clip))


@torch.no_grad()
def test_parity_chunked_encode(variant, signals, record_property):
    name, model, ref = variant
    latents = model.encode(signals["signal"][None], chunked=True, chunk_size=8, overlap=4).latents
    err = assert_parity(latents, ref["signal_latents_chunked_cs8_ov4"], "chunked encode")
    _record(record_property, f"{name}/signal_latents_chunked_cs8_ov4", err)


@torch.no_grad()
def test_parity_decode_noise_on_injected(variant, record_property):
    name, model, ref = variant
    noise = (ref["short_decode_noise_draw0"], ref["short_decode_noise_draw1"])
    sample = model.decode(ref["short_latents"], noise=noise).sample
    err = assert_parity(sample, ref["short_decoded_noise_on"], "noise-on decode")
    _record(record_property, f"{name}/short_decoded_noise_on", err)
    # The injected noise matters: without it the output is the noise-off reference, far from the noise-on one.
    off = model.decode(ref["short_latents"], add_noise=False).sample
    assert (off - ref["short_decoded_noise_on"]).abs().max() > 1e-2


def test_length_rules(variant, signals):
    name, model, ref = variant
    for clip in ("signal", "short"):
        samples = signals[clip].shape[-1]
        frames = ref[f"{clip}_latents"].shape[-1]
        assert model.latent_length(samples) == frames
        assert model.decoded_length(frames) == ref[f"{clip}_decoded"].shape[-1]
    assert model.downsampling_ratio == 4096
    assert model.config.sampling_rate == 44100
    # Odd frame counts: SAME-S rounds up to even (official encoder pads to whole attention chunks), SAME-L does not.
    assert model.decoded_length(27) == (28 if name == "small" else 27) * 4096
    with torch.no_grad():
        assert model.decode(torch.zeros(1, 32, 27), add_noise=False).sample.shape[-1] == model.decoded_length(27)


# ----------------------------------------------------------------------------------------------------------------------
# Decode noise
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_decode_noise_determinism_and_order(variant):
    from diffusers.utils.torch_utils import randn_tensor

    name, model, ref = variant
    latents = ref["signal_latents"]
    off1 = model.decode(latents, add_noise=False).sample
    off2 = model.decode(latents, add_noise=False).sample
    assert torch.equal(off1, off2)

    on1 = model.decode(latents, generator=torch.Generator().manual_seed(7)).sample
    on2 = model.decode(latents, generator=torch.Generator().manual_seed(7)).sample
    on3 = model.decode(latents, generator=torch.Generator().manual_seed(8)).sample
    assert torch.equal(on1, on2)
    assert not torch.allclose(on1, off1, atol=1e-4)
    assert not torch.allclose(on1, on3, atol=1e-4)

    # The generator draws are the bottleneck draw (latents' shape), then the decoder draw (frames, stride, width).
    generator = torch.Generator().manual_seed(7)
    draw0 = randn_tensor(latents.shape, generator)
    frames = model.latent_length(latents.shape[-1] * 4096)
    width = model.config.num_attention_heads * model.config.attention_head_dim
    draw1 = randn_tensor((frames, 16, width), generator)
    assert torch.equal(model.decode(latents, noise=(draw0, draw1)).sample, on1)

    # A list of generators gives each batch entry the noise of a batch-1 decode with its own generator.
    batch = model.decode(
        torch.cat([latents, ref["signal_latents"].flip(-1)]),
        generator=[torch.Generator().manual_seed(7), torch.Generator().manual_seed(3)],
    ).sample
    assert torch.allclose(batch[:1], on1, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Locality
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_locality_far_latent_change(variant, monkeypatch):
    name, model, _ = variant
    latents = torch.randn(1, 32, 20, generator=torch.Generator().manual_seed(0))
    changed = latents.clone()
    changed[..., -1] += 3.0

    key_lengths = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(query, key, value, *args, **kwargs):
        key_lengths.append(key.shape[-2])
        return sdpa(query, key, value, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    out = model.decode(latents, add_noise=False).sample
    out_changed = model.decode(changed, add_noise=False).sample
    # Two blocks of +-1 frame each (plus the kernel-3 mapping for SAME-S): frames 0..14 cannot see frame 19.
    far = 15 * 4096
    assert torch.allclose(out[..., :far], out_changed[..., :far], atol=1e-6, rtol=0)
    assert (out[..., -4096:] - out_changed[..., -4096:]).abs().max() > 1e-3
    # Attention is local: no call sees the whole 20 * 17 = 340-token sequence as keys.
    assert key_lengths and max(key_lengths) < 20 * 17
    assert max(key_lengths) <= (34 if name == "small" else 8 * 17 + 2 * 17)


@torch.no_grad()
def test_chunked_decode_matches_unchunked(variant):
    name, model, _ = variant
    latents = torch.randn(1, 32, 20, generator=torch.Generator().manual_seed(1))
    full = model.decode(latents, add_noise=False, chunked=False).sample
    chunked = model.decode(latents, add_noise=False, chunked=True, chunk_size=8, overlap=4).sample
    # The receptive field (+-2 frames) fits in the dropped overlap; SAME-L differs only by RoPE rounding.
    assert chunked.shape == full.shape
    assert torch.allclose(chunked, full, atol=1e-5 * full.abs().max().item(), rtol=0)
    # With no overlap the splices are visible.
    no_overlap = model.decode(latents, add_noise=False, chunked=True, chunk_size=8, overlap=0).sample
    assert (no_overlap - full).abs().max() > 1e-3


@torch.no_grad()
def test_decode_reach_is_the_receptive_field(variant):
    """`_decode_reach` (the chunked decode's halo) is the decoder's exact receptive field: a change to latent frame `j`
    moves the audio of frames `j - reach .. j + reach` only, and, for some `j` of either chunk parity, that far."""
    name, model, _ = variant
    reach = model._decode_reach()
    assert reach == (3 if name == "small" else 2)  # SAME-S: 2 chunk passes of +-1 frame + kernel 3; SAME-L: 2 blocks
    frames, ratio = 2 * reach + 12, model.downsampling_ratio
    latents = torch.randn(1, 32, frames, generator=torch.Generator().manual_seed(2))
    base = model.decode(latents, add_noise=False, chunked=False).sample
    widest = 0
    for j in range(reach + 2, reach + 6):
        changed = latents.clone()
        changed[..., j] += 3.0
        out = model.decode(changed, add_noise=False, chunked=False).sample
        moved = (out - base).abs().amax(dim=(0, 1)).reshape(frames, ratio).amax(dim=-1) > 1e-6 * base.abs().max()
        offsets = torch.nonzero(moved).flatten() - j
        assert offsets.numel() and offsets.abs().max() <= reach, (j, offsets.tolist())
        widest = max(widest, int(offsets.abs().max()))
    assert widest == reach


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_fast_paths_are_bit_identical(variant, signals, dtype):
    """Outside autograd the DyT norms and RoPE run in place on their fresh buffers: encode and decode equal the
    autograd path bit for bit, in float32 and in bfloat16."""
    name, model, _ = variant
    model = model.to(dtype)
    try:
        audio = signals["signal"][None].to(dtype)
        latents = torch.randn(1, 32, 40, generator=torch.Generator().manual_seed(4)).to(dtype)
        with torch.no_grad():
            fast = (
                model.encode(audio).latents,
                model.decode(latents, generator=torch.Generator().manual_seed(1)).sample,
            )
        with torch.enable_grad():
            plain = (
                model.encode(audio).latents,
                model.decode(latents, generator=torch.Generator().manual_seed(1)).sample,
            )
        for a, b in zip(fast, plain):
            assert a.dtype == dtype and torch.equal(a, b.detach())
    finally:
        model.to(torch.float32)


def _naive_chunked_decode(model, latents, generator, add_noise, chunk_size, overlap):
    """The official chunked decode written plainly: every window decoded whole, spliced hard, last one written last."""
    total, ratio = latents.shape[-1], model.downsampling_ratio
    starts = list(range(0, total - chunk_size + 1, chunk_size - overlap))
    if starts[-1] != total - chunk_size:
        starts.append(total - chunk_size)
    out = torch.zeros(latents.shape[0], 2, total * ratio)
    for i, start in enumerate(starts):
        chunk = model._decode(latents[..., start : start + chunk_size], generator, add_noise)
        left = 0 if i == 0 else (overlap // 2) * ratio
        right = chunk_size * ratio if i == len(starts) - 1 else (chunk_size - overlap // 2) * ratio
        out[..., start * ratio + left : start * ratio + right] = chunk[..., left:right]
    return out


@torch.no_grad()
@pytest.mark.parametrize("add_noise", [False, True])
@pytest.mark.parametrize("frames,chunk_size,overlap", [(45, 16, 8), (61, 20, 12), (40, 16, 4)])
def test_chunked_decode_skips_overlap_exactly(variant, add_noise, frames, chunk_size, overlap, monkeypatch):
    """Decoding only the kept part of each window (plus its halo) gives the official splice, noise draws included."""
    name, model, _ = variant
    latents = torch.randn(2, 32, frames, generator=torch.Generator().manual_seed(frames))
    reference = _naive_chunked_decode(model, latents, torch.Generator().manual_seed(7), add_noise, chunk_size, overlap)

    decoded_frames = []
    decode = model._decode

    def recording_decode(window, *args, **kwargs):
        decoded_frames.append(window.shape[-1])
        return decode(window, *args, **kwargs)

    monkeypatch.setattr(model, "_decode", recording_decode)
    ours = model.decode(
        latents,
        generator=torch.Generator().manual_seed(7),
        add_noise=add_noise,
        chunk_size=chunk_size,
        overlap=overlap,
        chunked=True,
    ).sample
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, atol=1e-5 * reference.abs().max().item(), rtol=0)
    # Work is saved where the receptive field is narrower than the dropped overlap (SAME-S: 3 frames; SAME-L tiny: 2).
    if model._decode_reach() < overlap // 2:
        assert sum(decoded_frames) < len(decoded_frames) * chunk_size


@torch.no_grad()
@pytest.mark.parametrize("add_noise", [False, True])
@pytest.mark.parametrize("frames,output_frames", [(61, 40), (61, 47), (61, 3), (61, 61)])
def test_decode_output_frames_is_the_full_decode_trimmed(variant, add_noise, frames, output_frames, monkeypatch):
    """`output_frames` (a pipeline trimming its headroom): the samples before it equal the official full chunked decode
    (noise draws included), the rest are 0, and the windows' work past it is skipped."""
    name, model, _ = variant
    latents = torch.randn(1, 32, frames, generator=torch.Generator().manual_seed(3))
    reference = _naive_chunked_decode(model, latents, torch.Generator().manual_seed(5), add_noise, 20, 12)
    decoded_frames = []
    decode = model._decode
    monkeypatch.setattr(model, "_decode", lambda w, *a, **k: decoded_frames.append(w.shape[-1]) or decode(w, *a, **k))

    def run(frames_wanted):
        decoded_frames.clear()
        out = model.decode(
            latents, generator=torch.Generator().manual_seed(5), add_noise=add_noise, chunked=True, chunk_size=20,
            overlap=12, output_frames=frames_wanted,
        ).sample  # fmt: skip
        return out, sum(decoded_frames)

    full, full_work = run(None)
    trimmed, trimmed_work = run(output_frames)
    cut = output_frames * model.downsampling_ratio
    assert trimmed.shape == reference.shape
    assert torch.allclose(trimmed[..., :cut], reference[..., :cut], atol=1e-5 * reference.abs().max().item(), rtol=0)
    assert (trimmed[..., cut:] == 0).all()
    assert torch.equal(full, run(frames)[0])
    if output_frames < frames - 20:
        assert trimmed_work < full_work
    for bad in (0, frames + 1, 2.5, True):
        with pytest.raises(ValueError, match="output_frames"):
            model.decode(latents, add_noise=False, output_frames=bad)


# ----------------------------------------------------------------------------------------------------------------------
# Full-size layout (meta device)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("manifest_name", ["same_s_keys", "same_l_keys"])
def test_full_size_layout_on_meta(manifest_name):
    with open(os.path.join(MANIFESTS, f"{manifest_name}.json")) as f:
        manifest = json.load(f)
    official = {
        "sample_rate": 44100,
        "model": {"pretransform": {"type": "autoencoder", "chunked": True, "config": manifest["config"]}},
    }
    config = same_config_from_official(official)
    with torch.device("meta"):
        model = SAMEAutoencoderModel.from_config(config)

    official_sd = {key: torch.empty(shape, device="meta") for key, shape in manifest["keys"].items()}
    converted = convert_official_same_state_dict(official_sd)
    ours = model.state_dict()
    assert len(converted) == len(official_sd) == manifest["n_tensors"]  # one to one
    assert set(converted) == set(ours)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}

    n_parameters = sum(p.numel() for p in model.parameters())
    assert n_parameters == manifest["n_params_parameters"]
    assert n_parameters == {"same_s_keys": 108_244_529, "same_l_keys": 852_127_073}[manifest_name]
    assert sum(t.numel() for t in ours.values()) == manifest["n_elems_state_dict"]

    if manifest_name == "same_l_keys":
        # The config defaults are the released SAME-L.
        with torch.device("meta"):
            default = SAMEAutoencoderModel()
        assert {k: default.config[k] for k in config} == config


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def _write_checkpoint(folder, model_config, state_dict):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "model_config.json"), "w") as f:
        json.dump(model_config, f)
    save_file(state_dict, os.path.join(folder, "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def small_official():
    with open(os.path.join(SMALL_CKPT, "model_config.json")) as f:
        config = json.load(f)
    return config, load_file(os.path.join(SMALL_CKPT, "model.safetensors"))


def test_standalone_same_repo_loads(tmp_path, small_official, signals):
    config, state_dict = small_official
    standalone_config = {"sample_rate": 44100, "model": config["model"]["pretransform"]["config"]}
    bare = {k[len("pretransform.model.") :]: v for k, v in state_dict.items() if k.startswith("pretransform.model.")}
    folder = _write_checkpoint(tmp_path / "same_s", standalone_config, bare)
    model = SAMEAutoencoderModel.from_single_file(os.path.join(folder, "model.safetensors"))
    assert model.config.chunked is False  # official `AutoencoderModel` default for standalone SAME repos
    reference = SAMEAutoencoderModel.from_single_file(SMALL_CKPT)
    with torch.no_grad():
        audio = signals["short"][None]
        assert torch.equal(model.encode(audio).latents, reference.encode(audio).latents)


@pytest.mark.parametrize("defect", ["missing", "mis_shaped", "extra", "unknown"])
def test_strict_loading_names_the_key(tmp_path, small_official, defect):
    config, state_dict = small_official
    state_dict = dict(state_dict)
    key = "pretransform.model.decoder.layers.3.transformers.1.self_attn.to_out.weight"
    if defect == "missing":
        del state_dict[key]
        expected = "decoder.resampler.transformer_blocks.1.attn.to_out.weight"
    elif defect == "mis_shaped":
        state_dict[key] = torch.zeros(3, 3)
        expected = "decoder.resampler.transformer_blocks.1.attn.to_out.weight"
    elif defect == "extra":
        state_dict["pretransform.model.encoder.layers.0.transformers.7.pre_norm.alpha"] = torch.ones(1)
        expected = "encoder.resampler.transformer_blocks.7.norm1.alpha"
    else:
        state_dict["pretransform.model.encoder.layers.5.weight"] = torch.ones(1)
        expected = "encoder.layers.5.weight"
    folder = _write_checkpoint(tmp_path / defect, config, state_dict)
    with pytest.raises(ValueError, match=expected.replace(".", r"\.")):
        SAMEAutoencoderModel.from_single_file(folder)


def test_truncated_safetensors_raises(tmp_path):
    folder = tmp_path / "truncated"
    folder.mkdir()
    shutil.copy(os.path.join(SMALL_CKPT, "model_config.json"), folder / "model_config.json")
    with open(os.path.join(SMALL_CKPT, "model.safetensors"), "rb") as f:
        data = f.read()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        SAMEAutoencoderModel.from_single_file(str(folder))


def test_unknown_config_override_raises():
    with pytest.raises(ValueError, match="num_layers"):
        SAMEAutoencoderModel.from_single_file(SMALL_CKPT, num_layers=3)
    model = SAMEAutoencoderModel.from_single_file(SMALL_CKPT, chunked=False)
    assert model.config.chunked is False


def test_unsupported_official_config_raises(small_official):
    config, _ = small_official
    config = json.loads(json.dumps(config))
    config["model"]["pretransform"]["config"]["decoder"]["config"]["conformer"] = True
    with pytest.raises(ValueError, match="conformer"):
        same_config_from_official(config)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m.encode(torch.zeros(2, 4096)), "`audio`.*\\(2, 4096\\).*audio\\[None\\]"),
        (lambda m: m.encode(torch.zeros(1, 1, 4096)), "`audio`.*2 channels.*\\(1, 1, 4096\\)"),
        (lambda m: m.encode(torch.zeros(1, 2, 4096, dtype=torch.int16)), "`audio`.*floating.*int16"),
        (lambda m: m.encode(torch.zeros(1, 2, 0)), "`audio` must not be empty"),
        (lambda m: m.encode([[0.0]]), "`audio` must be a torch.Tensor"),
        (lambda m: m.encode(torch.zeros(1, 2, 4096), chunk_size=0), "`chunk_size`"),
        (lambda m: m.encode(torch.zeros(1, 2, 4096), chunk_size=8, overlap=8), "`overlap`"),
        (lambda m: m.decode(torch.zeros(1, 16, 4)), "`latents`.*32 channels.*\\(1, 16, 4\\)"),
        (lambda m: m.decode(torch.zeros(1, 32, 4, dtype=torch.long)), "`latents`.*floating"),
        (lambda m: m.decode(torch.zeros(1, 32, 0)), "`latents` must not be empty"),
        (lambda m: m.decode(torch.zeros(1, 32, 2), noise=(torch.zeros(1, 32, 3), None)), "`noise\\[0\\]`"),
        (
            lambda m: m.decode(torch.zeros(1, 32, 8), chunked=True, chunk_size=4, overlap=0, noise=(None, None)),
            "`noise`",
        ),
    ],
)
def test_bad_inputs_raise(call, match):
    model = _tiny_model()
    with pytest.raises(ValueError, match=match):
        call(model)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="`sliding_window`.*`attention_chunk_size`"):
        SAMEAutoencoderModel(sliding_window=None, attention_chunk_size=None)
    with pytest.raises(ValueError, match="`attention_chunk_size`"):
        SAMEAutoencoderModel(sliding_window=None, attention_chunk_size=24, num_encoder_layers=0, num_decoder_layers=0)


_TINY_MODELS = {}


def _tiny_model(name="small"):
    if name not in _TINY_MODELS:
        _TINY_MODELS[name] = SAMEAutoencoderModel.from_single_file(CHECKPOINTS[name])
    return _TINY_MODELS[name]


# ----------------------------------------------------------------------------------------------------------------------
# Upstream diffusers state dicts
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_upstream_state_dict_conversion():
    from diffusers import AutoencoderSAME

    torch.manual_seed(0)
    upstream = AutoencoderSAME(
        encoder_channels=6,
        encoder_c_mults=(4,),
        encoder_transformer_depths=(2,),
        latent_dim=8,
        dim_heads=12,
        decoder_sinusoidal_blocks=(2,),
    ).eval()
    for name, param in upstream.named_parameters():  # non-trivial weights (the zero-inits would hide errors)
        if name.endswith("alpha"):
            param.copy_(4 * (1 + 0.1 * torch.randn_like(param)).abs())
        elif name.endswith(("weight_g", "running_std")):
            param.copy_((1 + 0.1 * torch.randn_like(param)).abs())
        elif param.ndim >= 2:
            param.copy_(torch.randn_like(param) / param[0].numel() ** 0.5)
        else:
            param.copy_(0.3 * torch.randn_like(param))
    model = SAMEAutoencoderModel.from_config(same_config_from_upstream(dict(upstream.config))).eval()
    model.load_state_dict(convert_upstream_same_state_dict(upstream.state_dict(), dict(upstream.config)), strict=True)

    audio = torch.randn(1, 2, 5 * 4096)
    latents = upstream.encode(audio).latents
    assert torch.allclose(model.encode(audio, chunked=False).latents, latents, atol=1e-5)
    expected = upstream.decode(latents).sample
    assert torch.allclose(model.decode(latents, add_noise=False).sample, expected, atol=1e-5 * expected.abs().max())

    with pytest.raises(ValueError, match="SAME-S.*chunked attention"):
        convert_upstream_same_state_dict({}, {"encoder_channels": 128, "encoder_transformer_depths": (6,)})
    with torch.device("meta"):
        same_s = AutoencoderSAME(encoder_channels=128, encoder_transformer_depths=(6,))
    with pytest.raises(ValueError, match="SAME-S"):
        convert_upstream_same_state_dict(same_s.state_dict())


# ----------------------------------------------------------------------------------------------------------------------
# save_pretrained / from_pretrained, training
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_save_load_round_trip(variant, tmp_path, signals):
    name, model, ref = variant
    model.save_pretrained(tmp_path / name)
    loaded = SAMEAutoencoderModel.from_pretrained(tmp_path / name)
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == {
        k: v for k, v in model.config.items() if not k.startswith("_")
    }
    original_sd, loaded_sd = model.state_dict(), loaded.state_dict()
    assert original_sd.keys() == loaded_sd.keys()
    assert all(torch.equal(original_sd[k], loaded_sd[k]) for k in original_sd)
    assert not loaded.bottleneck.running_std.requires_grad and not loaded.bottleneck.scale.requires_grad
    audio = signals["signal"][None]
    assert torch.equal(loaded.encode(audio).latents, model.encode(audio).latents)
    latents = ref["signal_latents"]
    assert torch.equal(loaded.decode(latents, add_noise=False).sample, model.decode(latents, add_noise=False).sample)
    out = loaded.encode(audio, return_dict=False)
    assert isinstance(out, tuple) and isinstance(model.encode(audio), SAMEAutoencoderOutput)
    assert isinstance(model.decode(latents, add_noise=False), SAMEDecoderOutput)


@pytest.mark.parametrize("name", ["small", "medium_base"])
def test_gradient_checkpointing_same_gradients(name, signals):
    model = SAMEAutoencoderModel.from_single_file(CHECKPOINTS[name]).train()
    audio = signals["short"][None]

    def gradients():
        model.zero_grad()
        sample = model(audio, add_noise=False).sample
        sample.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference = gradients()
    model.enable_gradient_checkpointing()
    assert model.encoder.resampler.gradient_checkpointing and model.decoder.resampler.gradient_checkpointing
    checkpointed = gradients()
    assert reference.keys() == checkpointed.keys() and len(reference) > 0
    assert "encoder.resampler.transformer_blocks.0.attn.to_qkv.weight" in reference
    for key in reference:
        assert torch.allclose(reference[key], checkpointed[key], atol=1e-6, rtol=1e-5), key


def test_bottleneck_running_std_ema():
    model = SAMEAutoencoderModel.from_single_file(SMALL_CKPT, freeze_bottleneck=False)
    audio = torch.randn(1, 2, 2 * 4096, generator=torch.Generator().manual_seed(0))
    before = model.bottleneck.running_std.detach().clone()
    with torch.no_grad():
        model.eval()
        model.encode(audio)
        assert torch.equal(model.bottleneck.running_std, before)  # eval: no update
        model.train()
        patches = _patchify(audio, 256)
        affine = model.encoder(patches) * model.bottleneck.scale + model.bottleneck.bias
        latents = model.encode(audio).latents
    expected = (before * 0.999 + affine.std() * 0.001).clamp(min=1e-4)
    assert torch.allclose(model.bottleneck.running_std, expected)
    assert torch.allclose(latents, affine / expected)
    assert model.bottleneck.scale.requires_grad

    frozen = SAMEAutoencoderModel.from_single_file(SMALL_CKPT).train()  # released: freeze = true
    with torch.no_grad():
        frozen.encode(audio)
    assert torch.equal(frozen.bottleneck.running_std, before)
    assert not frozen.bottleneck.scale.requires_grad
