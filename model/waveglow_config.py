"""The consistency rules of NVIDIA's `waveglow_config`, without torch: params validation
(tasks/core/config.py) runs them on every params load, and only training should pay for torch."""
from __future__ import annotations

from typing import List

HOP_LENGTH = 256  # fixed by NVIDIA's upsampling layer (ConvTranspose1d kernel 1024, stride 256)


def check_config(n_mel_channels: int, n_flows: int, n_group: int, n_early_every: int, n_early_size: int,
                 WN_config: dict) -> List[int]:
    """Raise ValueError naming the key when NVIDIA's config cannot build a consistent flow; return
    the channels each flow sees (NVIDIA would assert, or build a model that fails at run time)."""
    for key, value in (("n_mel_channels", n_mel_channels), ("n_flows", n_flows), ("n_group", n_group),
                       ("n_early_every", n_early_every)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"waveglow_config.{key} must be a positive integer, got {value!r}")
    if not isinstance(n_early_size, int) or n_early_size < 0:
        raise ValueError(f"waveglow_config.n_early_size must be an integer >= 0, got {n_early_size!r}")
    if n_group % 2:
        raise ValueError(f"waveglow_config.n_group must be even (the coupling splits it in halves), got {n_group}")
    if HOP_LENGTH % n_group:
        raise ValueError(f"waveglow_config.n_group {n_group} must divide the hop length {HOP_LENGTH}")
    if n_early_size % 2:
        raise ValueError(f"waveglow_config.n_early_size must be even (each half loses n_early_size/2), "
                         f"got {n_early_size}")
    missing = {"n_layers", "n_channels", "kernel_size"} - set(WN_config)
    unknown = set(WN_config) - {"n_layers", "n_channels", "kernel_size"}
    if missing or unknown:
        raise ValueError(f"waveglow_config.WN_config needs n_layers, n_channels, kernel_size; "
                         f"missing {sorted(missing)}, unknown {sorted(unknown)}")
    if WN_config["kernel_size"] % 2 != 1:
        raise ValueError(f"waveglow_config.WN_config.kernel_size must be odd, got {WN_config['kernel_size']}")
    if WN_config["n_channels"] % 2 or WN_config["n_channels"] < 2:
        raise ValueError(f"waveglow_config.WN_config.n_channels must be even, got {WN_config['n_channels']}")
    if WN_config["n_layers"] < 1:
        raise ValueError(f"waveglow_config.WN_config.n_layers must be >= 1, got {WN_config['n_layers']}")
    sizes, remaining = [], n_group
    for k in range(n_flows):
        if k % n_early_every == 0 and k > 0:
            remaining -= n_early_size
        if remaining < 2:
            raise ValueError(f"waveglow_config: n_group {n_group} minus n_early_size {n_early_size} every "
                             f"{n_early_every} flows leaves {remaining} channels at flow {k} (need >= 2)")
        sizes.append(remaining)
    return sizes
