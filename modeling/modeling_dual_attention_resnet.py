"""Dual-attention ResNet as transformers code: a timm backbone, channel + spatial attention on its
last stage, global pooling, dropout and one metastasis logit.

Paper: "Lymph Node Metastasis Detection in Pancreatic Ductal Adenocarcinoma using ResNet with
Attention Mechanism". The same classes serve the paper's baselines (ResNet-50, VGG16, ViT-B/16) with
`attention="none"`. Config fields move the spatial branch to stage 3 (or add it there), change its
gate and padding, and supervise its map with lesion masks; the defaults are the paper's model.
"""

import math
import os
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import timm
import torch
from timm.models import checkpoint_seq
from torch import nn
from transformers import PreTrainedModel
from transformers.dynamic_module_utils import custom_object_save
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput

from .attention import DualAttention, SpatialAttention, attention_supervision_loss
from .backbone_stages import (
    backbone_stage,
    check_runs_stage_by_stage,
    feature_modules,
    frozen_parameter_names,
    has_spatial_feature_map,
    supports_grad_checkpointing,
)
from .configuration_dual_attention_resnet import LAST_STAGE, DualAttentionResNetConfig


@dataclass
class DualAttentionResNetModelOutput(ModelOutput):
    """
    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, channels, h, w)`):
            Last-stage features after attention (the backbone's own output for token models).
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            Pooled features that the classifier reads.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states=True`):
            The backbone's stage outputs as timm's `forward_intermediates` gives them, stem first, each
            `(batch_size, channels_i, h_i, w_i)` (a ResNet: stem and stages 1-4); stage 3 with a spatial
            gate is given after the gate.
        channel_attention (`torch.FloatTensor` of shape `(batch_size, channels)`, *optional*):
            Squeeze-and-excitation weights; None when the channel branch is off.
        spatial_attention (`torch.FloatTensor` of shape `(batch_size, 1, h, w)`, *optional*):
            Spatial attention map (the finest one when there are two); None when the spatial branch is off.
    """

    last_hidden_state: Optional[torch.FloatTensor] = None
    pooler_output: Optional[torch.FloatTensor] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
    channel_attention: Optional[torch.FloatTensor] = None
    spatial_attention: Optional[torch.FloatTensor] = None


@dataclass
class DualAttentionImageClassifierOutput(ImageClassifierOutput):
    """`ImageClassifierOutput` plus the attention maps.

    With `return_dict=False` the same fields come as a tuple, the ones that are None left out:
    `(loss, logits, hidden_states, channel_attention, spatial_attention)`.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): BCE with logits, when labels are given,
            plus `attention_loss_weight` times the attention supervision loss when a lesion mask is.
        logits (`torch.FloatTensor` of shape `(batch_size, 1)`): the metastasis logit;
            `sigmoid(logits)` is P(metastatic).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): the backbone's stage outputs, with
            `output_hidden_states=True`.
        channel_attention (`torch.FloatTensor` of shape `(batch_size, channels)`, *optional*).
        spatial_attention (`torch.FloatTensor` of shape `(batch_size, 1, h, w)`, *optional*).
    """

    channel_attention: Optional[torch.FloatTensor] = None
    spatial_attention: Optional[torch.FloatTensor] = None


def _last_stage_attention_mode(attention: str, spatial_stages: list) -> Optional[str]:
    """The `DualAttention` mode on the last stage, or None: the spatial branch moves to stage 3 when asked."""
    if attention == "none":
        return None
    if attention == "channel" or LAST_STAGE in spatial_stages:
        return attention
    return "channel" if attention == "dual" else None


class DualAttentionResNetPreTrainedModel(PreTrainedModel):
    config_class = DualAttentionResNetConfig
    base_model_prefix = "dual_attention_resnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # Per instance (set in `__init__`): it depends on the timm backbone.
    supports_gradient_checkpointing = False

    def init_weights(self):
        """Nothing to do when the model is built: torch and timm initialise every layer as they create
        it (timm's own schemes, e.g. `zero_init_last` in residual blocks), and re-sampling would only
        change a seeded run. Loading calls `initialize_weights` itself for what a checkpoint lacks."""

    @torch.no_grad()
    def _init_weights(self, module):
        """Initialise `module` as timm's ResNet and torch do, for the weights a checkpoint lacks.

        transformers builds the model without initialising it when it loads a checkpoint, then calls
        this for every module whose weights were missing (a new head, a new attention branch, any
        backbone layer); loaded weights are left alone. Convolutions: Kaiming normal, fan-out (timm's
        ResNet), bias as torch; linear layers: torch's default; norms: weight 1, bias 0, fresh
        running statistics; any other layer with parameters of its own: its `reset_parameters`, else
        a truncated normal of std 0.02 (timm's position embeddings).
        """
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Linear):
            module.reset_parameters()
        elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
            if getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                nn.init.zeros_(module.running_mean)
                nn.init.ones_(module.running_var)
                nn.init.zeros_(module.num_batches_tracked)
        elif any(True for _ in module.parameters(recurse=False)):
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:
                for parameter in module.parameters(recurse=False):
                    nn.init.trunc_normal_(parameter, std=0.02)

    def _set_gradient_checkpointing(self, enable: bool = True, *args, **kwargs):
        # timm checkpoints the backbone's blocks itself; the attention and head are small.
        self.base_model.backbone.set_grad_checkpointing(enable)

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, **kwargs):
        """`PreTrainedModel.save_pretrained`; saved as remote code, the folder also gets the DICOM pipeline's
        file, which config.json's `custom_pipelines` names.

        The pipeline is imported here, not with the model: it needs `transformers.pipelines`, which
        loading or running the model does not. (Because this line names it, transformers also fetches
        the file with the model's code.)
        """
        super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        if is_main_process and self._auto_class is not None and os.path.isdir(save_directory):
            from .pipeline_ct_classification import CTMetastasisClassificationPipeline

            custom_object_save(CTMetastasisClassificationPipeline, save_directory)


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
        self.supports_gradient_checkpointing = supports_grad_checkpointing(self.backbone)
        spatial_stages = config.spatial_attention_stages if config.attention in ("dual", "spatial") else []
        last_stage_mode = _last_stage_attention_mode(config.attention, spatial_stages)
        if (last_stage_mode is not None or spatial_stages) and not has_spatial_feature_map(self.backbone):
            raise ValueError(
                f"`attention={config.attention!r}` needs a CNN backbone with a spatial feature map; "
                f"use attention='none' with {config.backbone!r}."
            )
        self.attention = None
        if last_stage_mode is not None:
            self.attention = DualAttention(
                self.num_features, last_stage_mode, config.se_reduction, config.spatial_kernel_size,
                config.spatial_gate, config.spatial_padding,
            )
        self.stage3_attention = self.gated_stage3_output = None
        if 3 in spatial_stages:
            check_runs_stage_by_stage(self.backbone, config.backbone)
            self.stage3_attention = SpatialAttention(
                config.spatial_kernel_size, config.spatial_gate, config.spatial_padding
            )
            # No parameters: the gated stage-3 features pass through it, so that a forward hook sees
            # them where it sees any stage's output (Grad-CAM's target layer for `gradcam_stage=3`).
            self.gated_stage3_output = nn.Identity()
        self.frozen_parameter_names = frozen_parameter_names(self.backbone, config.frozen_stages)
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
        """`(batch, 3, H, W)` -> last-stage features `(batch, channels, h, w)` (tokens for ViTs).

        Stage-3 spatial attention, when configured, multiplies stage 3's output on the way.
        """
        return self._backbone_outputs(pixel_values, output_hidden_states=False)[0]

    def forward_intermediates(self, pixel_values: torch.Tensor) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """`forward_features` plus every stage's output, as timm's `forward_intermediates` gives them."""
        features, hidden_states, _ = self._backbone_outputs(pixel_values, output_hidden_states=True)
        return features, hidden_states

    def _backbone_outputs(self, pixel_values: torch.Tensor, output_hidden_states: bool):
        """`(features, hidden_states or None, stage-3 spatial weights or None)`."""
        if self.stage3_attention is not None:
            return self._forward_stages_with_gate(pixel_values, output_hidden_states)
        if not output_hidden_states:
            return self.backbone.forward_features(pixel_values), None, None
        if not hasattr(self.backbone, "forward_intermediates"):
            raise ValueError(
                f"`output_hidden_states=True` needs a timm backbone with `forward_intermediates`; "
                f"{self.config.backbone!r} has none."
            )
        features, intermediates = self.backbone.forward_intermediates(pixel_values)
        return features, tuple(intermediates), None

    def _forward_stages_with_gate(self, pixel_values: torch.Tensor, output_hidden_states: bool):
        """The backbone's `forward_features` module by module, stage 3's output multiplied by its spatial
        weights (CBAM's form) before stage 4 reads it. Returns `_backbone_outputs`' triple.

        Under timm's gradient checkpointing (`backbone.grad_checkpointing`) each stage is checkpointed
        block by block, as timm's ResNet does; models that checkpoint inside their stages (ConvNeXt) do
        it themselves.
        """
        stage_names = [info["module"] for info in self.backbone.feature_info]
        gated_stage = backbone_stage(self.backbone, 3).name
        checkpointing = getattr(self.backbone, "grad_checkpointing", False) and torch.is_grad_enabled()
        features, stage_outputs, stage3_weights = pixel_values, [], None
        for name, module in feature_modules(self.backbone, stage_names):
            if checkpointing and name in stage_names[1:]:
                features = checkpoint_seq(module if isinstance(module, nn.Sequential) else [module], features)
            else:
                features = module(features)
            if name == gated_stage:
                stage3_weights = self.stage3_attention(features)
                features = self.gated_stage3_output(features * stage3_weights)
            if name in stage_names:
                stage_outputs.append(features)
        return features, tuple(stage_outputs) if output_hidden_states else None, stage3_weights

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> Union[DualAttentionResNetModelOutput, tuple]:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`).
            output_hidden_states (`bool`, *optional*): also return the backbone's stage outputs.
            return_dict (`bool`, *optional*): False returns a tuple of the output's fields that are not None.
        """
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        features, hidden_states, stage3_map = self._backbone_outputs(pixel_values, output_hidden_states)
        channel_attention = spatial_attention = None
        if self.attention is not None:
            features, channel_attention, spatial_attention = self.attention(features)
        output = DualAttentionResNetModelOutput(
            last_hidden_state=features,
            pooler_output=self.backbone.forward_head(features, pre_logits=True),
            hidden_states=hidden_states,
            channel_attention=channel_attention,
            spatial_attention=stage3_map if stage3_map is not None else spatial_attention,
        )
        return output if return_dict else output.to_tuple()


class DualAttentionResNetForImageClassification(DualAttentionResNetPreTrainedModel):
    """Dual-attention ResNet with one output: the metastasis logit."""

    def __init__(self, config: DualAttentionResNetConfig):
        super().__init__(config)
        self.dual_attention_resnet = DualAttentionResNetModel(config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(self.dual_attention_resnet.hidden_size, 1)
        self.supports_gradient_checkpointing = self.dual_attention_resnet.supports_gradient_checkpointing
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        lesion_mask: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> Union[DualAttentionImageClassifierOutput, tuple]:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`).
            labels (`torch.LongTensor` or `torch.FloatTensor` of shape `(batch_size,)`, *optional*):
                1 for metastatic, 0 for non-metastatic.
            lesion_mask (`torch.Tensor` of shape `(batch_size, height, width)`, *optional*): 1 on the
                lesion, at the input's resolution (all zero where a slice has none). With labels and
                `config.attention_loss_weight > 0`, the loss adds that weight times the BCE between the
                spatial map and the mask on the map's grid, over metastatic slices that have a lesion.
            output_hidden_states (`bool`, *optional*): also return the backbone's stage outputs.
            return_dict (`bool`, *optional*): False returns a tuple, loss first when labels are given,
                then logits, then the fields that are not None (see `DualAttentionImageClassifierOutput`).
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.dual_attention_resnet(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            targets = labels.to(logits.dtype).view(-1, 1)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, targets)
            if lesion_mask is not None and self.config.attention_loss_weight > 0:
                supervision = attention_supervision_loss(outputs.spatial_attention, lesion_mask, labels)
                loss = loss + self.config.attention_loss_weight * supervision
        output = DualAttentionImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            channel_attention=outputs.channel_attention,
            spatial_attention=outputs.spatial_attention,
        )
        return output if return_dict else output.to_tuple()
