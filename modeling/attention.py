"""Channel, spatial and dual attention on a CNN feature map.

Channel branch: squeeze-and-excitation (Hu et al., https://arxiv.org/abs/1709.01507).
Spatial branch: CBAM's spatial attention (Woo et al., https://arxiv.org/abs/1807.06521).
Dual: each branch multiplies the features and the two products are summed, as in the PDAC
lymph-node paper this package implements.

Each branch returns its attention weights; `DualAttention` applies them, so the maps can be shown.
`attention_supervision_loss` compares a spatial map with a lesion mask, for attention-guided training.
"""

import torch
from torch import nn
from torch.nn import functional as F

SPATIAL_GATES = ("conv", "conv_bn")
# "circular" is left out: it wraps the opposite border in, which is no less a positional cue than zeros.
SPATIAL_PADDINGS = ("zeros", "replicate", "reflect")


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation weights: global average pool, fc, ReLU, fc, sigmoid.

    Input `(batch, channels, h, w)`; output weights `(batch, channels, 1, 1)` in (0, 1).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        rd_channels = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        return self.gate(self.fc2(self.act(self.fc1(x_se))))


class SpatialAttention(nn.Module):
    """CBAM spatial weights: mean and max over channels, concatenated, conv (+ BatchNorm), sigmoid.

    Args:
        kernel_size: odd side of the convolution.
        gate: "conv" (the paper's) or "conv_bn" (CBAM's and timm's `SpatialAttn`: conv, BatchNorm).
        padding_mode: "zeros" (the paper's), or "replicate" / "reflect", which do not tell the conv
            where the border is, so a map the size of the kernel cannot learn a fixed position.
    Input `(batch, channels, h, w)`; output weights `(batch, 1, h, w)` in (0, 1).
    """

    def __init__(self, kernel_size: int = 7, gate: str = "conv", padding_mode: str = "zeros"):
        super().__init__()
        self.conv = nn.Conv2d(
            2, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=False, padding_mode=padding_mode
        )
        self.bn = nn.BatchNorm2d(1) if gate == "conv_bn" else None
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self.conv.padding[0]
        if self.conv.padding_mode == "reflect" and min(x.shape[-2:]) <= padding:
            raise ValueError(
                f"`spatial_padding='reflect'` needs a map larger than {padding} per side, got "
                f"{tuple(x.shape[-2:])}; use 'replicate', a smaller kernel or a larger input."
            )
        x_attn = self.conv(torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1))
        if self.bn is not None:
            x_attn = self.bn(x_attn)
        return self.gate(x_attn)


class DualAttention(nn.Module):
    """Channel and/or spatial attention; with both, `x * channel + x * spatial`.

    Args:
        channels: channels of the feature map.
        mode: "dual", "channel" or "spatial".
        reduction, kernel_size, gate, padding_mode: see `ChannelAttention` and `SpatialAttention`.
    Returns `(attended, channel_weights, spatial_weights)`: attended `(batch, channels, h, w)`,
    channel weights `(batch, channels)` or None, spatial weights `(batch, 1, h, w)` or None.
    """

    def __init__(
        self,
        channels: int,
        mode: str = "dual",
        reduction: int = 16,
        kernel_size: int = 7,
        gate: str = "conv",
        padding_mode: str = "zeros",
    ):
        super().__init__()
        if mode not in ("dual", "channel", "spatial"):
            raise ValueError(f"`mode` must be 'dual', 'channel' or 'spatial', got {mode!r}.")
        self.channel = ChannelAttention(channels, reduction) if mode in ("dual", "channel") else None
        self.spatial = SpatialAttention(kernel_size, gate, padding_mode) if mode in ("dual", "spatial") else None

    def forward(self, x: torch.Tensor):
        channel_weights = self.channel(x) if self.channel is not None else None
        spatial_weights = self.spatial(x) if self.spatial is not None else None
        if channel_weights is not None and spatial_weights is not None:
            attended = x * channel_weights + x * spatial_weights
        elif channel_weights is not None:
            attended = x * channel_weights
        else:
            attended = x * spatial_weights
        if channel_weights is not None:
            channel_weights = channel_weights.flatten(1)
        return attended, channel_weights, spatial_weights


def attention_supervision_loss(
    spatial_attention: torch.Tensor, lesion_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Binary cross-entropy between a spatial attention map and the lesion mask on the map's grid.

    As in attention-guided classification, only positive slices that show a lesion count: a negative
    slice has nothing to point at, and a positive slice without a mask has no target.

    Args:
        spatial_attention (`torch.FloatTensor` of shape `(batch_size, 1, h, w)`): weights in (0, 1).
        lesion_mask (`torch.Tensor` of shape `(batch_size, H, W)`): 1 on the lesion, at input resolution.
            It is max-pooled to `(h, w)`: a cell is lesion when any of its pixels is.
        labels (`torch.Tensor` of shape `(batch_size,)`): 1 for metastatic.
    Returns a scalar: the mean over the counted slices of their mean cell BCE; 0 when none counts.
    """
    target = F.adaptive_max_pool2d(lesion_mask[:, None].float(), spatial_attention.shape[-2:])
    counted = ((labels.view(-1) > 0.5) & (target.flatten(1).amax(1) > 0)).float()
    # In float32 and written out: BCE on probabilities is refused under autocast, and clamping keeps
    # a saturated gate from giving log(0).
    eps = 1e-6
    weights = spatial_attention.float().clamp(eps, 1.0 - eps)
    cell_bce = -(target * weights.log() + (1.0 - target) * (1.0 - weights).log())
    per_slice = cell_bce.flatten(1).mean(1)
    return (per_slice * counted).sum() / counted.sum().clamp_min(1.0)
