"""Dual-attention ResNet for lymph-node metastasis detection on CT slices, as transformers code.

Importing this package registers the classes with the transformers Auto classes; `save_pretrained`
writes `auto_map` and copies these files, so a saved folder loads with `trust_remote_code=True`
in a process that never imported this package.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_dual_attention_resnet import (
    ATTENTION_MODES,
    METASTATIC_LABEL,
    PIPELINE_TASK,
    DualAttentionResNetConfig,
)
from .image_processing_ct import CTImageProcessor, apply_window
from .modeling_dual_attention_resnet import (
    DualAttentionImageClassifierOutput,
    DualAttentionResNetForImageClassification,
    DualAttentionResNetModel,
    DualAttentionResNetPreTrainedModel,
)
from .pipeline_ct_classification import CTMetastasisClassificationPipeline

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
# The config writes the same entry into every saved config.json (`custom_pipelines`); registering it
# here lets a pipeline built in this process be saved with `save_pretrained` as transformers expects.
PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK, pipeline_class=CTMetastasisClassificationPipeline, pt_model=AutoModelForImageClassification,
    type="image",
)

__all__ = [
    "ATTENTION_MODES",
    "METASTATIC_LABEL",
    "PIPELINE_TASK",
    "CTImageProcessor",
    "CTMetastasisClassificationPipeline",
    "DualAttentionImageClassifierOutput",
    "DualAttentionResNetConfig",
    "DualAttentionResNetForImageClassification",
    "DualAttentionResNetModel",
    "DualAttentionResNetPreTrainedModel",
    "apply_window",
]
