"""Shared test helpers: fixture paths, reference loading and a parity assertion with the project tolerance."""

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
OFFICIAL_TINY = os.path.join(FIXTURES, "sa3_official_tiny")
SMALL_CKPT = os.path.join(OFFICIAL_TINY, "small")
MEDIUM_BASE_CKPT = os.path.join(OFFICIAL_TINY, "medium_base")
REFERENCE = os.path.join(OFFICIAL_TINY, "reference")
MANIFESTS = os.path.join(OFFICIAL_TINY, "manifests")

# The foundation issue's parity tolerance: max abs error <= 1e-4 x max |reference|, fp32.
PARITY_RTOL_OF_MAX = 1e-4


def load_reference(name: str):
    """Returns `(tensors, info)` of `reference/<name>.safetensors`."""
    path = os.path.join(REFERENCE, f"{name}.safetensors")
    with safe_open(path, framework="pt") as f:
        info = json.loads(f.metadata()["info"])
    return load_file(path), info


def max_parity_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """Max abs error relative to max |reference|."""
    assert actual.shape == reference.shape, f"shape {tuple(actual.shape)} != reference {tuple(reference.shape)}"
    return ((actual.double() - reference.double()).abs().max() / reference.double().abs().max()).item()


def assert_parity(actual: torch.Tensor, reference: torch.Tensor, what: str, tol: float = PARITY_RTOL_OF_MAX):
    err = max_parity_error(actual, reference)
    assert err <= tol, f"{what}: max abs error {err:.3e} x max|ref| exceeds the tolerance {tol:.0e}"
    return err
