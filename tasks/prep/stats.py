"""Stage `stats`: what the corpus is and what the training sampler will make of it.

Durations, frames, phones per second, speakers, languages, minutes per speaker, the bucket
boundaries of the bucketed sampler and the clips it would drop, as DVC metrics (`stats.json`),
a markdown report (`stats.md`) and a histogram (`durations.png`).
"""
from __future__ import annotations

import bisect
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.config import Params
from tasks.core.shards import read_jsonl
from tasks.core.storage import atomic_write_bytes


def bucket_of(frames: int, boundaries: list[int]) -> int | None:
    """Upstream's rule: bucket i holds boundaries[i] < frames <= boundaries[i + 1]; else dropped."""
    if frames <= boundaries[0] or frames > boundaries[-1]:
        return None
    return bisect.bisect_left(boundaries, frames) - 1


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    q = np.quantile(np.asarray(values, dtype=np.float64), [0, 0.5, 0.95, 1])
    return {"min": round(float(q[0]), 3), "median": round(float(q[1]), 3), "p95": round(float(q[2]), 3),
            "max": round(float(q[3]), 3), "mean": round(float(np.mean(values)), 3)}


def compute_stats(ingest_rows: list[dict], text_rows: list[dict], spec_rows: list[dict], params: Params
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, dropped clips). Only utterances that made it through every stage count."""
    phones = {r["id"]: len(r["phones"]) for r in text_rows}
    frames = {r["id"]: r["frames"] for r in spec_rows}
    rows = [r for r in ingest_rows if r["id"] in phones and r["id"] in frames]
    boundaries = params.train.bucket_boundaries
    buckets: Counter = Counter()
    dropped, minutes = [], defaultdict(float)
    for r in rows:
        minutes[f"{r['language']}/{r['speaker']}"] += r["duration"] / 60
        b = bucket_of(frames[r["id"]], boundaries)
        if b is None:
            side = "short" if frames[r["id"]] <= boundaries[0] else "long"
            dropped.append({"id": r["id"], "frames": frames[r["id"]], "split": r["split"],
                            "reason": f"too {side} for the sampler's buckets ({boundaries[0]}, {boundaries[-1]}]"})
        else:
            buckets[b] += 1
    metrics = {
        "utterances": len(rows),
        "hours": round(sum(r["duration"] for r in rows) / 3600, 4),
        "speakers": len({(r["language"], r["speaker"]) for r in rows}),
        "languages": dict(sorted(Counter(r["language"] for r in rows).items())),
        "duration_s": _quantiles([r["duration"] for r in rows]),
        "frames": _quantiles([frames[r["id"]] for r in rows]),
        "phones_per_second": _quantiles([phones[r["id"]] / r["duration"] for r in rows]),
        "minutes_per_speaker": {k: round(v, 3) for k, v in sorted(minutes.items())},
        "buckets": {f"({boundaries[i]}, {boundaries[i + 1]}]": buckets.get(i, 0) for i in range(len(boundaries) - 1)},
        "dropped_by_sampler": len(dropped),
    }
    return metrics, dropped


def markdown(metrics: dict[str, Any], dropped: list[dict[str, Any]]) -> str:
    lines = ["# Corpus statistics", "",
             f"{metrics['utterances']} utterances, {metrics['hours'] * 60:.1f} minutes, "
             f"{metrics['speakers']} speakers, languages: "
             + ", ".join(f"{k} ({v})" for k, v in metrics["languages"].items()), "",
             "| measure | min | median | p95 | max | mean |", "|---|---|---|---|---|---|"]
    for name in ["duration_s", "frames", "phones_per_second"]:
        q = metrics[name]
        if q:
            lines.append(f"| {name} | {q['min']} | {q['median']} | {q['p95']} | {q['max']} | {q['mean']} |")
    lines += ["", "## Minutes per speaker", "", "| language/speaker | minutes |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in metrics["minutes_per_speaker"].items()]
    lines += ["", "## Sampler buckets (spectrogram frames)", "", "| bucket | clips |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in metrics["buckets"].items()]
    lines += ["", f"## Clips the sampler drops: {len(dropped)}", ""]
    lines += [f"- `{d['id']}` ({d['split']}): {d['frames']} frames, {d['reason']}" for d in dropped]
    return "\n".join(lines) + "\n"


def histogram_png(durations: list[float], boundaries_s: list[float]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.hist(durations, bins=40, color="#3b6ea5")
    for b in boundaries_s:
        ax.axvline(b, color="#c0392b", linewidth=0.8, linestyle="--")
    ax.set_xlabel("duration (s); dashed: sampler bucket boundaries")
    ax.set_ylabel("utterances")
    ax.set_title("Utterance durations")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version string: stable bytes
    plt.close(fig)
    return buf.getvalue()


def write_reports(ingest_dir: Path, text_dir: Path, spec_dir: Path, out_dir: Path, params: Params) -> dict[str, Any]:
    from tasks.prep.ingest import read_index

    ingest_rows = read_index(ingest_dir)
    text_rows = [r for p in sorted(Path(text_dir).glob("text-*.jsonl")) for r in read_jsonl(p)]
    spec_rows = list(read_jsonl(Path(spec_dir) / "index.jsonl"))
    metrics, dropped = compute_stats(ingest_rows, text_rows, spec_rows, params)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "stats.json", json.dumps(metrics, indent=2, sort_keys=True).encode())
    atomic_write_bytes(out_dir / "stats.md", markdown(metrics, dropped).encode("utf-8"))
    frame_s = params.features.spec.hop_length / params.audio.sample_rate
    kept = {r["id"] for r in text_rows} & {r["id"] for r in spec_rows}
    atomic_write_bytes(out_dir / "durations.png",
                       histogram_png([r["duration"] for r in ingest_rows if r["id"] in kept],
                                     [b * frame_s for b in params.train.bucket_boundaries]))
    return metrics
