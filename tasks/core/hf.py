"""Hugging Face models named in params: tokenizers and BERT encoders, loaded once, hashed.

A model hash stands for the exact files behind a model, so caches keyed by it notice a changed
model even when its name did not change.
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Optional

from tasks.core.cache import FileHashes
from tasks.core.config import BertConfig, resolve_model_path
from tasks.core.storage import file_sha256

_lock = threading.Lock()
_local = threading.local()
_models: dict[tuple, object] = {}

TOKENIZER_FILE_HINTS = ("token", "vocab", "spm", "merges", "special", "sentencepiece", "bpe")


def _model_files(folder: str, tokenizer_only: bool) -> tuple[tuple[str, int, int, int], ...]:
    """(relative path, size, mtime_ns, inode) of each file a model hash covers, in its order. Cheap
    to take on every call, and what tells a long-lived process that a model folder changed under
    the same name."""
    files = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if tokenizer_only and not any(hint in rel.lower() for hint in TOKENIZER_FILE_HINTS):
            continue
        st = path.stat()
        files.append((rel, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(files)


_folder_hashes: dict[tuple, str] = {}  # (folder, _model_files) -> model hash: a process hashes a state once


def _hash_folder(folder: str, files: tuple[tuple[str, int, int, int], ...], memo: Optional[str]) -> str:
    """The files' hash. `memo` only saves reading them, so it is not part of the key."""
    if (folder, files) not in _folder_hashes:
        hashes = FileHashes.in_dir(Path(memo)) if memo else None
        h = hashlib.sha256()
        for rel, *_ in files:
            path = Path(folder) / rel
            h.update(f"{rel}\0{hashes.sha256(path) if hashes else file_sha256(path)}\n".encode())
        _folder_hashes[(folder, files)] = h.hexdigest()
    return _folder_hashes[(folder, files)]


def model_hash(root: Path, bert: BertConfig, tokenizer_only: bool = False, memo: Optional[Path] = None) -> str:
    """sha256 of the model's files (local folders), or `id@revision` (hub ids). With `memo` (a
    cache folder: FileHashes) each file's hash is remembered by its stat, not recomputed every run."""
    where = resolve_model_path(root, bert.model)
    if Path(where).is_dir():
        return _hash_folder(where, _model_files(where, tokenizer_only), str(memo) if memo else None)
    return f"{bert.model}@{bert.revision or 'main'}"


def _transformers():
    """transformers, imported on first use (2-4 s a stage whose results are all cached never pays),
    under a lock: its lazy attribute imports race when two worker threads get there at once."""
    with _lock:
        from transformers import AutoModel, AutoTokenizer
    return AutoTokenizer, AutoModel


def tokenizer_for(root: Path, bert: BertConfig):
    """The tokenizer, loaded once per thread (fast tokenizers are not safe to share across threads)."""
    cache = _local.__dict__.setdefault("tokenizers", {})
    key = (bert.model, bert.revision)
    if key not in cache:
        auto_tokenizer, _ = _transformers()
        cache[key] = auto_tokenizer.from_pretrained(resolve_model_path(root, bert.model), revision=bert.revision)
    return cache[key]


def encoder_for(root: Path, bert: BertConfig, device: str):
    """(encoder, index into its hidden_states of `bert.layer`), loaded once per process and shared,
    and again when the model's files change (keyed by their hash, not the model's name).

    Layers above the one we read cannot change it, so they are cut off: upstream's
    hidden_states[-3] of a 6-layer model skips a third of the compute this way."""
    import torch

    _, auto_model = _transformers()
    key = (model_hash(root, bert), bert.layer, device)
    with _lock:
        if key not in _models:
            # No remote code: a model that needs it is refused by transformers. float32 whatever the
            # config's torch_dtype says: upstream's transformers 4 loaded float32, transformers 5
            # follows the config, and ku-nlp/deberta-v2-large-japanese-char-wwm's says float16 —
            # other numbers than upstream's, and on an AVX2 CPU 4-5x slower (1.9 s a row at 32 tokens).
            model = auto_model.from_pretrained(resolve_model_path(root, bert.model), revision=bert.revision,
                                              trust_remote_code=False, dtype=torch.float32)
            index = bert.layer
            layers = getattr(getattr(model, "encoder", None), "layer", None)
            if isinstance(layers, torch.nn.ModuleList):
                keep = len(layers) + 1 + bert.layer if bert.layer < 0 else bert.layer
                if not 0 <= keep <= len(layers):
                    raise ValueError(f"BERT {bert.model}: layer {bert.layer} does not exist "
                                     f"({len(layers)} layers, so -{len(layers) + 1}..{len(layers)})")
                model.encoder.layer = layers[:keep]
                index = keep
            _models[key] = (model.eval().to(device), index)
        return _models[key]
