"""Loader mixins of the Stable Audio 3 pipelines (LoRA adapters through PEFT)."""

from .lora import StableAudio3LoraLoaderMixin


__all__ = ["StableAudio3LoraLoaderMixin"]
