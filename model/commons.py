"""Small tensor helpers shared by the network files (upstream Bert-VITS2 / VITS `commons.py`).

Shapes: B batch, C channels, T time. Masks are float 0/1 tensors so they multiply straight in.
"""
from __future__ import annotations

from typing import Iterable, Optional, Union

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrizations, parametrize


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding of a stride-1 convolution."""
    return (kernel_size * dilation - dilation) // 2


def weight_norm(module: nn.Module) -> nn.Module:
    """Weight normalisation as a parametrization (`torch.nn.utils.weight_norm` is deprecated).

    Its state_dict keys are `<m>.parametrizations.weight.original0/1` (g, v); `model/upstream.py` maps
    them to upstream's `<m>.weight_g/weight_v`. Same math (torch._weight_norm), same dim=0.
    """
    return parametrizations.weight_norm(module)


def spectral_norm(module: nn.Module) -> nn.Module:
    return parametrizations.spectral_norm(module)


def remove_weight_norm(module: nn.Module) -> None:
    """Bake g * v / |v| into a plain `weight` (for export; inference gets no faster on CPU)."""
    parametrize.remove_parametrizations(module, "weight")


def sequence_mask(length: torch.Tensor, max_length: Optional[int] = None) -> torch.Tensor:
    """length: [B] -> bool [B, max_length], True inside each sequence."""
    if max_length is None:
        max_length = int(length.max())
    x = torch.arange(max_length, dtype=length.dtype, device=length.device)
    return x.unsqueeze(0) < length.unsqueeze(1)


def generate_path(duration: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hard monotonic alignment from integer durations.

    duration: [B, 1, T_x] (whole numbers), mask: [B, 1, T_y, T_x] -> path [B, 1, T_y, T_x], where
    path[b, 0, j, i] = 1 iff output frame j belongs to input token i.
    """
    b, _, t_y, t_x = mask.shape
    cum_duration = torch.cumsum(duration, -1)  # [B, 1, T_x]: end frame of each token
    path = sequence_mask(cum_duration.view(b * t_x), t_y).to(mask.dtype).view(b, t_x, t_y)
    # frames < end(i) minus frames < end(i-1) = frames of token i
    path = path - F.pad(path, (0, 0, 1, 0))[:, :-1]
    return path.unsqueeze(1).transpose(2, 3) * mask


def slice_segments(x: torch.Tensor, ids_str: torch.Tensor, segment_size: int = 4) -> torch.Tensor:
    """x: [B, C, T], ids_str: [B] start indices -> [B, C, segment_size]."""
    idx = ids_str[:, None, None] + torch.arange(segment_size, device=x.device)  # [B, 1, S]
    return torch.gather(x, 2, idx.expand(x.size(0), x.size(1), segment_size))


def rand_slice_segments(x: torch.Tensor, x_lengths: Union[torch.Tensor, int, None] = None,
                        segment_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A random window of `segment_size` frames inside each sequence: what the decoder trains on."""
    b, _, t = x.size()
    if x_lengths is None:
        x_lengths = t
    ids_str_max = torch.clamp(torch.as_tensor(x_lengths, device=x.device) - segment_size + 1, min=0)
    ids_str = (torch.rand([b], device=x.device) * ids_str_max).to(dtype=torch.long)
    return slice_segments(x, ids_str, segment_size), ids_str


def fused_add_tanh_sigmoid_multiply(input_a: torch.Tensor, input_b: torch.Tensor,
                                    n_channels: int) -> torch.Tensor:
    """WaveNet's gated unit: tanh(first half) * sigmoid(second half) of a + b. [B, 2C, T] -> [B, C, T]."""
    in_act = input_a + input_b
    return torch.tanh(in_act[:, :n_channels]) * torch.sigmoid(in_act[:, n_channels:])


def subsequent_mask(length: int) -> torch.Tensor:
    """Causal attention mask [1, 1, T, T]."""
    return torch.tril(torch.ones(length, length)).unsqueeze(0).unsqueeze(0)


def clip_grad_value_(parameters: Union[torch.Tensor, Iterable[torch.Tensor]],
                     clip_value: Optional[float], norm_type: float = 2.0) -> float:
    """Clamp each gradient to +-clip_value (None: no clamp) and return the total gradient norm.

    Upstream's trainer calls this with clip_value=None, i.e. only to log the norm.
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    total = 0.0
    for g in grads:
        total += float(g.detach().norm(norm_type)) ** norm_type
        if clip_value is not None:
            g.detach().clamp_(min=-clip_value, max=clip_value)
    return total ** (1.0 / norm_type)
