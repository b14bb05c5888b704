"""LoRA adapters of the Stable Audio 3 transformer, loaded into the pipelines through diffusers' PEFT machinery."""

import os
from typing import Callable, Dict, List, Optional, Union

import torch
from diffusers.loaders.lora_base import LoraBaseMixin, _fetch_state_dict
from diffusers.utils import logging


logger = logging.get_logger(__name__)

TRANSFORMER_NAME = "transformer"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


class StableAudio3LoraLoaderMixin(LoraBaseMixin):
    r"""
    Loads LoRA adapters into the [`StableAudio3Transformer`] of [`StableAudio3Pipeline`] and
    [`StableAudio3InpaintPipeline`].

    A LoRA file is a safetensors file whose keys are PEFT LoRA weights of the transformer prefixed with
    `"transformer."` (for example `transformer.transformer_blocks.0.attn1.to_qkv.lora_A.weight`), with the PEFT
    `LoraConfig` (rank, alpha, target modules) in its metadata, as written by [`~StableAudio3LoraLoaderMixin.save_lora_weights`]
    and `training_examples/train_flow.py`. Several adapters can be loaded under different `adapter_name`s and combined
    with [`~loaders.lora_base.LoraBaseMixin.set_adapters`], whose weights are the runtime strengths (0 gives the base
    model):

    ```py
    pipe.load_lora_weights("lora_a", adapter_name="a")
    pipe.load_lora_weights("lora_b", adapter_name="b")
    pipe.set_adapters(["a", "b"], adapter_weights=[0.8, 0.5])
    ```
    """

    _lora_loadable_modules = [TRANSFORMER_NAME]
    transformer_name = TRANSFORMER_NAME

    @classmethod
    def lora_state_dict(
        cls,
        pretrained_model_name_or_path_or_dict: Union[str, os.PathLike, Dict[str, torch.Tensor]],
        weight_name: Optional[str] = None,
        subfolder: Optional[str] = None,
        return_lora_metadata: bool = False,
        **kwargs,
    ):
        r"""
        Reads a LoRA state dict (and its adapter metadata) from a folder, a safetensors file, a Hub repo or a dict.

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`):
                A folder holding `pytorch_lora_weights.safetensors` (or `weight_name`), the path of a `.safetensors`
                file, a Hub repo id, or a state dict.
            weight_name (`str`, *optional*): file name inside the folder or repo.
            subfolder (`str`, *optional*): subfolder inside the folder or repo.
            return_lora_metadata (`bool`, defaults to `False`): also return the adapter metadata (`LoraConfig` kwargs).
            kwargs: Hub download options (`cache_dir`, `force_download`, `proxies`, `local_files_only`, `token`,
                `revision`).

        Returns:
            `dict` (and the metadata `dict` or `None` when `return_lora_metadata=True`).
        """
        path = pretrained_model_name_or_path_or_dict
        if isinstance(path, (str, os.PathLike)) and os.path.isfile(path):
            # A file path: read it from its folder by name.
            path, weight_name = os.path.split(os.fspath(path))
        unknown = set(kwargs) - {"cache_dir", "force_download", "proxies", "local_files_only", "token", "revision"}
        if unknown:
            raise ValueError(f"Unsupported arguments for `lora_state_dict`: {sorted(unknown)}.")
        state_dict, metadata = _fetch_state_dict(
            pretrained_model_name_or_path_or_dict=path,
            weight_name=weight_name,
            use_safetensors=True,
            local_files_only=kwargs.get("local_files_only"),
            cache_dir=kwargs.get("cache_dir"),
            force_download=kwargs.get("force_download", False),
            proxies=kwargs.get("proxies"),
            token=kwargs.get("token"),
            revision=kwargs.get("revision"),
            subfolder=subfolder,
            user_agent={"file_type": "attn_procs_weights", "framework": "pytorch"},
            allow_pickle=False,
        )
        return (state_dict, metadata) if return_lora_metadata else state_dict

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: Union[str, os.PathLike, Dict[str, torch.Tensor]],
        adapter_name: Optional[str] = None,
        hotswap: bool = False,
        **kwargs,
    ):
        r"""
        Loads a LoRA adapter into `self.transformer` under `adapter_name` (default: `default_{i}`) and activates it.

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`):
                See [`~StableAudio3LoraLoaderMixin.lora_state_dict`].
            adapter_name (`str`, *optional*): name under which the adapter is loaded; used by `set_adapters`.
            hotswap (`bool`, defaults to `False`): replace the weights of the already-loaded adapter `adapter_name`.
            kwargs: passed to [`~StableAudio3LoraLoaderMixin.lora_state_dict`] (`weight_name`, `subfolder`, Hub
                options) and `low_cpu_mem_usage`.
        """
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", False)
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            pretrained_model_name_or_path_or_dict = pretrained_model_name_or_path_or_dict.copy()
        state_dict, metadata = self.lora_state_dict(
            pretrained_model_name_or_path_or_dict, return_lora_metadata=True, **kwargs
        )
        prefix = f"{self.transformer_name}."
        bad_keys = [key for key in state_dict if "lora" not in key or not key.startswith(prefix)]
        if bad_keys or not state_dict:
            raise ValueError(
                f"Invalid Stable Audio 3 LoRA checkpoint: every key must start with {prefix!r} and name a LoRA weight "
                f"(`lora_A`, `lora_B`, ...); got {len(state_dict)} keys, offending: {bad_keys[:5]}."
            )
        self.load_lora_into_transformer(
            state_dict,
            transformer=getattr(self, self.transformer_name),
            adapter_name=adapter_name,
            metadata=metadata,
            _pipeline=self,
            low_cpu_mem_usage=low_cpu_mem_usage,
            hotswap=hotswap,
        )

    @classmethod
    def load_lora_into_transformer(
        cls,
        state_dict: Dict[str, torch.Tensor],
        transformer,
        adapter_name: Optional[str] = None,
        _pipeline=None,
        low_cpu_mem_usage: bool = False,
        hotswap: bool = False,
        metadata: Optional[dict] = None,
    ):
        """Injects the adapter into `transformer` (a [`StableAudio3Transformer`], through `PeftAdapterMixin`)."""
        if not hasattr(transformer, "load_lora_adapter"):
            raise ValueError(
                f"`transformer` ({type(transformer).__name__}) does not support LoRA adapters; it must inherit "
                "`diffusers.loaders.PeftAdapterMixin` like `StableAudio3Transformer`."
            )
        logger.info(f"Loading {cls.transformer_name}.")
        transformer.load_lora_adapter(
            state_dict,
            network_alphas=None,
            adapter_name=adapter_name,
            metadata=metadata,
            _pipeline=_pipeline,
            low_cpu_mem_usage=low_cpu_mem_usage,
            hotswap=hotswap,
        )

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: Union[str, os.PathLike],
        transformer_lora_layers: Dict[str, Union[torch.nn.Module, torch.Tensor]],
        is_main_process: bool = True,
        weight_name: Optional[str] = None,
        save_function: Optional[Callable] = None,
        safe_serialization: bool = True,
        transformer_lora_adapter_metadata: Optional[dict] = None,
    ):
        r"""
        Writes `transformer_lora_layers` (a PEFT state dict of the transformer, e.g. from
        `peft.get_peft_model_state_dict`) to `save_directory/pytorch_lora_weights.safetensors` (or `weight_name`),
        with `transformer_lora_adapter_metadata` (`LoraConfig.to_dict()`) in the safetensors metadata so that
        [`~StableAudio3LoraLoaderMixin.load_lora_weights`] rebuilds the same adapter.
        """
        if not transformer_lora_layers:
            raise ValueError("`transformer_lora_layers` must be a non-empty LoRA state dict of the transformer.")
        cls._save_lora_weights(
            save_directory=save_directory,
            lora_layers={cls.transformer_name: transformer_lora_layers},
            lora_metadata={cls.transformer_name: transformer_lora_adapter_metadata},
            is_main_process=is_main_process,
            weight_name=weight_name,
            save_function=save_function,
            safe_serialization=safe_serialization,
        )

    def fuse_lora(
        self,
        components: List[str] = [TRANSFORMER_NAME],  # noqa: B006 - diffusers' signature
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: Optional[List[str]] = None,
        **kwargs,
    ):
        r"""Fuses the active adapters into the transformer weights (see `LoraBaseMixin.fuse_lora`)."""
        super().fuse_lora(
            components=components,
            lora_scale=lora_scale,
            safe_fusing=safe_fusing,
            adapter_names=adapter_names,
            **kwargs,
        )

    def unfuse_lora(self, components: List[str] = [TRANSFORMER_NAME], **kwargs):  # noqa: B006
        r"""Reverts [`~StableAudio3LoraLoaderMixin.fuse_lora`]."""
        super().unfuse_lora(components=components, **kwargs)
