"""Dual-attention ResNet for lymph-node metastasis detection on CT slices, as transformers code.

Importing this package registers the classes with the transformers Auto classes; `save_pretrained`
writes `auto_map` and copies these files, so a saved folder loads with `trust_remote_code=True`
in a process that never imported this package.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .configuration_dual_attention_resnet import (
    ATTENTION_MODES,
    CLASS_NAMES,
    METASTATIC_LABEL,
    NON_METASTATIC_LABEL,
    DualAttentionResNetConfig,
)
from .image_processing_ct import CTImageProcessor, apply_window
from .modeling_dual_attention_resnet import (
    DualAttentionImageClassifierOutput,
    DualAttentionResNetForImageClassification,
    DualAttentionResNetModel,
    DualAttentionResNetPreTrainedModel,
)

AutoConfig.register(DualAttentionResNetConfig.model_type, DualAttentionResNetConfig, exist_ok=True)
AutoModel.register(DualAttentionResNetConfig, DualAttentionResNetModel, exist_ok=True)
AutoModelForImageClassification.register(
    DualAttentionResNetConfig, DualAttentionResNetForImageClassification, exist_ok=True
)
AutoImageProcessor.register(DualAttentionResNetConfig, slow_image_processor_class=CTImageProcessor, exist_ok=True)

DualAttentionResNetConfig.register_for_auto_class()
DualAttentionResNetModel.register_for_auto_class("AutoModel")
DualAttentionResNetForImageClassification.register_for_auto_class("AutoModelForImageClassification")
CTImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "ATTENTION_MODES",
    "CLASS_NAMES",
    "METASTATIC_LABEL",
    "NON_METASTATIC_LABEL",
    "CTImageProcessor",
    "DualAttentionImageClassifierOutput",
    "DualAttentionResNetConfig",
    "DualAttentionResNetForImageClassification",
    "DualAttentionResNetModel",
    "DualAttentionResNetPreTrainedModel",
    "apply_window",
]
