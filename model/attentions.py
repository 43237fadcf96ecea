"""Transformer pieces: the relative-position self-attention encoder of VITS (text encoder and
VITS2 transformer flow) and the causal FFT block upstream uses for a parameter-shared flow.

Shapes: x [B, C, T] (channels first, like the convolutions around it), x_mask [B, 1, T].
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from model import commons


class LayerNorm(nn.Module):
    """LayerNorm over the channel axis of a [B, C, T] tensor (params named gamma/beta upstream).
    Lives here because modules.py imports this file; modules re-exports it."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.transpose(1, -1), (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


class Encoder(nn.Module):
    """Post-norm transformer with windowed relative attention and conv FFNs.

    With gin_channels > 0 the speaker embedding g [B, gin, 1] is projected and added before layer
    `cond_layer_idx` (VITS2: "the third transformer block", so 2 by default).
    """

    def __init__(self, hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int,
                 kernel_size: int = 1, p_dropout: float = 0.0, window_size: int = 4,
                 gin_channels: int = 0, cond_layer_idx: int = 2):
        super().__init__()
        self.n_layers = n_layers
        self.gin_channels = gin_channels
        self.cond_layer_idx = n_layers  # never, unless conditioned
        if gin_channels != 0:
            self.spk_emb_linear = nn.Linear(gin_channels, hidden_channels)
            self.cond_layer_idx = cond_layer_idx
            assert cond_layer_idx < n_layers, "cond_layer_idx should be less than n_layers"
        self.drop = nn.Dropout(p_dropout)
        self.attn_layers = nn.ModuleList()
        self.norm_layers_1 = nn.ModuleList()
        self.ffn_layers = nn.ModuleList()
        self.norm_layers_2 = nn.ModuleList()
        for _ in range(n_layers):
            self.attn_layers.append(MultiHeadAttention(hidden_channels, hidden_channels, n_heads,
                                                       p_dropout=p_dropout, window_size=window_size))
            self.norm_layers_1.append(LayerNorm(hidden_channels))
            self.ffn_layers.append(FFN(hidden_channels, hidden_channels, filter_channels, kernel_size,
                                       p_dropout=p_dropout))
            self.norm_layers_2.append(LayerNorm(hidden_channels))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: Optional[torch.Tensor] = None) -> torch.Tensor:
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)  # [B, 1, T, T]
        x = x * x_mask
        for i in range(self.n_layers):
            if i == self.cond_layer_idx and g is not None:
                x = (x + self.spk_emb_linear(g.transpose(1, 2)).transpose(1, 2)) * x_mask
            y = self.drop(self.attn_layers[i](x, x, attn_mask))
            x = self.norm_layers_1[i](x + y)
            y = self.drop(self.ffn_layers[i](x, x_mask))
            x = self.norm_layers_2[i](x + y)
        return x * x_mask


class FFT(nn.Module):
    """Causal transformer with WaveNet-style gated conditioning: upstream's shared flow network
    (flow_share_parameter=True). Its keys mirror upstream's `attentions.FFT` with isflow=True."""

    def __init__(self, hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int = 1,
                 kernel_size: int = 1, p_dropout: float = 0.0, gin_channels: int = 0):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        if gin_channels != 0:
            # The 2H*n_layers conditioning is sliced per layer, as in WN.
            self.cond_pre = nn.Conv1d(hidden_channels, 2 * hidden_channels, 1)
            self.cond_layer = commons.weight_norm(nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1))
        self.drop = nn.Dropout(p_dropout)
        self.self_attn_layers = nn.ModuleList()
        self.norm_layers_0 = nn.ModuleList()
        self.ffn_layers = nn.ModuleList()
        self.norm_layers_1 = nn.ModuleList()
        for _ in range(n_layers):
            self.self_attn_layers.append(MultiHeadAttention(hidden_channels, hidden_channels, n_heads,
                                                            p_dropout=p_dropout, proximal_init=True))
            self.norm_layers_0.append(LayerNorm(hidden_channels))
            self.ffn_layers.append(FFN(hidden_channels, hidden_channels, filter_channels, kernel_size,
                                       p_dropout=p_dropout, causal=True))
            self.norm_layers_1.append(LayerNorm(hidden_channels))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.hidden_channels
        if g is not None:
            g = self.cond_layer(g)
        self_attn_mask = commons.subsequent_mask(x_mask.size(2)).to(device=x.device, dtype=x.dtype)
        x = x * x_mask
        for i in range(self.n_layers):
            if g is not None:
                x = commons.fused_add_tanh_sigmoid_multiply(self.cond_pre(x), g[:, i * 2 * h:(i + 1) * 2 * h], h)
            y = self.drop(self.self_attn_layers[i](x, x, self_attn_mask))
            x = self.norm_layers_0[i](x + y)
            y = self.drop(self.ffn_layers[i](x, x_mask))
            x = self.norm_layers_1[i](x + y)
        return x * x_mask


class MultiHeadAttention(nn.Module):
    """Multi-head attention with Shaw-style relative position embeddings in a +-window_size window
    (one table shared by all heads), added both to the logits (emb_rel_k) and to the output (emb_rel_v)."""

    def __init__(self, channels: int, out_channels: int, n_heads: int, p_dropout: float = 0.0,
                 window_size: Optional[int] = None, proximal_init: bool = False):
        super().__init__()
        assert channels % n_heads == 0
        self.n_heads = n_heads
        self.window_size = window_size
        self.k_channels = channels // n_heads
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        self.drop = nn.Dropout(p_dropout)
        if window_size is not None:
            rel_stddev = self.k_channels ** -0.5
            self.emb_rel_k = nn.Parameter(torch.randn(1, window_size * 2 + 1, self.k_channels) * rel_stddev)
            self.emb_rel_v = nn.Parameter(torch.randn(1, window_size * 2 + 1, self.k_channels) * rel_stddev)
        nn.init.xavier_uniform_(self.conv_q.weight)
        nn.init.xavier_uniform_(self.conv_k.weight)
        nn.init.xavier_uniform_(self.conv_v.weight)
        if proximal_init:  # start with keys == queries
            with torch.no_grad():
                self.conv_k.weight.copy_(self.conv_q.weight)
                self.conv_k.bias.copy_(self.conv_q.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        q, k, v = self.conv_q(x), self.conv_k(c), self.conv_v(c)
        return self.conv_o(self.attention(q, k, v, mask=attn_mask))

    def attention(self, query, key, value, mask=None):
        # [B, C, T] -> [B, heads, T, C/heads]
        b, d, t_s, t_t = (*key.size(), query.size(2))
        query = query.view(b, self.n_heads, self.k_channels, t_t).transpose(2, 3)
        key = key.view(b, self.n_heads, self.k_channels, t_s).transpose(2, 3)
        value = value.view(b, self.n_heads, self.k_channels, t_s).transpose(2, 3)

        query = query / math.sqrt(self.k_channels)
        scores = torch.matmul(query, key.transpose(-2, -1))  # [B, h, T_t, T_s]
        if self.window_size is not None:
            assert t_s == t_t, "Relative attention is only available for self-attention."
            rel_k = self._get_relative_embeddings(self.emb_rel_k, t_s)  # [1, 2T-1, d_k]
            rel_logits = torch.matmul(query, rel_k.unsqueeze(0).transpose(-2, -1))  # [B, h, T, 2T-1]
            scores = scores + self._relative_position_to_absolute_position(rel_logits)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, -1e4)
        p_attn = self.drop(F.softmax(scores, dim=-1))  # [B, h, T_t, T_s]
        output = torch.matmul(p_attn, value)
        if self.window_size is not None:
            rel_weights = self._absolute_position_to_relative_position(p_attn)  # [B, h, T, 2T-1]
            rel_v = self._get_relative_embeddings(self.emb_rel_v, t_s)
            output = output + torch.matmul(rel_weights, rel_v.unsqueeze(0))
        return output.transpose(2, 3).contiguous().view(b, d, t_t)  # [B, C, T_t]

    def _get_relative_embeddings(self, emb: torch.Tensor, length: int) -> torch.Tensor:
        """The 2*length-1 embeddings for offsets -(length-1)..length-1; offsets outside the window
        get zeros. Padding first avoids a data-dependent branch."""
        pad_length = max(length - (self.window_size + 1), 0)
        start = max((self.window_size + 1) - length, 0)
        if pad_length > 0:
            emb = F.pad(emb, (0, 0, pad_length, pad_length))
        return emb[:, start:start + 2 * length - 1]

    @staticmethod
    def _relative_position_to_absolute_position(x: torch.Tensor) -> torch.Tensor:
        """[B, h, L, 2L-1] indexed by offset -> [B, h, L, L] indexed by key position (skewing trick)."""
        batch, heads, length, _ = x.size()
        x = F.pad(x, (0, 1))  # [B, h, L, 2L]
        x_flat = F.pad(x.view(batch, heads, length * 2 * length), (0, length - 1))
        return x_flat.view(batch, heads, length + 1, 2 * length - 1)[:, :, :length, length - 1:]

    @staticmethod
    def _absolute_position_to_relative_position(x: torch.Tensor) -> torch.Tensor:
        """[B, h, L, L] -> [B, h, L, 2L-1]: the inverse skew."""
        batch, heads, length, _ = x.size()
        x = F.pad(x, (0, length - 1))  # [B, h, L, 2L-1]
        x_flat = F.pad(x.view(batch, heads, length ** 2 + length * (length - 1)), (length, 0))
        return x_flat.view(batch, heads, length, 2 * length)[:, :, :, 1:]


class FFN(nn.Module):
    """Two convolutions with ReLU, masked so padding never leaks into valid frames."""

    def __init__(self, in_channels: int, out_channels: int, filter_channels: int, kernel_size: int,
                 p_dropout: float = 0.0, causal: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.causal = causal
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, out_channels, kernel_size)
        self.drop = nn.Dropout(p_dropout)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        if k == 1:
            return x
        return F.pad(x, (k - 1, 0) if self.causal else ((k - 1) // 2, k // 2))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_1(self._pad(x * x_mask)))
        x = self.conv_2(self._pad(self.drop(x) * x_mask))
        return x * x_mask
