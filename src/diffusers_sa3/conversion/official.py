"""Reading official Stable Audio 3 checkpoints (`model_config.json` + `model.safetensors`) and strict loading."""

import json
import os
from typing import Dict, Iterable, Optional, Tuple

import torch
from safetensors import safe_open


MODEL_CONFIG_NAME = "model_config.json"
MODEL_WEIGHTS_NAME = "model.safetensors"
TEXT_ENCODER_SUBFOLDER = "t5gemma-b-b-ul2"

DIT_PREFIX = "model.model."
AUTOENCODER_PREFIX = "pretransform.model."
CONDITIONER_PREFIX = "conditioner.conditioners."


def is_official_checkpoint(path: str) -> bool:
    """True if `path` is a folder holding an official `model_config.json` and `model.safetensors`."""
    return (
        os.path.isdir(path)
        and os.path.isfile(os.path.join(path, MODEL_CONFIG_NAME))
        and os.path.isfile(os.path.join(path, MODEL_WEIGHTS_NAME))
    )


def resolve_official_paths(path: str) -> Tuple[str, str]:
    """Returns `(model_config.json, model.safetensors)` for a checkpoint folder or a `.safetensors` file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        weights = os.path.join(path, MODEL_WEIGHTS_NAME)
    else:
        weights = path
    if not os.path.isfile(weights):
        raise ValueError(
            f"`pretrained_model_link_or_path` must be an official checkpoint folder or its `{MODEL_WEIGHTS_NAME}`, "
            f"got {path!r}: no such file {weights!r}."
        )
    if not weights.endswith(".safetensors"):
        raise ValueError(
            f"`pretrained_model_link_or_path` must point to a `.safetensors` file, got {weights!r}. Only safetensors "
            "checkpoints are read (pickled `.ckpt` files are never unpickled)."
        )
    config = os.path.join(os.path.dirname(os.path.abspath(weights)), MODEL_CONFIG_NAME)
    if not os.path.isfile(config):
        raise ValueError(
            f"No `{MODEL_CONFIG_NAME}` beside {weights!r}. The official config is needed to build the model; put the "
            "checkpoint's `model_config.json` in the same folder."
        )
    return config, weights


def read_official_config(config_path: str) -> dict:
    with open(config_path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"`{config_path}` is not valid JSON: {e}.") from e


def read_safetensors(path: str, prefix: Optional[str] = None, strip_prefix: bool = True) -> Dict[str, torch.Tensor]:
    """Reads the tensors of `path` whose key starts with `prefix` (all if None), stripping the prefix."""
    try:
        handle = safe_open(path, framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        cut = truncated_safetensors_keys(path)
        detail = (
            f" Tensors cut off by the end of the file: {', '.join(cut[:20])}{' ...' if len(cut) > 20 else ''}."
            if cut
            else ""
        )
        raise ValueError(
            f"Could not read {path!r} as safetensors ({e}). Is the file truncated or not safetensors?{detail}"
        ) from e
    state_dict = {}
    with handle as f:
        for key in f.keys():
            if prefix is not None and not key.startswith(prefix):
                continue
            name = key[len(prefix) :] if (prefix is not None and strip_prefix) else key
            state_dict[name] = f.get_tensor(key)
    return state_dict


def truncated_safetensors_keys(path: str) -> list:
    """Names of the tensors whose data lie past the end of a (truncated) safetensors file; [] if unreadable."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if header_len <= 0 or 8 + header_len > size:
                return []
            header = json.loads(f.read(header_len))
    except (OSError, ValueError):
        return []
    data_size = size - 8 - header_len
    return sorted(
        key
        for key, entry in header.items()
        if key != "__metadata__" and isinstance(entry, dict) and entry.get("data_offsets", [0, 0])[1] > data_size
    )


def safetensors_keys(path: str) -> Iterable[str]:
    with safe_open(path, framework="pt", device="cpu") as f:
        return list(f.keys())


def check_state_dict_matches(
    model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Raises a `ValueError` naming every missing, unexpected or mis-shaped key; never skips a weight."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = sorted(
        f"{k}: {tuple(state_dict[k].shape)} in {source}, {tuple(expected[k].shape)} in the model"
        for k in set(expected) & set(state_dict)
        if tuple(expected[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or mis_shaped:

        def fmt(keys):
            shown = ", ".join(keys[:20])
            return shown + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {fmt(unexpected)}")
        if mis_shaped:
            parts.append(f"mis-shaped keys: {fmt(mis_shaped)}")
        raise ValueError(
            f"The {source} does not match {model.__class__.__name__} with config "
            f"{getattr(model, 'config', '?')!s:.0}; " + "; ".join(parts) + ". Check that the checkpoint and the "
            "config belong together and that the file is complete."
        )


def load_state_dict_strict(
    model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], source: str = "checkpoint"
) -> torch.nn.Module:
    """Checks names and shapes, then loads with `strict=True`, keeping each parameter's dtype."""
    check_state_dict_matches(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True)
    return model
