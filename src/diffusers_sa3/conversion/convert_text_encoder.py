"""Loading the T5Gemma text encoder bundled with official Stable Audio 3 checkpoints (`t5gemma-b-b-ul2/`)."""

import os
from typing import Optional, Tuple, Union

import torch

from .official import TEXT_ENCODER_SUBFOLDER


def resolve_text_encoder_folder(folder: Union[str, os.PathLike]) -> str:
    """Returns the T5Gemma folder: `folder` itself, or `folder/t5gemma-b-b-ul2` for an official checkpoint folder."""
    folder = os.fspath(folder)
    nested = os.path.join(folder, TEXT_ENCODER_SUBFOLDER)
    if os.path.isfile(os.path.join(nested, "config.json")):
        return nested
    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    raise ValueError(
        f"`folder` must be a local T5Gemma folder (with `config.json`) or an official checkpoint folder holding "
        f"`{TEXT_ENCODER_SUBFOLDER}/`, got {folder!r}."
    )


def load_official_text_encoder(folder: Union[str, os.PathLike], dtype: Optional[torch.dtype] = None) -> Tuple:
    """
    Loads the tokenizer and the T5Gemma encoder offline, the way the official `T5GemmaConditioner` does
    (`conditioners.py:180-205`): config with `is_encoder_decoder=False`, `T5GemmaEncoderModel`, eval mode, frozen.

    Args:
        folder (`str` or `os.PathLike`): The `t5gemma-b-b-ul2/` folder or the checkpoint folder that contains it.
        dtype (`torch.dtype`, *optional*): Weights dtype. `None` keeps the checkpoint dtype (bfloat16 for the released
            encoder), which is what the official code runs under transformers 5 (`dtype="auto"`); the conditioning
            only matches the official numbers in that dtype.

    Returns:
        `(tokenizer, text_encoder)`. Call the tokenizer as the official conditioner does:
        `tokenizer(prompts, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")` and
        take `text_encoder(input_ids=..., attention_mask=...).last_hidden_state`.
    """
    from transformers import AutoConfig, AutoTokenizer, T5GemmaEncoderModel

    path = resolve_text_encoder_folder(folder)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    config.is_encoder_decoder = False
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the load report would list the decoder keys, which are expected
    try:
        text_encoder, info = T5GemmaEncoderModel.from_pretrained(
            path,
            config=config,
            dtype=dtype if dtype is not None else "auto",
            local_files_only=True,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported in `info` and raised below as a ValueError naming the keys
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
    check_text_encoder_loading_info(info, path)
    text_encoder.eval().requires_grad_(False)
    return tokenizer, text_encoder


def check_text_encoder_loading_info(info: dict, path: str) -> None:
    """
    Strict loading of the T5Gemma encoder: the released folder holds the whole encoder-decoder, so its
    `model.decoder.*` tensors are the only keys allowed to go unused. A missing or mis-shaped encoder key, or any
    other unused key, raises a `ValueError` that names the keys.
    """
    unexpected = [key for key in info.get("unexpected_keys", []) if not key.startswith(_DECODER_PREFIXES)]
    problems = {
        "missing": sorted(info.get("missing_keys", [])),
        "unexpected": sorted(unexpected),
        "mis-shaped": sorted(str(key) for key in info.get("mismatched_keys", [])),
        "errors": list(info.get("error_msgs", [])),
    }
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        details = "; ".join(
            f"{kind}: {keys[:10]}{' ...' if len(keys) > 10 else ''}" for kind, keys in problems.items()
        )
        raise ValueError(
            f"The T5Gemma encoder in {path!r} does not match its config ({details}); the folder is truncated or not "
            "the checkpoint's `t5gemma-b-b-ul2/`: restore it from the original checkpoint."
        )


_DECODER_PREFIXES = ("model.decoder.", "decoder.", "lm_head.")
