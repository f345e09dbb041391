"""Configuration of the dual-attention ResNet for lymph-node metastasis detection on CT slices.

Paper: "Lymph Node Metastasis Detection in Pancreatic Ductal Adenocarcinoma using ResNet with
Attention Mechanism" (ResNet-50 + squeeze-and-excitation channel attention + CBAM-style spatial
attention, summed, on the last backbone stage).
"""

import numbers

import timm
from transformers import PretrainedConfig

from .attention import SPATIAL_GATES, SPATIAL_PADDINGS

ATTENTION_MODES = ("dual", "channel", "spatial", "none")
METASTATIC_LABEL = "metastatic"
# Stages as a ResNet counts them: 4 is the last stage (the paper's place for attention), 3 the one before.
# `backbone_stages.backbone_stage` finds a number's module in any timm CNN.
LAST_STAGE = 4
SPATIAL_ATTENTION_STAGES = ([4], [3], [3, 4])
GRADCAM_STAGES = (4, 3)
LOCALISATION_MAPS = ("attention", "gradcam")
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
# transformers' custom pipeline entry: `pipeline(model=dir, trust_remote_code=True)` finds this task
# as the folder's only one and loads the class from the file `save_pretrained` copied next to the model.
PIPELINE_TASK = "ct-metastasis-classification"
CUSTOM_PIPELINES = {
    PIPELINE_TASK: {
        "impl": "pipeline_ct_classification.CTMetastasisClassificationPipeline",
        "pt": ["AutoModelForImageClassification"],
        "type": "image",
    }
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
        spatial_attention_stages (`List[int]`, *optional*, defaults to `[4]`):
            Where the spatial branch sits, stages counted as in a ResNet: `[4]` the last stage (the
            paper's, inside the dual module), `[3]` the stage before it (twice the resolution: 14 x 14
            at 224 px), `[3, 4]` both. On stage 3 the map multiplies that stage's output (CBAM's
            form), and stage 4 keeps the channel branch only when `[3]`. A single stage may be given as an
            int (`3`). The model's `spatial_attention` output is the finest map.
        spatial_gate (`str`, *optional*, defaults to `"conv"`):
            `"conv"` (the paper's: conv, sigmoid) or `"conv_bn"` (CBAM's and timm's: conv, BatchNorm, sigmoid).
        spatial_padding (`str`, *optional*, defaults to `"zeros"`):
            Padding of the spatial conv: `"zeros"` (the paper's) tells the conv where the border is, so
            on a map no larger than the kernel it can learn a fixed position; `"replicate"` and
            `"reflect"` do not.
        attention_loss_weight (`float`, *optional*, defaults to 0.0):
            Weight of the attention supervision loss (BCE between the spatial map and the lesion mask on
            positive slices) added to the classification loss when `forward` gets a `lesion_mask`;
            0 turns it off.
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
        gradcam_stage (`int`, *optional*, defaults to 4):
            The backbone stage whose output Grad-CAM explains, counted as for `spatial_attention_stages`:
            4 the last (the paper's "final convolutional layer"), 3 the one before it (14 x 14 at 224 px
            instead of 7 x 7: a map four times finer). CNN backbones only for 3. Changes no weight: it
            may be set on a trained model, and evaluation measures the map it selects.
        localisation (`dict`, *optional*):
            How often each map pointed at the lesion on the model's evaluation, written by evaluation:
            `{"attention": {...}, "gradcam": {...}}`, each `{"pointing_game": float, "pointing_game_ci":
            [low, high], "energy_in_mask": float, "n_slices": int, "chance": float, "split": str}`.
            A map that is absent was never evaluated; None: neither was.
        threshold_note (`str`, *optional*):
            Why the operating point `decision_threshold` is what it is (e.g. chosen on a validation
            split that the model separates perfectly), for the demo and the model card.
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
        spatial_attention_stages=(4,),
        spatial_gate="conv",
        spatial_padding="zeros",
        attention_loss_weight=0.0,
        gradcam_stage=4,
        localisation=None,
        threshold_note=None,
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
        stages = _stage_list(spatial_attention_stages)
        _check_spatial_variant(attention, stages, spatial_gate, spatial_padding, attention_loss_weight)
        if gradcam_stage not in GRADCAM_STAGES or isinstance(gradcam_stage, bool):
            raise ValueError(f"`gradcam_stage` must be one of {GRADCAM_STAGES}, got {gradcam_stage!r}.")
        _check_evaluation_notes(localisation, threshold_note)

        self.backbone = backbone
        self.attention = attention
        self.se_reduction = se_reduction
        self.spatial_kernel_size = spatial_kernel_size
        self.dropout = dropout
        self.frozen_stages = frozen_stages
        self.decision_threshold = float(decision_threshold)
        self.image_size = image_size
        self.num_channels = num_channels
        self.spatial_attention_stages = stages
        self.spatial_gate = spatial_gate
        self.spatial_padding = spatial_padding
        self.attention_loss_weight = float(attention_loss_weight)
        self.gradcam_stage = gradcam_stage
        self.localisation = localisation
        self.threshold_note = threshold_note
        # One output: the metastasis logit. With num_labels == 1 the image-classification pipeline
        # applies a sigmoid, so its "metastatic" score is P(metastatic).
        kwargs.setdefault("id2label", {0: METASTATIC_LABEL})
        kwargs.setdefault("label2id", {METASTATIC_LABEL: 0})
        kwargs["auto_map"] = {**AUTO_MAP, **kwargs.get("auto_map", {})}
        kwargs["custom_pipelines"] = {**CUSTOM_PIPELINES, **kwargs.get("custom_pipelines", {})}
        super().__init__(**kwargs)


def _is_whole_number(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _stage_list(stages) -> list:
    """`3`, `4`, or a list or tuple of them -> a sorted list; anything else is a one-line ValueError.

    config.json stores the list; strings such as the command line's "3+4" are parsed by `training`.
    """
    numbers_given = [stages] if _is_whole_number(stages) else stages
    if isinstance(numbers_given, (list, tuple)) and all(map(_is_whole_number, numbers_given)):
        if sorted(numbers_given) in SPATIAL_ATTENTION_STAGES:
            return sorted(numbers_given)
    raise ValueError(f"`spatial_attention_stages` must be one of {SPATIAL_ATTENTION_STAGES} (or 3, 4), got {stages!r}.")


def _check_spatial_variant(attention, stages, spatial_gate, spatial_padding, attention_loss_weight):
    """One-line ValueErrors for the spatial branch's variant fields (`stages` already checked)."""
    if spatial_gate not in SPATIAL_GATES:
        raise ValueError(f"`spatial_gate` must be one of {SPATIAL_GATES}, got {spatial_gate!r}.")
    if spatial_padding not in SPATIAL_PADDINGS:
        raise ValueError(f"`spatial_padding` must be one of {SPATIAL_PADDINGS}, got {spatial_padding!r}.")
    if not isinstance(attention_loss_weight, numbers.Real) or not attention_loss_weight >= 0.0:
        raise ValueError(f"`attention_loss_weight` must be a non-negative number, got {attention_loss_weight!r}.")
    if attention in ("channel", "none") and (stages != [LAST_STAGE] or attention_loss_weight > 0):
        raise ValueError(
            "`spatial_attention_stages` and `attention_loss_weight` need a spatial branch "
            f"(attention 'dual' or 'spatial'), got attention={attention!r}."
        )


def _check_evaluation_notes(localisation, threshold_note):
    """One-line ValueErrors for the fields that evaluation fills in."""
    if localisation is not None and (
        not isinstance(localisation, dict)
        or not set(localisation) <= set(LOCALISATION_MAPS)
        or not all(isinstance(entry, dict) for entry in localisation.values())
    ):
        raise ValueError(
            f"`localisation` must be None or a dict of {LOCALISATION_MAPS} to dicts, got {localisation!r}."
        )
    if threshold_note is not None and not isinstance(threshold_note, str):
        raise ValueError(f"`threshold_note` must be None or a string, got {threshold_note!r}.")
