"""tasks/evaluation/judges.py: error rates, and the Hugging Face judge options through real transformers
loading and inference on small randomly initialised models saved as local folders (tests/audio_models.py):
plumbing only. What the bundled judges say about real speech: test_bundled_judges.py."""
import numpy as np
import pytest

from tasks.core.config import ConfigError, EvalModelsConfig
from tasks.evaluation.judges import Judges, edit_distance, error_rates, normalise_for_asr
from tests.audio_models import build_audio_models


def test_edit_distance_counts_substitutions_insertions_and_deletions():
    assert edit_distance(list("kitten"), list("sitting")) == 3
    assert edit_distance([], list("abc")) == 3 and edit_distance(list("abc"), list("abc")) == 0


def test_error_rates_ignore_case_and_punctuation_and_count_characters_without_spaces():
    assert error_rates("Hello, World!", "hello world") == {"cer": 0.0, "wer": 0.0}
    rates = error_rates("the cat sat", "the bat sat down")
    assert rates["wer"] == pytest.approx(2 / 3)  # one substitution, one insertion, 3 reference words
    assert rates["cer"] == pytest.approx(5 / 9)  # c->b, +d +o +w +n over "thecatsat"
    assert error_rates("今天天气很好。", "今天天气不好")["cer"] == pytest.approx(1 / 6)
    assert error_rates("!!!", "anything") == {"cer": None, "wer": None}
    assert normalise_for_asr("Ｈｅｌｌｏ\u3000ｗｏｒｌｄ！") == "hello world"  # NFKC: full-width forms


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    paths = build_audio_models(tmp_path_factory.mktemp("audio_models"))
    return Judges(EvalModelsConfig(**paths), tmp_path_factory.mktemp("root"))


def noise(seed: int, n: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32)


def test_random_init_hf_judges_plumbing_gives_every_metric_and_identical_audio_has_similarity_one(judges):
    assert set(judges.metrics) == {"cer", "wer", "mos", "mos_reference", "speaker_similarity"}
    ref, syn = noise(0, 22050), noise(1, 30000)
    row = judges.score(ref, syn, 22050, "Hello there")
    assert isinstance(row["transcript"], str) and row["cer"] >= 0 and row["wer"] >= 0
    assert np.isfinite(row["mos"]) and np.isfinite(row["mos_reference"]) and row["mos"] != row["mos_reference"]
    assert -1 <= row["speaker_similarity"] < 1
    same = judges.score(ref, ref, 22050, "Hello there")
    assert same["speaker_similarity"] == pytest.approx(1.0) and same["mos"] == same["mos_reference"]
    assert judges.score(ref, syn, 22050, "Hello there") == row  # deterministic: eval mode, no sampling


def test_a_mos_model_with_several_outputs_is_refused(tmp_path):
    from transformers import Wav2Vec2ForSequenceClassification

    from tests.audio_models import _config

    paths = build_audio_models(tmp_path)
    Wav2Vec2ForSequenceClassification(_config(num_labels=3)).save_pretrained(paths["mos"])
    with pytest.raises(ValueError, match="one regression output, this model has 3 labels"):
        Judges(EvalModelsConfig(mos=paths["mos"]), tmp_path)


def test_a_missing_model_folder_is_a_config_error_naming_the_param(tmp_path):
    with pytest.raises(ConfigError, match="eval.models.speaker './no-such-model': folder .* does not exist"):
        Judges(EvalModelsConfig(speaker="./no-such-model"), tmp_path)
