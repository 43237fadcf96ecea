"""The demo corpus, built with the real espeak-ng from two sentences per language."""
import csv
import hashlib
import io
import json
from pathlib import Path

import pytest
import soundfile as sf

from tasks.prep import demo

SENTENCES = {
    "en": ["Hello there, it is 7 o'clock!", "Is this the train to Leeds?"],
    "zh": ["今天是3月15日，天气很好。", "你吃饭了吗？"],
    "ja": ["今日は2時に駅で会いましょう！", "お元気ですか？"],
    "de": ["Ich habe 3 Äpfel gekauft.", "Wie geht es dir?"],
}


@pytest.fixture(scope="module")
def sentences_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sentences")
    for lang, lines in SENTENCES.items():
        (path / f"{lang}.txt").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def built(sentences_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus")
    return out, demo.make_demo_corpus(sentences_dir, out)


def _entries(root: Path, lang: str) -> list[tuple[str, str, str]]:
    """(audio path relative to the corpus root, speaker, text) from each layout's own file."""
    folder = root / lang
    if lang == "en":  # LJSpeech has no speaker column: one folder per voice, named after it
        entries = []
        for speaker in ("en_m1", "en_f1"):
            with (root / speaker / "metadata.csv").open(encoding="utf-8") as f:
                rows = list(csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE))
            assert all(len(r) == 3 and r[1] == r[2] and r[0].startswith(speaker) for r in rows)
            entries += [(f"{speaker}/wavs/{r[0]}.wav", speaker, r[1]) for r in rows]
        return sorted(entries, key=lambda e: e[0].rsplit("_", 1)[1])  # back in sentence order
    if lang == "ja":
        objs = [json.loads(line) for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
        return [(f"{lang}/{o['audio']}", o["speaker"], o["text"]) for o in objs]
    rows = [line.split("|") for line in (folder / "filelist.list").read_text(encoding="utf-8").splitlines()]
    assert all(len(r) == 4 and r[2] == lang.upper() for r in rows)
    return [(f"{lang}/{r[0]}", r[1], r[3]) for r in rows]


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("lang, suffix, fmt", [("en", ".wav", "WAV"), ("zh", ".flac", "FLAC"),
                                               ("ja", ".ogg", "OGG"), ("de", ".mp3", "MP3")])
def test_every_layout_and_format_is_readable(built, lang, suffix, fmt):
    root, _ = built
    entries = _entries(root, lang)
    # transcripts are the raw sentences (digits, kanji, hanzi), not what espeak-ng was fed
    assert [text for _, _, text in entries] == SENTENCES[lang]
    assert len({speaker for _, speaker, _ in entries}) == 2
    for rel, _, _ in entries:
        path = root / rel
        assert path.suffix == suffix and sf.info(str(path)).format == fmt
        samples, rate = sf.read(str(path))
        assert rate == demo.SAMPLE_RATE and samples.ndim == 1 and len(samples) > rate // 2
        assert abs(samples).max() > 0.05  # speech, not silence


def test_summary(built):
    _, summary = built
    assert summary["utterances"] == 8 and summary["seconds"] > 4
    for lang, entry in summary["languages"].items():
        assert entry["utterances"] == 2 and entry["seconds"] > 0
        assert sorted(entry["speakers"]) == sorted(v.speaker for v in demo.LAYOUTS[lang].voices)


def test_build_is_byte_identical_and_leaves_nothing_stale(built, sentences_dir, tmp_path):
    root, _ = built
    (tmp_path / "en_m1").mkdir()
    (tmp_path / "en_m1" / "stale.wav").write_bytes(b"old")
    demo.make_demo_corpus(sentences_dir, tmp_path)
    assert _hashes(tmp_path) == _hashes(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["de", "en_f1", "en_m1", "ja", "zh"]  # no staging left


def test_pin_ogg_serial_rewrites_serial_and_crc():
    buf = io.BytesIO()
    sf.write(buf, [0.0, 0.1, -0.1] * 2000, demo.SAMPLE_RATE, format="OGG", subtype="VORBIS")
    raw = buf.getvalue()
    original = int.from_bytes(raw[14:18], "little")
    assert demo.pin_ogg_serial(raw, original) == raw  # our CRC is Ogg's CRC
    pinned = demo.pin_ogg_serial(raw, 1234)
    assert int.from_bytes(pinned[14:18], "little") == 1234
    assert len(sf.read(io.BytesIO(pinned))[0]) == 6000  # libogg drops pages whose CRC is wrong


def test_espeak_input_is_kana_and_pinyin():
    ja = demo.plan("ja", ["今日は2時です。"])[0]
    assert ja.text == "今日は2時です。" and ja.spoken == "キョーワニジデス。"
    zh = demo.plan("zh", ["我有3个苹果。"])[0]
    assert zh.spoken == "wo3 you3 san1 ge4 ping2 guo3 ."


def test_bad_voice_and_pipes_are_clear_errors(tmp_path):
    with pytest.raises(RuntimeError, match="not_a_voice"):
        demo.synthesize("hello", demo.Voice("x", "not_a_voice", 50, 170))
    (tmp_path / "en.txt").write_text("a|b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'\\|'"):
        demo.read_sentences(tmp_path / "en.txt")
