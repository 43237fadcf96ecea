"""tasks/inference/inputs.py: upstream 2.3's request modes, parsed without a model (mix, auto, `|`
utterances and their skip flags, tts_split's pieces and pauses) and the bad input each refuses;
then `vitsflow inputs` / `vitsflow split` on the demo's params (MiniLM BERT, real frontends).
Agreement with upstream's own output: tests/tasks/inference/test_inputs_upstream.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.inference.inputs import (SynthError, frontend_from_params, parse_auto, parse_mix, parse_single,
                                    split_by_language, split_text)

REPO = Path(__file__).resolve().parents[3]
runner = CliRunner()


def _shape(utts):
    return [(u.speaker, u.segments, u.skip_start, u.skip_end) for u in utts]


def test_one_language_text_is_one_utterance_per_bar_flagged_as_generate_audio_flags_them():
    assert _shape(parse_single("你好", "zh")) == [(None, [("你好", "zh")], False, False)]
    assert _shape(parse_single("a|b|c", "en")) == [(None, [("a", "en")], False, True), (None, [("b", "en")], True, True),
                                                    (None, [("c", "en")], True, False)]
    with pytest.raises(SynthError, match=r"utterance 2 of 3 \(between `\|`\) is empty"):
        parse_single("a| |c", "en")


def test_mix_text_follows_process_mix_a_bar_starts_an_utterance_the_next_segment_continues_it():
    utts = parse_mix("[a]<zh>你好|再见<jp>こんにちは<en>Hi|Bye[b]<JP>はい|")
    assert _shape(utts) == [
        ("a", [("你好", "zh")], False, True),
        ("a", [("再见", "zh"), ("こんにちは", "ja"), ("Hi", "en")], True, True),
        ("a", [("Bye", "en")], True, False),
        ("b", [("はい", "ja")], False, False)]  # each [speaker] block is flagged on its own
    # a segment of only `|` is dropped by process_mix, not a break: the next segment continues
    assert _shape(parse_mix("[a]<zh>你好<en>|<en>hi")) == [("a", [("你好", "zh"), ("hi", "en")], False, False)]


@pytest.mark.parametrize("text, reason", [
    ("<zh>你好", "no \\[speaker\\] tag found"),
    ("hello [a]<zh>你好", "'hello' comes before the first \\[speaker\\] tag"),
    ("[a]你好", "\\[a\\] \\(block 1\\): no <lang> segment"),
    ("[a]你好<zh>再见", "'你好' has no <lang> tag before it"),
    ("[a]<fr>bonjour", "unknown language tag <fr>; this model takes <en>, <ja>, <jp>, <zh>"),
    ("[a]<zh>你好[b]<en>  <zh>hi", "\\[b\\] \\(block 2\\): the <en> segment is empty"),
    ("[x]<zh>你好", "unknown speaker 'x'; this model knows \\['a', 'b'\\]"),
])
def test_bad_mix_text_is_refused_naming_the_part_and_the_reason(text, reason):
    with pytest.raises(SynthError, match=reason):
        parse_mix(text, {"zh", "ja", "en"}, {"a", "b"})


def test_a_mix_block_of_only_bars_is_refused_as_nothing_to_say():
    for text in ("[a]<zh>|", "[a]<zh> | <en>||"):
        with pytest.raises(SynthError, match=r"\[a\] \(block 1\): nothing to say \(its segments hold only `\|`\)"):
            parse_mix(text)


def test_mix_tags_of_languages_the_model_lacks_are_refused():
    with pytest.raises(SynthError, match="unknown language tag <jp>; this model takes <en>, <zh>"):
        parse_mix("[a]<zh>你好<jp>はい", {"zh", "en"})


def test_auto_splits_each_part_by_language_as_upstreams_split_by_language():
    assert split_by_language("你好，世界。Hello there, my friend.こんにちは、元気ですか？", ["zh", "ja", "en"]) == [
        ("你好，世界。", "zh"), ("Hello there, my friend.", "en"), ("こんにちは、元気ですか？", "ja")]
    # the Latin/CJK split runs only when English and Chinese or Japanese are both targets
    assert split_by_language("我喜欢Python语言", ["zh", "en"]) == [("我喜欢", "zh"), ("Python", "en"), ("语言", "zh")]
    utts = parse_auto("你好。Hello.|再见", ["zh", "ja", "en"])
    assert _shape(utts) == [(None, [("你好。", "zh"), ("Hello.", "en")], False, True), (None, [("再见", "zh")], True, False)]


def test_auto_takes_ideographic_marks_fullwidth_latin_and_halfwidth_kana_as_its_own_languages():
    [u] = parse_auto("時々雨が降る。〆切はＡＩの時代ｱ", ["zh", "ja", "en"])
    assert "".join(t for t, _ in u.segments) == "時々雨が降る。〆切はＡＩの時代ｱ"


def test_auto_refuses_text_in_a_script_none_of_the_models_languages_uses():
    with pytest.raises(SynthError, match="'안녕하세요' is written in the Hangul script.*\\(zh, en\\)"):
        parse_auto("안녕하세요 hello", ["zh", "en"])
    with pytest.raises(SynthError, match="part 1 \\('\\.\\.\\.'\\) has nothing to speak"):
        parse_auto("...", ["zh", "en"])


def test_split_text_is_tts_split_with_its_pauses_in_whole_samples():
    text = "第一句。第二句！\n\n\n“引号。”然后呢？|\nFirst one? Second...... third\n"
    pieces, pauses = split_text(text, 0.3, 1.0)
    assert pieces == ["第一句。", "第二句！", "“引号。”", "然后呢？", "First one?", " Second......", " third"]
    s, extra = int(44100 * 0.3) / 44100, int(44100 * 0.7) / 44100
    assert pauses == [s, s + extra, s, s + extra, s, s, s + extra]  # three paragraphs
    pieces, pauses = split_text("一。二。", 0.25, 0.1, sample_rate=22050)  # paragraph pause <= sentence pause
    assert pauses == [int(22050 * 0.25) / 22050] * 2
    with pytest.raises(SynthError, match="nothing to say"):
        split_text("\n \n|", 0.2, 1.0)
    with pytest.raises(SynthError, match="sentence pause -1: expected 0..5 seconds"):
        split_text("一。", -1, 1.0)


@pytest.fixture(scope="module")
def frontend():
    return frontend_from_params(REPO / "params.yaml")


def test_a_requests_utterances_join_without_their_boundary_pads_and_style_text_blends_bert(frontend):
    [one] = frontend.request("你好。", "zh")
    assert one.phones[:3] == ["_", "_", "_"] and one.phones[-3:] == ["_", "_", "_"]  # blank, pad, blank
    a, b = frontend.request("你好。|再见。", "zh")
    [bye] = frontend.request("再见。", "zh")
    assert a.phones == one.phones[:-2] and b.phones == bye.phones[3:]  # infer's skip_end / skip_start
    np.testing.assert_array_equal(b.tones, bye.tones[3:])
    assert len(a.ids) == len(one.ids) - 2 and a.bert["zh"].shape == (384, len(a.ids))
    assert not a.bert["ja"].any() and not a.bert["en"].any()
    np.testing.assert_array_equal(a.bert["zh"], one.bert["zh"][:, :-2])  # batch mates change nothing
    [styled] = frontend.request("你好。", "zh", style_text="我好快乐！", style_weight=1.0)
    cols = styled.bert["zh"]
    mean = frontend._bert([("s", frontend._style_row("我好快乐！", "zh"))])["s"].mean(axis=1, keepdims=True)
    assert frontend._style_row("我好快乐！", "zh")["word2ph"] == [1] * 7  # [CLS] 5 characters [SEP]
    np.testing.assert_allclose(cols, np.repeat(mean, cols.shape[1], axis=1), atol=2e-3)  # weight 1: the mean
    [half] = frontend.request("你好。", "zh", style_text="我好快乐！", style_weight=0.5)
    np.testing.assert_allclose(half.bert["zh"], 0.5 * one.bert["zh"] + 0.5 * cols, atol=2e-3)
    with pytest.raises(SynthError, match="style weight 1.5: expected 0..1"):
        frontend.request("你好。", "zh", style_text="我好快乐！", style_weight=1.5)
    with pytest.raises(SynthError, match="style text applies to one language"):
        frontend.request("[a]<zh>你好", "mix", style_text="我好快乐！")


def test_inputs_cli_writes_what_infer_takes_and_a_bad_batch_line_fails_alone(tmp_path):
    out = tmp_path / "x.npz"
    r = runner.invoke(app, ["inputs", "--params", str(REPO / "params.yaml"), "--lang", "mix", "--text",
                            "[a]<zh>你好。|再见<en>Hello.[b]<jp>はい。", "--out", str(out)])
    assert r.exit_code == 0, r.output
    d = np.load(out)
    assert d["utt_lengths"].sum() == len(d["phones"]) == len(d["tones"]) == len(d["lang_ids"]) == d["bert"].shape[1]
    assert json.loads(str(d["segments"])) == [[["你好。", "zh"]], [["再见", "zh"], ["Hello.", "en"]], [["はい。", "ja"]]]
    assert json.loads(str(d["speakers"])) == ["a", "a", "b"] and set(d["lang_ids"]) == {0, 1, 2}
    cases = tmp_path / "cases.jsonl"
    cases.write_text("\n".join([json.dumps({"id": "ok", "lang": "en", "text": "Hello there."}),
                                json.dumps({"id": "../evil", "lang": "en", "text": "x"}),
                                json.dumps({"id": "bad", "lang": "mix", "text": "[a]<fr>x"}), "{oops",
                                json.dumps({"id": "st", "lang": "zh", "text": "你好", "style_text": "哈", "style_weight": 2}),
                                json.dumps({"id": "num", "lang": "zh", "text": 5})]),
                     encoding="utf-8")
    r = runner.invoke(app, ["inputs", "--params", str(REPO / "params.yaml"), "--batch", str(cases),
                            "--out", str(tmp_path / "dir")])
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert report["written"] == ["ok"] and [e["line"] for e in report["errors"]] == [2, 3, 4, 5, 6]
    assert "'text': 5 has the wrong type" in report["errors"][4]["error"]
    assert "letters, digits" in report["errors"][0]["error"] and "<fr>" in report["errors"][1]["error"]
    assert "style weight 2.0" in report["errors"][3]["error"]
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["ok.npz"]


def test_split_cli_prints_pieces_and_pauses_and_refuses_a_file_that_is_not_utf8(tmp_path):
    f = tmp_path / "page.txt"
    f.write_text("第一句。第二句！\n\nNext paragraph?", encoding="utf-8")
    r = runner.invoke(app, ["split", "--text-file", str(f), "--sent-pause", "0.2", "--para-pause", "0.5"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"pieces": ["第一句。", "第二句！", "Next paragraph?"],
                                    "pauses": [int(44100 * 0.2) / 44100, int(44100 * 0.2) / 44100 + int(44100 * 0.3) / 44100,
                                               int(44100 * 0.2) / 44100 + int(44100 * 0.3) / 44100]}
    f.write_bytes("你好".encode("gbk"))
    r = runner.invoke(app, ["split", "--text-file", str(f)])
    assert r.exit_code == 2 and "page.txt: not UTF-8 text (byte 0" in r.output
