"""The training data loader: batches/s it delivers at upstream 2.3's sizes, so the GPU step rate
it can feed is known (a GPU step slower than 1 / this rate is never starved by the loader).

Builds the demo corpus (120 sentences, 8 espeak-ng voices) through the four data stages at upstream 2.3's audio and features: 44.1 kHz,
n_fft 2048 / hop 512 / 128 mels spectrograms (cached, as the spec stage writes them) and BERT
features 1024 wide (a one-layer random-init model of upstream's chinese-roberta-wwm-ext-large
config: the width, not the weights, sets the bytes), then iterates tasks.training's loader
(TextAudioDataset + BucketSampler + collate, as train() builds it) at upstream's batch size 16 and
bucket boundaries, with 0 and 2 worker processes. The first batches (worker
start) are not timed. Segment slicing happens in the model, on the device, not in the loader.

    .venv/bin/python benchmarks/bench_loader.py [--batches 200]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

UPSTREAM = {"audio": {"sample_rate": 44100, "loudness_lufs": -23.0, "trim_db": 40.0, "min_seconds": 0.4,
                      "max_seconds": 15.0},
            "features": {"spec": {"n_fft": 2048, "hop_length": 512, "win_length": 2048, "n_mels": 128},
                         "bert": {"batch_size": 4, "device": "cpu"}}}
BATCH, BOUNDARIES = 16, [32, 300, 400, 500, 600, 700, 800, 900, 1000]  # upstream 2.3's train section


def wide_bert(folder: Path) -> str:
    from transformers import AutoConfig, AutoModel

    src = REPO / "tests" / "data" / "upstream_bv2_23" / "tokenizers" / "chinese-roberta-wwm-ext-large"
    config = AutoConfig.from_pretrained(str(src))
    config.num_hidden_layers = 1
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    for f in src.iterdir():
        if f.name != "config.json":
            shutil.copy(f, folder / f.name)
    return str(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=200)
    args = ap.parse_args()
    from tasks.core.config import load_params
    from tasks.core.paths import DATA_DIRS
    from tasks.training.corpus import BucketSampler, Corpus, TextAudioDataset, collate
    from tests.train_corpus import build, params_dict

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bert = {"model": wide_bert(root / "bert1024"), "layer": -1}
        languages = {code: {**lang, "bert": {**bert, **({"slot": "en"} if code == "de" else {})}}
                     for code, lang in params_dict(root)["languages"].items()}
        model = {**params_dict(root)["model"], "upsample_rates": [8, 8, 8], "upsample_kernel_sizes": [16, 16, 16]}
        sentences = {p.stem: p.read_text(encoding="utf-8").splitlines() for p in (REPO / "demo" / "sentences").glob("*.txt")}
        build(root, sentences, languages=languages, model=model, **UPSTREAM)  # (the model only has to fit hop 512)
        params = load_params(root / "params.yaml")
        corpus = Corpus.open(**{k: root / v for k, v in DATA_DIRS.items()})
        train_set = TextAudioDataset(corpus, "train", params.model.add_blank, True)
        frames = sorted(train_set.lengths)
        print(f"loader at upstream 2.3's sizes: {len(train_set)} train clips ({frames[len(frames) // 2]} frames "
              f"median, hop 512 at 44.1 kHz), BERT 1024 x 3 slots, batch {BATCH}, {os.cpu_count()} cores")
        for workers in (0, 2):  # upstream's train_ms.py and our train.num_workers default: 2 per GPU process
            sampler = BucketSampler(train_set.lengths, BATCH, BOUNDARIES, 1, 0, 1234, ids=train_set.ids)
            extra = dict(num_workers=workers, persistent_workers=True, multiprocessing_context="spawn") \
                if workers else {}
            loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=collate, **extra)
            done, start, warm = 0, None, 2 * max(workers, 1)
            while done < args.batches + warm:
                for batch in loader:
                    done += 1
                    if done == warm:
                        start = time.perf_counter()
                    if done >= args.batches + warm:
                        break
                sampler.set_epoch(sampler.epoch + 1)
            seconds = time.perf_counter() - start
            print(f"  {workers} worker processes: {args.batches / seconds:7.1f} batches/s "
                  f"({args.batches} batches in {seconds:.2f} s; last batch spec {tuple(batch['spec'].shape)})")


if __name__ == "__main__":
    main()
