"""`vitsflow synth` and `vitsflow convert` on a random-weight model of the tiny corpus
(tests/tasks/inference/test_synth.py builds it as a checkpoint bundle and an export folder)."""
from __future__ import annotations

import json

import pytest
import soundfile as sf
from typer.testing import CliRunner

from flows.cli import app
from tests.tasks.inference.test_synth import build_models

runner = CliRunner()


@pytest.fixture(scope="module")
def models(train_corpus, tmp_path_factory):
    return build_models(train_corpus, tmp_path_factory.mktemp("synth_cli"))


@pytest.mark.parametrize("command", ["synth", "convert"])
def test_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output and "--model" in result.output


def test_synth_writes_a_readable_wav(models, tmp_path):
    out = tmp_path / "x.wav"
    result = runner.invoke(app, ["synth", "--model", models["export"], "--text", "お元気ですか？", "--lang", "ja",
                                 "--speaker", "ja_f1", "--out", str(out), "--seed", "1", "--length-scale", "1.2"])
    assert result.exit_code == 0, result.output
    wav, sr = sf.read(out, dtype="float32")
    assert sr == 22050 and wav.ndim == 1 and len(wav) > 0 and abs(wav).max() > 0
    assert json.loads(result.stdout)["path"] == str(out)
    assert [p.name for p in tmp_path.iterdir()] == ["x.wav"]  # no temporary files left


def test_synth_batch(models, tmp_path):
    batch = tmp_path / "lines.txt"
    batch.write_text("# speaker|lang|text, or plain text with --lang/--speaker\nzh_f1|zh|你好。\n\nGood morning.\n",
                     encoding="utf-8")
    out_dir = tmp_path / "out"
    result = runner.invoke(app, ["synth", "--model", models["bundle"], "--params", models["params"],
                                 "--batch", str(batch), "--lang", "en", "--speaker", "en_f1", "--out-dir", str(out_dir)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out_dir.iterdir()) == ["0001.wav", "0002.wav"]
    files = json.loads(result.stdout)["files"]
    assert [(f["speaker"], f["lang"]) for f in files] == [("zh_f1", "zh"), ("en_f1", "en")]
    assert all(sf.info(str(out_dir / name)).samplerate == 22050 for name in ("0001.wav", "0002.wav"))


def test_synth_errors(models, tmp_path):
    out = tmp_path / "x.wav"
    result = runner.invoke(app, ["synth", "--model", models["export"], "--text", "Hello.", "--lang", "en",
                                 "--speaker", "nobody", "--out", str(out)])
    assert result.exit_code == 2 and "unknown speaker 'nobody'" in result.output and "en_m1" in result.output
    assert not out.exists()
    result = runner.invoke(app, ["synth", "--model", str(tmp_path / "missing"), "--text", "Hello.", "--lang", "en",
                                 "--speaker", "en_m1", "--out", str(out)])
    assert result.exit_code == 2 and "no such model" in result.output
    result = runner.invoke(app, ["synth", "--model", models["export"], "--text", "Hello."])
    assert result.exit_code == 2 and "--lang" in result.output


def test_convert(models, tmp_path):
    src, out = tmp_path / "a.wav", tmp_path / "b.wav"
    result = runner.invoke(app, ["synth", "--model", models["export"], "--text", "Where are you going?", "--lang",
                                 "en", "--speaker", "en_m1", "--out", str(src), "--seed", "2"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["convert", "--model", models["run"], "--params", models["params"], "--in", str(src),
                                 "--from", "en_m1", "--to", "de_f1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    a, b = sf.read(src)[0], sf.read(out)[0]
    assert len(b) == (len(a) // 256) * 256
    result = runner.invoke(app, ["convert", "--model", models["export"], "--in", str(src), "--from", "en_m1",
                                 "--to", "de_f1", "--out", str(tmp_path / "c.wav")])
    assert result.exit_code == 2 and "posterior encoder" in result.output and not (tmp_path / "c.wav").exists()


def test_convert_takes_one_of_its_two_ways_and_its_help_lists_both(tmp_path):
    help_text = runner.invoke(app, ["convert", "--help"]).output
    assert all(opt in help_text for opt in ("--source", "--reference", "--pitch", "--in", "--from", "--to"))
    both = runner.invoke(app, ["convert", "--source", "a.wav", "--in", "b.wav", "--out", str(tmp_path / "x.wav")])
    assert both.exit_code == 2 and "give either --source and --reference" in both.output
    half = runner.invoke(app, ["convert", "--source", "a.wav", "--out", str(tmp_path / "x.wav")])
    assert half.exit_code == 2 and "needs both --source and --reference" in half.output
    missing = runner.invoke(app, ["convert", "--source", str(tmp_path / "none.wav"), "--reference",
                                  str(tmp_path / "none.wav"), "--out", str(tmp_path / "x.wav")])
    assert missing.exit_code == 2 and "none.wav" in missing.output and not (tmp_path / "x.wav").exists()


def test_synth_takes_mix_auto_style_text_and_a_split_text_file(models, tmp_path):
    page = tmp_path / "page.txt"
    page.write_text("你好。今天天气很好！\n\n我们走吧。", encoding="utf-8")
    runs = {"mix": ["--lang", "mix", "--text", "[zh_f1]<zh>你好。<en>Hello.|[en_m1]<en>Bye."],
            "auto": ["--lang", "auto", "--speaker", "zh_f1", "--text", "你好。Hello there."],
            "style": ["--lang", "zh", "--speaker", "zh_f1", "--text", "你好。", "--style-text", "我好快乐！",
                      "--style-weight", "0.5"],
            "split": ["--lang", "zh", "--speaker", "zh_f1", "--text-file", str(page), "--split", "--sent-pause", "0.3"]}
    for name, args in runs.items():
        out = tmp_path / f"{name}.wav"
        result = runner.invoke(app, ["synth", "--model", models["export"], *args, "--out", str(out), "--seed", "1"])
        assert result.exit_code == 0, (name, result.output)
        assert sf.info(str(out)).frames > 0
    assert json.loads(result.stdout)["pieces"] == 3
    page.write_bytes("你好".encode("gbk"))
    result = runner.invoke(app, ["synth", "--model", models["export"], "--lang", "zh", "--speaker", "zh_f1",
                                 "--text-file", str(page), "--out", str(tmp_path / "x.wav")])
    assert result.exit_code == 2 and "not UTF-8 text" in result.output


def test_a_bad_batch_line_fails_alone_with_its_line_number(models, tmp_path):
    batch = tmp_path / "lines.txt"
    batch.write_text("\n".join(["zh_f1|zh|你好。", "nobody|en|Hello.", '{"text": "[zh_f1]<fr>x", "lang": "mix"}',
                                '{"text": "我们走吧。", "lang": "zh", "speaker": "zh_f1", "split": true}']),
                     encoding="utf-8")
    out_dir = tmp_path / "out"
    result = runner.invoke(app, ["synth", "--model", models["export"], "--batch", str(batch), "--out-dir", str(out_dir)])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert [e["line"] for e in report["errors"]] == [2, 3]
    assert "unknown speaker 'nobody'" in report["errors"][0]["error"] and "<fr>" in report["errors"][1]["error"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["0001.wav", "0004.wav"]
