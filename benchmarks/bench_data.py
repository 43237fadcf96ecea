"""Throughput and memory of the data half: utterances/s of `ingest` and `text` on the demo corpus,
and peak RSS at 1x and 4x the corpus size (it must stay flat: the stages stream).

    .venv/bin/python benchmarks/bench_data.py [--copies 1 4]

Each size runs in a fresh child process (the stage flows, as `dvc repro` runs them, with a
temporary Prefect server whose start-up is not counted). The Nx corpus is N copies of the demo
corpus, each copy's audio with its own faint dither so that ingest's dedup keeps every clip.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, resource, sys
from flows.stages import ingest_flow, text_flow, with_workers
params, out = sys.argv[1], sys.argv[2]
ingest = with_workers(ingest_flow, params)(params_path=params, out=out + "/ingest")
text = with_workers(text_flow, params)(params_path=params, ingest_dir=out + "/ingest", out=out + "/text")
print("RESULT " + json.dumps({"ingest": ingest, "text": text,
                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build_demo(work: Path) -> Path:
    from tasks.prep.demo import make_demo_corpus

    make_demo_corpus(REPO / "demo" / "sentences", work / "demo")
    return work / "demo"


def demo_sources(demo: Path) -> list[dict]:
    """The demo corpus's datasets (params.yaml's, pointed at a corpus built by build_demo)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    return [{**ds, "path": str(demo / Path(ds["path"]).name)} for ds in params["datasets"]]


def real_sources(work: Path, shared_speech: Path = REPO / "tests" / "data" / "speech") -> list[dict]:
    """Real recordings (tests/data/speech: LJSpeech, Common Voice ja, AISHELL-3; 70 clips of
    1.5-10 s with their transcripts) as datasets, the AISHELL part as an upstream bv2_list."""
    if not shared_speech.is_dir():
        raise SystemExit(f"{shared_speech}: real speech test data not found")
    aishell = work / "aishell"
    (aishell / "wavs").mkdir(parents=True, exist_ok=True)
    lines = []
    for row in (shared_speech / "zh_aishell3" / "metadata_with_speaker.csv").read_text(encoding="utf-8").splitlines():
        utt, speaker, text = row.split("|", 2)
        shutil.copy(shared_speech / "zh_aishell3" / "wavs" / f"{utt}.wav", aishell / "wavs")
        lines.append(f"wavs/{utt}.wav|{speaker}|ZH|{text}")
    (aishell / "filelist.list").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [{"name": "lj", "language": "en", "path": str(shared_speech / "en_ljspeech"), "format": "ljspeech",
             "speaker": "lj"},
            {"name": "cv", "language": "ja", "path": str(shared_speech / "ja_commonvoice"), "format": "ljspeech",
             "speaker": "cv"},
            {"name": "aishell", "language": "zh", "path": str(aishell), "format": "bv2_list"}]


def dithered_copies(sources: list[dict], work: Path, copies: int, merged: bool = False,
                    unique_text: bool = False) -> list[dict]:
    """`copies` dithered copies of each source dataset's audio (re-written as wav), as `copies` jsonl
    datasets per source dataset, or with `merged` as one dataset per source dataset holding them all.
    With `unique_text` copy k's transcripts end in the number k + 1 (every frontend reads digits),
    so, as in a real corpus, no two utterances share a transcript and text and BERT features are
    computed for every one, not once per source sentence."""
    from tasks.core.config import DatasetConfig
    from tasks.prep.datasets import read_dataset

    datasets = []
    for source in sources:
        ds = DatasetConfig(**source)
        storage, utts, _ = read_dataset(ds, REPO)
        lines = []
        for k in range(copies):
            name = ds.name if merged else f"{ds.name}_{k}"
            dest = work / f"x{copies}{'m' if merged else ''}" / name
            (dest / "audio").mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(k)
            lines = lines if merged else []
            for u in utts:
                x, sr = sf.read(storage.describe(u.audio))
                audio = f"audio/{Path(u.audio).stem}{f'_{k}' if merged else ''}.wav"
                sf.write(dest / audio, x + rng.normal(0, 1e-4, x.shape), sr)
                text = f"{u.text} {k + 1}" if unique_text else u.text
                lines.append(json.dumps({"audio": audio, "text": text, "speaker": u.speaker}, ensure_ascii=False))
            (dest / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
            if not merged or k == copies - 1:
                datasets.append({"name": name, "language": ds.language, "path": str(dest), "format": "jsonl"})
    return datasets


def run_size(work: Path, copies: int, demo: Path) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["datasets"] = dithered_copies(demo_sources(demo), work, copies)
    params_path = work / f"params_x{copies}.yaml"
    params_path.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(params_path), str(work / f"out_x{copies}")],
                          cwd=REPO, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"child failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 4])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo = build_demo(work)
        print(f"{'size':>5} {'utts':>6} {'audio min':>9} {'ingest utt/s':>12} {'text utt/s':>10} {'peak RSS MB':>11}")
        for copies in args.copies:
            r = run_size(work, copies, demo)
            n = r["ingest"]["utterances"]
            print(f"{copies:>4}x {n:>6} {r['ingest']['hours'] * 60:>9.1f} {n / r['ingest']['seconds']:>12.1f} "
                  f"{r['text']['utterances'] / r['text']['seconds']:>10.1f} {r['peak_rss_mb']:>11.0f}")


if __name__ == "__main__":
    main()
