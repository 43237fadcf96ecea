"""Building blocks: channel LayerNorm, WaveNet (WN), HiFi-GAN residual blocks and the invertible
flow layers (upstream Bert-VITS2 2.3 `modules.py`).

Every flow layer has the same contract: forward(x, x_mask, g=None, reverse=False) returns
(y, logdet [B]) when reverse is False and only y when it is True. Parameter names follow upstream
exactly so checkpoints load (see model/upstream.py).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from model import commons
from model.attentions import Encoder, LayerNorm  # noqa: F401  (LayerNorm: re-exported for models.py)
from model.commons import get_padding, weight_norm
from model.transforms import piecewise_rational_quadratic_transform

LRELU_SLOPE = 0.1


class DDSConv(nn.Module):
    """Dilated depth-separable convolutions (the stochastic duration predictor's body).

    Dilation grows as kernel_size**i, so 3 layers of kernel 3 see 27 tokens.
    """

    def __init__(self, channels: int, kernel_size: int, n_layers: int, p_dropout: float = 0.0):
        super().__init__()
        self.n_layers = n_layers
        self.drop = nn.Dropout(p_dropout)
        self.convs_sep = nn.ModuleList()
        self.convs_1x1 = nn.ModuleList()
        self.norms_1 = nn.ModuleList()
        self.norms_2 = nn.ModuleList()
        for i in range(n_layers):
            dilation = kernel_size ** i
            padding = (kernel_size * dilation - dilation) // 2
            self.convs_sep.append(nn.Conv1d(channels, channels, kernel_size, groups=channels,
                                            dilation=dilation, padding=padding))
            self.convs_1x1.append(nn.Conv1d(channels, channels, 1))
            self.norms_1.append(LayerNorm(channels))
            self.norms_2.append(LayerNorm(channels))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: Optional[torch.Tensor] = None) -> torch.Tensor:
        if g is not None:
            x = x + g
        for i in range(self.n_layers):
            y = self.convs_sep[i](x * x_mask)
            y = F.gelu(self.norms_1[i](y))
            y = self.convs_1x1[i](y)
            y = F.gelu(self.norms_2[i](y))
            x = x + self.drop(y)
        return x * x_mask


class WN(nn.Module):
    """Non-causal WaveNet: gated dilated convs with residual and skip paths, optional global
    conditioning g [B, gin, 1] split into one chunk per layer. [B, H, T] -> [B, H, T]."""

    def __init__(self, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int,
                 gin_channels: int = 0, p_dropout: float = 0.0):
        super().__init__()
        assert kernel_size % 2 == 1
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.gin_channels = gin_channels
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.drop = nn.Dropout(p_dropout)
        if gin_channels != 0:
            # One 1x1 conv produces the conditioning of every layer at once.
            self.cond_layer = weight_norm(nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1))
        for i in range(n_layers):
            dilation = dilation_rate ** i
            self.in_layers.append(weight_norm(nn.Conv1d(
                hidden_channels, 2 * hidden_channels, kernel_size, dilation=dilation,
                padding=get_padding(kernel_size, dilation))))
            # The last layer only feeds the skip sum, so it needs no residual half.
            res_skip_channels = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(weight_norm(nn.Conv1d(hidden_channels, res_skip_channels, 1)))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.hidden_channels
        output = torch.zeros_like(x)
        if g is not None:
            g = self.cond_layer(g)  # [B, 2H * n_layers, 1]
        for i in range(self.n_layers):
            x_in = self.in_layers[i](x)  # [B, 2H, T]
            g_l = g[:, i * 2 * h:(i + 1) * 2 * h] if g is not None else torch.zeros_like(x_in)
            acts = self.drop(commons.fused_add_tanh_sigmoid_multiply(x_in, g_l, h))
            res_skip = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                x = (x + res_skip[:, :h]) * x_mask
                output = output + res_skip[:, h:]
            else:
                output = output + res_skip
        return output * x_mask


class ResBlock1(nn.Module):
    """HiFi-GAN resblock type 1: three (dilated conv, conv) pairs, each residual."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: Sequence[int] = (1, 3, 5)):
        super().__init__()
        # Upstream then calls init_weights (normal(0, 0.01)) on these layers, but on a weight-normed
        # conv that only overwrites a derived tensor, so its effective init is PyTorch's default:
        # we keep that (the behaviour upstream's released checkpoints were trained from).
        self.convs1 = nn.ModuleList([
            weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d,
                                  padding=get_padding(kernel_size, d))) for d in dilation])
        self.convs2 = nn.ModuleList([
            weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=1,
                                  padding=get_padding(kernel_size, 1))) for _ in dilation])

    def forward(self, x: torch.Tensor, x_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = F.leaky_relu(x, LRELU_SLOPE)
            if x_mask is not None:
                xt = xt * x_mask
            xt = F.leaky_relu(c1(xt), LRELU_SLOPE)
            if x_mask is not None:
                xt = xt * x_mask
            x = c2(xt) + x
        return x * x_mask if x_mask is not None else x

    def remove_weight_norm(self) -> None:
        for layer in [*self.convs1, *self.convs2]:
            commons.remove_weight_norm(layer)


class ResBlock2(nn.Module):
    """HiFi-GAN resblock type 2: two dilated convs, each residual."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: Sequence[int] = (1, 3)):
        super().__init__()
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d,
                                  padding=get_padding(kernel_size, d))) for d in dilation[:2]])

    def forward(self, x: torch.Tensor, x_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        for c in self.convs:
            xt = F.leaky_relu(x, LRELU_SLOPE)
            if x_mask is not None:
                xt = xt * x_mask
            x = c(xt) + x
        return x * x_mask if x_mask is not None else x

    def remove_weight_norm(self) -> None:
        for layer in self.convs:
            commons.remove_weight_norm(layer)


class Log(nn.Module):
    """y = log(x) (x > 0): maps positive durations to the real line for the SDP's flows."""

    def forward(self, x, x_mask, reverse=False, **kwargs):
        if not reverse:
            y = torch.log(torch.clamp_min(x, 1e-5)) * x_mask
            return y, torch.sum(-y, [1, 2])
        return torch.exp(x) * x_mask


class Flip(nn.Module):
    """Reverse the channel order so the next coupling layer transforms the other half."""

    def forward(self, x, *args, reverse=False, **kwargs):
        x = torch.flip(x, [1])
        if not reverse:
            return x, torch.zeros(x.size(0), dtype=x.dtype, device=x.device)
        return x


class ElementwiseAffine(nn.Module):
    """y = m + exp(logs) * x, per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.m = nn.Parameter(torch.zeros(channels, 1))
        self.logs = nn.Parameter(torch.zeros(channels, 1))

    def forward(self, x, x_mask, reverse=False, **kwargs):
        if not reverse:
            y = (self.m + torch.exp(self.logs) * x) * x_mask
            return y, torch.sum(self.logs * x_mask, [1, 2])
        return (x - self.m) * torch.exp(-self.logs) * x_mask


class _CouplingLayer(nn.Module):
    """Affine coupling: x1 <- m(x0) + x1 * exp(logs(x0)); x0 passes through, so it inverts exactly.

    Subclasses set `self.enc` (the network reading x0). `post` starts at zero, so every coupling
    layer starts as the identity, which keeps early training stable.
    """

    def __init__(self, channels: int, hidden_channels: int, mean_only: bool):
        assert channels % 2 == 0, "channels should be divisible by 2"
        super().__init__()
        self.half_channels = channels // 2
        self.mean_only = mean_only
        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)

    def _make_post(self, hidden_channels: int) -> nn.Conv1d:
        post = nn.Conv1d(hidden_channels, self.half_channels * (2 - self.mean_only), 1)
        nn.init.zeros_(post.weight)
        nn.init.zeros_(post.bias)
        return post

    def forward(self, x, x_mask, g=None, reverse=False):
        x0, x1 = torch.split(x, [self.half_channels] * 2, 1)
        h = self.pre(x0) * x_mask
        h = self.enc(h, x_mask, g=g)
        stats = self.post(h) * x_mask
        if not self.mean_only:
            m, logs = torch.split(stats, [self.half_channels] * 2, 1)
        else:
            m, logs = stats, torch.zeros_like(stats)
        if not reverse:
            x1 = m + x1 * torch.exp(logs) * x_mask
            return torch.cat([x0, x1], 1), torch.sum(logs, [1, 2])
        x1 = (x1 - m) * torch.exp(-logs) * x_mask
        return torch.cat([x0, x1], 1)


class ResidualCouplingLayer(_CouplingLayer):
    """VITS' coupling layer: a WN reads x0."""

    def __init__(self, channels, hidden_channels, kernel_size, dilation_rate, n_layers,
                 p_dropout=0.0, gin_channels=0, mean_only=False):
        super().__init__(channels, hidden_channels, mean_only)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers,
                      p_dropout=p_dropout, gin_channels=gin_channels)
        self.post = self._make_post(hidden_channels)


class TransformerCouplingLayer(_CouplingLayer):
    """VITS2's coupling layer: a transformer encoder reads x0, so the flow sees long-range context.

    `wn_sharing_parameter`: one encoder module shared by every layer (upstream's
    flow_share_parameter), else each layer owns one.
    """

    def __init__(self, channels, hidden_channels, kernel_size, n_layers, n_heads, p_dropout=0.0,
                 filter_channels=0, mean_only=False, wn_sharing_parameter=None, gin_channels=0):
        super().__init__(channels, hidden_channels, mean_only)
        self.enc = (Encoder(hidden_channels, filter_channels, n_heads, n_layers, kernel_size,
                            p_dropout, gin_channels=gin_channels)
                    if wn_sharing_parameter is None else wn_sharing_parameter)
        self.post = self._make_post(hidden_channels)


class ConvFlow(nn.Module):
    """Neural spline coupling (monotonic rational-quadratic) used inside the SDP."""

    def __init__(self, in_channels: int, filter_channels: int, kernel_size: int, n_layers: int,
                 num_bins: int = 10, tail_bound: float = 5.0):
        super().__init__()
        self.filter_channels = filter_channels
        self.num_bins = num_bins
        self.tail_bound = tail_bound
        self.half_channels = in_channels // 2
        self.pre = nn.Conv1d(self.half_channels, filter_channels, 1)
        self.convs = DDSConv(filter_channels, kernel_size, n_layers, p_dropout=0.0)
        # widths, heights (num_bins each) and inner derivatives (num_bins - 1) per half-channel
        self.proj = nn.Conv1d(filter_channels, self.half_channels * (num_bins * 3 - 1), 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, x_mask, g=None, reverse=False):
        x0, x1 = torch.split(x, [self.half_channels] * 2, 1)
        h = self.convs(self.pre(x0), x_mask, g=g)
        h = self.proj(h) * x_mask  # [B, c * (3K - 1), T]
        b, c, t = x0.shape
        h = h.reshape(b, c, -1, t).permute(0, 1, 3, 2)  # [B, c, T, 3K - 1]
        scale = math.sqrt(self.filter_channels)
        widths = h[..., :self.num_bins] / scale
        heights = h[..., self.num_bins:2 * self.num_bins] / scale
        derivatives = h[..., 2 * self.num_bins:]
        x1, logabsdet = piecewise_rational_quadratic_transform(
            x1, widths, heights, derivatives, inverse=reverse, tails="linear",
            tail_bound=self.tail_bound)
        x = torch.cat([x0, x1], 1) * x_mask
        if not reverse:
            return x, torch.sum(logabsdet * x_mask, [1, 2])
        return x
