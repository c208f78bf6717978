"""The MNIST UNet, from its building blocks, at 28x28.

Shapes: images ``[N x 1 x 28 x 28]``, normalised time ``t/T`` ``[N x 1]``, one-hot class ``[N x 10]``
(all zeros is the unconditional class).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Conv(nn.Sequential):
    """3x3 conv keeping the size, BatchNorm, GELU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.GELU())


class DownConv(nn.Sequential):
    """3x3 conv with stride 2 (halves the size), BatchNorm, GELU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.GELU())


class UpConv(nn.Sequential):
    """4x4 transposed conv with stride 2 (doubles the size), BatchNorm, GELU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.GELU())


class Flatten(nn.Sequential):
    """7x7 average pool to ``[N x C x 1 x 1]``, GELU."""

    def __init__(self) -> None:
        super().__init__(nn.AvgPool2d(7), nn.GELU())


class Unflatten(nn.Sequential):
    """7x7 transposed conv from ``[N x C x 1 x 1]`` back to ``[N x C x 7 x 7]``, BatchNorm, GELU."""

    def __init__(self, cin: int):
        super().__init__(nn.ConvTranspose2d(cin, cin, 7, 7, 0), nn.BatchNorm2d(cin), nn.GELU())


class Concat(nn.Module):
    """Channel concatenation of a skip connection and the upsampled path."""

    def forward(self, skip: Tensor, x: Tensor) -> Tensor:
        return torch.cat([skip, x], dim=1)


class ConvBlock(nn.Sequential):
    """Two Convs."""

    def __init__(self, cin: int, cout: int):
        super().__init__(Conv(cin, cout), Conv(cout, cout))


class DownBlock(nn.Sequential):
    """DownConv then ConvBlock."""

    def __init__(self, cin: int, cout: int):
        super().__init__(DownConv(cin, cout), ConvBlock(cout, cout))


class UpBlock(nn.Sequential):
    """UpConv then ConvBlock."""

    def __init__(self, cin: int, cout: int):
        super().__init__(UpConv(cin, cout), ConvBlock(cout, cout))


class FCBlock(nn.Sequential):
    """Linear, GELU, Linear: embeds ``t/T`` or a one-hot class."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Linear(cin, cout), nn.GELU(), nn.Linear(cout, cout))


class UNet(nn.Module):
    """The MNIST UNet. ``conditioning``: ``"none"`` (one-step denoiser), ``"time"`` or ``"class"``.

    ``forward(x [N x 1 x 28 x 28], t [N x 1] or None, c [N x 10] or None) -> [N x 1 x 28 x 28]``.
    """

    def __init__(self, hidden: int = 64, conditioning: str = "class", in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        if conditioning not in ("none", "time", "class"):
            raise ValueError(f"conditioning must be none, time or class, not {conditioning!r}")
        D = hidden
        self.conditioning = conditioning
        self.num_classes = num_classes
        self.conv_in = ConvBlock(in_channels, D)
        self.down1 = DownBlock(D, D)
        self.down2 = DownBlock(D, 2 * D)
        self.flatten = Flatten()
        self.unflatten = Unflatten(2 * D)
        self.concat = Concat()
        self.up1 = UpBlock(4 * D, D)
        self.up2 = UpBlock(2 * D, D)
        self.conv_out = ConvBlock(2 * D, D)
        self.head = nn.Conv2d(D, in_channels, 3, 1, 1)
        if conditioning != "none":
            self.fc1_t, self.fc2_t = FCBlock(1, 2 * D), FCBlock(1, D)
        if conditioning == "class":
            self.fc1_c, self.fc2_c = FCBlock(num_classes, 2 * D), FCBlock(num_classes, D)

    def forward(self, x: Tensor, t: Tensor | None = None, c: Tensor | None = None) -> Tensor:
        h0 = self.conv_in(x)  # [N x D x 28 x 28]
        h1 = self.down1(h0)  # [N x D x 14 x 14]
        h2 = self.down2(h1)  # [N x 2D x 7 x 7]
        u = self.unflatten(self.flatten(h2))  # [N x 2D x 7 x 7]
        if self.conditioning == "class":
            u = self.fc1_c(c)[:, :, None, None] * u + self.fc1_t(t)[:, :, None, None]
        elif self.conditioning == "time":
            u = u + self.fc1_t(t)[:, :, None, None]
        u = self.up1(self.concat(h2, u))  # [N x D x 14 x 14]
        if self.conditioning == "class":
            u = self.fc2_c(c)[:, :, None, None] * u + self.fc2_t(t)[:, :, None, None]
        elif self.conditioning == "time":
            u = u + self.fc2_t(t)[:, :, None, None]
        u = self.up2(self.concat(h1, u))  # [N x D x 28 x 28]
        return self.head(self.conv_out(self.concat(h0, u)))


class Classifier(nn.Module):
    """Small CNN used by ``diffkit eval mnist``: accuracy and Frechet distance of its features.

    ``forward(x [N x 1 x 28 x 28] in [0, 1]) -> logits [N x 10]``; ``features(x) -> [N x 128]``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
