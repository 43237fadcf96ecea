"""The networks of Bert-VITS2 2.3 (and of its ancestors VITS2 and VITS): the generator
`SynthesizerTrn` and the discriminators trained against it.

Generator, at a glance (T_x text tokens, T_y spectrogram frames):

    phones+tones+languages (+ BERT features) --TextEncoder--> prior N(m_p, logs_p) per token [B, C, T_x]
    linear spectrogram --PosteriorEncoder--> z ~ N(m_q, logs_q)                       [B, C, T_y]
    z --flow--> z_p, aligned to the prior by monotonic alignment search (training)
    durations: StochasticDurationPredictor and/or DurationPredictor (mixed by sdp_ratio)
    z (a random slice in training) --Generator (HiFi-GAN)--> waveform

Parameter names and module order follow upstream 2.3 exactly, so upstream checkpoints load after
the weight-norm key mapping of model/upstream.py. Variants (see VARIANTS / build_generator):
`bert-vits2-2.3` (default), `vits2` (2.3 without BERT) and `vits` (residual-coupling WN flow,
stochastic duration predictor only, plain MAS, no speaker-conditioned text encoder).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import torch
from torch import nn
from torch.nn import Conv1d, Conv2d, ConvTranspose1d
from torch.nn import functional as F

from model import attentions, commons, modules
from model.commons import get_padding, spectral_norm, weight_norm

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- duration models


class DurationDiscriminator(nn.Module):
    """VITS2's duration discriminator, 2.3 version: a bidirectional LSTM reads the (detached)
    text hidden states together with one duration sequence and says, per token, whether the
    durations look like the aligner's (real) or a predictor's (generated).

    forward(x [B, C, T_x], x_mask, dur_r [B, 1, T_x], dur_hat [B, 1, T_x], g) ->
    [prob_real, prob_generated], each [B, T_x, 1]. Durations are log-durations, as the trainer gives.
    """

    def __init__(self, in_channels: int, filter_channels: int, kernel_size: int, p_dropout: float,
                 gin_channels: int = 0):
        super().__init__()
        self.drop = nn.Dropout(p_dropout)
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.norm_1 = modules.LayerNorm(filter_channels)
        self.conv_2 = nn.Conv1d(filter_channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.norm_2 = modules.LayerNorm(filter_channels)
        self.dur_proj = nn.Conv1d(1, filter_channels, 1)
        self.LSTM = nn.LSTM(2 * filter_channels, filter_channels, batch_first=True, bidirectional=True)
        if gin_channels != 0:
            self.cond = nn.Conv1d(gin_channels, in_channels, 1)
        self.output_layer = nn.Sequential(nn.Linear(2 * filter_channels, 1), nn.Sigmoid())

    def forward_probability(self, x: torch.Tensor, dur: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, self.dur_proj(dur)], dim=1).transpose(1, 2)  # [B, T_x, 2F]
        x, _ = self.LSTM(x)  # [B, T_x, 2F]
        return self.output_layer(x)  # [B, T_x, 1]

    def forward(self, x, x_mask, dur_r, dur_hat, g=None):
        # The discriminator must not push gradients into the generator's encoder.
        x = torch.detach(x)
        if g is not None:
            x = x + self.cond(torch.detach(g))
        x = self.drop(self.norm_1(torch.relu(self.conv_1(x * x_mask))))
        x = self.drop(self.norm_2(torch.relu(self.conv_2(x * x_mask))))
        return [self.forward_probability(x, dur) for dur in (dur_r, dur_hat)]


class StochasticDurationPredictor(nn.Module):
    """VITS' flow-based duration model: forward (training) returns the variational NLL bound
    of the aligner's durations w [B] summed over tokens; reverse samples log-durations
    [B, 1, T_x] from noise scaled by noise_scale."""

    def __init__(self, in_channels: int, filter_channels: int, kernel_size: int, p_dropout: float,
                 n_flows: int = 4, gin_channels: int = 0):
        super().__init__()
        # Upstream (VITS onward) ignores the filter_channels argument and uses in_channels;
        # checkpoints depend on it ("it needs to be removed from future version").
        filter_channels = in_channels
        self.log_flow = modules.Log()
        self.flows = nn.ModuleList([modules.ElementwiseAffine(2)])
        for _ in range(n_flows):
            self.flows.append(modules.ConvFlow(2, filter_channels, kernel_size, n_layers=3))
            self.flows.append(modules.Flip())

        # Posterior q(u, nu | w, x) for variational dequantisation of the integer durations.
        self.post_pre = nn.Conv1d(1, filter_channels, 1)
        self.post_proj = nn.Conv1d(filter_channels, filter_channels, 1)
        self.post_convs = modules.DDSConv(filter_channels, kernel_size, n_layers=3, p_dropout=p_dropout)
        self.post_flows = nn.ModuleList([modules.ElementwiseAffine(2)])
        for _ in range(4):
            self.post_flows.append(modules.ConvFlow(2, filter_channels, kernel_size, n_layers=3))
            self.post_flows.append(modules.Flip())

        self.pre = nn.Conv1d(in_channels, filter_channels, 1)
        self.proj = nn.Conv1d(filter_channels, filter_channels, 1)
        self.convs = modules.DDSConv(filter_channels, kernel_size, n_layers=3, p_dropout=p_dropout)
        if gin_channels != 0:
            self.cond = nn.Conv1d(gin_channels, filter_channels, 1)

    def forward(self, x, x_mask, w=None, g=None, reverse=False, noise_scale=1.0):
        x = self.pre(torch.detach(x))  # durations must not shape the text encoder
        if g is not None:
            x = x + self.cond(torch.detach(g))
        x = self.proj(self.convs(x, x_mask)) * x_mask  # [B, F, T_x]: the flows' condition

        if reverse:
            flows = list(reversed(self.flows))
            flows = flows[:-2] + [flows[-1]]  # drop a useless flow (acts only on the discarded half)
            z = torch.randn(x.size(0), 2, x.size(2)).to(device=x.device, dtype=x.dtype) * noise_scale
            for flow in flows:
                z = flow(z, x_mask, g=x, reverse=True)
            return z[:, :1]  # logw [B, 1, T_x]

        assert w is not None
        h_w = self.post_proj(self.post_convs(self.post_pre(w), x_mask)) * x_mask
        e_q = torch.randn(w.size(0), 2, w.size(2)).to(device=x.device, dtype=x.dtype) * x_mask
        z_q, logdet_tot_q = e_q, 0
        for flow in self.post_flows:
            z_q, logdet_q = flow(z_q, x_mask, g=(x + h_w))
            logdet_tot_q = logdet_tot_q + logdet_q
        z_u, z1 = torch.split(z_q, [1, 1], 1)
        u = torch.sigmoid(z_u) * x_mask  # dequantisation noise in (0, 1)
        z0 = (w - u) * x_mask
        logdet_tot_q = logdet_tot_q + torch.sum((F.logsigmoid(z_u) + F.logsigmoid(-z_u)) * x_mask, [1, 2])
        logq = torch.sum(-0.5 * (math.log(2 * math.pi) + e_q ** 2) * x_mask, [1, 2]) - logdet_tot_q

        z0, logdet_tot = self.log_flow(z0, x_mask)
        z = torch.cat([z0, z1], 1)
        for flow in self.flows:
            z, logdet = flow(z, x_mask, g=x, reverse=False)
            logdet_tot = logdet_tot + logdet
        nll = torch.sum(0.5 * (math.log(2 * math.pi) + z ** 2) * x_mask, [1, 2]) - logdet_tot
        return nll + logq  # [B]


class DurationPredictor(nn.Module):
    """Deterministic log-duration regressor: [B, C, T_x] -> [B, 1, T_x]."""

    def __init__(self, in_channels: int, filter_channels: int, kernel_size: int, p_dropout: float,
                 gin_channels: int = 0):
        super().__init__()
        self.drop = nn.Dropout(p_dropout)
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.norm_1 = modules.LayerNorm(filter_channels)
        self.conv_2 = nn.Conv1d(filter_channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.norm_2 = modules.LayerNorm(filter_channels)
        self.proj = nn.Conv1d(filter_channels, 1, 1)
        if gin_channels != 0:
            self.cond = nn.Conv1d(gin_channels, in_channels, 1)

    def forward(self, x, x_mask, g=None):
        x = torch.detach(x)
        if g is not None:
            x = x + self.cond(torch.detach(g))
        x = self.drop(self.norm_1(torch.relu(self.conv_1(x * x_mask))))
        x = self.drop(self.norm_2(torch.relu(self.conv_2(x * x_mask))))
        return self.proj(x * x_mask) * x_mask


# ----------------------------------------------------------------------------- encoders and flows


class TextEncoder(nn.Module):
    """Phones + tones + language ids (+ three BERT feature streams) -> transformer -> prior stats.

    BERT features arrive per phone ([B, bert_dim, T_x], word features repeated over their phones),
    one stream per upstream language slot (zh `bert`, `ja_bert`, `en_bert`); the frontend fills the
    slots of other languages with zeros. All are summed with the embeddings before the scaling.
    Returns x [B, H, T_x], m [B, C, T_x], logs [B, C, T_x], x_mask [B, 1, T_x].
    """

    def __init__(self, n_vocab: int, out_channels: int, hidden_channels: int, filter_channels: int,
                 n_heads: int, n_layers: int, kernel_size: int, p_dropout: float, gin_channels: int = 0,
                 num_tones: int = 12, num_languages: int = 3, bert_dim: int = 1024, use_bert: bool = True):
        super().__init__()
        self.out_channels = out_channels
        self.hidden_channels = hidden_channels
        self.use_bert = use_bert
        self.emb = nn.Embedding(n_vocab, hidden_channels)
        nn.init.normal_(self.emb.weight, 0.0, hidden_channels ** -0.5)
        self.tone_emb = nn.Embedding(num_tones, hidden_channels)
        nn.init.normal_(self.tone_emb.weight, 0.0, hidden_channels ** -0.5)
        self.language_emb = nn.Embedding(num_languages, hidden_channels)
        nn.init.normal_(self.language_emb.weight, 0.0, hidden_channels ** -0.5)
        if use_bert:
            self.bert_proj = nn.Conv1d(bert_dim, hidden_channels, 1)
            self.ja_bert_proj = nn.Conv1d(bert_dim, hidden_channels, 1)
            self.en_bert_proj = nn.Conv1d(bert_dim, hidden_channels, 1)
        self.encoder = attentions.Encoder(hidden_channels, filter_channels, n_heads, n_layers,
                                          kernel_size, p_dropout, gin_channels=gin_channels)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(self, x, x_lengths, tone, language, bert=None, ja_bert=None, en_bert=None, g=None):
        h = self.emb(x) + self.tone_emb(tone) + self.language_emb(language)  # [B, T_x, H]
        if self.use_bert:
            h = (h + self.bert_proj(bert).transpose(1, 2) + self.ja_bert_proj(ja_bert).transpose(1, 2)
                 + self.en_bert_proj(en_bert).transpose(1, 2))
        x = torch.transpose(h * math.sqrt(self.hidden_channels), 1, -1)  # [B, H, T_x]
        x_mask = torch.unsqueeze(commons.sequence_mask(x_lengths, x.size(2)), 1).to(x.dtype)
        x = self.encoder(x * x_mask, x_mask, g=g)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        return x, m, logs, x_mask


class PosteriorEncoder(nn.Module):
    """Linear spectrogram [B, spec_channels, T_y] -> z ~ N(m, exp(logs)) [B, C, T_y] via a WN."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int, kernel_size: int,
                 dilation_rate: int, n_layers: int, gin_channels: int = 0):
        super().__init__()
        self.out_channels = out_channels
        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = modules.WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(self, x, x_lengths, g=None):
        x_mask = torch.unsqueeze(commons.sequence_mask(x_lengths, x.size(2)), 1).to(x.dtype)
        x = self.enc(self.pre(x) * x_mask, x_mask, g=g)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        z = (m + torch.randn_like(m) * torch.exp(logs)) * x_mask
        return z, m, logs, x_mask


class _FlowStack(nn.Module):
    """(coupling, Flip) x n_flows. forward maps z -> z_p (training), reverse z_p -> z (inference)."""

    def forward(self, x, x_mask, g=None, reverse=False):
        if not reverse:
            for flow in self.flows:
                x, _ = flow(x, x_mask, g=g, reverse=False)
        else:
            for flow in reversed(self.flows):
                x = flow(x, x_mask, g=g, reverse=True)
        return x


class ResidualCouplingBlock(_FlowStack):
    """VITS' flow: WN coupling layers (mean-only, so volume preserving)."""

    def __init__(self, channels, hidden_channels, kernel_size, dilation_rate, n_layers, n_flows=4,
                 gin_channels=0):
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(modules.ResidualCouplingLayer(
                channels, hidden_channels, kernel_size, dilation_rate, n_layers,
                gin_channels=gin_channels, mean_only=True))
            self.flows.append(modules.Flip())


class TransformerCouplingBlock(_FlowStack):
    """VITS2's flow: coupling layers whose network is a transformer encoder (mean-only)."""

    def __init__(self, channels, hidden_channels, filter_channels, n_heads, n_layers, kernel_size,
                 p_dropout, n_flows=4, gin_channels=0, share_parameter=False):
        super().__init__()
        self.flows = nn.ModuleList()
        self.wn = (attentions.FFT(hidden_channels, filter_channels, n_heads, n_layers, kernel_size,
                                  p_dropout, gin_channels=gin_channels) if share_parameter else None)
        for _ in range(n_flows):
            self.flows.append(modules.TransformerCouplingLayer(
                channels, hidden_channels, kernel_size, n_layers, n_heads, p_dropout, filter_channels,
                mean_only=True, wn_sharing_parameter=self.wn, gin_channels=gin_channels))
            self.flows.append(modules.Flip())


class ReferenceEncoder(nn.Module):
    """Speaker vector from a reference spectrogram, used instead of emb_g when n_speakers == 0.
    [B, T_y, spec_channels] -> [B, gin_channels]."""

    def __init__(self, spec_channels: int, gin_channels: int = 0):
        super().__init__()
        self.spec_channels = spec_channels
        ref_enc_filters = [32, 32, 64, 64, 128, 128]
        filters = [1] + ref_enc_filters
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(filters[i], filters[i + 1], kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)))
            for i in range(len(ref_enc_filters))])
        freq = spec_channels
        for _ in ref_enc_filters:  # each conv halves the frequency axis (rounding up)
            freq = (freq - 3 + 2) // 2 + 1
        self.gru = nn.GRU(input_size=ref_enc_filters[-1] * freq, hidden_size=128, batch_first=True)
        self.proj = nn.Linear(128, gin_channels)

    def forward(self, inputs: torch.Tensor, mask=None) -> torch.Tensor:
        out = inputs.view(inputs.size(0), 1, -1, self.spec_channels)  # [B, 1, T_y, F]
        for conv in self.convs:
            out = F.relu(conv(out))
        out = out.transpose(1, 2)  # [B, T', 128, F']
        out = out.contiguous().view(out.size(0), out.size(1), -1)
        self.gru.flatten_parameters()
        _, out = self.gru(out)  # [1, B, 128]
        return self.proj(out.squeeze(0))


# ----------------------------------------------------------------------------- vocoder


class Generator(nn.Module):
    """HiFi-GAN V1 generator: z [B, C, T] -> waveform [B, 1, T * prod(upsample_rates)] in [-1, 1]."""

    def __init__(self, initial_channel: int, resblock: str, resblock_kernel_sizes, resblock_dilation_sizes,
                 upsample_rates, upsample_initial_channel: int, upsample_kernel_sizes, gin_channels: int = 0):
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.conv_pre = Conv1d(initial_channel, upsample_initial_channel, 7, 1, padding=3)
        block = modules.ResBlock1 if str(resblock) == "1" else modules.ResBlock2
        self.ups = nn.ModuleList()
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            # (upstream's init_weights on these is a no-op under weight norm; see ResBlock1)
            self.ups.append(weight_norm(ConvTranspose1d(
                upsample_initial_channel // (2 ** i), upsample_initial_channel // (2 ** (i + 1)),
                k, u, padding=(k - u) // 2)))
        self.resblocks = nn.ModuleList()
        ch = upsample_initial_channel
        for i in range(len(self.ups)):
            ch = upsample_initial_channel // (2 ** (i + 1))
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(block(ch, k, d))
        self.conv_post = Conv1d(ch, 1, 7, 1, padding=3, bias=False)
        if gin_channels != 0:
            self.cond = nn.Conv1d(gin_channels, upsample_initial_channel, 1)

    def forward(self, x: torch.Tensor, g: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.conv_pre(x)
        if g is not None:
            x = x + self.cond(g)
        for i in range(self.num_upsamples):
            x = self.ups[i](F.leaky_relu(x, modules.LRELU_SLOPE))
            # multi-receptive-field fusion: the mean of the kernel-size branches
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs = xs + block(x)
            x = xs / self.num_kernels
        x = F.leaky_relu(x)  # NB: default slope 0.01 here, as upstream
        return torch.tanh(self.conv_post(x))

    def remove_weight_norm(self) -> None:
        for layer in self.ups:
            commons.remove_weight_norm(layer)
        for layer in self.resblocks:
            layer.remove_weight_norm()


# ----------------------------------------------------------------------------- the generator


# Flags that define each variant; build_generator refuses contradicting values.
VARIANTS: dict[str, dict[str, Any]] = {
    "bert-vits2-2.3": dict(use_bert=True, use_transformer_flow=True, use_spk_conditioned_encoder=True,
                           use_noise_scaled_mas=True, use_sdp=True, use_dp=True,
                           use_duration_discriminator=True),
    "vits2": dict(use_bert=False, use_transformer_flow=True, use_spk_conditioned_encoder=True,
                  use_noise_scaled_mas=True, use_sdp=True, use_dp=True, use_duration_discriminator=True),
    "vits": dict(use_bert=False, use_transformer_flow=False, use_spk_conditioned_encoder=False,
                 use_noise_scaled_mas=False, use_sdp=True, use_dp=False, use_duration_discriminator=False),
}
DEFAULT_VARIANT = "bert-vits2-2.3"

# Keys of upstream's `model` config section that SynthesizerTrn does not use (the trainer does).
_UPSTREAM_TRAINER_KEYS = {"n_layers_q", "use_spectral_norm", "use_mel_posterior_encoder", "slm"}


class SynthesizerTrn(nn.Module):
    """The generator. Arguments are upstream's config keys (`model` section, plus n_vocab,
    spec_channels = filter_length // 2 + 1, segment_size = train.segment_size // hop_length, and
    n_speakers), with defaults equal to upstream's, plus:

    num_tones, num_languages: sizes of the tone/language tables (upstream reads them from its text
        module: 12 and 3); n_vocab is honoured too (upstream uses len(symbols) whatever n_vocab is).
    bert_dim: width of the BERT features (1024 upstream; 384 for MiniLM).
    use_bert: build bert_proj/ja_bert_proj/en_bert_proj (False: VITS2/VITS, BERT args ignored).
    use_sdp / use_dp: build the stochastic / deterministic duration predictor (upstream 2.3
        always builds both; VITS only the stochastic one).
    use_duration_discriminator: recorded for the trainer (upstream config key).
    """

    def __init__(self, n_vocab: int, spec_channels: int, segment_size: int, inter_channels: int,
                 hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int, kernel_size: int,
                 p_dropout: float, resblock: str, resblock_kernel_sizes, resblock_dilation_sizes,
                 upsample_rates, upsample_initial_channel: int, upsample_kernel_sizes,
                 n_speakers: int = 256, gin_channels: int = 256, use_sdp: bool = True,
                 n_flow_layer: int = 4, n_layers_trans_flow: int = 4, flow_share_parameter: bool = False,
                 use_transformer_flow: bool = True, num_tones: int = 12, num_languages: int = 3,
                 bert_dim: int = 1024, use_bert: bool = True, use_dp: bool = True,
                 use_spk_conditioned_encoder: bool = True, use_noise_scaled_mas: bool = False,
                 mas_noise_scale_initial: float = 0.01, noise_scale_delta: float = 2e-6,
                 use_duration_discriminator: bool = False, **kwargs):
        hparams = dict(locals())
        super().__init__()
        unknown = set(kwargs) - _UPSTREAM_TRAINER_KEYS
        if unknown:
            logger.warning("SynthesizerTrn: ignoring unknown config keys %s", sorted(unknown))
        if not (use_sdp or use_dp):
            raise ValueError("at least one of use_sdp / use_dp is needed")
        # Every argument, for export (model/upstream.py writes them back as an upstream config).
        self.hparams = {k: v for k, v in hparams.items() if k not in ("self", "kwargs", "__class__")}
        self.n_speakers = n_speakers
        self.segment_size = segment_size
        self.use_sdp, self.use_dp, self.use_bert = use_sdp, use_dp, use_bert
        self.use_duration_discriminator = use_duration_discriminator
        self.use_noise_scaled_mas = use_noise_scaled_mas
        self.mas_noise_scale_initial = mas_noise_scale_initial
        self.noise_scale_delta = noise_scale_delta
        self.current_mas_noise_scale = mas_noise_scale_initial
        # (upstream leaves enc_gin_channels undefined, i.e. crashes, when the flag is off)
        enc_gin_channels = gin_channels if use_spk_conditioned_encoder and gin_channels > 0 else 0

        self.enc_p = TextEncoder(n_vocab, inter_channels, hidden_channels, filter_channels, n_heads,
                                 n_layers, kernel_size, p_dropout, gin_channels=enc_gin_channels,
                                 num_tones=num_tones, num_languages=num_languages, bert_dim=bert_dim,
                                 use_bert=use_bert)
        self.dec = Generator(inter_channels, resblock, resblock_kernel_sizes, resblock_dilation_sizes,
                             upsample_rates, upsample_initial_channel, upsample_kernel_sizes,
                             gin_channels=gin_channels)
        self.enc_q = PosteriorEncoder(spec_channels, inter_channels, hidden_channels, 5, 1, 16,
                                      gin_channels=gin_channels)
        if use_transformer_flow:
            self.flow = TransformerCouplingBlock(inter_channels, hidden_channels, filter_channels, n_heads,
                                                 n_layers_trans_flow, 5, p_dropout, n_flow_layer,
                                                 gin_channels=gin_channels, share_parameter=flow_share_parameter)
        else:
            self.flow = ResidualCouplingBlock(inter_channels, hidden_channels, 5, 1, n_flow_layer,
                                              gin_channels=gin_channels)
        if use_sdp:
            self.sdp = StochasticDurationPredictor(hidden_channels, 192, 3, 0.5, 4, gin_channels=gin_channels)
        if use_dp:
            self.dp = DurationPredictor(hidden_channels, 256, 3, 0.5, gin_channels=gin_channels)
        if n_speakers >= 1:
            self.emb_g = nn.Embedding(n_speakers, gin_channels)
        else:
            self.ref_enc = ReferenceEncoder(spec_channels, gin_channels)

    @property
    def variant(self) -> str:
        """The VARIANTS entry this model's flags match, else 'custom'."""
        for name, flags in VARIANTS.items():
            if all(self.hparams[k] == v for k, v in flags.items() if k != "use_duration_discriminator"):
                return name
        return "custom"

    def update_mas_noise_scale(self, global_step: int) -> float:
        """VITS2's noise-scaled MAS anneals the noise linearly to 0 (upstream does this in train_ms)."""
        self.current_mas_noise_scale = max(self.mas_noise_scale_initial - self.noise_scale_delta * global_step, 0.0)
        return self.current_mas_noise_scale

    def _speaker(self, sid, y):
        if self.n_speakers > 0:
            return self.emb_g(sid).unsqueeze(-1)  # [B, gin, 1]
        return self.ref_enc(y.transpose(1, 2)).unsqueeze(-1)

    @torch.no_grad()
    def _align(self, z_p, m_p, logs_p, x_mask, y_mask):
        """Monotonic alignment search on the log-likelihood of z_p under each token's prior.
        Returns attn [B, 1, T_y, T_x] (0/1)."""
        # Imported here: only training needs it (and the numba it compiles with).
        from model.monotonic_align import maximum_path

        # log N(z_p; m_p, exp(logs_p)) summed over channels, expanded so every term is one matmul:
        # -0.5 log 2pi - logs - 0.5 z^2 / s^2 + z m / s^2 - 0.5 m^2 / s^2
        s_p_sq_r = torch.exp(-2 * logs_p)  # [B, C, T_x]
        neg_cent1 = torch.sum(-0.5 * math.log(2 * math.pi) - logs_p, [1], keepdim=True)  # [B, 1, T_x]
        neg_cent2 = torch.matmul(-0.5 * (z_p ** 2).transpose(1, 2), s_p_sq_r)  # [B, T_y, T_x]
        neg_cent3 = torch.matmul(z_p.transpose(1, 2), m_p * s_p_sq_r)  # [B, T_y, T_x]
        neg_cent4 = torch.sum(-0.5 * (m_p ** 2) * s_p_sq_r, [1], keepdim=True)  # [B, 1, T_x]
        neg_cent = neg_cent1 + neg_cent2 + neg_cent3 + neg_cent4
        if self.use_noise_scaled_mas:
            # VITS2: noise lets the search explore other alignments early in training.
            neg_cent = neg_cent + torch.std(neg_cent) * torch.randn_like(neg_cent) * self.current_mas_noise_scale
        attn_mask = torch.unsqueeze(x_mask, 2) * torch.unsqueeze(y_mask, -1)  # [B, 1, T_y, T_x]
        return maximum_path(neg_cent, attn_mask.squeeze(1)).unsqueeze(1).to(neg_cent.dtype).detach()

    def forward(self, x, x_lengths, y, y_lengths, sid, tone, language, bert=None, ja_bert=None, en_bert=None):
        """Training step, as upstream 2.3. x: [B, T_x] phone ids; y: [B, spec_channels, T_y] linear
        spectrogram; bert/ja_bert/en_bert: [B, bert_dim, T_x]. Returns

            o [B, 1, segment_size * hop]   waveform of the random slice
            l_length [B]                   duration losses (DP MSE + SDP NLL (+ SDP MSE))
            attn [B, 1, T_y, T_x]          the alignment
            ids_slice [B]                  start frame of each slice
            x_mask [B, 1, T_x], y_mask [B, 1, T_y]
            (z, z_p, m_p, logs_p, m_q, logs_q)  for the KL loss (priors expanded to T_y)
            (x, logw, logw_, logw_sdp)     for the duration discriminator (None where absent)
            g [B, gin, 1]
        """
        g = self._speaker(sid, y)
        x, m_p, logs_p, x_mask = self.enc_p(x, x_lengths, tone, language, bert, ja_bert, en_bert, g=g)
        z, m_q, logs_q, y_mask = self.enc_q(y, y_lengths, g=g)
        z_p = self.flow(z, y_mask, g=g)

        attn = self._align(z_p, m_p, logs_p, x_mask, y_mask)
        w = attn.sum(2)  # [B, 1, T_x] frames per token
        logw_ = torch.log(w + 1e-6) * x_mask  # the target log-durations

        # (calls in upstream's order, so dropout/noise draws match upstream's under one seed)
        l_length = 0
        logw = logw_sdp = None
        if self.use_sdp:
            l_length = self.sdp(x, x_mask, w, g=g) / torch.sum(x_mask)  # NLL bound
        if self.use_dp:
            logw = self.dp(x, x_mask, g=g)
        if self.use_sdp and self.use_dp:
            # 2.3: also regress a sampled SDP duration; the duration discriminator judges it too.
            logw_sdp = self.sdp(x, x_mask, g=g, reverse=True, noise_scale=1.0)
            l_length = l_length + torch.sum((logw_sdp - logw_) ** 2, [1, 2]) / torch.sum(x_mask)
        if self.use_dp:
            l_length = torch.sum((logw - logw_) ** 2, [1, 2]) / torch.sum(x_mask) + l_length

        # expand the prior from tokens to frames along the alignment
        m_p = torch.matmul(attn.squeeze(1), m_p.transpose(1, 2)).transpose(1, 2)  # [B, C, T_y]
        logs_p = torch.matmul(attn.squeeze(1), logs_p.transpose(1, 2)).transpose(1, 2)

        z_slice, ids_slice = commons.rand_slice_segments(z, y_lengths, self.segment_size)
        o = self.dec(z_slice, g=g)
        return (o, l_length, attn, ids_slice, x_mask, y_mask, (z, z_p, m_p, logs_p, m_q, logs_q),
                (x, logw, logw_, logw_sdp), g)

    def infer(self, x, x_lengths, sid, tone, language, bert=None, ja_bert=None, en_bert=None,
              noise_scale=0.667, length_scale=1, noise_scale_w=0.8, max_len=None, sdp_ratio=0, y=None):
        """Synthesis, as upstream 2.3. Returns o [B, 1, T_y * hop], attn [B, 1, T_y, T_x],
        y_mask [B, 1, T_y], (z, z_p, m_p, logs_p) with T_y = the predicted total duration."""
        g = self._speaker(sid, y)
        x, m_p, logs_p, x_mask = self.enc_p(x, x_lengths, tone, language, bert, ja_bert, en_bert, g=g)
        if self.use_sdp and self.use_dp:
            # The SDP runs even at sdp_ratio 0, as upstream, so seeded noise matches upstream's.
            logw = (self.sdp(x, x_mask, g=g, reverse=True, noise_scale=noise_scale_w) * sdp_ratio
                    + self.dp(x, x_mask, g=g) * (1 - sdp_ratio))
        elif self.use_sdp:
            logw = self.sdp(x, x_mask, g=g, reverse=True, noise_scale=noise_scale_w)
        else:
            logw = self.dp(x, x_mask, g=g)
        w = torch.exp(logw) * x_mask * length_scale
        w_ceil = torch.ceil(w)
        y_lengths = torch.clamp_min(torch.sum(w_ceil, [1, 2]), 1).long()
        y_mask = torch.unsqueeze(commons.sequence_mask(y_lengths, None), 1).to(x_mask.dtype)
        attn_mask = torch.unsqueeze(x_mask, 2) * torch.unsqueeze(y_mask, -1)
        attn = commons.generate_path(w_ceil, attn_mask)  # [B, 1, T_y, T_x]
        m_p = torch.matmul(attn.squeeze(1), m_p.transpose(1, 2)).transpose(1, 2)
        logs_p = torch.matmul(attn.squeeze(1), logs_p.transpose(1, 2)).transpose(1, 2)

        z_p = m_p + torch.randn_like(m_p) * torch.exp(logs_p) * noise_scale
        z = self.flow(z_p, y_mask, g=g, reverse=True)
        o = self.dec((z * y_mask)[:, :, :max_len], g=g)
        return o, attn, y_mask, (z, z_p, m_p, logs_p)


def build_generator(variant: str = DEFAULT_VARIANT, **hparams) -> SynthesizerTrn:
    """A SynthesizerTrn for one of VARIANTS. hparams are SynthesizerTrn's arguments; the variant's
    defining flags are filled in, and passing a contradicting value is an error."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    flags = VARIANTS[variant]
    clash = {k: hparams[k] for k, v in flags.items() if k in hparams and hparams[k] != v}
    if clash:
        raise ValueError(f"variant {variant!r} requires {({k: flags[k] for k in clash})}, got {clash}")
    return SynthesizerTrn(**{**hparams, **flags})


# ----------------------------------------------------------------------------- discriminators


class DiscriminatorP(nn.Module):
    """HiFi-GAN period discriminator: the waveform folded into [T / period, period] and read by
    2-D convolutions with kernel (k, 1), i.e. each phase of the period separately."""

    def __init__(self, period: int, kernel_size: int = 5, stride: int = 3, use_spectral_norm: bool = False,
                 divisor: int = 1):
        super().__init__()
        self.period = period
        norm_f = spectral_norm if use_spectral_norm else weight_norm
        pad = (get_padding(kernel_size, 1), 0)
        chans = [1] + [max(1, c // divisor) for c in (32, 128, 512, 1024, 1024)]
        self.convs = nn.ModuleList([
            norm_f(Conv2d(chans[i], chans[i + 1], (kernel_size, 1), (stride, 1) if i < 4 else 1, padding=pad))
            for i in range(5)])
        self.conv_post = norm_f(Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: torch.Tensor):
        """x [B, 1, T] -> (logits [B, N], feature maps)."""
        b, c, t = x.shape
        if t % self.period != 0:  # pad to a whole number of periods
            n_pad = self.period - (t % self.period)
            x = F.pad(x, (0, n_pad), "reflect")
            t = t + n_pad
        return _conv_stack(self.convs, self.conv_post, x.view(b, c, t // self.period, self.period))


def _conv_stack(convs: nn.ModuleList, conv_post: nn.Module, x: torch.Tensor):
    """Both discriminators' body: leaky-ReLU convs, then the 1-channel post conv.
    -> (logits flattened to [B, N], the feature map of every layer)."""
    fmap = []
    for layer in convs:
        x = F.leaky_relu(layer(x), modules.LRELU_SLOPE)
        fmap.append(x)
    x = conv_post(x)
    fmap.append(x)
    return torch.flatten(x, 1, -1), fmap


class DiscriminatorS(nn.Module):
    """HiFi-GAN/MelGAN scale discriminator on the raw waveform (grouped strided 1-D convs)."""

    def __init__(self, use_spectral_norm: bool = False, divisor: int = 1):
        super().__init__()
        norm_f = spectral_norm if use_spectral_norm else weight_norm

        def c(n: int) -> int:
            return max(1, n // divisor)

        self.convs = nn.ModuleList([
            norm_f(Conv1d(1, c(16), 15, 1, padding=7)),
            norm_f(Conv1d(c(16), c(64), 41, 4, groups=c(4), padding=20)),
            norm_f(Conv1d(c(64), c(256), 41, 4, groups=c(16), padding=20)),
            norm_f(Conv1d(c(256), c(1024), 41, 4, groups=c(64), padding=20)),
            norm_f(Conv1d(c(1024), c(1024), 41, 4, groups=c(256), padding=20)),
            norm_f(Conv1d(c(1024), c(1024), 5, 1, padding=2)),
        ])
        self.conv_post = norm_f(Conv1d(c(1024), 1, 3, 1, padding=1))

    def forward(self, x: torch.Tensor):
        return _conv_stack(self.convs, self.conv_post, x)


class MultiPeriodDiscriminator(nn.Module):
    """VITS' discriminator: one scale discriminator + period discriminators for 2, 3, 5, 7, 11.
    forward(y, y_hat) -> (real logits, fake logits, real fmaps, fake fmaps), lists of 6.

    divisor: every channel count (and group count) divided by it (a power of two; 1 = upstream's
    widths, the only ones upstream D checkpoints load into). Small CPU configs use 8 or 16: the full
    discriminator is most of a tiny model's step time."""

    def __init__(self, use_spectral_norm: bool = False, divisor: int = 1):
        super().__init__()
        discs = [DiscriminatorS(use_spectral_norm=use_spectral_norm, divisor=divisor)]
        discs += [DiscriminatorP(p, use_spectral_norm=use_spectral_norm, divisor=divisor) for p in [2, 3, 5, 7, 11]]
        self.discriminators = nn.ModuleList(discs)

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor):
        y_d_rs, y_d_gs, fmap_rs, fmap_gs = [], [], [], []
        for d in self.discriminators:
            y_d_r, fmap_r = d(y)
            y_d_g, fmap_g = d(y_hat)
            y_d_rs.append(y_d_r)
            y_d_gs.append(y_d_g)
            fmap_rs.append(fmap_r)
            fmap_gs.append(fmap_g)
        return y_d_rs, y_d_gs, fmap_rs, fmap_gs


class WavLMDiscriminator(nn.Module):
    """Bert-VITS2 2.3's SLM discriminator (from StyleTTS 2): reads the stacked hidden states of
    all WavLM layers, [B, slm_hidden * slm_layers, T_wavlm], and returns logits [B, T_wavlm]."""

    def __init__(self, slm_hidden: int = 768, slm_layers: int = 13, initial_channel: int = 64,
                 use_spectral_norm: bool = False):
        super().__init__()
        norm_f = spectral_norm if use_spectral_norm else weight_norm
        c = initial_channel
        self.pre = norm_f(Conv1d(slm_hidden * slm_layers, c, 1, 1, padding=0))
        self.convs = nn.ModuleList([
            norm_f(nn.Conv1d(c, c * 2, kernel_size=5, padding=2)),
            norm_f(nn.Conv1d(c * 2, c * 4, kernel_size=5, padding=2)),
            norm_f(nn.Conv1d(c * 4, c * 4, 5, 1, padding=2)),
        ])
        self.conv_post = norm_f(Conv1d(c * 4, 1, 3, 1, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        for layer in self.convs:
            x = F.leaky_relu(layer(x), modules.LRELU_SLOPE)
        return torch.flatten(self.conv_post(x), 1, -1)


def build_discriminators(variant: str = DEFAULT_VARIANT, hidden_channels: int = 192, gin_channels: int = 256,
                         use_spectral_norm: bool = False, slm: Optional[dict] = None,
                         divisor: int = 1) -> dict[str, nn.Module]:
    """The discriminators a variant trains with, keyed like upstream's checkpoint files:
    D (always), DUR (VITS2 / 2.3: DurationDiscriminator(hidden, hidden, 3, 0.1, gin) as upstream
    builds it) and WD (2.3 only; slm = upstream's model.slm config: hidden, nlayers, initial_channel).
    divisor: D's channel counts divided by it (MultiPeriodDiscriminator); 1 = upstream's."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    nets: dict[str, nn.Module] = {"D": MultiPeriodDiscriminator(use_spectral_norm, divisor)}
    if VARIANTS[variant]["use_duration_discriminator"]:
        nets["DUR"] = DurationDiscriminator(hidden_channels, hidden_channels, 3, 0.1, gin_channels=gin_channels)
    if variant == "bert-vits2-2.3":
        slm = slm or {}
        # (upstream builds WD without the spectral-norm flag)
        nets["WD"] = WavLMDiscriminator(slm.get("hidden", 768), slm.get("nlayers", 13),
                                        slm.get("initial_channel", 64))
    return nets
