"""P3 and P4: an incremental `dvc repro` after adding 1% new utterances, and DVC file counts.

Builds a project from this repo's pipeline with N dithered copies of the demo corpus (9 copies:
1,080 utterances; the copies of each of the demo's 5 datasets form one dataset, as a real corpus is
a few large datasets, or with --dataset-per-copy 5 x N small ones; each copy's transcripts carry
its number, so every utterance's text is its own, as in a real corpus), starts a local Prefect server (as a user watching the UI would have), runs the
preprocessing half (`dvc repro bert stats`), adds 1% new utterances (new audio, new words) to one
dataset and runs it again. Then it forces the same stages to run once more with nothing new: what
any re-run that reaches every stage costs, whatever it adds (DVC's bookkeeping, process starts,
each stage's pass over the index).
P4 counts the files DVC tracks and extrapolates them to 10,000 utterances from the measured bytes
per utterance of each sharded out.

    .venv/bin/python benchmarks/bench_incremental.py [--copies 9]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.bench_data import build_demo, demo_sources, dithered_copies, real_sources  # noqa: E402

BIN = Path(sys.executable).parent


def start_prefect(home: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=url, PREFECT_UI_API_URL=url,
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(180):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return proc, url
        except Exception:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("Prefect server did not start")


def timed_commands(work: Path) -> Path:
    """A `vitsflow` ahead of the real one on PATH that logs each stage command's wall time (process
    start and imports included), so the re-run splits into DVC's own time and each command's."""
    shim = work / "timing-bin"
    shim.mkdir()
    log = work / "commands.log"
    (shim / "vitsflow").write_text(
        "#!/bin/sh\n"
        "start=$(date +%s.%N)\n"
        f'"{BIN / "vitsflow"}" "$@"; rc=$?\n'
        f'echo "$1 $start $(date +%s.%N)" >> "{log}"\n'
        "exit $rc\n")
    (shim / "vitsflow").chmod(0o755)
    return shim


def command_seconds(work: Path) -> dict[str, float]:
    """Wall seconds per stage command since the last call (and clears the log)."""
    log = work / "commands.log"
    out: dict[str, float] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        name, start, end = line.split()
        out[name] = round(out.get(name, 0.0) + float(end) - float(start), 2)
    log.unlink(missing_ok=True)
    return out


def repro(project: Path, api: str, *args: str) -> tuple[float, str]:
    shim = project.parent / "timing-bin"
    env = dict(os.environ, PATH=f"{shim}:{BIN}:{os.environ['PATH']}", PREFECT_API_URL=api)
    start = time.perf_counter()
    # The preprocessing half (every stage up to bert and stats); training is not part of P3.
    proc = subprocess.run(["dvc", "repro", *(args or ("bert", "stats"))], cwd=project, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    return time.perf_counter() - start, proc.stdout + proc.stderr


def add_utterances(dataset: Path, n: int) -> None:
    lines = (dataset / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    rng = np.random.default_rng(1234)
    for k in range(n):
        src = json.loads(lines[k])
        x, sr = sf.read(dataset / src["audio"])
        name = f"audio/new_{k:04d}.wav"
        sf.write(dataset / name, x + rng.normal(0, 1e-4, x.shape), sr)
        # New audio and new words: every stage has work, none is a cache hit.
        lines.append(json.dumps({**src, "audio": name, "text": f"{src['text']} Take {k + 1}."}, ensure_ascii=False))
    (dataset / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


SHARDED = ["data/ingest", "data/text", "data/bert", "data/spec"]


def shard_files(folder: Path) -> list[Path]:
    return [folder / name for name in json.loads((folder / "shards.json").read_text())]


def shard_inodes(project: Path) -> dict[str, dict[str, int]]:
    """Each sharded out's shard files and their inodes (a kept shard keeps its inode)."""
    return {out: {p.name: p.stat().st_ino for p in shard_files(project / out)} for out in SHARDED}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=9)
    ap.add_argument("--corpus", choices=["demo", "real"], default="demo",
                    help="copies of the demo corpus (120 espeak-ng clips, 2.5 s on average) or of the real "
                    "recordings in tests/data/speech (70 clips, LJSpeech, Common Voice ja, AISHELL-3)")
    ap.add_argument("--dataset-per-copy", action="store_true",
                    help="each copy its own dataset (5 x copies datasets) instead of 5 datasets holding all copies")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        project = work / "project"
        project.mkdir()
        for name in ["flows", "tasks", "model", "demo"]:
            shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ["dvc.yaml", ".gitignore"]:
            shutil.copy(REPO / name, project)
        params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
        sources = demo_sources(build_demo(work)) if args.corpus == "demo" else real_sources(work)
        params["datasets"] = dithered_copies(sources, work, args.copies, merged=not args.dataset_per_copy,
                                             unique_text=True)
        (project / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
        for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
            subprocess.run(cmd, cwd=project, check=True, env=dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}"))
        timed_commands(work)
        server, api = start_prefect(work / "prefect")
        try:
            t_full, _ = repro(project, api)
            full_cmds = command_seconds(work)
            n = json.loads((project / "data/ingest/summary.json").read_text())["utterances"]
            new = max(1, round(n / 100))
            add_utterances(Path(params["datasets"][0]["path"]), new)
            before = shard_inodes(project)
            t_inc, log = repro(project, api)
            inc_cmds = command_seconds(work)
            after = shard_inodes(project)
            # The floor of any re-run that reaches every stage: the same stage runs with nothing to
            # compute and no shard to rewrite (DVC's bookkeeping, process starts, each stage's O(N) plan).
            t_floor, _ = repro(project, api, "--force", "--single-item", "ingest", "text", "bert", "spec", "stats")
            floor_cmds = command_seconds(work)
        finally:
            server.terminate()
        stage_s = {m[0]: float(m[1]) for m in re.findall(r"(\w+): \d+ utterances \(\d+ computed.*?, ([\d.]+) s", log)}
        computed = dict(re.findall(r"(\w+): \d+ utterances \((\d+) computed", log))
        print(f"P3 ({n} utterances in {len(params['datasets'])} datasets, then +{new} new, Prefect server, CPU, "
              "each stage its own process)")
        print(f"  full dvc repro:        {t_full:7.1f} s")
        print(f"  incremental dvc repro: {t_inc:7.1f} s = {100 * t_inc / t_full:.1f}% of the full run")
        print(f"  computed per stage: {computed}; in-flow seconds: {stage_s}")
        print(f"  outside the flows (process start, imports, flow-run bookkeeping, DVC hashing): "
              f"{t_inc - sum(stage_s.values()):.1f} s")
        print(f"  wall seconds per command, full run: {full_cmds}")
        print(f"  wall seconds per command, re-run:   {inc_cmds}; DVC's own time: "
              f"{t_inc - sum(inc_cmds.values()):.1f} s")
        print(f"  forced re-run, nothing new (the floor): {t_floor:.1f} s = {100 * t_floor / t_full:.1f}% "
              f"of the full run; DVC's own time: {t_floor - sum(floor_cmds.values()):.1f} s; "
              f"per command: {floor_cmds}")
        kept = {out: f"{len(before[out].items() & after[out].items())}/{len(after[out])}" for out in after}
        print(f"  shard files kept as they were (unchanged, not rewritten): {kept}")

        lock = yaml.safe_load((project / "dvc.lock").read_text())
        outs = [o for st in lock["stages"].values() for o in st.get("outs", [])]
        files = sum(o.get("nfiles", 1) for o in outs)
        print(f"P4 files DVC tracks for {n + new} utterances: {files}")
        est = 0
        for out in SHARDED:
            folder = project / out
            paths = shard_files(folder)
            shard_bytes = sum(p.stat().st_size for p in paths)
            others = sum(1 for p in folder.iterdir()) - len(paths)
            sec = {"data/ingest": "ingest", "data/text": "text"}.get(out)
            shard_mb = params[sec]["shard_mb"] if sec else params["features"][out.split("/")[1]]["shard_mb"]
            shards = math.ceil(shard_bytes / (n + new) * 10_000 / (shard_mb * 2**20))
            est += shards + others
            print(f"  {out}: {shard_bytes / (n + new) / 1024:.1f} KiB/utt -> {shards} shards + {others} files at 10k")
        rest = files - sum(o.get("nfiles", 1) for o in outs if o["path"] in SHARDED)
        print(f"  estimate for 10,000 utterances: {est + rest} files (sources and reports: {rest})")


if __name__ == "__main__":
    main()
