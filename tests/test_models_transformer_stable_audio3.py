"""StableAudio3Transformer: parity with the official DiT references, conversion, strict loading and model checks.

Measured parity errors (max abs error / max |reference|, fp32, 2-core CPU, torch 2.13):
- every single-forward `v_t{0,1}_{local0,inpaint}[_padmask]` output, small and medium_base: 0.0 (bit-identical);
- CFG/APG outputs through `apply_guidance`, cond and uncond batched like the official code: 0.0;
- varlen masking vs `v_t0_local0_sample1_cropped`: 2.1e-07 (small), 3.4e-07 (medium_base).
"""

import json
import math
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusers_sa3.conversion.convert_transformer import (
    convert_official_transformer_state_dict,
    convert_upstream_transformer_state_dict,
    transformer_config_from_official,
    transformer_config_from_upstream,
)
from diffusers_sa3.conversion.official import load_state_dict_strict
from diffusers_sa3.models.transformer_stable_audio3 import StableAudio3Transformer
from diffusers_sa3.pipelines.guidance import apply_guidance
from utils import MANIFESTS, MEDIUM_BASE_CKPT, SMALL_CKPT, assert_parity, load_reference


TINY_CFG = {
    "in_channels": 8,
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 64,
    "cross_attention_dim": 32,
    "mlp_ratio": 2.0,
    "num_memory_tokens": 4,
    "use_differential_attention": True,
}

CHECKPOINTS = {"small": SMALL_CKPT, "medium_base": MEDIUM_BASE_CKPT}
SMALL_DIT_PARAMETERS = 459_130_880  # official counts (DiT only), reference doc §1.4 and the manifests
MEDIUM_DIT_PARAMETERS = 1_453_170_176
CONDITIONER_PARAMETERS = 768 + 197_376  # prompt padding embedding + seconds_total Linear(256 -> 768)


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-zero weights everywhere (the zero-initialised outputs too), with sane magnitudes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            r = torch.randn(param.shape, generator=generator)
            if name.endswith(("scale_shift_table", "to_scale_shift_gate")):
                value = r / math.sqrt(param.shape[0] / 6)
            elif name.endswith(("memory_tokens", "padding_embedding")):
                value = r
            elif param.ndim >= 2:
                value = r / math.sqrt(param[0].numel())
            elif name.endswith(("gamma", "weight")):
                value = 1 + 0.1 * r
            else:
                value = 0.02 * r
            param.copy_(value)
    return module


def _public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _tiny_model(seed: int = 0, **overrides) -> StableAudio3Transformer:
    return _randomize(StableAudio3Transformer(**{**TINY_CFG, **overrides}), seed).eval()


def _tiny_inputs(batch_size=2, frames=12, text_tokens=6, seed=1):
    generator = torch.Generator().manual_seed(seed)
    inpaint_mask = (torch.rand(batch_size, 1, frames, generator=generator) > 0.5).float()
    return {
        "hidden_states": torch.randn(batch_size, TINY_CFG["in_channels"], frames, generator=generator),
        "timestep": torch.rand(batch_size, generator=generator),
        "encoder_hidden_states": torch.randn(
            batch_size, text_tokens, TINY_CFG["cross_attention_dim"], generator=generator
        ),
        "encoder_attention_mask": torch.arange(text_tokens)[None, :] < torch.tensor([[text_tokens], [3]])[:batch_size],
        "duration": torch.tensor([12.5, 400.0])[:batch_size],
        "inpaint_mask": inpaint_mask,
        "inpaint_latents": torch.randn(batch_size, TINY_CFG["in_channels"], frames, generator=generator)
        * inpaint_mask,
    }


@pytest.fixture(scope="module")
def official_models():
    return {name: StableAudio3Transformer.from_single_file(path) for name, path in CHECKPOINTS.items()}


def _official_forward(model, ref, timestep, local, padding_mask=None, context=None):
    kwargs = {}
    if local == "inpaint":
        cond = ref["local_add_cond_inpaint"]
        kwargs = {"inpaint_mask": cond[:, :1], "inpaint_latents": cond[:, 1:]}
    else:
        assert not ref["local_add_cond_zero"].any()
    with torch.no_grad():
        return model(
            ref["x"],
            timestep,
            cross_attention_context=ref["cross_attn_cond"] if context is None else context,
            global_condition=ref["global_cond"],
            attention_mask=padding_mask,
            **kwargs,
        ).sample


# ---------------------------------------------------------------------------------------------------------------------
# Parity with the official references
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", list(CHECKPOINTS))
@pytest.mark.parametrize("time_key", ["t0", "t1"])
@pytest.mark.parametrize("local", ["local0", "inpaint"])
@pytest.mark.parametrize("padmask", [False, True])
def test_official_forward_parity(official_models, checkpoint, time_key, local, padmask):
    model = official_models[checkpoint]
    ref, _ = load_reference(f"dit_{checkpoint}")
    # The references ran the official CPU path: padding by V-zeroing.
    model.set_padding_semantics("value_zeroing")
    try:
        out = _official_forward(model, ref, ref[time_key], local, ref["padding_mask"] if padmask else None)
    finally:
        model.set_padding_semantics("varlen")
    name = f"v_{time_key}_{local}" + ("_padmask" if padmask else "")
    assert_parity(out, ref[name], f"{checkpoint} {name}")


@pytest.mark.parametrize("checkpoint", list(CHECKPOINTS))
def test_official_varlen_matches_cropped_sample(official_models, checkpoint):
    model = official_models[checkpoint]
    ref, info = load_reference(f"dit_{checkpoint}")
    valid = info["valid_lengths"][1]
    out = _official_forward(model, ref, ref["t0"], "local0", ref["padding_mask"])
    assert_parity(out[1:2, :, :valid], ref["v_t0_local0_sample1_cropped"], f"{checkpoint} varlen sample 1")
    assert (out[1, :, valid:] == 0).all()
    # The official CPU semantics give a different answer on the same valid frames (what varlen fixes).
    model.set_padding_semantics("value_zeroing")
    try:
        zeroed = _official_forward(model, ref, ref["t0"], "local0", ref["padding_mask"])
    finally:
        model.set_padding_semantics("varlen")
    with pytest.raises(AssertionError):
        assert_parity(zeroed[1:2, :, :valid], ref["v_t0_local0_sample1_cropped"], "value zeroing")


CFG_CASES = {
    "v_cfg7_apg1_padmask": ("t0", "local0", True, 7.0, 1.0, "zeros"),
    "v_cfg7_apg1": ("t0", "local0", False, 7.0, 1.0, "zeros"),
    "v_cfg7_apg0": ("t0", "local0", False, 7.0, 0.0, "zeros"),
    "v_cfg7_apg05_inpaint_padmask": ("t0", "inpaint", True, 7.0, 0.5, "zeros"),
    "v_cfg4_apg1_negative": ("t1", "local0", True, 4.0, 1.0, "negative"),
}


@pytest.mark.parametrize("checkpoint", list(CHECKPOINTS))
@pytest.mark.parametrize("name", list(CFG_CASES))
def test_official_cfg_apg_parity(official_models, checkpoint, name):
    time_key, local, padmask, guidance_scale, apg_scale, uncond = CFG_CASES[name]
    model = official_models[checkpoint]
    ref, _ = load_reference(f"dit_{checkpoint}")
    context = ref["cross_attn_cond"]
    if uncond == "zeros":
        uncond_context = torch.zeros_like(context)
    else:  # negative prompt: its masked tokens become 0 (official `dit.py:515-523`)
        keep = ref["negative_cross_attn_mask"].bool()[:, :, None]
        uncond_context = torch.where(keep, ref["negative_cross_attn_cond"], 0.0)
    padding_mask = ref["padding_mask"] if padmask else None
    # Batched [cond, uncond] exactly like the official forward (bit-identical; separate calls differ by ~1e-6).
    doubled = {
        k: torch.cat([ref[k], ref[k]]) for k in ("x", "global_cond", "local_add_cond_inpaint", "local_add_cond_zero")
    }
    doubled["cross_attn_cond"] = torch.cat([context, uncond_context])
    model.set_padding_semantics("value_zeroing")
    try:
        out = _official_forward(
            model,
            doubled,
            torch.cat([ref[time_key], ref[time_key]]),
            local,
            None if padding_mask is None else torch.cat([padding_mask, padding_mask]),
        )
    finally:
        model.set_padding_semantics("varlen")
    velocity_cond, velocity_uncond = out.chunk(2)
    guided = apply_guidance(
        ref["x"], ref[time_key], velocity_cond, velocity_uncond, guidance_scale, apg_scale, valid_mask=padding_mask
    )
    assert_parity(guided, ref[name], f"{checkpoint} {name}")


def test_guidance_scale_one_and_t0_limit():
    generator = torch.Generator().manual_seed(0)
    sample, v_c, v_u = (torch.randn(2, 4, 6, generator=generator) for _ in range(3))
    assert apply_guidance(sample, torch.tensor([0.5, 0.5]), v_c, v_u, 1.0) is v_c
    # At t = 0 the official formula is 0/0; we return its limit, which a tiny t approaches.
    at_zero = apply_guidance(sample, torch.tensor([0.0, 0.3]), v_c, v_u, 5.0, apg_scale=1.0)
    near_zero = apply_guidance(sample.double(), torch.tensor([1e-9, 0.3]), v_c.double(), v_u.double(), 5.0)
    assert torch.isfinite(at_zero).all()
    torch.testing.assert_close(at_zero.double(), near_zero, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="apg_scale"):
        apply_guidance(sample, 0.5, v_c, v_u, 5.0, apg_scale=2.0)


# ---------------------------------------------------------------------------------------------------------------------
# Variable length
# ---------------------------------------------------------------------------------------------------------------------


def test_varlen_padded_batch_equals_samples_alone():
    model = _tiny_model()
    inputs = _tiny_inputs(frames=12)
    lengths = [12, 7]
    attention_mask = torch.arange(12)[None, :] < torch.tensor(lengths)[:, None]
    # Garbage in the padded frames must not leak into the valid ones.
    inputs["hidden_states"] = torch.where(attention_mask[:, None], inputs["hidden_states"], 100.0)
    with torch.no_grad():
        batched = model(**inputs, attention_mask=attention_mask).sample
        for i, length in enumerate(lengths):
            alone = {
                k: (
                    v[i : i + 1, ..., :length]
                    if k in ("hidden_states", "inpaint_mask", "inpaint_latents")
                    else v[i : i + 1]
                )
                for k, v in inputs.items()
            }
            single = model(**alone).sample
            assert_parity(batched[i : i + 1, :, :length], single, f"sample {i}")
            assert (batched[i, :, length:] == 0).all()


def test_padding_semantics_validation():
    model = _tiny_model()
    with pytest.raises(ValueError, match="semantics"):
        model.set_padding_semantics("flash")


# ---------------------------------------------------------------------------------------------------------------------
# Conversion, full-size key sets and parameter counts (meta device)
# ---------------------------------------------------------------------------------------------------------------------


def _official_like_config(dit_config: dict) -> dict:
    return {
        "model_type": "diffusion_cond",
        "model": {
            "io_channels": dit_config["io_channels"],
            "conditioning": {
                "cond_dim": 768,
                "configs": [
                    {"id": "prompt", "type": "t5gemma", "config": {"max_length": 256, "padding_mode": "learned"}},
                    {
                        "id": "seconds_total",
                        "type": "number",
                        "config": {"min_val": 0, "max_val": 384, "fourier_features_type": "expo"},
                    },
                ],
            },
            "diffusion": {
                "type": "dit",
                "cross_attention_cond_ids": ["prompt", "seconds_total"],
                "global_cond_ids": ["seconds_total"],
                "local_add_cond_ids": ["inpaint_mask", "inpaint_masked_input"],
                "config": dit_config,
            },
        },
    }


@pytest.mark.parametrize(
    "variant,dit_parameters", [("small", SMALL_DIT_PARAMETERS), ("medium", MEDIUM_DIT_PARAMETERS)]
)
def test_full_size_keys_and_parameter_counts(variant, dit_parameters):
    with open(os.path.join(MANIFESTS, f"dit_{variant}_keys.json")) as f:
        manifest = json.load(f)
    assert manifest["n_params_parameters"] == dit_parameters
    # Manifest keys are relative to the DiTWrapper (`model.`); the checkpoint adds `model.` once more.
    official = {f"model.{k}": torch.empty(shape, device="meta") for k, shape in manifest["keys"].items()}
    assert len(official) == manifest["n_tensors"]
    official["conditioner.conditioners.prompt.padding_embedding"] = torch.empty(768, device="meta")
    for k, shape in manifest["seconds_total_keys"].items():
        official[f"conditioner.conditioners.seconds_total.{k}"] = torch.empty(shape, device="meta")

    config = transformer_config_from_official(_official_like_config(manifest["config"]))
    with torch.device("meta"):
        model = StableAudio3Transformer(**config)
    converted = convert_official_transformer_state_dict(official)
    assert len(converted) == len(official)  # one to one
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in converted.items()}

    # Our module also owns the conditioner's padding embedding and seconds Linear; the official count is the DiT only.
    conditioner = model.prompt_padding_embedding.numel() + sum(p.numel() for p in model.duration_embedder.parameters())
    assert conditioner == CONDITIONER_PARAMETERS == 768 + manifest["seconds_total_conditioner_params"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable - conditioner == dit_parameters
    if variant == "small":  # the defaults of `__init__` are the small-music checkpoint
        with torch.device("meta"):
            default = StableAudio3Transformer()
        assert _public(default.config) == _public(model.config)


def test_official_config_rejects_unsupported_switches():
    with open(os.path.join(SMALL_CKPT, "model_config.json")) as f:
        config = json.load(f)
    config["model"]["diffusion"]["config"]["global_cond_type"] = "prepend"
    with pytest.raises(ValueError, match="global_cond_type"):
        transformer_config_from_official(config)


# ---------------------------------------------------------------------------------------------------------------------
# Strict loading
# ---------------------------------------------------------------------------------------------------------------------


def _write_checkpoint(tmp_path, state_dict):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(os.path.join(SMALL_CKPT, "model_config.json"), folder / "model_config.json")
    save_file(state_dict, str(folder / "model.safetensors"))
    return folder


def test_from_single_file_accepts_the_weights_file():
    model = StableAudio3Transformer.from_single_file(os.path.join(SMALL_CKPT, "model.safetensors"))
    assert model.config.num_layers == 2 and not model.config.use_differential_attention
    official = load_file(os.path.join(SMALL_CKPT, "model.safetensors"))
    torch.testing.assert_close(
        model.transformer_blocks[1].attn1.to_qkv.weight,
        official["model.model.transformer.layers.1.self_attn.to_qkv.weight"],
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("corruption", ["missing", "unexpected", "mis_shaped", "truncated"])
def test_from_single_file_strict_errors(tmp_path, corruption):
    state_dict = load_file(os.path.join(SMALL_CKPT, "model.safetensors"))
    key = "model.model.transformer.layers.1.cross_attn.to_kv.weight"
    if corruption == "missing":
        del state_dict[key]
    elif corruption == "unexpected":
        state_dict["model.model.transformer.layers.1.extra.weight"] = torch.zeros(3)
    elif corruption == "mis_shaped":
        state_dict[key] = state_dict[key][:-1]
    folder = _write_checkpoint(tmp_path, state_dict)
    if corruption == "truncated":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as error:
        StableAudio3Transformer.from_single_file(folder)
    message = str(error.value)
    if corruption == "missing":
        assert "missing" in message and "transformer_blocks.1.attn2.to_kv.weight" in message
    elif corruption == "unexpected":
        assert "model.model.transformer.layers.1.extra.weight" in message
    elif corruption == "mis_shaped":
        assert "mis-shaped" in message and "transformer_blocks.1.attn2.to_kv.weight" in message
    else:
        assert "truncated" in message and "model.model.transformer" in message


def test_conversion_requires_the_conditioner_tensors():
    state_dict = load_file(os.path.join(SMALL_CKPT, "model.safetensors"))
    del state_dict["conditioner.conditioners.prompt.padding_embedding"]
    with pytest.raises(ValueError, match="conditioner.conditioners.prompt.padding_embedding"):
        convert_official_transformer_state_dict(state_dict, ignore_prefixes=("pretransform.",))
    with pytest.raises(ValueError, match="pretransform.model"):  # not ignored unless asked
        convert_official_transformer_state_dict(load_file(os.path.join(SMALL_CKPT, "model.safetensors")))


# ---------------------------------------------------------------------------------------------------------------------
# Model checks on the tiny config
# ---------------------------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    model = _tiny_model()
    model.save_pretrained(tmp_path)
    loaded = StableAudio3Transformer.from_pretrained(tmp_path).eval()
    assert _public(loaded.config) == _public(model.config)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    inputs = _tiny_inputs()
    with torch.no_grad():
        assert torch.equal(model(**inputs).sample, loaded(**inputs).sample)


def test_output_shape_tuple_and_precomputed_conditioning():
    model = _tiny_model()
    inputs = _tiny_inputs()
    with torch.no_grad():
        out = model(**inputs).sample
        as_tuple = model(**inputs, return_dict=False)[0]
        context, global_condition = model.encode_conditioning(
            inputs["encoder_hidden_states"], inputs["encoder_attention_mask"], inputs["duration"]
        )
        rest = {
            k: v for k, v in inputs.items() if k not in ("encoder_hidden_states", "encoder_attention_mask", "duration")
        }
        precomputed = model(**rest, cross_attention_context=context, global_condition=global_condition).sample
        scalar_t = model(**{**inputs, "timestep": 0.3}).sample
        vector_t = model(**{**inputs, "timestep": torch.tensor([0.3, 0.3])}).sample
    assert out.shape == inputs["hidden_states"].shape
    assert torch.equal(out, as_tuple) and torch.equal(out, precomputed) and torch.equal(scalar_t, vector_t)
    assert context.shape == (2, 7, 32) and global_condition.shape == (2, 32)
    assert torch.equal(context[:, -1], global_condition)
    assert torch.equal(context[1, 3:6], model.prompt_padding_embedding.detach().expand(3, -1))
    zeros_context, _ = model.encode_conditioning(
        inputs["encoder_hidden_states"], inputs["encoder_attention_mask"], inputs["duration"], prompt_padding="zeros"
    )
    assert (zeros_context[1, 3:6] == 0).all() and torch.equal(zeros_context[0], context[0])
    # Text-to-audio = all-zero inpaint conditioning (the per-block `to_local_embed` is always applied).
    no_inpaint = {k: v for k, v in inputs.items() if k not in ("inpaint_mask", "inpaint_latents")}
    zero_inpaint = {**no_inpaint, "inpaint_mask": torch.zeros(2, 1, 12), "inpaint_latents": torch.zeros(2, 8, 12)}
    with torch.no_grad():
        assert torch.equal(model(**no_inpaint).sample, model(**zero_inpaint).sample)


def test_gradient_checkpointing_parity():
    inputs = _tiny_inputs()
    inputs["attention_mask"] = torch.arange(12)[None, :] < torch.tensor([[12], [9]])
    grads = []
    for checkpointing in (False, True):
        model = _tiny_model().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(**inputs).sample.pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


BAD_INPUTS = [
    ("hidden_states", lambda i: i["hidden_states"][:, :5]),
    ("hidden_states", lambda i: i["hidden_states"].long()),
    ("hidden_states", lambda i: i["hidden_states"][0]),
    ("timestep", lambda i: torch.rand(3)),
    ("timestep", lambda i: torch.ones(2, dtype=torch.bool)),
    ("encoder_hidden_states", lambda i: i["encoder_hidden_states"][..., :16]),
    ("encoder_hidden_states", lambda i: i["encoder_hidden_states"].long()),
    ("encoder_attention_mask", lambda i: i["encoder_attention_mask"][:, :2]),
    ("inpaint_mask", lambda i: i["inpaint_mask"][..., :5]),
    ("inpaint_latents", lambda i: i["inpaint_latents"][:, :3]),
    ("inpaint_latents", lambda i: None),
    ("attention_mask", lambda i: torch.ones(2, 5, dtype=torch.bool)),
    ("duration", lambda i: torch.ones(3)),
]


@pytest.mark.parametrize("argument,corrupt", BAD_INPUTS)
def test_bad_forward_inputs_raise(argument, corrupt):
    model = _tiny_model()
    inputs = _tiny_inputs()
    inputs[argument] = corrupt(inputs)
    with pytest.raises(ValueError, match=f"`{argument if argument != 'inpaint_latents' else 'inpaint'}"):
        model(**inputs)


def test_missing_conditioning_raises():
    model = _tiny_model()
    inputs = _tiny_inputs()
    with pytest.raises(ValueError, match="`cross_attention_context` and `global_condition`"):
        model(inputs["hidden_states"], 0.5, cross_attention_context=torch.zeros(2, 7, 32))
    with pytest.raises(ValueError, match="`encoder_hidden_states`"):
        model(inputs["hidden_states"], 0.5)


# ---------------------------------------------------------------------------------------------------------------------
# Upstream diffusers StableAudio3DiTModel
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("differential", [True, False])
def test_upstream_model_conversion(differential):
    from diffusers.models.transformers.transformer_stable_audio3 import StableAudio3DiTModel
    from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import StableAudio3DurationEmbedder

    upstream = StableAudio3DiTModel(
        io_channels=8,
        embed_dim=128,
        depth=2,
        num_heads=2,
        cond_token_dim=32,
        global_cond_dim=32,
        local_add_cond_dim=9,
        ff_mult=2.0,
        num_memory_tokens=4,
        use_differential_attention=differential,
    )
    duration_embedder = StableAudio3DurationEmbedder(output_dim=32)
    _randomize(upstream, 3).eval()
    _randomize(duration_embedder, 4).eval()

    config = transformer_config_from_upstream(dict(upstream.config), dict(duration_embedder.config))
    model = StableAudio3Transformer(**config).eval()
    load_state_dict_strict(
        model, convert_upstream_transformer_state_dict(upstream.state_dict(), duration_embedder.state_dict())
    )

    # Where the semantics agree: inpaint conditioning given (upstream skips the branch otherwise), no padding mask.
    inputs = _tiny_inputs(frames=10)
    with torch.no_grad():
        global_states = duration_embedder(inputs["duration"])
        context = torch.cat([inputs["encoder_hidden_states"], global_states[:, None]], dim=1)
        context_mask = torch.cat([inputs["encoder_attention_mask"], torch.ones(2, 1, dtype=torch.bool)], dim=1)
        reference = upstream(
            inputs["hidden_states"],
            inputs["timestep"],
            context,
            global_states,
            encoder_attention_mask=context_mask,
            local_add_cond=torch.cat([inputs["inpaint_mask"], inputs["inpaint_latents"]], dim=1),
        ).sample
        out = model(**inputs).sample
    assert_parity(out, reference, f"upstream differential={differential}")
    with pytest.raises(ValueError, match="duration_embedder_state_dict"):
        convert_upstream_transformer_state_dict(upstream.state_dict())
