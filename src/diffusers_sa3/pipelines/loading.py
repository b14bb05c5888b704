"""Building pipeline components straight from an official Stability checkpoint folder (or Hub repo)."""

import os
from typing import Optional

import torch

from ..conversion.official import (
    MODEL_CONFIG_NAME,
    MODEL_WEIGHTS_NAME,
    TEXT_ENCODER_SUBFOLDER,
    is_official_checkpoint,
    read_official_config,
)


def official_pipeline_settings(model_config: dict) -> dict:
    """Pipeline-level settings of an official `model_config.json`: text length, sample-size cap, objective."""
    model = model_config.get("model", {})
    prompt_cfg = {}
    for cond in model.get("conditioning", {}).get("configs", []):
        if cond.get("id") == "prompt":
            prompt_cfg = cond.get("config", {})
    diffusion = model.get("diffusion")
    if diffusion is None:
        raise ValueError(
            "The official `model_config.json` has no `model.diffusion` section: this is a standalone autoencoder "
            "(SAME) checkpoint. Load it with `SAMEAutoencoderModel.from_single_file` instead of a pipeline."
        )
    objective = diffusion.get("diffusion_objective", "v")
    if objective not in ("rectified_flow", "rf_denoiser"):
        raise ValueError(
            f"`diffusion_objective` {objective!r} in `model_config.json` is not supported; Stable Audio 3 checkpoints "
            "use 'rectified_flow' (base) or 'rf_denoiser' (post-trained)."
        )
    return {
        "max_text_length": int(prompt_cfg.get("max_length", 128)),
        "max_sample_size": int(model_config.get("sample_size", 5292032)),
        "diffusion_objective": objective,
    }


def scheduler_for_objective(objective: str):
    from ..schedulers.scheduling_flow_match_ot import FlowMatchOTScheduler
    from ..schedulers.scheduling_pingpong_adversarial import PingPongAdversarialScheduler

    return PingPongAdversarialScheduler() if objective == "rf_denoiser" else FlowMatchOTScheduler()


def _resolve_hub_official(repo_id: str) -> Optional[str]:
    """Downloads an official Stability repo (not diffusers-format) and returns its local folder, else None."""
    try:
        from huggingface_hub import file_exists, snapshot_download

        if file_exists(repo_id, "model_index.json") or not file_exists(repo_id, MODEL_CONFIG_NAME):
            return None
        return snapshot_download(
            repo_id, allow_patterns=[MODEL_CONFIG_NAME, MODEL_WEIGHTS_NAME, f"{TEXT_ENCODER_SUBFOLDER}/*"]
        )
    except Exception:  # offline, private or not a repo: let diffusers' own loader report it
        return None


def load_pipeline_components(path, torch_dtype: Optional[torch.dtype] = None, **kwargs) -> Optional[dict]:
    """Returns the pipeline's constructor arguments for an official checkpoint, or None for a diffusers folder."""
    path = os.fspath(path)
    if not is_official_checkpoint(path):
        looks_like_repo_id = path.count("/") == 1 and not os.path.exists(path)
        local = _resolve_hub_official(path) if looks_like_repo_id else None
        if local is None:
            return None
        path = local
    if kwargs:
        raise ValueError(
            f"Loading an official checkpoint folder takes only `torch_dtype`; got unsupported arguments "
            f"{sorted(kwargs)}. Convert it first with `diffusers-sa3 convert SRC DST` to use diffusers' loading options."
        )

    from ..conversion.convert_text_encoder import load_official_text_encoder
    from ..models.autoencoder_same import SAMEAutoencoderModel
    from ..models.transformer_stable_audio3 import StableAudio3Transformer

    model_config = read_official_config(os.path.join(path, MODEL_CONFIG_NAME))
    settings = official_pipeline_settings(model_config)
    text_encoder_dir = os.path.join(path, TEXT_ENCODER_SUBFOLDER)
    if not os.path.isdir(text_encoder_dir):
        raise ValueError(
            f"The official checkpoint folder {path!r} has no `{TEXT_ENCODER_SUBFOLDER}/` text encoder. Every SA3 repo "
            f"bundles it; copy the repo's `{TEXT_ENCODER_SUBFOLDER}/` folder next to `model.safetensors` (it is never "
            "fetched from the network)."
        )
    tokenizer, text_encoder = load_official_text_encoder(text_encoder_dir)
    vae = SAMEAutoencoderModel.from_single_file(path)
    transformer = StableAudio3Transformer.from_single_file(path)
    if torch_dtype is not None:
        vae = vae.to(torch_dtype)
        transformer = transformer.to(torch_dtype)
    return {
        "vae": vae,
        "transformer": transformer,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler_for_objective(settings["diffusion_objective"]),
        "max_text_length": settings["max_text_length"],
        "max_sample_size": settings["max_sample_size"],
    }
