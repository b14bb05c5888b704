"""Correctness guards for the inference optimisations of `StableAudio3Transformer` (never timing):

- the cross-attention key/value cache (`cache_context`) gives outputs identical to uncached ones and is invalidated
  by in-place changes to the context or the weights;
- the packed variable-length path (CPU, no flash-attn) equals the dense masked path and each sample run alone;
- the broadcast (text-to-audio) local conditioning equals the explicit all-zero one.
"""

import pytest
import torch

from diffusers_sa3 import StableAudio3Transformer


TINY = {
    "in_channels": 8,
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 64,
    "cross_attention_dim": 32,
    "num_memory_tokens": 3,
    "timestep_features_dim": 16,
    "duration_features_dim": 16,
}


def _model(differential: bool = False, seed: int = 0) -> StableAudio3Transformer:
    model = StableAudio3Transformer(**TINY, use_differential_attention=differential).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():  # no zero-initialised layers: every path must matter
            param.copy_(torch.randn(param.shape, generator=generator) / max(param.shape[-1], 1) ** 0.5)
    return model


def _inputs(batch_size: int = 3, frames: int = 10, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch_size, TINY["in_channels"], frames, generator=generator),
        "timestep": torch.rand(batch_size, generator=generator),
        "cross_attention_context": torch.randn(batch_size, 5, TINY["cross_attention_dim"], generator=generator),
        "global_condition": torch.randn(batch_size, TINY["cross_attention_dim"], generator=generator),
    }


@pytest.mark.parametrize("differential", [False, True])
def test_context_cache_matches_uncached(differential):
    model = _model(differential)
    inputs = _inputs()
    with torch.no_grad():
        reference = [model(**{**inputs, "timestep": torch.full((3,), t)}).sample for t in (0.9, 0.5, 0.1)]
        with model.cache_context():
            cached = [model(**{**inputs, "timestep": torch.full((3,), t)}).sample for t in (0.9, 0.5, 0.1)]
            assert model._context_cache is not None
            assert torch.equal(model._context_cache[0], inputs["cross_attention_context"])
        assert model._context_cache is None  # dropped on exit
    for expected, actual in zip(reference, cached):
        assert torch.equal(expected, actual)


def test_context_cache_invalidation():
    model = _model()
    inputs = _inputs()
    context = inputs["cross_attention_context"]
    with torch.no_grad(), model.cache_context():
        model(**inputs)
        context.mul_(2.0)  # in-place change of the same tensor: the cache must not be used
        after_context_change = model(**inputs).sample
        model.transformer_blocks[0].attn2.to_kv.weight.mul_(0.5)  # in-place weight change
        after_weight_change = model(**inputs).sample
        other = _inputs(seed=5)["cross_attention_context"]
        with_other_context = model(**{**inputs, "cross_attention_context": other}).sample
    with torch.no_grad():
        model.transformer_blocks[0].attn2.to_kv.weight.mul_(2.0)
        expected_context = model(**inputs).sample
        model.transformer_blocks[0].attn2.to_kv.weight.mul_(0.5)
        expected_weight = model(**inputs).sample
        expected_other = model(**{**inputs, "cross_attention_context": other}).sample
    assert torch.equal(after_context_change, expected_context)
    assert torch.equal(after_weight_change, expected_weight)
    assert torch.equal(with_other_context, expected_other)


def test_context_cache_under_inference_mode():
    model = _model()
    inputs = _inputs()
    with torch.no_grad():
        reference = model(**inputs).sample
    with torch.inference_mode(), model.cache_context():
        context = inputs["cross_attention_context"].clone()  # an inference tensor (no version counter)
        first = model(**{**inputs, "cross_attention_context": context}).sample
        second = model(**{**inputs, "cross_attention_context": context}).sample
        context.mul_(2.0)
        changed = model(**{**inputs, "cross_attention_context": context}).sample
    with torch.no_grad():
        expected_changed = model(**{**inputs, "cross_attention_context": inputs["cross_attention_context"] * 2}).sample
    assert torch.equal(first, reference) and torch.equal(second, reference)
    assert torch.equal(changed, expected_changed)


def test_context_cache_not_used_with_autograd():
    model = _model()
    inputs = _inputs()
    with model.cache_context():
        out = model(**inputs).sample
        assert model._context_cache is None
    out.sum().backward()
    assert model.transformer_blocks[0].attn2.to_kv.weight.grad is not None


@pytest.mark.parametrize("differential", [False, True])
def test_packed_varlen_equals_dense_masked_and_alone(differential):
    model = _model(differential)
    inputs = _inputs(batch_size=4, frames=10)
    lengths = torch.tensor([10, 4, 7, 4])
    mask = torch.arange(10)[None] < lengths[:, None]
    with torch.no_grad():
        packed = model(**inputs, attention_mask=mask).sample
        # The dense masked-SDPA path (what the model does when it cannot pack, e.g. with flash-attn on CUDA).
        model._uses_flash_varlen = lambda hidden_states: True
        dense = model(**inputs, attention_mask=mask).sample
        del model._uses_flash_varlen
        alone = [
            model(
                hidden_states=inputs["hidden_states"][i : i + 1, :, :length],
                timestep=inputs["timestep"][i : i + 1],
                cross_attention_context=inputs["cross_attention_context"][i : i + 1],
                global_condition=inputs["global_condition"][i : i + 1],
            ).sample
            for i, length in enumerate(lengths.tolist())
        ]
    scale = dense.abs().max()
    assert (packed - dense).abs().max() <= 1e-5 * scale
    for i, length in enumerate(lengths.tolist()):
        assert (packed[i, :, :length] - alone[i][0]).abs().max() <= 1e-5 * scale
        assert (packed[i, :, length:] == 0).all()
    assert not torch.equal(packed[1, :, :4], packed[3, :, :4])  # same length, different samples: really batched


def test_non_prefix_mask_falls_back_to_dense_masking():
    model = _model()
    inputs = _inputs(batch_size=2, frames=8)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 2] = False  # a hole: packing by leading frames would change RoPE positions
    with torch.no_grad():
        out = model(**inputs, attention_mask=mask).sample
        model._uses_flash_varlen = lambda hidden_states: True
        dense = model(**inputs, attention_mask=mask).sample
    assert torch.equal(out, dense)
    assert (out[1, :, 2] == 0).all()


def test_broadcast_local_condition_matches_explicit_rows():
    model = _model()
    inputs = _inputs(batch_size=2, frames=6)
    with torch.no_grad():
        broadcast = model(**inputs).sample
        # An explicit (non-broadcast) zero condition computed row by row through the blocks' embedders.
        block = model.transformer_blocks[0]
        zeros = torch.zeros(2, 6, TINY["in_channels"] + 1)
        per_row = block.to_local_embed(zeros)
        once = block.to_local_embed(zeros[:1, :1])
        model_inputs = {**inputs, "inpaint_mask": torch.zeros(2, 1, 6), "inpaint_latents": torch.zeros(2, 8, 6)}
        explicit = model(**model_inputs).sample
    assert torch.allclose(per_row, once.expand_as(per_row), rtol=1e-6, atol=1e-7)
    assert torch.equal(broadcast, explicit)


@pytest.mark.parametrize("valid_frames", [None, 5, 3])
def test_broadcast_local_condition_embedded_once_for_a_single_sample(valid_frames, monkeypatch):
    """A single sample's text-to-audio condition (a size-1 batch keeps its stride under `expand`) and a packed group's
    are still embedded as one row per block, and the output equals the condition embedded frame by frame."""
    import diffusers_sa3.models.transformer_stable_audio3 as transformer_module

    model = _model()
    inputs = _inputs(batch_size=1, frames=6)
    if valid_frames is not None:
        inputs["attention_mask"] = torch.arange(6)[None] < valid_frames
    shapes = []
    for block in model.transformer_blocks:
        block.to_local_embed.register_forward_hook(lambda module, args, output: shapes.append(tuple(args[0].shape)))
    with torch.no_grad():
        broadcast = model(**inputs).sample
        assert shapes == [(1, 1, TINY["in_channels"] + 1)] * len(model.transformer_blocks)
        shapes.clear()
        monkeypatch.setattr(transformer_module, "_is_broadcast_condition", lambda local_cond: False)
        explicit = model(**inputs).sample
        assert len(shapes) == len(model.transformer_blocks) and shapes[0][1] > 1  # every frame's row embedded
    scale = explicit.abs().max()
    assert (broadcast - explicit).abs().max() <= 1e-6 * scale


def test_packed_group_rounded_to_the_pack_multiple_equals_alone(monkeypatch):
    """A packed group runs on its valid frames rounded up to `_PACK_MULTIPLE` with the extra frames masked as keys:
    the valid frames equal the sample run alone on exactly its valid frames, and the padding stays 0."""
    import diffusers_sa3.models.transformer_stable_audio3 as transformer_module

    model = _model()
    inputs = _inputs(batch_size=1, frames=12)
    mask = torch.arange(12)[None] < 9  # 9 valid frames -> run on 12 (multiple 8 -> 16, capped at 12)
    run_lengths = []
    original = model._run_blocks
    monkeypatch.setattr(model, "_run_blocks", lambda h, *a: run_lengths.append(h.shape[-1]) or original(h, *a))
    with torch.no_grad():
        packed = model(**inputs, attention_mask=mask).sample
        monkeypatch.setattr(transformer_module, "_PACK_MULTIPLE", 1)
        exact = model(**inputs, attention_mask=mask).sample
        alone = model(**{k: v[..., :9] if k == "hidden_states" else v for k, v in inputs.items()}).sample
    assert run_lengths == [12, 9, 9]
    scale = alone.abs().max()
    assert (packed[..., :9] - alone).abs().max() <= 1e-5 * scale
    assert (exact[..., :9] - alone).abs().max() <= 1e-5 * scale
    assert (packed[..., 9:] == 0).all()


def test_bf16_transformer_keeps_a_float32_residual_stream():
    """A bf16 transformer adds its bf16 branch outputs to a float32 residual stream and takes a float32 timestep into
    its Fourier features (a bf16 t would shift the 10 kHz features by whole turns); its output stays near fp32.
    With a bf16 residual stream the full-size random DiT drifted 1.6x as far (1.9e-2 vs 1.2e-2 at 64 frames)."""
    model = _model()
    inputs = _inputs()
    with torch.no_grad():
        reference = model(**inputs).sample
        model.to(torch.bfloat16)
        block_dtypes = []
        for block in model.transformer_blocks:
            block.register_forward_hook(lambda module, args, output: block_dtypes.append(output.dtype))
        half_inputs = {k: v if k == "timestep" else v.bfloat16() for k, v in inputs.items()}
        output = model(**half_inputs).sample.float()
    assert block_dtypes[: len(model.transformer_blocks)] == [torch.float32] * len(model.transformer_blocks)
    error = ((output - reference).norm() / reference.norm()).item()
    assert error < 2e-2, error
