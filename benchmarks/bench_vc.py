"""HiFi-VC on CPU: a learning curve on held-out speakers, and conversion speed eager vs TorchScript.

Data (tests/data/speech, real speech with its licences): training speakers are LJ Speech (one
speaker, `--lj` clips) and `--train-speakers` AISHELL-3 speakers (one clip each); held out are the
other AISHELL-3 speakers and the Common Voice ja clips (speakers unknown: each clip counts as one).
Held-out pairs: each held-out clip as the source, the next held-out clip of another speaker as the
reference (crossing gender and language where the clips do; gender by median F0, as the evaluate
stage reports it). Pipeline: the ingest and text stage functions, then the asr stage's trainer
(`--asr-steps`, the default Conformer of params.yaml), then the vc trainer continued in phases to
each of `--steps`; after each phase the latest bundle is judged exactly as the evaluate stage
judges `vc.eval` (tasks/evaluation/conversion.py): win rate (output closer, by GE2E, to the
reference than to the source; the goal >= 0.75), similarity to reference and to source, PER
(the in-domain recogniser; of the source too: its floor), F0 correlation with the source.

Speed: a 5 s source converted by the model (eager, weight norm baked) and by its exported
hifivc.ts, the same threads, best of `--repeats`; real-time factor = seconds of compute per
second of audio (lower is faster).

    .venv/bin/python benchmarks/bench_vc.py [--steps 50 200 500] [--asr-steps 300] [--size small] [--work DIR]

Measured on this machine (2 cores, CPU): see the README's HiFi-VC section (figures and what
bounds them).
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

SPEECH = REPO / "tests" / "data" / "speech"
SIZES = {  # vc.model and the slice: "small" steps ~4x faster on CPU than params.yaml's default
    "small": {"model": {"f0_channels": 32, "speaker_dim": 128, "upsample_initial_channel": 128, "resblock": "2",
                        "resblock_kernel_sizes": [3, 7], "resblock_dilation_sizes": [[1, 3], [1, 3]],
                        "disc_divisor": 8}, "segment_frames": 24},
    "default": {"model": {}, "segment_frames": 32},
}


def corpus(root: Path, lj: int, train_speakers: int) -> tuple[list[dict], list[dict]]:
    """Write corpus/{lj,aishell} and return (training clips, held-out clips) as {path, text, language, speaker}."""
    lj_rows = [line.split("|", 1) for line in (SPEECH / "en_ljspeech/metadata.csv").read_text(encoding="utf-8").splitlines()]
    zh_rows = [line.split("|", 2) for line in
               (SPEECH / "zh_aishell3/metadata_with_speaker.csv").read_text(encoding="utf-8").splitlines()]
    ja_rows = [line.split("|", 1) for line in (SPEECH / "ja_commonvoice/metadata.csv").read_text(encoding="utf-8").splitlines()]
    for name, src in (("lj", "en_ljspeech"), ("aishell", "zh_aishell3")):
        (root / "corpus" / name).mkdir(parents=True, exist_ok=True)
        link = root / "corpus" / name / "wavs"
        if not link.exists():
            link.symlink_to(SPEECH / src / "wavs")
    (root / "corpus/lj/metadata.csv").write_text("".join(f"{i}|{t}|{t}\n" for i, t in lj_rows[:lj]), encoding="utf-8")
    train_zh, held_zh = zh_rows[:train_speakers], zh_rows[train_speakers:]
    (root / "corpus/aishell/filelist.list").write_text(
        "".join(f"wavs/{i}.wav|{s}|ZH|{t}\n" for i, s, t in train_zh), encoding="utf-8")
    train = [{"speaker": "lj"}] * lj + [{"speaker": s} for _, s, _ in train_zh]
    held = ([{"path": SPEECH / "zh_aishell3/wavs" / f"{i}.wav", "text": t, "language": "zh", "speaker": s}
             for i, s, t in held_zh] +
            [{"path": SPEECH / "ja_commonvoice/wavs" / f"{i}.wav", "text": None, "language": "ja", "speaker": i}
             for i, _ in ja_rows])
    return train, held


def pairs(held: list[dict]) -> list[dict]:
    out = []
    for i, src in enumerate(held):
        ref = held[(i + 1) % len(held)]
        out.append({"source": str(src["path"]), "reference": str(ref["path"]), "text": src["text"],
                    "language": src["language"] if src["text"] else None,
                    "name": f"{src['speaker']}~{ref['speaker']}"})
    return out


def write_params(root: Path, held_pairs: list[dict], size: str, asr_steps: int) -> Path:
    bert = {"model": MINILM, "layer": -3}
    s = SIZES[size]
    data = {"datasets": [{"name": "lj", "language": "en", "path": "corpus/lj", "format": "ljspeech", "speaker": "lj"},
                         {"name": "aishell", "language": "zh", "path": "corpus/aishell", "format": "bv2_list"}],
            "languages": {"en": {"normalizer": "en", "g2p": "en", "bert": bert},
                          "zh": {"normalizer": "zh", "g2p": "zh", "bert": bert}},
            "audio": {"sample_rate": 24000, "loudness_lufs": -23.0, "trim_db": 40.0, "min_seconds": 0.4,
                      "max_seconds": 15.0},
            "split": {"seed": 7, "val_per_speaker": 1, "min_train_per_speaker": 1},
            "asr": {"enabled": True, "max_steps": asr_steps, "log_interval": 50, "eval_interval": asr_steps,
                    "save_interval": asr_steps, "device": "cpu", "batch_size": 8},
            "vc": {"enabled": True, "device": "cpu", "batch_size": 8, "max_steps": 1, "log_interval": 50,
                   "eval_interval": 100000, "save_interval": 100000, "val_max_utterances": 4,
                   "segment_frames": s["segment_frames"], "model": s["model"], "eval": held_pairs},
            "train": {"log_dir": str(root / "logs")},
            "storage": {"uri": f"file://{root}/storage"},
            "runtime": {"cache_dir": ".cache/vitsflow"},
            "eval": {"samples": 0, "seed": 1234}}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def preprocess(root: Path) -> None:
    """ingest, text, then the asr and vc stages' features (what `vitsflow asr` / `vc` compute first)."""
    from tasks.core.cache import ResultCache
    from tasks.core.config import load_params
    from tasks.prep import content, text
    from tasks.prep.ingest import assemble, audio_settings, ingest_chunk, plan_ingest, read_index

    params = load_params(root / "params.yaml")
    cache = lambda name: ResultCache(root / ".cache/vitsflow" / f"{name}.sqlite")  # noqa: E731
    plan = plan_ingest(params, root)
    c = cache("ingest")
    c.put_many(ingest_chunk(plan.storages, plan.items, audio_settings(params)))
    assemble(plan, c, root / "data/ingest", params)
    rows = read_index(root / "data/ingest")
    items = text.plan_text(rows, params, root)
    c = cache("text")
    c.put_many(text.text_chunk(items, params, root))
    text.assemble(items, c, root / "data/text", params)
    sr = params.audio.sample_rate
    cache(content.CACHE_NAME).put_many(content.content_chunk(content.plan_content(rows, sr), root / "data/ingest",
                                                             content.content_settings(sr)))
    cache(content.VC_CACHE_NAME).put_many(content.vc_chunk(content.plan_vc(rows, sr), root / "data/ingest",
                                                           content.vc_settings(sr)))


def train_asr(root: Path) -> dict:
    from tasks.core.config import load_params
    from tasks.training import asr

    params = load_params(root / "params.yaml")
    started = time.perf_counter()
    result = asr.train(params, root)
    record = {"enabled": True, "run_id": result.run_id, "checkpoint": {"uri": "unused", "step": result.step}}
    (root / "train").mkdir(exist_ok=True)
    (root / "train/asr.json").write_text(json.dumps(record))
    return {"steps": result.step, "minutes": (time.perf_counter() - started) / 60, "val_per": result.per}


def rtf(root: Path, uri: str, repeats: int) -> dict:
    """Real-time factor of a 5 s conversion, eager vs the exported TorchScript file."""
    import torch

    from tasks.inference.convert import EXPORT_TS, export_hifivc, load_converter
    from tasks.prep.audio import decode, resample

    conv = load_converter(uri, root / "params.yaml")
    out = root / "export"
    export_hifivc(conv, out)
    ts = torch.jit.load(str(out / EXPORT_TS))
    src, sr = decode((SPEECH / "en_ljspeech/wavs/LJ001-0004.wav").read_bytes(), "s.wav")
    ref, rsr = decode((SPEECH / "zh_aishell3/wavs/SSB00050112.wav").read_bytes(), "r.wav")
    wav16, mel_ref, lf0, _ = conv.prepare(src[: int(5 * sr)], sr, ref, rsr)
    seconds = wav16.shape[1] / 16000
    times = {}
    with torch.inference_mode():
        for name, fn in (("eager", conv.model), ("torchscript", ts)):
            fn(wav16, mel_ref, lf0)  # warm-up (TorchScript's profiling run)
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                fn(wav16, mel_ref, lf0)
                best = min(best, time.perf_counter() - t)
            times[name] = best / seconds
    return {"seconds": seconds, "rtf_eager": times["eager"], "rtf_torchscript": times["torchscript"],
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 200, 500])
    ap.add_argument("--asr-steps", type=int, default=300)
    ap.add_argument("--lj", type=int, default=24, help="LJ Speech clips trained on")
    ap.add_argument("--train-speakers", type=int, default=20, help="AISHELL-3 speakers trained on (of 30)")
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="keep the workspace here (default: a temp folder)")
    args = ap.parse_args()

    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    root = args.work or Path(tempfile.mkdtemp(prefix="bench_vc_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        _, held = corpus(root, args.lj, args.train_speakers)
        held_pairs = pairs(held)
        write_params(root, held_pairs, args.size, args.asr_steps)
        t = time.perf_counter()
        preprocess(root)
        print(f"preprocess: {time.perf_counter() - t:.1f} s; held-out pairs: {len(held_pairs)}; "
              f"torch threads {torch.get_num_threads()}", flush=True)
        a = train_asr(root)
        print(f"asr: {a['steps']} steps in {a['minutes']:.1f} min, val PER {a['val_per']}", flush=True)

        from tasks.core.config import load_params, parse_params
        from tasks.evaluation.conversion import judge_conversion
        from tasks.training import vc

        base = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
        print("\nstep  minutes  win_rate  sim_ref  sim_src  margin  sim_src_ref  PER   PER_src  F0_corr  val_mel_l1",
              flush=True)
        spent, result = 0.0, None
        for steps in args.steps:
            base["vc"]["max_steps"] = steps
            params = parse_params(base)
            t = time.perf_counter()
            result = vc.train(params, root)
            spent += time.perf_counter() - t
            uri = f"file://{root}/storage/runs/{result.run_id}"
            judged = judge_conversion(load_params(root / "params.yaml"), root, model_ref=uri, write=False)
            o = judged["overall"]

            def f(k, d=3):
                return "   –  " if o.get(k) is None else f"{o[k]:.{d}f}"
            print(f"{steps:>4}  {spent / 60:7.1f}  {f('win_rate', 2):>8}  {f('sim_reference'):>7}  {f('sim_source'):>7}  "
                  f"{f('margin'):>6}  {f('sim_source_reference'):>11}  {f('per', 2):>4}  {f('per_source', 2):>7}  "
                  f"{f('f0_corr'):>7}  {result.val_loss:.3f}", flush=True)
        cross = judged["cross_gender"]
        print(f"\ncrossing gender: {cross['count']} pairs, win rate {cross['win_rate']}; same gender: "
              f"{judged['same_gender']['count']} pairs, win rate {judged['same_gender']['win_rate']}")
        speed = rtf(root, f"file://{root}/storage/runs/{result.run_id}", args.repeats)
        print(f"\nconversion of {speed['seconds']:.1f} s ({speed['threads']} threads): real-time factor eager "
              f"{speed['rtf_eager']:.3f}, TorchScript {speed['rtf_torchscript']:.3f} "
              f"(ratio {speed['rtf_eager'] / speed['rtf_torchscript']:.2f}x)")
    finally:
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
