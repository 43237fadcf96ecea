from tasks.core.config import load_params
from tasks.prep.stats import bucket_of, compute_stats, markdown
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_buckets_follow_upstreams_half_open_rule():
    b = [32, 300, 400]
    assert bucket_of(32, b) is None and bucket_of(33, b) == 0 and bucket_of(300, b) == 0
    assert bucket_of(301, b) == 1 and bucket_of(400, b) == 1 and bucket_of(401, b) is None


def test_stats_count_buckets_and_list_the_clips_the_sampler_drops():
    params = load_params(REPO / "params.yaml")
    ingest = [{"id": f"u{i}", "language": "en", "speaker": "s", "duration": d, "split": "train"}
              for i, d in enumerate([0.2, 1.0, 2.0, 30.0])]
    text = [{"id": f"u{i}", "phones": ["_", "a", "b", "_"]} for i in range(4)]
    spec = [{"id": f"u{i}", "frames": f} for i, f in enumerate([17, 86, 172, 2583])]
    metrics, dropped = compute_stats(ingest, text, spec, params)
    assert metrics["utterances"] == 4 and metrics["dropped_by_sampler"] == 2
    assert [d["id"] for d in dropped] == ["u0", "u3"] and "too short" in dropped[0]["reason"]
    assert sum(metrics["buckets"].values()) == 2
    assert "u3" in markdown(metrics, dropped)
