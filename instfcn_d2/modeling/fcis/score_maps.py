"""The 1x1 conv that makes FCIS's position-sensitive score maps (FCIS and BiSeg). Their channel
layout, and how assembled maps are read, are in :mod:`instfcn_d2.core.fcis.layout`."""
from torch import Tensor, nn

from ..common import init_new_layers

__all__ = ["PSScoreMaps"]


class PSScoreMaps(nn.Module):
    """A 1x1 conv producing ``k*k*num_outputs`` position-sensitive score maps.

    ``forward``: ``(N, in_channels, H, W) -> (N, k*k*num_outputs, H, W)``.

    FCIS uses it twice on the 1024-d ``conv_new_1`` features: ``num_outputs = 2*(C+1)`` for the
    inside/outside maps and ``num_outputs = 4`` for the class-agnostic box maps; BiSeg adds a
    second inside/outside set on res3. Initialised as the official FCIS / R-FCN code
    (weights ``N(0, 0.01)``, bias 0).
    """

    def __init__(self, in_channels: int, group_size: int, num_outputs: int):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("group_size", group_size), ("num_outputs", num_outputs)):
            if value < 1:
                raise ValueError(f"PSScoreMaps: {name} must be >= 1, got {value}")
        self.group_size = group_size
        self.num_outputs = num_outputs
        self.conv = nn.Conv2d(in_channels, group_size * group_size * num_outputs, kernel_size=1)
        init_new_layers(self.conv)

    def forward(self, features: Tensor) -> Tensor:
        return self.conv(features)
