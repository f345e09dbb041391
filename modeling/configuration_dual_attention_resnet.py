"""Configuration of the dual-attention ResNet for lymph-node metastasis detection on CT slices.

Paper: "Lymph Node Metastasis Detection in Pancreatic Ductal Adenocarcinoma using ResNet with
Attention Mechanism" (ResNet-50 + squeeze-and-excitation channel attention + CBAM-style spatial
attention, summed, on the last backbone stage).
"""

import numbers

import timm
from transformers import PretrainedConfig

ATTENTION_MODES = ("dual", "channel", "spatial", "none")
METASTATIC_LABEL = "metastatic"
NON_METASTATIC_LABEL = "non_metastatic"
# The binary label's names, index = label: class folders, prepared datasets, CSVs and the demo use these.
CLASS_NAMES = [NON_METASTATIC_LABEL, METASTATIC_LABEL]
# Written into config.json so that a saved folder answers every Auto class as remote code, not only
# the class that happened to be saved.
AUTO_MAP = {
    "AutoConfig": "configuration_dual_attention_resnet.DualAttentionResNetConfig",
    "AutoModel": "modeling_dual_attention_resnet.DualAttentionResNetModel",
    "AutoModelForImageClassification": "modeling_dual_attention_resnet.DualAttentionResNetForImageClassification",
    "AutoImageProcessor": "image_processing_ct.CTImageProcessor",
}


class DualAttentionResNetConfig(PretrainedConfig):
    r"""
    Args:
        backbone (`str`, *optional*, defaults to `"resnet50"`):
            Any timm model name. CNNs get the attention module on their last stage; token models
            (e.g. `"vit_base_patch16_224"`) work with `attention="none"` only.
        attention (`str`, *optional*, defaults to `"dual"`):
            `"dual"` (channel + spatial, summed), `"channel"`, `"spatial"` or `"none"`.
        se_reduction (`int`, *optional*, defaults to 16):
            Reduction ratio of the squeeze-and-excitation (channel) branch.
        spatial_kernel_size (`int`, *optional*, defaults to 7):
            Kernel size of the spatial branch's convolution (odd).
        dropout (`float`, *optional*, defaults to 0.5):
            Dropout before the linear output.
        frozen_stages (`int`, *optional*, defaults to 2):
            Number of backbone stages (after the stem) whose parameters and normalisation statistics
            are frozen; 0 trains everything. The paper freezes the stem and the first two stages.
        decision_threshold (`float`, *optional*, defaults to 0.5):
            Probability at or above which a slice is called metastatic; evaluation writes the
            operating point chosen on the validation split here.
        image_size (`int`, *optional*, defaults to 224):
            Input size the model was trained at (informational; the processor resizes).
        num_channels (`int`, *optional*, defaults to 3):
            Input channels of the backbone; the processor repeats the windowed slice to 3.
    """

    model_type = "dual_attention_resnet"

    def __init__(
        self,
        backbone="resnet50",
        attention="dual",
        se_reduction=16,
        spatial_kernel_size=7,
        dropout=0.5,
        frozen_stages=2,
        decision_threshold=0.5,
        image_size=224,
        num_channels=3,
        **kwargs,
    ):
        # Names with a source prefix ("hf-hub:...", "local-dir:...") are resolved by timm at build time.
        if not isinstance(backbone, str) or not (":" in backbone or timm.is_model(backbone)):
            raise ValueError(f"`backbone` must be a timm model name, got {backbone!r}.")
        if attention not in ATTENTION_MODES:
            raise ValueError(f"`attention` must be one of {ATTENTION_MODES}, got {attention!r}.")
        if not isinstance(se_reduction, int) or se_reduction < 1:
            raise ValueError(f"`se_reduction` must be a positive integer, got {se_reduction!r}.")
        if not isinstance(spatial_kernel_size, int) or spatial_kernel_size < 1 or spatial_kernel_size % 2 == 0:
            raise ValueError(f"`spatial_kernel_size` must be a positive odd integer, got {spatial_kernel_size!r}.")
        if not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}.")
        if not isinstance(frozen_stages, int) or frozen_stages < 0:
            raise ValueError(f"`frozen_stages` must be a non-negative integer, got {frozen_stages!r}.")
        if not isinstance(decision_threshold, numbers.Real) or not 0.0 <= decision_threshold <= 1.0:
            raise ValueError(f"`decision_threshold` must be in [0, 1], got {decision_threshold!r}.")
        for name, value in (("image_size", image_size), ("num_channels", num_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")

        self.backbone = backbone
        self.attention = attention
        self.se_reduction = se_reduction
        self.spatial_kernel_size = spatial_kernel_size
        self.dropout = dropout
        self.frozen_stages = frozen_stages
        self.decision_threshold = float(decision_threshold)
        self.image_size = image_size
        self.num_channels = num_channels
        # One output: the metastasis logit. With num_labels == 1 the image-classification pipeline
        # applies a sigmoid, so its "metastatic" score is P(metastatic).
        kwargs.setdefault("id2label", {0: METASTATIC_LABEL})
        kwargs.setdefault("label2id", {METASTATIC_LABEL: 0})
        kwargs["auto_map"] = {**AUTO_MAP, **kwargs.get("auto_map", {})}
        super().__init__(**kwargs)
