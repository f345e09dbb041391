"""Stages of a timm CNN backbone as a ResNet counts them, and what the model needs to know of them:
which module is stage 3 or 4 (`backbone_stage`), which parameters a frozen stage holds, whether the
backbone can be run stage by stage (the stage-3 spatial gate), and what it supports.
"""

from typing import NamedTuple

from torch import nn

from .configuration_dual_attention_resnet import GRADCAM_STAGES, LAST_STAGE

# The top-level modules of timm CNNs where `forward_head` begins (pooling or classifier): ResNet, EfficientNet
# and DenseNet `global_pool`; ConvNeXt, RegNet, NFNet and ByobNet `head`; VGG `pre_logits`.
HEAD_MODULE_NAMES = ("global_pool", "head", "pre_logits", "fc", "classifier")


def frozen_parameter_names(backbone: nn.Module, frozen_stages: int) -> list:
    """Names of the backbone parameters up to and including stage `frozen_stages` (stem included).

    Stages come from timm's `feature_info`: entry 0 is the stem (the first block for VGG and ViT),
    entry k the k-th stage. A stage's module may hold no parameters (VGG's entries are ReLUs), so the
    boundary is found in module order: modules are registered in forward order, and everything up
    to the end of the boundary module's subtree belongs to the stem or an earlier stage.
    """
    if frozen_stages == 0:
        return []
    stages = [info["module"] for info in backbone.feature_info]
    if frozen_stages >= len(stages):
        raise ValueError(
            f"`frozen_stages` must be below {len(stages)} for backbone with stages {stages}, got {frozen_stages}."
        )
    boundary = stages[frozen_stages]
    module_names = [name for name, _ in backbone.named_modules()]
    end = max(i for i, name in enumerate(module_names) if name == boundary or name.startswith(boundary + "."))
    frozen_modules = set(module_names[: end + 1])
    return [name for name, _ in backbone.named_parameters() if name.rpartition(".")[0] in frozen_modules]


def has_spatial_feature_map(backbone: nn.Module) -> bool:
    """Whether `forward_features` returns a `(batch, channels, h, w)` map that attention can weight.

    Token models (ViT: every stage at one reduction) and channels-last models (Swin: NHWC) do not.
    """
    reductions = {info.get("reduction") for info in getattr(backbone, "feature_info", [])}
    return len(reductions) > 1 and getattr(backbone, "output_fmt", "NCHW") == "NCHW"


class BackboneStage(NamedTuple):
    """A backbone stage as timm's `feature_info` gives it: the module's `name` in the backbone, the
    `module`, and its output `channels`."""

    name: str
    module: nn.Module
    channels: int


def backbone_stage(backbone: nn.Module, stage: int) -> BackboneStage:
    """Stage `stage` of a timm CNN, counted as in a ResNet (`config.spatial_attention_stages`,
    `config.gradcam_stage`): 4 the last entry of timm's `feature_info` (`layer4` for ResNets), 3 the
    one before it (`layer3`, twice the resolution)."""
    if stage not in GRADCAM_STAGES or isinstance(stage, bool):
        raise ValueError(f"A backbone stage is one of {GRADCAM_STAGES} (as a ResNet counts them), got {stage!r}.")
    info = backbone.feature_info[stage - LAST_STAGE - 1]
    return BackboneStage(info["module"], backbone.get_submodule(info["module"]), info["num_chs"])


def feature_modules(module: nn.Module, stage_names: list, prefix: str = "") -> list:
    """`(name, module)` in the order the backbone's `forward_features` runs them, each stage one entry.

    The backbone's children up to its head (`HEAD_MODULE_NAMES`); a `Sequential` child that holds
    stages (ConvNeXt's `stages`, EfficientNet's `blocks`) is opened into its entries, as timm's
    `FeatureListNet` does. `stage_names` are the `feature_info` module names.
    """
    entries = []
    for name, child in module.named_children():
        if not prefix and name in HEAD_MODULE_NAMES:
            break
        full_name = prefix + name
        if isinstance(child, nn.Sequential) and any(stage.startswith(full_name + ".") for stage in stage_names):
            entries += feature_modules(child, stage_names, full_name + ".")
        else:
            entries.append((full_name, child))
    return entries


def check_runs_stage_by_stage(backbone: nn.Module, backbone_name: str):
    """A stage-3 gate runs the backbone module by module (`feature_modules`): every stage must be one of them."""
    stage_names = [info["module"] for info in backbone.feature_info]
    missing = sorted(set(stage_names) - {name for name, _ in feature_modules(backbone, stage_names)})
    if missing:
        raise ValueError(
            f"`spatial_attention_stages` with stage 3 needs a backbone whose stages are its top-level modules "
            f"(or entries of a top-level Sequential); {backbone_name!r} has stages {missing} inside other modules."
        )


def supports_grad_checkpointing(backbone: nn.Module) -> bool:
    """Whether timm's `set_grad_checkpointing` works for this backbone (some raise when asked)."""
    try:
        backbone.set_grad_checkpointing(True)
        backbone.set_grad_checkpointing(False)
    except (AttributeError, AssertionError, NotImplementedError):
        return False
    return True
