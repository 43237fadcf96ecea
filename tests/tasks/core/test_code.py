"""Cache keys hash the code that computes the results: an edit to it recomputes them."""
import shutil

import pytest

from tasks.core import code
from tasks.core.cache import Entry, ResultCache
from tasks.core.config import load_params
from tasks.prep.ingest import plan_ingest
from tasks.prep.spec import plan_spec
from tests.helpers import ljspeech_subset, write_params


@pytest.fixture()
def code_copy(tmp_path, monkeypatch):
    """A copy of tasks/ and model/ that the code hashes read (as after editing a checkout)."""
    for name in ("tasks", "model"):
        shutil.copytree(code.ROOT / name, tmp_path / "code" / name, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(code, "ROOT", tmp_path / "code")

    def edit(rel: str, old: str, new: str) -> None:
        path = tmp_path / "code" / rel
        text = path.read_text(encoding="utf-8")
        assert old in text
        path.write_text(text.replace(old, new, 1), encoding="utf-8")
        code.code_files.cache_clear()
        code.code_hash.cache_clear()
        code._named_modules.cache_clear()

    code.code_files.cache_clear()
    code.code_hash.cache_clear()
    code._named_modules.cache_clear()
    yield edit
    code.code_files.cache_clear()
    code.code_hash.cache_clear()
    code._named_modules.cache_clear()


def test_editing_the_magnitude_epsilon_of_the_stft_recomputes_every_spectrogram_and_nothing_else(
        code_copy, tmp_path, real_speech):
    params_path = write_params(tmp_path, [{"name": "lj", "language": "en", "path": "en", "format": "ljspeech",
                                           "speaker": "lj"}])
    ljspeech_subset(real_speech, tmp_path / "en", 2)
    params = load_params(params_path)
    rows = [{"id": f"u{i}", "sha256": f"{i:064x}"} for i in range(3)]
    cache = ResultCache(tmp_path / "spec.sqlite")
    cache.put_many((item.key, Entry({"frames": 1}, b"")) for item in plan_spec(rows, params))
    ingest_keys = [i.key for i in plan_ingest(params, tmp_path).items]
    assert cache.missing(i.key for i in plan_spec(rows, params)) == set()  # unchanged code: all cached

    code_copy("model/mel_processing.py", ".add_(1e-6)", ".add_(1e-9)")  # the epsilon under the magnitude's sqrt
    after = [i.key for i in plan_spec(rows, params)]
    assert cache.missing(after) == set(after)  # every spectrogram is computed again
    assert [i.key for i in plan_ingest(params, tmp_path).items] == ingest_keys  # ingest is not

    code_copy("tasks/prep/audio.py", '"""Audio decoding', '"""Audio  decoding')  # any edit counts
    assert [i.key for i in plan_ingest(params, tmp_path).items] != ingest_keys
    assert [i.key for i in plan_spec(rows, params)] == after


def test_a_frontend_edit_rekeys_the_text_of_its_language_only(code_copy):
    from tasks.prep.text import plan_text
    from tests.tasks.prep.test_text import REPO

    params = load_params(REPO / "params.yaml")
    rows = [{"language": "ja", "text": "こんにちは。"}, {"language": "en", "text": "Hello."}]
    before = [i.key for i in plan_text(rows, params, REPO)]
    code_copy("tasks/frontends/ja.py", "def handle_long(", "def handle_long(  ")
    after = [i.key for i in plan_text(rows, params, REPO)]
    assert after[0] != before[0] and after[1] == before[1]
