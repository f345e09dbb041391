"""Dual-attention ResNet as transformers code: a timm backbone, channel + spatial attention on its
last stage, global pooling, dropout and one metastasis logit.

Paper: "Lymph Node Metastasis Detection in Pancreatic Ductal Adenocarcinoma using ResNet with
Attention Mechanism". The same classes serve the paper's baselines (ResNet-50, VGG16, ViT-B/16) with
`attention="none"`.
"""

import os
from dataclasses import dataclass
from typing import Optional

import timm
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput

from .attention import DualAttention
from .configuration_dual_attention_resnet import DualAttentionResNetConfig


@dataclass
class DualAttentionResNetModelOutput(ModelOutput):
    """
    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, channels, h, w)`):
            Last-stage features after attention (the backbone's own output for token models).
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            Pooled features that the classifier reads.
        channel_attention (`torch.FloatTensor` of shape `(batch_size, channels)`, *optional*):
            Squeeze-and-excitation weights; None when the channel branch is off.
        spatial_attention (`torch.FloatTensor` of shape `(batch_size, 1, h, w)`, *optional*):
            Spatial attention map; None when the spatial branch is off.
    """

    last_hidden_state: Optional[torch.FloatTensor] = None
    pooler_output: Optional[torch.FloatTensor] = None
    channel_attention: Optional[torch.FloatTensor] = None
    spatial_attention: Optional[torch.FloatTensor] = None


@dataclass
class DualAttentionImageClassifierOutput(ImageClassifierOutput):
    """`ImageClassifierOutput` plus the attention maps.

    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, 1)`): the metastasis logit;
            `sigmoid(logits)` is P(metastatic).
        loss (`torch.FloatTensor` of shape `()`, *optional*): BCE with logits, when labels are given.
        channel_attention (`torch.FloatTensor` of shape `(batch_size, channels)`, *optional*).
        spatial_attention (`torch.FloatTensor` of shape `(batch_size, 1, h, w)`, *optional*).
    """

    channel_attention: Optional[torch.FloatTensor] = None
    spatial_attention: Optional[torch.FloatTensor] = None


def _frozen_parameter_names(backbone: nn.Module, frozen_stages: int) -> list:
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


def _has_spatial_feature_map(backbone: nn.Module) -> bool:
    """Whether `forward_features` returns a `(batch, channels, h, w)` map that attention can weight.

    Token models (ViT: every stage at one reduction) and channels-last models (Swin: NHWC) do not.
    """
    reductions = {info.get("reduction") for info in getattr(backbone, "feature_info", [])}
    return len(reductions) > 1 and getattr(backbone, "output_fmt", "NCHW") == "NCHW"


class DualAttentionResNetPreTrainedModel(PreTrainedModel):
    config_class = DualAttentionResNetConfig
    base_model_prefix = "dual_attention_resnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False

    def _init_weights(self, module):
        # timm and torch initialise every layer at construction, and trained weights come from
        # safetensors; re-initialising here would overwrite timm's own schemes.
        pass


class DualAttentionResNetModel(DualAttentionResNetPreTrainedModel):
    """Backbone + attention + pooling, without the classifier."""

    def __init__(self, config: DualAttentionResNetConfig):
        super().__init__(config)
        # Never pretrained here: weights come from safetensors in from_pretrained, and ImageNet
        # initialisation is an explicit step of training (`load_backbone_weights`).
        self.backbone = timm.create_model(
            config.backbone, pretrained=False, num_classes=0, in_chans=config.num_channels
        )
        self.num_features = self.backbone.num_features
        self.hidden_size = getattr(self.backbone, "head_hidden_size", None) or self.num_features
        if config.attention == "none":
            self.attention = None
        else:
            if not _has_spatial_feature_map(self.backbone):
                raise ValueError(
                    f"`attention={config.attention!r}` needs a CNN backbone with a spatial feature map; "
                    f"use attention='none' with {config.backbone!r}."
                )
            self.attention = DualAttention(
                self.num_features, config.attention, config.se_reduction, config.spatial_kernel_size
            )
        self.frozen_parameter_names = _frozen_parameter_names(self.backbone, config.frozen_stages)
        self._freeze_parameters()
        self.post_init()

    def _freeze_parameters(self):
        frozen = set(self.frozen_parameter_names)
        for name, param in self.backbone.named_parameters():
            if name in frozen:
                param.requires_grad_(False)

    def train(self, mode: bool = True):
        """Frozen stages stay frozen: no gradients, and their BatchNorms keep their running statistics.

        `requires_grad` is set again on every call because `from_pretrained` replaces the parameters
        (the new ones require grad) and then calls `eval()`.
        """
        super().train(mode)
        self._freeze_parameters()
        if mode and self.frozen_parameter_names:
            frozen_modules = {name.rpartition(".")[0] for name in self.frozen_parameter_names}
            for name, module in self.backbone.named_modules():
                if name in frozen_modules and isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def load_backbone_weights(self, weights: Optional[str] = None):
        """Initialise the backbone from ImageNet weights, for training from scratch.

        Args:
            weights: a local timm checkpoint (`.safetensors`, `.pth`, `.bin`) for offline machines;
                None downloads timm's default pretrained weights from the Hugging Face Hub.
        """
        if weights and not os.path.isfile(weights):
            raise FileNotFoundError(f"Backbone weights file not found: {weights}")
        overlay = {"file": os.fspath(weights)} if weights else None
        try:
            pretrained = timm.create_model(
                self.config.backbone,
                pretrained=True,
                num_classes=0,
                in_chans=self.config.num_channels,
                pretrained_cfg_overlay=overlay,
            )
        except Exception as error:  # noqa: BLE001 - timm/hub raise many types (offline: FileNotFoundError too)
            if weights:
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise RuntimeError(f"Could not load backbone weights from {weights}: {reason}") from error
            raise RuntimeError(
                f"Could not download ImageNet weights for {self.config.backbone!r} (offline?). "
                "Train with --no-pretrained-backbone, or pass a local timm checkpoint with --backbone-weights PATH."
            ) from error
        self.backbone.load_state_dict(pretrained.state_dict())
        return self

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(batch, 3, H, W)` -> last-stage features `(batch, channels, h, w)` (tokens for ViTs)."""
        return self.backbone.forward_features(pixel_values)

    def forward_attention_and_pool(self, features: torch.Tensor) -> DualAttentionResNetModelOutput:
        """Attention on the last-stage features, then the backbone's own pooling."""
        channel_attention = spatial_attention = None
        if self.attention is not None:
            features, channel_attention, spatial_attention = self.attention(features)
        pooled = self.backbone.forward_head(features, pre_logits=True)
        return DualAttentionResNetModelOutput(
            last_hidden_state=features,
            pooler_output=pooled,
            channel_attention=channel_attention,
            spatial_attention=spatial_attention,
        )

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> DualAttentionResNetModelOutput:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`).
        """
        return self.forward_attention_and_pool(self.forward_features(pixel_values))


class DualAttentionResNetForImageClassification(DualAttentionResNetPreTrainedModel):
    """Dual-attention ResNet with one output: the metastasis logit."""

    def __init__(self, config: DualAttentionResNetConfig):
        super().__init__(config)
        self.dual_attention_resnet = DualAttentionResNetModel(config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(self.dual_attention_resnet.hidden_size, 1)
        self.post_init()

    def classify(self, features: torch.Tensor, labels: Optional[torch.Tensor] = None):
        """Last-stage features `(batch, channels, h, w)` -> `DualAttentionImageClassifierOutput`.

        Split from `forward` so explanations can take gradients with respect to the features.
        """
        outputs = self.dual_attention_resnet.forward_attention_and_pool(features)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            targets = labels.to(logits.dtype).view(-1, 1)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, targets)
        return DualAttentionImageClassifierOutput(
            loss=loss,
            logits=logits,
            channel_attention=outputs.channel_attention,
            spatial_attention=outputs.spatial_attention,
        )

    def forward(
        self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, **kwargs
    ) -> DualAttentionImageClassifierOutput:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`).
            labels (`torch.LongTensor` or `torch.FloatTensor` of shape `(batch_size,)`, *optional*):
                1 for metastatic, 0 for non-metastatic.
        """
        return self.classify(self.dual_attention_resnet.forward_features(pixel_values), labels)
