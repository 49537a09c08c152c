"""The ratio network as a transformers model (``DDLMConfig``, ``DDLMForDiffusion``)."""

from transformers import AutoConfig, AutoModel

from .configuration import PRESETS, DDLMConfig
from .modeling import DDLMForDiffusion

AutoConfig.register(DDLMConfig.model_type, DDLMConfig, exist_ok=True)
AutoModel.register(DDLMConfig, DDLMForDiffusion, exist_ok=True)

__all__ = ["PRESETS", "DDLMConfig", "DDLMForDiffusion"]
