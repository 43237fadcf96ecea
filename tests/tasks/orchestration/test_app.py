"""tasks/orchestration/app.py through FastAPI's TestClient: every route and every bad-input case, on a
project folder with a production pointer, two runs' checkpoints, an export folder and an evaluation
(random-weight models of the tiny corpus: tests/tasks/inference/test_synth.py)."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from tasks.prep.audio import wav_bytes
from tasks.orchestration.app import create_app
from tests.tasks.inference.test_convert import save_vc_bundle
from tests.tasks.inference.test_synth import build_models
from tests.tasks.orchestration.test_export_stage import UPSTREAM_RUN, upstream_compatible_checkpoint

SENTENCE = {"text": "Where are you going?", "language": "en", "speaker": "en_m1"}
QUIET = {"noise_scale": 0.0, "noise_scale_w": 0.0, "sdp_ratio": 0.0}


def app_project(train_corpus: Path, work: Path, with_eval: bool = True) -> dict:
    """work/: params.yaml (storage file://work/storage), a production pointer to run synth-test's step 3,
    a second run (upstream-compatible tables), the export folder work/export, and eval/ as the
    evaluate stage writes it (metrics.json with an extra `mos` key, two samples); a random-init
    HiFi-VC as the vc stage's record (train/vc.json; its bundle on work/vc_storage)."""
    m = build_models(train_corpus, work)
    params = json.loads(Path(m["params"]).read_text())
    params["eval"]["promotion"]["model_name"] = "demo"
    params["app"]["max_text_chars"] = 60
    params["app"]["max_batch"] = 2
    Path(m["params"]).write_text(json.dumps(params))
    m["second"] = upstream_compatible_checkpoint(Path(m["params"]))
    m["vc"] = save_vc_bundle(f"file://{work}/vc_storage")
    (work / "train").mkdir(exist_ok=True)
    (work / "train" / "vc.json").write_text(json.dumps({"enabled": True, "run_id": "vc-random",
                                                        "checkpoint": {"uri": m["vc"], "step": 3}}))
    pointer = work / "storage" / "models" / "demo" / "production.json"
    pointer.parent.mkdir(parents=True)
    pointer.write_text(json.dumps({"model_name": "demo", "run_id": "synth-test",
                                   "checkpoint": {"uri": m["bundle"], "step": 3}}))
    if with_eval:
        (work / "eval" / "samples").mkdir(parents=True)
        metrics = {"mcd_db": 9.5, "f0_rmse_cents": 120.0, "vuv_error": 0.2, "length_ratio": 1.1, "mel_l1": 0.9,
                   "mos": 3.25, "utterances": 2, "judges": {"mos": "a MOS predictor"}, "failed": [],
                   "overall": {"count": 2}, "eval_set": "abc", "not_a_number": "x", "flag": True,
                   "model": {"run_id": "synth-test", "step": 3, "checkpoint": m["bundle"]}}
        (work / "eval" / "metrics.json").write_text(json.dumps(metrics))
        tone = (0.1 * np.sin(np.arange(11025) * 2 * np.pi * 220 / 22050)).astype(np.float32)
        for name in ("demo_en_m1_1", "demo_zh_2"):
            for kind in ("ref", "syn"):
                (work / "eval" / "samples" / f"{name}.{kind}.wav").write_bytes(wav_bytes(tone, 22050))
        # the waveglow stage on: copy-synthesis of the first utterance, its scores
        (work / "eval" / "samples" / "demo_en_m1_1.wg.wav").write_bytes(wav_bytes(tone, 22050))
        (work / "eval" / "copy_synthesis.json").write_text(json.dumps(
            {"vocoder": {"run_id": "waveglow-abc", "step": 4}, "overall": {"count": 2, "mcd_db": 4.5, "mos": 3.5}}))
    return m


@pytest.fixture(scope="module")
def project(train_corpus, tmp_path_factory):
    return app_project(train_corpus, tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="module")
def client(project):
    with TestClient(create_app(project["params"])) as c:
        yield c


def _wav(content: bytes) -> tuple[np.ndarray, int]:
    return sf.read(io.BytesIO(content), dtype="float32")


def test_health_says_ok_and_names_the_loaded_models(client):
    r = client.get("/api/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and isinstance(r.json()["loaded"], list)


def test_models_lists_the_production_pointer_every_kept_checkpoint_and_the_export_folders(client, project):
    r = client.get("/api/models")
    assert r.status_code == 200
    body = r.json()
    ids = [m["id"] for m in body["models"]]
    assert ids == ["production", "run:synth-test:3", f"run:{UPSTREAM_RUN}:7", "export:export"]
    production = body["models"][0]
    assert (production["run_id"], production["step"], production["checkpoint"]) == ("synth-test", 3, project["bundle"])
    assert body["limits"] == {"max_text_chars": 60, "max_batch": 2}
    assert body["defaults"]["sdp_ratio"] == 0.2


def test_a_model_is_loaded_once_and_reused(client):
    r = client.get("/api/models/run:synth-test:3")
    assert r.status_code == 200
    info = r.json()
    assert "en_m1" in info["speakers"] and {"en", "zh", "ja", "de"} <= set(info["languages"])
    assert info["sample_rate"] == 22050 and info["step"] == 3 and info["kind"] == "checkpoint"
    models = client.app.state.models
    assert models.voice("run:synth-test:3") is models.voice("run:synth-test:3")
    # production points at the same checkpoint: cached under what it points to, not loaded again
    loaded = len(models.loaded())
    assert models.voice("production").source == models.reference("production")
    assert len([ref for ref in models.loaded() if "synth-test/step_00000003" in ref]) >= 1
    assert client.get("/api/health").json()["loaded"] == models.loaded() and len(models.loaded()) >= loaded


def test_synthesize_returns_a_wav_that_follows_the_knobs(client):
    times = []
    for length_scale in (1.0, 2.0):
        started = time.perf_counter()
        r = client.post("/api/synthesize", json={"model": "export:export", **SENTENCE, **QUIET,
                                                 "length_scale": length_scale, "seed": 1})
        times.append(time.perf_counter() - started)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "audio/wav" and float(r.headers["X-Audio-Seconds"]) > 0
        wav, sr = _wav(r.content)
        assert sr == 22050 and wav.ndim == 1 and len(wav) > 0
        if length_scale == 1.0:
            short = len(wav)
    assert len(wav) > 1.5 * short  # twice the speaking time
    print(f"POST /api/synthesize export: first {times[0]:.3f} s, warm {times[1]:.3f} s")


def test_production_sounds_like_the_checkpoint_it_points_to(client):
    a = client.post("/api/synthesize", json={"model": "production", **SENTENCE, "seed": 5})
    b = client.post("/api/synthesize", json={"model": "run:synth-test:3", **SENTENCE, "seed": 5})
    assert a.status_code == b.status_code == 200 and a.content == b.content


def test_batch_returns_one_wav_per_sentence(client):
    r = client.post("/api/batch", json={"model": "run:synth-test:3", "seed": 3, "items": [
        SENTENCE, {"text": "你吃饭了吗？", "language": "zh", "speaker": "zh_f1"}]})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    import base64

    assert [i["index"] for i in items] == [0, 1]
    for item in items:
        wav, sr = _wav(base64.b64decode(item["wav_base64"]))
        assert sr == 22050 and len(wav) / sr == pytest.approx(item["audio_seconds"], abs=1e-3)


def test_ab_speaks_the_same_sentence_with_both_models_and_one_seed(client):
    import base64

    r = client.post("/api/ab", json={"model_a": "run:synth-test:3", "model_b": "export:export", **SENTENCE})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["seed"] == 1234 and body["a"]["model"] == "run:synth-test:3" and body["b"]["model"] == "export:export"
    a, b = (_wav(base64.b64decode(body[s]["wav_base64"]))[0] for s in ("a", "b"))
    assert len(a) > 0 and len(b) > 0
    # the export is that checkpoint's: same weights, same seed, same audio (to 16-bit rounding)
    assert a.shape == b.shape and np.abs(a - b).max() <= 2 / 32768


def test_eval_shows_every_numeric_headline_key_and_the_samples(client, project):
    r = client.get("/api/eval")
    assert r.status_code == 200
    body = r.json()
    assert body["metrics"] == {"mcd_db": 9.5, "f0_rmse_cents": 120.0, "vuv_error": 0.2, "length_ratio": 1.1,
                               "mel_l1": 0.9, "mos": 3.25, "utterances": 2}
    assert body["model"]["checkpoint"] == project["bundle"]
    assert [s["id"] for s in body["samples"]] == ["demo_en_m1_1", "demo_zh_2"]
    for url in (body["samples"][0]["reference"], body["samples"][1]["synthesis"]):
        wav = client.get(url)
        assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav" and _wav(wav.content)[1] == 22050
    assert client.get("/api/eval", params={"model": "production"}).status_code == 200  # the judged checkpoint


def test_eval_plays_waveglow_copy_synthesis_next_to_the_voice_when_it_was_evaluated(client):
    body = client.get("/api/eval").json()
    assert body["copy_synthesis"] == {"vocoder": {"run_id": "waveglow-abc", "step": 4},
                                      "metrics": {"count": 2, "mcd_db": 4.5, "mos": 3.5}}
    first, second = body["samples"]
    assert first["copy_synthesis"] == "/api/eval/samples/demo_en_m1_1.wg.wav" and "copy_synthesis" not in second
    wav = client.get(first["copy_synthesis"])
    assert wav.status_code == 200 and _wav(wav.content)[1] == 22050
    assert "WaveGlow copy-synthesis" in client.get("/").text  # the page's column for it


def test_the_page_and_the_openapi_docs_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<audio id="player"' in page.text and "/api/synthesize" in page.text and "/api/ab" in page.text
    assert client.get("/docs").status_code == 200
    routes = set(client.get("/openapi.json").json()["paths"])
    assert routes == {"/api/health", "/api/models", "/api/models/{model_id}", "/api/synthesize", "/api/batch",
                      "/api/ab", "/api/eval", "/api/eval/samples/{name}", "/api/vc/models", "/api/convert",
                      "/voice", "/models/info"}
    assert 'id="vc-section"' in page.text and "/api/convert" in page.text


SPEECH = Path(__file__).resolve().parents[2] / "data" / "speech"


def _b64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


CONVERT = {"source_base64": _b64(SPEECH / "en_ljspeech/wavs/LJ001-0002.wav"), "source_name": "lj.wav",
           "reference_base64": _b64(SPEECH / "zh_aishell3/wavs/SSB00050112.wav"), "reference_name": "ref.wav"}


def test_vc_models_list_the_vc_stages_model_and_convert_returns_24k_audio_as_long_as_the_source(client):
    listing = client.get("/api/vc/models").json()
    assert [m["id"] for m in listing["models"]] == ["vc"] and "vc-random step 3" in listing["models"][0]["label"]
    r = client.post("/api/convert", json=CONVERT)
    assert r.status_code == 200, r.text
    wav, sr = sf.read(io.BytesIO(r.content))
    src = sf.info(str(SPEECH / "en_ljspeech/wavs/LJ001-0002.wav"))
    assert sr == 24000 and abs(len(wav) / sr - src.duration) < 0.01
    report = json.loads(r.headers["X-Conversion-Report"])
    assert report["model"] == "vc" and report["pitch"] == "match" and report["reference"]["speech_seconds"] >= 1
    assert any(k.startswith("vc:") for k in client.get("/api/health").json()["loaded"])  # kept for the next call


def test_an_exported_hifivc_is_a_conversion_model_of_the_app(train_corpus, tmp_path):
    from tasks.inference.convert import export_hifivc, load_converter

    m = app_project(train_corpus, tmp_path, with_eval=False)
    export_hifivc(load_converter(m["vc"]), tmp_path / "export")
    with TestClient(create_app(m["params"])) as c:
        assert [x["id"] for x in c.get("/api/vc/models").json()["models"]] == ["vc", "export:export"]
        r = c.post("/api/convert", json={**CONVERT, "model": "export:export"})
        assert r.status_code == 200 and sf.read(io.BytesIO(r.content))[1] == 24000


LONG = "Go " * 21 + "on"  # 65 characters; the project's limit is 60
BAD = [  # (method, path, json body or query, status, words the reason must contain)
    ("post", "/api/synthesize", {"model": "run:nobody:1", **SENTENCE}, 404, "unknown model 'run:nobody:1'"),
    ("post", "/api/synthesize", {"model": "../../etc/passwd", **SENTENCE}, 404, "choose an id from GET /api/models"),
    ("post", "/api/synthesize", {"model": "export:/tmp", **SENTENCE}, 404, "unknown model"),
    ("post", "/api/synthesize", {**SENTENCE, "text": LONG}, 422, "65 characters, over the limit of 60"),
    ("post", "/api/synthesize", {**SENTENCE, "text": "   "}, 422, "text: empty"),
    ("post", "/api/synthesize", {**SENTENCE, "speaker": "nobody"}, 422, "unknown speaker 'nobody'"),
    ("post", "/api/synthesize", {**SENTENCE, "language": "fr"}, 422, "unknown language 'fr'"),
    ("post", "/api/synthesize", {**SENTENCE, "sdp_ratio": 1.5}, 422, "less than or equal to 1"),
    ("post", "/api/synthesize", {**SENTENCE, "length_scale": 0}, 422, "greater than 0"),
    ("post", "/api/synthesize", {**SENTENCE, "noise_scale": -1}, 422, "greater than or equal to 0"),
    ("post", "/api/synthesize", {**SENTENCE, "volume": 3}, 422, "Extra inputs are not permitted"),
    ("post", "/api/synthesize", {"language": "en", "speaker": "en_m1"}, 422, "Field required"),
    ("post", "/api/batch", {"items": [SENTENCE] * 3}, 422, "3 sentences, over the limit of 2"),
    ("post", "/api/batch", {"items": []}, 422, "at least 1 item"),
    ("post", "/api/batch", {"items": [SENTENCE, {**SENTENCE, "speaker": "x"}]}, 422, "items.1: unknown speaker"),
    ("post", "/api/ab", {"model_a": "production", "model_b": "run:x:1", **SENTENCE}, 404, "model_b: unknown model"),
    ("post", "/api/ab", {"model_a": "production", **SENTENCE}, 422, "Field required"),
    ("post", "/api/synthesize", {**SENTENCE, "model": f"run:{UPSTREAM_RUN}:7", "speaker": "alice"}, 422,
     "gives 384-wide features, the model was trained on 1024-wide ones"),
    ("get", "/api/models/nothing", None, 404, "unknown model 'nothing'"),
    ("get", "/api/eval", {"model": f"run:{UPSTREAM_RUN}:7"}, 404, "eval/metrics.json judged synth-test step 3"),
    ("get", "/api/eval", {"model": "run:x:1"}, 404, "unknown model"),
    ("get", "/api/eval/samples/nothing.wav", None, 404, "no eval sample 'nothing.wav'"),
    ("get", "/api/eval/samples/..%2Fmetrics.json", None, 404, ""),
    ("post", "/api/convert", {**CONVERT, "model": "../train/vc.json"}, 404, "unknown conversion model"),
    ("post", "/api/convert", {**CONVERT, "reference_base64": "not base64!"}, 422, "reference (ref.wav)"),
    ("post", "/api/convert", {**CONVERT, "source_name": "lj.txt"}, 422, "source (lj.txt): unsupported format"),
    ("post", "/api/convert", {**CONVERT, "reference_base64": _b64(SPEECH / "zh_aishell3/wavs/SSB00090181.wav")
                              [:20000]}, 422, "reference (ref.wav)"),
    ("post", "/api/convert", {**CONVERT, "pitch": "follow"}, 422, "normalises F0 per utterance"),
    ("post", "/api/convert", {**CONVERT, "pitch": "up"}, 422, "pitch: one of"),
    ("post", "/api/convert", {"source_base64": CONVERT["source_base64"]}, 422, "Field required"),
]


@pytest.mark.parametrize("method,path,body,status,reason", BAD, ids=[f"{b[1]} {b[3]} {b[4][:30]}" for b in BAD])
def test_bad_input_gets_a_4xx_that_says_why(client, method, path, body, status, reason):
    if method == "post":
        r = client.post(path, json=body)
    else:
        r = client.get(path, params=body)
    assert r.status_code == status, r.text
    assert reason in json.dumps(r.json()["detail"]) if reason else "metrics" not in r.text


def test_without_a_production_pointer_or_an_evaluation_the_reason_is_given(train_corpus, tmp_path):
    m = app_project(train_corpus, tmp_path, with_eval=False)
    (tmp_path / "storage" / "models" / "demo" / "production.json").unlink()
    with TestClient(create_app(m["params"])) as c:
        assert [x["id"] for x in c.get("/api/models").json()["models"]][0] != "production"
        r = c.post("/api/synthesize", json=SENTENCE)  # the default model is production
        assert r.status_code == 404 and "no production model: models/demo/production.json" in r.json()["detail"]
        r = c.get("/api/eval")
        assert r.status_code == 404 and "eval/metrics.json does not exist" in r.json()["detail"]
