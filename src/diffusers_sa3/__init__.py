"""Stable Audio 3 for diffusers: official-parity models, schedulers, pipelines and training utilities."""

import importlib
from typing import TYPE_CHECKING


__version__ = "0.1.0"

_import_structure = {
    "models.autoencoder_same": ["SAMEAutoencoderModel", "SAMEAutoencoderOutput", "SAMEDecoderOutput"],
    "models.transformer_stable_audio3": ["StableAudio3Transformer", "StableAudio3TransformerOutput"],
    "schedulers.scheduling_flow_match_ot": ["FlowMatchOTScheduler"],
    "schedulers.scheduling_pingpong_adversarial": ["PingPongAdversarialScheduler"],
    "pipelines.pipeline_stable_audio3": ["StableAudio3Pipeline"],
    "pipelines.pipeline_stable_audio3_inpaint": ["StableAudio3InpaintPipeline"],
}
_name_to_module = {name: module for module, names in _import_structure.items() for name in names}

__all__ = sorted(_name_to_module)

if TYPE_CHECKING:
    from .models.autoencoder_same import SAMEAutoencoderModel, SAMEAutoencoderOutput, SAMEDecoderOutput
    from .models.transformer_stable_audio3 import StableAudio3Transformer, StableAudio3TransformerOutput
    from .pipelines.pipeline_stable_audio3 import StableAudio3Pipeline
    from .pipelines.pipeline_stable_audio3_inpaint import StableAudio3InpaintPipeline
    from .schedulers.scheduling_flow_match_ot import FlowMatchOTScheduler
    from .schedulers.scheduling_pingpong_adversarial import PingPongAdversarialScheduler


def __getattr__(name):
    # Lazy imports keep `import diffusers_sa3` light (no torch / transformers until a class is used).
    if name in _name_to_module:
        module = importlib.import_module(f".{_name_to_module[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
