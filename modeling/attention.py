"""Channel, spatial and dual attention on a CNN feature map.

Channel branch: squeeze-and-excitation (Hu et al., https://arxiv.org/abs/1709.01507).
Spatial branch: CBAM's spatial attention (Woo et al., https://arxiv.org/abs/1807.06521).
Dual: each branch multiplies the features and the two products are summed, as in the PDAC
lymph-node paper this package implements.

Each branch returns its attention weights; `DualAttention` applies them, so the maps can be shown.
"""

import torch
from torch import nn


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
    """CBAM spatial weights: mean and max over channels, concatenated, conv, sigmoid.

    Input `(batch, channels, h, w)`; output weights `(batch, 1, h, w)` in (0, 1).
    """

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=False)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_attn = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return self.gate(self.conv(x_attn))


class DualAttention(nn.Module):
    """Channel and/or spatial attention; with both, `x * channel + x * spatial`.

    Args:
        channels: channels of the feature map.
        mode: "dual", "channel" or "spatial".
    Returns `(attended, channel_weights, spatial_weights)`: attended `(batch, channels, h, w)`,
    channel weights `(batch, channels)` or None, spatial weights `(batch, 1, h, w)` or None.
    """

    def __init__(self, channels: int, mode: str = "dual", reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        if mode not in ("dual", "channel", "spatial"):
            raise ValueError(f"`mode` must be 'dual', 'channel' or 'spatial', got {mode!r}.")
        self.channel = ChannelAttention(channels, reduction) if mode in ("dual", "channel") else None
        self.spatial = SpatialAttention(kernel_size) if mode in ("dual", "spatial") else None

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
