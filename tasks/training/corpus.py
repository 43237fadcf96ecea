"""What the trainer reads: the preprocessed shards of one split as tensors, padded batches, and a
seeded, resumable, distributed bucketed batch sampler.

    dataset = TextAudioDataset(Corpus.open(...), "train", add_blank=True, ...)
    sampler = BucketSampler(dataset.lengths, batch_size, boundaries, num_replicas, rank, seed, ids=...)
    loader  = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)

Conventions are upstream Bert-VITS2 2.3's `data_utils.py` (TextAudioSpeakerLoader, its collate and
DistributedBucketSampler), so a model trained here sees what an upstream model sees:
- phones, tones (+ the language's offset) and language ids, with a blank (id 0) between and around
  them when add_blank is on; the BERT features [dim, n_phones] get the matching layout
  (the first column once more in front, then every column twice: upstream's word2ph doubling with
  word2ph[0] += 1, applied to features already expanded to phones);
- the three BERT inputs: the utterance's slot gets its features, the others zeros (tasks.prep.bert.slot_inputs);
- the linear spectrogram [n_fft/2+1, frames] (cached by the spec stage, or computed here through the
  same STFT) and the waveform [1, samples] as float in [-1, 1);
- the speaker id from a speaker map (sorted names over the whole ingest index, so train and val agree).

The dataset is a pure function of its index: no randomness, so loader workers never need seeding.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from model.mel_processing import STFTParams
from tasks.core.shards import read_jsonl, read_pcm
from tasks.frontends.symbols import SymbolTable, intersperse
from tasks.prep.bert import read_features, slot_inputs
from tasks.prep.stats import bucket_of  # the one bucket rule, shared with the stats report

logger = logging.getLogger(__name__)


@dataclass
class Corpus:
    """The joined indexes of the four preprocessing stages: one row per utterance that made it
    through all of them, in ingest order."""

    ingest_dir: Path
    text_dir: Path
    bert_dir: Path
    spec_dir: Path
    rows: list[dict[str, Any]]  # id, speaker, language, split, pcm location, phones, tones, bert row, spec row
    symbols: SymbolTable
    speakers: list[str]  # sorted; the speaker id is the index
    bert_meta: dict[str, Any]
    spec_meta: dict[str, Any]
    missing: dict[str, int] = field(default_factory=dict)  # stage -> utterances dropped for lack of its output

    @classmethod
    def open(cls, ingest_dir: Path, text_dir: Path, bert_dir: Path, spec_dir: Path) -> "Corpus":
        ingest_dir, text_dir, bert_dir, spec_dir = map(Path, (ingest_dir, text_dir, bert_dir, spec_dir))
        for folder, name in [(ingest_dir / "index.jsonl", "ingest"), (text_dir / "symbols.json", "text"),
                             (bert_dir / "meta.json", "bert"), (spec_dir / "meta.json", "spec")]:
            if not folder.is_file():
                raise FileNotFoundError(f"{folder}: {name} stage outs not found; run the {name} stage first")
        ingest_rows = list(read_jsonl(ingest_dir / "index.jsonl"))
        text = {r["id"]: r for shard in sorted(text_dir.glob("text-*.jsonl")) for r in read_jsonl(shard)}
        bert = {r["id"]: r for r in read_jsonl(bert_dir / "index.jsonl")}
        spec = {r["id"]: r for r in read_jsonl(spec_dir / "index.jsonl")}
        rows, missing = [], {"text": 0, "bert": 0, "spec": 0}
        for r in ingest_rows:
            lacking = [name for name, index in (("text", text), ("bert", bert), ("spec", spec)) if r["id"] not in index]
            for name in lacking:
                missing[name] += 1
            if lacking:
                continue
            t = text[r["id"]]
            rows.append({"id": r["id"], "speaker": r["speaker"], "language": r["language"], "split": r["split"],
                         "pcm": {k: r[k] for k in ("shard", "offset", "nbytes")}, "num_samples": r["num_samples"],
                         "norm_text": t.get("norm_text"), "phones": t["phones"], "tones": t["tones"], "bert": bert[r["id"]],
                         "spec": spec[r["id"]]})
        if any(missing.values()):
            logger.warning("corpus: %d of %d ingested utterances have no output from a later stage "
                           "(its rejects.jsonl says why) and are left out: %s",
                           len(ingest_rows) - len(rows), len(ingest_rows), missing)
        symbols = SymbolTable.from_json(json.loads((text_dir / "symbols.json").read_text(encoding="utf-8")))
        spec_meta = json.loads((spec_dir / "meta.json").read_text(encoding="utf-8"))
        from tasks.prep.spec import LAYOUT

        if spec_meta.get("cached") and spec_meta.get("layout") != LAYOUT:
            raise ValueError(f"{spec_dir}/meta.json: layout {spec_meta.get('layout')!r} was written by another "
                             f"vitsflow version; this one reads {LAYOUT!r}: re-run the spec stage (dvc repro spec)")
        return cls(ingest_dir, text_dir, bert_dir, spec_dir, rows, symbols,
                   sorted({r["speaker"] for r in ingest_rows}),
                   json.loads((bert_dir / "meta.json").read_text(encoding="utf-8")), spec_meta, missing)

    @property
    def frontends(self) -> dict[str, str]:
        """language -> version of the text frontend that made the phones (recorded in symbols.json)."""
        return json.loads((self.text_dir / "symbols.json").read_text(encoding="utf-8")).get("frontends", {})

    @property
    def bert_dim(self) -> int:
        dims = {d for d in self.bert_meta["dims"].values() if d}
        if len(dims) > 1:
            raise ValueError(f"{self.bert_dir}/meta.json: BERT widths differ between slots {self.bert_meta['dims']}; "
                             "the network takes one width for all three inputs")
        return dims.pop() if dims else 1024

    @property
    def stft(self) -> STFTParams:
        return STFTParams(**self.spec_meta["stft"])


def add_blanks(ids: list[int]) -> list[int]:
    """Upstream's commons.intersperse(ids, 0): [0, a, 0, b, 0, ..., 0]."""
    return intersperse(ids, 0)


def blank_features(feats: torch.Tensor) -> torch.Tensor:
    """Phone-level features [dim, n] laid out for the blank-interspersed sequence [dim, 2n + 1]."""
    return torch.cat([feats[:, :1], feats.repeat_interleave(2, dim=1)], dim=1)


class TextAudioDataset(Dataset):
    """One split of a Corpus. Items are dicts of tensors (see `__getitem__`)."""

    def __init__(self, corpus: Corpus, split: str, add_blank: bool = True, use_bert: bool = True,
                 limit: Optional[int] = None):
        self.corpus, self.split, self.add_blank, self.use_bert = corpus, split, add_blank, use_bert
        self.rows = [r for r in corpus.rows if r["split"] == split][:limit]
        self.speaker_ids = {name: i for i, name in enumerate(corpus.speakers)}
        self.cached_spec = bool(corpus.spec_meta.get("cached"))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> list[int]:
        """Spectrogram frames per item: what the bucketed sampler sorts by."""
        return [r["spec"]["frames"] for r in self.rows]

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.rows]

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        c = self.corpus
        phones, tones, langs = c.symbols.to_ids(row["phones"], row["tones"], row["language"])
        pcm = read_pcm(c.ingest_dir, row["pcm"])
        wav = torch.from_numpy(pcm.astype(np.float32) / 32768.0).unsqueeze(0)  # [1, T]
        if self.cached_spec:
            from tasks.prep.spec import read_linear

            linear = torch.from_numpy(read_linear(c.spec_dir, row["spec"], c.spec_meta).astype(np.float32))
        else:
            from model.mel_processing import pcm16_linear_spectrogram

            linear = pcm16_linear_spectrogram(torch.from_numpy(pcm), c.stft)[0]
        item = {"id": row["id"], "spec": linear, "wav": wav, "sid": self.speaker_ids[row["speaker"]]}
        if self.use_bert:
            feats = read_features(c.bert_dir, row["bert"])
            if feats.shape[1] != len(phones):
                raise ValueError(f"{row['id']}: {feats.shape[1]} BERT feature columns but {len(phones)} phones")
            inputs = {k: torch.from_numpy(v.astype(np.float32)) for k, v in slot_inputs(c.bert_meta, row["bert"], feats).items()}
        if self.add_blank:
            phones, tones, langs = add_blanks(phones), add_blanks(tones), add_blanks(langs)
            if self.use_bert:
                inputs = {k: blank_features(v) for k, v in inputs.items()}
        item.update(phones=torch.LongTensor(phones), tones=torch.LongTensor(tones), langs=torch.LongTensor(langs))
        if self.use_bert:
            item.update(bert=inputs["zh"], ja_bert=inputs["ja"], en_bert=inputs["en"])
        return item


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Zero-pad a list of items into a batch, longest spectrogram first (upstream's collate).

    phones/tones/langs [B, T_x] and x_lengths [B]; bert/ja_bert/en_bert [B, dim, T_x];
    spec [B, n_freq, T_y] and spec_lengths; wav [B, 1, T_wav] and wav_lengths; sid [B]; ids."""
    order = sorted(range(len(batch)), key=lambda i: -batch[i]["spec"].shape[1])  # stable: ties keep order
    batch = [batch[i] for i in order]

    def pad(key: str, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.LongTensor([b[key].shape[dim] for b in batch])
        first = batch[0][key]
        shape = list(first.shape)
        shape[dim] = int(lengths.max())
        out = first.new_zeros([len(batch)] + shape)
        for i, b in enumerate(batch):
            out[i].narrow(dim, 0, b[key].shape[dim]).copy_(b[key])
        return out, lengths

    out: dict[str, Any] = {"ids": [b["id"] for b in batch], "sid": torch.LongTensor([b["sid"] for b in batch])}
    out["phones"], out["x_lengths"] = pad("phones", 0)
    out["tones"], _ = pad("tones", 0)
    out["langs"], _ = pad("langs", 0)
    out["spec"], out["spec_lengths"] = pad("spec", 1)
    out["wav"], out["wav_lengths"] = pad("wav", 1)
    for key in ("bert", "ja_bert", "en_bert"):
        if key in batch[0]:
            out[key], _ = pad(key, 1)
    return out


class BucketSampler(Sampler[list[int]]):
    """Batches of similar length, spread over `num_replicas` processes (upstream's
    DistributedBucketSampler), seeded by (seed, epoch), and resumable within an epoch.

    Each bucket is padded (by repeating its own shuffled items) to a multiple of
    num_replicas * batch_size, so every process gets the same number of full batches; rank r takes
    every num_replicas-th item. Clips outside the boundaries are dropped, counted in `dropped` and
    logged (never silently). Iteration yields this rank's batches of `epoch` from `position` on;
    the training loop calls `advance()` once per batch it has *consumed* (a loader prefetches, so
    what was handed out is not what was trained on) and `set_epoch` at each epoch's end.
    `state_dict()` is then exactly where an uninterrupted run would continue.
    """

    def __init__(self, lengths: list[int], batch_size: int, boundaries: list[int], num_replicas: int = 1,
                 rank: int = 0, seed: int = 0, shuffle: bool = True, ids: Optional[list[str]] = None):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.batch_size, self.boundaries = batch_size, list(boundaries)
        self.num_replicas, self.rank, self.seed, self.shuffle = num_replicas, rank, seed, shuffle
        self.epoch, self.position = 0, 0
        ids = ids or [str(i) for i in range(len(lengths))]
        self.buckets: list[list[int]] = [[] for _ in range(len(boundaries) - 1)]
        self.dropped: list[dict[str, Any]] = []
        for i, frames in enumerate(lengths):
            b = bucket_of(frames, self.boundaries)
            if b is None:
                side = "short" if frames <= boundaries[0] else "long"
                self.dropped.append({"id": ids[i], "frames": frames, "reason": f"too {side}"})
            else:
                self.buckets[b].append(i)
        self.buckets = [b for b in self.buckets if b]  # upstream removes empty buckets too
        if self.dropped:
            logger.warning("sampler: dropped %d of %d clips outside the bucket boundaries (%d, %d] frames: %s",
                           len(self.dropped), len(lengths), boundaries[0], boundaries[-1],
                           ", ".join(f"{d['id']} ({d['frames']}, {d['reason']})" for d in self.dropped[:20])
                           + (" ..." if len(self.dropped) > 20 else ""))
        if not self.buckets:
            raise ValueError(f"sampler: none of the {len(lengths)} clips fits the bucket boundaries "
                             f"({boundaries[0]}, {boundaries[-1]}] frames")
        per_step = num_replicas * batch_size
        self.num_samples_per_bucket = [len(b) + (-len(b)) % per_step for b in self.buckets]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All of this rank's batches of one epoch, in order."""
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + epoch)
        batches = []
        for bucket, n_samples in zip(self.buckets, self.num_samples_per_bucket):
            order = torch.randperm(len(bucket), generator=g).tolist() if self.shuffle else list(range(len(bucket)))
            order = (order * (n_samples // len(bucket) + 1))[:n_samples]  # pad by repetition
            mine = order[self.rank::self.num_replicas]
            batches += [[bucket[j] for j in mine[k:k + self.batch_size]]
                        for k in range(0, len(mine) - self.batch_size + 1, self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.epoch_batches(self.epoch)[self.position:])

    def __len__(self) -> int:
        """Batches per epoch (for this rank)."""
        return sum(self.num_samples_per_bucket) // (self.num_replicas * self.batch_size)

    def advance(self, n: int = 1) -> None:
        self.position += n

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_replicas": self.num_replicas, "batches_per_epoch": len(self)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_replicas"] != self.num_replicas or state["seed"] != self.seed:
            raise ValueError(f"sampler state is for {state['num_replicas']} process(es) and seed {state['seed']}; "
                             f"this run has {self.num_replicas} process(es) and seed {self.seed}")
        if state["batches_per_epoch"] != len(self):
            raise ValueError(f"sampler state has {state['batches_per_epoch']} batches per epoch, this data "
                             f"gives {len(self)}: the training data changed")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
