"""Upstream Bert-VITS2 2.3's HTTP API (server_fastapi.py: GET/POST /voice, GET /models/info) on a real
`vitsflow app` process, driven over HTTP with `requests` as a client written for upstream's server
drives it (random-weight models of the tiny corpus: tests/tasks/orchestration/test_app.py)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import requests
import soundfile as sf

from tests.helpers import running_app
from tests.tasks.orchestration.test_app import app_project

pytestmark = pytest.mark.slow  # a server process


@pytest.fixture(scope="module")
def url(train_corpus, tmp_path_factory):
    work = tmp_path_factory.mktemp("upstream_api")
    project = app_project(train_corpus, work, with_eval=False)
    with running_app(project["params"], work) as u:
        yield u


def _audio(r: requests.Response):
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav", r.text[:300]
    wav, sr = sf.read(io.BytesIO(r.content), dtype="float32")
    assert sr == 22050 and wav.ndim == 1 and abs(wav).max() > 0
    return wav


def test_models_info_lists_production_and_the_exports_as_upstream_lists_its_models(url):
    info = requests.get(f"{url}/models/info", timeout=60).json()
    listed = requests.get(f"{url}/api/models", timeout=60).json()["models"]
    expected = ["production"] + [m["id"] for m in listed if m["kind"] == "export"]
    assert list(info) == [str(i) for i in range(len(expected))] and [m["id"] for m in info.values()] == expected
    first = info["0"]
    assert {"config_path", "model_path", "device", "language", "spk2id", "id2spk", "version"} <= set(first)
    assert first["language"] == "ZH" and first["version"] == "2.3"
    assert first["id2spk"][str(first["spk2id"]["en_m1"])] == "en_m1"


QUIET = {"model_id": 0, "noise": 0, "noisew": 0, "sdp_ratio": 0}


def _voice(url, method="get", data=None, **params):
    if method == "post":
        return _audio(requests.post(f"{url}/voice", params=params, data=data, timeout=120))
    return _audio(requests.get(f"{url}/voice", params=params, timeout=120))


def test_voice_speaks_each_language_mode_over_get_and_post(url):
    base = {**QUIET, "speaker_name": "en_m1"}
    en = _voice(url, **base, text="Where are you going?", language="EN")
    by_id = requests.get(f"{url}/models/info", timeout=60).json()["0"]["spk2id"]["en_m1"]
    same = _voice(url, **{**base, "speaker_name": None}, speaker_id=by_id, text="Where are you going?", language="en")
    assert np.array_equal(same, en)  # speaker_id names the same speaker; zero noise; `en` as `EN`
    posted = _voice(url, "post", {"text": "Where are you going?"}, **base, language="EN")
    assert np.array_equal(posted, en)  # POST's form text is GET's query text
    _voice(url, **base, text="你好。", language="ZH")
    _voice(url, **base, text="お元気ですか？", language="JP")
    _voice(url, **base, text="你好。Where are you going?", language="auto")
    mix = _voice(url, "post", {"text": "[en_m1]<en>Hello there.<zh>你好。|[zh_f1]<zh>再见。"}, **base, language="mix")
    bye = _voice(url, **{**base, "speaker_name": "zh_f1"}, text="再见。", language="ZH")
    assert len(mix) > len(bye) and np.allclose(mix[-len(bye):], bye, atol=1e-4)  # its own block and speaker
    styled = _voice(url, "post", {"text": "Where are you going?", "style_text": "I am so happy!"}, **base,
                    language="EN", style_weight=1.0)
    assert not np.array_equal(styled, en)  # the form's style text reached the BERT features
    split = _voice(url, **base, text="Where are you going? See you soon?", language="EN", auto_split="true")
    gap = int(0.2 * 22050)  # upstream's 0.2 s after each sentence
    assert np.array_equal(split[:len(en)], en) and not split[len(en):len(en) + gap].any()
    assert not split[-gap:].any() and len(split) > len(en) + 2 * gap


def test_voice_answers_upstreams_status_codes_and_a_clear_4xx_otherwise(url):
    def status(params, method="get", **kw):
        r = getattr(requests, method)(f"{url}/voice", params={"text": "Hello.", "model_id": 0, **params},
                                      timeout=120, **kw)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
        return r.json()["status"], r.json()["detail"]

    assert status({"model_id": 99, "speaker_name": "en_m1"})[0] == 10
    assert status({})[0] == 11
    assert status({"speaker_id": 999})[0] == 12
    code, detail = status({"speaker_name": "nobody"})
    assert code == 13 and "nobody" in detail
    assert status({"speaker_name": "en_m1", "language": "mix", "auto_translate": "true"})[0] == 20
    for params, reason in (({"language": "FR"}, "unknown language 'FR'"),
                           ({"language": "mix", "text": "[nobody]<en>Hello."}, "unknown speaker 'nobody'"),
                           ({"language": "mix", "text": "[en_m1]<fr>Bonjour."}, "unknown language tag <fr>"),
                           ({"language": "EN", "auto_translate": "true"}, "online service"),
                           ({"language": "EN", "text": "x" * 61}, "over the limit of 60")):
        r = requests.get(f"{url}/voice", params={"model_id": 0, "speaker_name": "en_m1", "text": "Hello.", **params},
                         timeout=120)
        assert r.status_code == 422 and reason in r.json()["detail"], r.text
    r = requests.get(f"{url}/voice", params={"model_id": 0, "speaker_name": "en_m1", "text": "Hello.",
                                             "style_weight": 2}, timeout=60)
    assert r.status_code == 422 and "style_weight" in r.text
