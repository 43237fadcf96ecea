"""Learning curve: does training move toward speech? The tiny config trained on real speech on CPU,
its checkpoints judged along the way by the evaluation's own judges, next to the same judges on the
real recordings.

Data: the 32 LJSpeech clips in tests/data/speech/en_ljspeech (one speaker, 22.05 kHz, ~3.5 min),
through the ingest, text, bert (the demo's MiniLM) and spec stage functions; `--val` clips held
out. Training: the tiny model of the test suite (tests/train_corpus.TINY_MODEL) with batch 4 on
CPU, continued in phases to each step of `--steps` (one run: raising max_steps resumes it). After
each phase the latest checkpoint is evaluated on the val clips exactly as the `evaluate` stage does
(tasks/evaluation/evaluate.py: free-running synthesis, seed fixed): MOS (DNSMOS OVRL), CER and WER
(pocketsphinx), speaker similarity (GE2E) to the recording, MCD and teacher-forced mel L1. The
"recordings" row: the same judges on the val recordings themselves (MOS, CER of their transcript,
GE2E similarity of each to another LJSpeech clip): the level a perfect voice would reach.

    .venv/bin/python benchmarks/bench_learning_curve.py [--steps 50 200 500 1000 2000] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from tests.helpers import MINILM  # noqa: E402
from tests.train_corpus import TINY_MODEL, TINY_TRAIN, run_spec  # noqa: E402

SPEECH = REPO / "tests" / "data" / "speech" / "en_ljspeech"


def write_params(root: Path, val: int) -> Path:
    bert = {"model": MINILM, "layer": -3}
    data = {"datasets": [{"name": "lj", "language": "en", "path": "corpus/lj", "format": "ljspeech", "speaker": "lj"}],
            "languages": {"en": {"normalizer": "en", "g2p": "en", "bert": bert}},
            "audio": {"sample_rate": 22050, "loudness_lufs": -23.0, "trim_db": 40.0, "min_seconds": 0.4,
                      "max_seconds": 15.0},
            "split": {"seed": 7, "val_per_speaker": val, "min_train_per_speaker": 1},
            "features": {"spec": {"n_fft": 1024, "hop_length": 256, "win_length": 1024, "n_mels": 80},
                         "bert": {"batch_size": 8, "device": "cpu"}},
            "model": dict(TINY_MODEL),
            "train": {**TINY_TRAIN, "max_steps": 1, "log_interval": 50, "eval_interval": 100000,
                      "save_interval": 100000, "val_max_utterances": val, "audio_samples": 0,
                      "log_dir": str(root / "logs")},
            "storage": {"uri": f"file://{root}/storage"},
            "eval": {"samples": 0, "seed": 1234}}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def preprocess(root: Path) -> None:
    from tasks.core.cache import ResultCache
    from tasks.core.config import load_params
    from tasks.prep import bert, text
    from tasks.prep.ingest import assemble, audio_settings, ingest_chunk, plan_ingest, read_index

    params = load_params(root / "params.yaml")
    cache = lambda name: ResultCache(root / ".cache" / f"{name}.sqlite")  # noqa: E731
    plan = plan_ingest(params, root)
    c = cache("ingest")
    c.put_many(ingest_chunk(plan.storages, plan.items, audio_settings(params)))
    assemble(plan, c, root / "data/ingest", params)
    items = text.plan_text(read_index(root / "data/ingest"), params, root)
    c = cache("text")
    c.put_many(text.text_chunk(items, params, root))
    text.assemble(items, c, root / "data/text", params)
    bitems = bert.plan_bert(bert.read_text_rows(root / "data/text"), params, root, "cpu")
    c = cache("bert")
    c.put_many(bert.bert_chunk(bitems, params, root, "cpu"))
    bert.assemble(bitems, c, root / "data/bert", params, root)
    run_spec(root, root / "data/spec")


def recordings_row(root: Path, val_ids: list[str]) -> dict:
    """The judges on the val recordings themselves (what a perfect synthesis would score)."""
    from tasks.core.config import EvalModelsConfig
    from tasks.evaluation.judges import Judges, cosine, error_rates
    from tasks.prep.audio import decode

    judges = Judges(EvalModelsConfig(), root)
    texts = dict(line.split("|")[:2] for line in (SPEECH / "metadata.csv").read_text(encoding="utf-8").splitlines())
    others = [u for u in sorted(texts) if u not in val_ids]
    mos, cer, wer, sim = [], [], [], []
    for i, utt in enumerate(val_ids):
        wav, sr = decode((SPEECH / "wavs" / f"{utt}.wav").read_bytes(), f"{utt}.wav")
        other, osr = decode((SPEECH / "wavs" / f"{others[i % len(others)]}.wav").read_bytes(), "other.wav")
        mos.append(judges.models["mos"].mos(wav, sr))
        rates = error_rates(texts[utt], judges.models["asr"].transcribe(wav, sr))
        cer.append(rates["cer"])
        wer.append(rates["wer"])
        spk = judges.models["speaker"]
        sim.append(cosine(spk.embed(wav, sr), spk.embed(other, osr)))
    return {"mos": float(np.mean(mos)), "cer": float(np.mean(cer)), "wer": float(np.mean(wer)),
            "speaker_similarity": float(np.mean(sim))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 200, 500, 1000, 2000])
    ap.add_argument("--val", type=int, default=4, help="clips held out and judged")
    ap.add_argument("--work", type=Path, default=None, help="keep the workspace here (default: a temp folder)")
    args = ap.parse_args()

    from tasks.core.config import load_params
    from tasks.evaluation.evaluate import evaluate
    from tasks.training.train import train

    root = args.work or Path(tempfile.mkdtemp(prefix="learning_curve_"))
    (root / "corpus").mkdir(parents=True, exist_ok=True)
    if not (root / "corpus" / "lj").exists():
        shutil.copytree(SPEECH, root / "corpus" / "lj")
    params_path = write_params(root, args.val)
    t0 = time.perf_counter()
    preprocess(root)
    print(f"preprocessed 32 clips in {time.perf_counter() - t0:.1f} s ({root})", flush=True)

    val_ids = [Path(json.loads(line)["id"]).name for line in (root / "data/ingest/index.jsonl").read_text().splitlines()
               if json.loads(line).get("split") == "val"]
    rows, trained_s = [], 0.0
    for target in args.steps:
        data = yaml.safe_load(params_path.read_text(encoding="utf-8"))
        data["train"]["max_steps"] = target
        params_path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
        params = load_params(params_path)
        t0 = time.perf_counter()
        result = train(params, root)
        trained_s += time.perf_counter() - t0
        uri = f"{params.storage.uri.rstrip('/')}/{result.manifest['path']}"
        record = root / "train" / "run.json"
        record.parent.mkdir(exist_ok=True)
        record.write_text(json.dumps({"run_id": result.run_id, "checkpoint": {"uri": uri, "step": result.step}}))
        t0 = time.perf_counter()
        m = evaluate(params, root, record, root / "eval", params_path=params_path, write=False)["metrics"]
        row = {"step": result.step, "train_min": trained_s / 60, **{k: m.get(k) for k in (
            "mos", "mos_reference", "cer", "wer", "speaker_similarity", "mcd_db", "mel_l1", "f0_rmse_cents")},
            "eval_s": time.perf_counter() - t0}
        rows.append(row)
        print(json.dumps(row), flush=True)
    ref = recordings_row(root, val_ids)

    def f(v, d=3):
        return "–" if v is None else f"{v:.{d}f}"

    print(f"\n{len(val_ids)} val clips (LJSpeech), tiny model, CPU threads {os.cpu_count()}")
    print("| step | training (min) | MOS | CER | WER | speaker sim. | MCD (dB) | mel L1 | F0 RMSE (c) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['train_min']:.1f} | {f(r['mos'], 2)} | {f(r['cer'])} | {f(r['wer'])} | "
              f"{f(r['speaker_similarity'])} | {f(r['mcd_db'], 2)} | {f(r['mel_l1'])} | {f(r['f0_rmse_cents'], 0)} |")
    print(f"| recordings | | {f(ref['mos'], 2)} | {f(ref['cer'])} | {f(ref['wer'])} | {f(ref['speaker_similarity'])} "
          "(to another clip) | 0 | | 0 |")


if __name__ == "__main__":
    main()
