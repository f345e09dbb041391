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


def __getattr__(name):
    """`modeling.CTMetastasisClassificationPipeline`, imported on first use: it needs `transformers.pipelines`,
    which importing or loading the model does not.

    It is then registered for its task, as config.json's `custom_pipelines` names it in every saved folder,
    so that a pipeline built in this process can be saved with `save_pretrained` as transformers expects.
    """
    if name != "CTMetastasisClassificationPipeline":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from transformers.pipelines import PIPELINE_REGISTRY

    from .pipeline_ct_classification import CTMetastasisClassificationPipeline

    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK, pipeline_class=CTMetastasisClassificationPipeline, pt_model=AutoModelForImageClassification,
        type="image",
    )
    globals()[name] = CTMetastasisClassificationPipeline
    return CTMetastasisClassificationPipeline


__all__ = [
    "ATTENTION_MODES",
    "CLASS_NAMES",
    "METASTATIC_LABEL",
    "NON_METASTATIC_LABEL",
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
