"""Text frontends: normalisers and G2P backends, looked up by the names params.yaml gives.

Every G2P backend returns upstream Bert-VITS2 2.x conventions: `phones` and language-local
`tones` with `_` at both ends, and `word2ph` with one entry per BERT token plus one for each
`_`, so that `sum(word2ph) == len(phones)` and `len(word2ph) == len(tokenizer.tokenize(text)) + 2`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class G2PResult:
    phones: list[str]
    tones: list[int]
    word2ph: list[int]


# name -> module holding `normalize(text) -> str`
NORMALIZERS = {"zh": "tasks.frontends.zh", "ja": "tasks.frontends.ja", "en": "tasks.frontends.en",
               "basic": "tasks.frontends.espeak"}
# name -> module holding `g2p(norm_text, tokenizer, **options) -> (phones, tones, word2ph)`,
# `NUM_TONES` (language-local tone count) and `VERSION` (part of every cache key).
G2P_BACKENDS = {"zh": "tasks.frontends.zh", "ja": "tasks.frontends.ja", "en": "tasks.frontends.en",
                "espeak": "tasks.frontends.espeak"}


def _module(table: dict[str, str], kind: str, name: str):
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; expected one of {sorted(table)}")
    return importlib.import_module(table[name])


def normalize(normalizer: str, text: str) -> str:
    return _module(NORMALIZERS, "normalizer", normalizer).normalize(text)


def g2p(backend: str, norm_text: str, tokenizer: Any, **options: Any) -> G2PResult:
    phones, tones, word2ph = _module(G2P_BACKENDS, "g2p backend", backend).g2p(norm_text, tokenizer, **options)
    return G2PResult(list(phones), list(tones), list(word2ph))


def backend_options(backend: str) -> tuple[set[str], set[str]]:
    """(accepted, required) `g2p_options` of a G2P backend: its g2p's parameters after the tokenizer."""
    import inspect

    params = list(inspect.signature(_module(G2P_BACKENDS, "g2p backend", backend).g2p).parameters.values())[2:]
    return {p.name for p in params}, {p.name for p in params if p.default is inspect.Parameter.empty}


def backend_info(backend: str) -> tuple[int, str]:
    """(language-local tone count, frontend version) of a G2P backend."""
    mod = _module(G2P_BACKENDS, "g2p backend", backend)
    return mod.NUM_TONES, mod.VERSION


def normalizer_version(normalizer: str) -> str:
    return _module(NORMALIZERS, "normalizer", normalizer).VERSION
