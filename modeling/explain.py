"""Why the model decided: its spatial attention map and Grad-CAM, from one forward pass.

Grad-CAM (Selvaraju et al., https://arxiv.org/abs/1610.02391) of the metastasis logit on the last
backbone stage, i.e. the stage-4 output before the attention module. The stage's output is swapped
for a detached leaf during the forward, so the probability, the attention map and the Grad-CAM
activations come from the same pass; autograd records only from that leaf on, and the backward
runs from the logit to the leaf: no parameter gradients, no backward through the backbone. The
result agrees with pytorch-grad-cam's `GradCAM` on the same layer; its other methods (GradCAM++,
EigenCAM, ...) are used through the library itself with `method=`.

Not imported by the model files: remote-code loading must not need grad-cam or matplotlib.
"""

from contextlib import contextmanager
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .backbone_stages import backbone_stage
from .configuration_dual_attention_resnet import GRADCAM_STAGES, LAST_STAGE
from .image_processing_ct import resize_slice

# `method=` names for pytorch-grad-cam's classes; "gradcam" is the one-pass implementation here.
LIBRARY_CAM_METHODS = {
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "scorecam": "ScoreCAM",
}
CAM_METHODS = ("gradcam",) + tuple(LIBRARY_CAM_METHODS)


def is_token_model(backbone: nn.Module) -> bool:
    """True for ViT-style backbones whose features are tokens `(batch, prefix + h * w, dim)`."""
    return getattr(backbone, "num_prefix_tokens", None) is not None and hasattr(backbone, "blocks")


def target_layer_name(backbone: nn.Module, stage: int = 4) -> str:
    """Name of the backbone module whose output Grad-CAM explains.

    CNNs: stage `stage` counted as in a ResNet (`config.gradcam_stage`, `backbone_stage`): 4 the last
    stage of timm's `feature_info` (`layer4` for ResNets), 3 the one before it (`layer3`, twice the
    resolution). Token
    models (ViT, one resolution throughout): the last block's `norm1`, because the class token is
    pooled after a per-token norm, so at the stage's output only the class token has a gradient;
    `norm1` is where the patch tokens still mix into it (pytorch-grad-cam's recipe for ViTs).
    """
    if stage not in GRADCAM_STAGES:
        raise ValueError(f"`gradcam_stage` must be one of {GRADCAM_STAGES}, got {stage!r}.")
    if is_token_model(backbone):
        if stage != 4:
            raise ValueError(f"gradcam_stage={stage} needs a CNN backbone; a token model has one resolution (use 4)")
        return f"blocks.{len(backbone.blocks) - 1}.norm1"
    return backbone_stage(backbone, stage).name


def target_layer(model: nn.Module) -> nn.Module:
    """The module whose output Grad-CAM explains, for the model's `config.gradcam_stage` (4 for configs
    saved before the field existed): the backbone's module named by `target_layer_name`, or, for stage 3
    behind a stage-3 spatial gate, the model's `gated_stage3_output`, through which the gated features pass
    (a model loaded with older remote code has none: its gate was a hook inside the stage's module)."""
    base = model.dual_attention_resnet
    stage = getattr(model.config, "gradcam_stage", 4)
    if stage == 3 and getattr(base, "gated_stage3_output", None) is not None:
        return base.gated_stage3_output
    return base.backbone.get_submodule(target_layer_name(base.backbone, stage))


def gradcam_title(config) -> str:
    """How the demo and the explanation panels name the Grad-CAM map of a model with `config`."""
    stage = getattr(config, "gradcam_stage", 4)
    return "Grad-CAM (last backbone stage)" if stage == 4 else f"Grad-CAM (backbone stage {stage})"


def gradcam_contents(gradcam_stage: int = 4, spatial_attention_stages=(4,), attention: str = "dual") -> str:
    """One sentence on what the Grad-CAM map is computed on, for a model with these config values (the
    demo's caption and the model card say it beside the map's measured localisation).

    The activations are the output of `gradcam_stage`. A spatial gate on that stage (CBAM's form, on
    stage 3) or an earlier one has already multiplied them by the attention map, so the map repeats
    the attention map wherever that is near zero and its localisation is no independent evidence. The
    paper's place, the dual module after stage 4, is downstream of what stage-4 Grad-CAM explains.
    """
    spatial = attention in ("dual", "spatial")
    gates_before = [
        stage for stage in spatial_attention_stages if spatial and stage < LAST_STAGE and stage <= gradcam_stage
    ]
    if gates_before:
        where = "that stage" if gates_before[-1] == gradcam_stage else f"stage {gates_before[-1]}, before it"
        return (f"This Grad-CAM explains backbone stage {gradcam_stage}, whose features the spatial attention map "
                f"has already multiplied (the gate sits on {where}): where attention is near zero, so is this "
                "map, so it is no independent evidence of where the model looked.")
    return (f"This Grad-CAM explains backbone stage {gradcam_stage}'s output before the attention module: its "
            "activations do not pass through the attention map.")


def tokens_to_grid(tokens: torch.Tensor, backbone: nn.Module, input_size: Tuple[int, int]) -> torch.Tensor:
    """ViT tokens `(batch, prefix + h * w, dim)` -> patch grid `(batch, dim, h, w)`, prefix tokens dropped."""
    patch_h, patch_w = backbone.patch_embed.patch_size
    height, width = input_size[0] // patch_h, input_size[1] // patch_w
    patches = tokens[:, backbone.num_prefix_tokens :]
    return patches.reshape(tokens.shape[0], height, width, tokens.shape[-1]).permute(0, 3, 1, 2)


def scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map of `(batch, H, W)` to [0, 1]; a constant map becomes all zeros (no NaN)."""
    flat = maps.flatten(1)
    low = flat.amin(1).view(-1, 1, 1)
    span = (flat.amax(1) - flat.amin(1)).view(-1, 1, 1)
    return torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)


def _forward_with_leaf(model: nn.Module, pixel_values: torch.Tensor, layer: nn.Module):
    """One forward pass in which `layer`'s output is replaced by a detached leaf that requires grad.

    The layers before `layer` run without autograd (nothing of theirs is needed); recording starts
    at the leaf. Returns `(outputs, activations)`; gradients of the outputs stop at `activations`.
    """
    captured = {}

    def swap_for_leaf(module, args, output):
        # Switch recording on for the rest of the forward; leaving `no_grad` below restores the mode.
        torch.set_grad_enabled(True)
        captured["activations"] = output.detach().requires_grad_(True)
        return captured["activations"]

    handle = layer.register_forward_hook(swap_for_leaf)
    try:
        with torch.no_grad():
            outputs = model(pixel_values)
    finally:
        handle.remove()
    return outputs, captured["activations"]


def _gradcam(model: nn.Module, pixel_values: torch.Tensor):
    """One-pass Grad-CAM: `(logits (B, 1), spatial_attention or None, cam (B, h, w))`."""
    outputs, activations = _forward_with_leaf(model, pixel_values, target_layer(model))
    # d(sum of logits) as grad_outputs of ones: no new op, so this works under a caller's no_grad too
    logits = outputs.logits
    (grads,) = torch.autograd.grad(logits, activations, grad_outputs=torch.ones_like(logits))
    backbone = model.dual_attention_resnet.backbone
    if is_token_model(backbone):
        size = tuple(pixel_values.shape[-2:])
        activations, grads = tokens_to_grid(activations, backbone, size), tokens_to_grid(grads, backbone, size)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(dim=1))
    return outputs.logits.detach(), outputs.spatial_attention, cam.detach()


class LogitsOnly(nn.Module):
    """pytorch-grad-cam calls `model(x)` and wants a tensor; this keeps the first output for the
    probability and the attention map (ScoreCAM calls the model again on masked inputs)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.first_output = None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        outputs = self.model(pixel_values)
        if self.first_output is None:
            self.first_output = outputs
        return outputs.logits


def _library_cam(model: nn.Module, pixel_values: torch.Tensor, method: str):
    """A pytorch-grad-cam method on the same layer and target: `(logits, spatial_attention, cam (B, H, W))`."""
    import pytorch_grad_cam  # lazy: only this path needs grad-cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    backbone = model.dual_attention_resnet.backbone
    size = tuple(pixel_values.shape[-2:])
    reshape: Optional[Callable] = None
    if is_token_model(backbone):
        reshape = lambda tokens: tokens_to_grid(tokens, backbone, size)  # noqa: E731
    wrapper = LogitsOnly(model)
    cam_class = getattr(pytorch_grad_cam, LIBRARY_CAM_METHODS[method])
    # ClassifierOutputTarget(0) on a single-logit output is the logit itself.
    targets = [ClassifierOutputTarget(0)] * pixel_values.shape[0]
    with cam_class(model=wrapper, target_layers=[target_layer(model)], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=pixel_values, targets=targets)
    model.zero_grad(set_to_none=True)  # the library's backward leaves parameter gradients behind
    outputs = wrapper.first_output
    cam_maps = torch.from_numpy(np.ascontiguousarray(maps)).to(pixel_values.device)
    spatial = outputs.spatial_attention.detach() if outputs.spatial_attention is not None else None
    return outputs.logits.detach(), spatial, cam_maps


@contextmanager
def _grad_checkpointing_off(backbone: nn.Module):
    """timm's gradient checkpointing calls a stage's blocks itself, so the stage's forward hook, where
    Grad-CAM takes its activations, never fires. A training-time memory saving, it is switched off for
    the explaining forward and back on after."""
    enabled = bool(getattr(backbone, "grad_checkpointing", False))
    if enabled:
        backbone.set_grad_checkpointing(False)
    try:
        yield
    finally:
        if enabled:
            backbone.set_grad_checkpointing(True)


def explain(model: nn.Module, pixel_values: torch.Tensor, method: str = "gradcam") -> Dict[str, Optional[torch.Tensor]]:
    """Probability, spatial attention map and Grad-CAM (or another CAM `method`) per image.

    Args:
        model: a `DualAttentionResNetForImageClassification` (also as loaded with `trust_remote_code`).
            Run in eval mode; its train/eval state is restored afterwards.
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, H, W)`): the processor's output.
        method: "gradcam" (one pass, implemented here) or a pytorch-grad-cam method from
            `LIBRARY_CAM_METHODS` ("gradcam++", "eigencam", ...).

    Returns:
        dict with `probability` `(batch_size,)` = sigmoid(logit) in float64; `attention` `(batch_size, H, W)` in
        [0, 1], None when the spatial branch is off; `gradcam` `(batch_size, H, W)` in [0, 1] (the map
        of `method`). Maps are min-max scaled per image; an all-zero map stays zero.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"`method` must be one of {CAM_METHODS}, got {method!r}.")
    pixel_values = pixel_values.to(device=model.device, dtype=model.dtype)
    size = tuple(pixel_values.shape[-2:])
    was_training = model.training
    model.eval()
    try:
        with _grad_checkpointing_off(model.dual_attention_resnet.backbone):
            if method == "gradcam":
                logits, spatial, cam = _gradcam(model, pixel_values)
            else:
                logits, spatial, cam = _library_cam(model, pixel_values, method)
    finally:
        model.train(was_training)
    attention = None
    if spatial is not None:
        attention = scale_to_unit(resize_slice(spatial.detach()[:, 0], size))
    return {
        # float64: float32 reads logits above ~17 as 1.0, and the operating threshold is chosen in float64
        "probability": torch.sigmoid(logits[:, 0].detach().double()),
        "attention": attention,
        "gradcam": scale_to_unit(resize_slice(cam, size)),
    }


def overlay(unit_slice, heatmap, alpha: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """A windowed slice and a map -> `uint8` RGB `(H, W, 3)`: the slice in grey, the map in colour.

    Args:
        unit_slice (`(H, W)` in [0, 1]): the windowed CT slice (`processor.to_unit_range`).
        heatmap (`(h, w)` in [0, 1]): an attention or Grad-CAM map; resized bilinearly to `(H, W)`
            when its size differs (maps are at model resolution, slices often at 512 px).
        alpha: weight of the coloured map.
        colormap: a matplotlib colormap name.
    """
    from matplotlib import colormaps  # lazy: keeps `import modeling.explain` light for the CLI

    if isinstance(unit_slice, torch.Tensor):
        unit_slice = unit_slice.detach().cpu().numpy()
    grey = np.clip(np.asarray(unit_slice, dtype=np.float32), 0.0, 1.0)
    if isinstance(heatmap, torch.Tensor):
        heat = heatmap.detach().cpu().float()
    else:
        heat = torch.tensor(np.asarray(heatmap, dtype=np.float32))
    if grey.ndim != 2 or heat.ndim != 2:
        raise ValueError(f"overlay needs 2-D slice and map, got shapes {grey.shape} and {tuple(heat.shape)}")
    if tuple(heat.shape) != grey.shape:
        heat = resize_slice(heat, grey.shape)
    heat = np.clip(heat.numpy(), 0.0, 1.0)
    colour = colormaps[colormap](heat)[..., :3]
    blended = (1.0 - alpha) * grey[..., None] + alpha * colour
    return np.round(blended * 255.0).astype(np.uint8)


__all__ = [
    "CAM_METHODS",
    "LIBRARY_CAM_METHODS",
    "LogitsOnly",
    "explain",
    "gradcam_contents",
    "gradcam_title",
    "is_token_model",
    "overlay",
    "scale_to_unit",
    "target_layer",
    "target_layer_name",
    "tokens_to_grid",
]
