"""Mandarin frontend: expected values are worked out from upstream Bert-VITS2 2.3's rules."""
import pytest

from tasks import frontends
from tasks.frontends import zh
from tasks.frontends.symbols import BASE_SYMBOLS, PUNCTUATION

ORDINARY_SENTENCES = [
    "你好,我不是一个老师.",
    "我想买一本书!",
    "他们明天去北京看一看长城吧?",
    "小朋友们都很喜欢这个故事…",
    "'好好学习'-天天向上.",
]


def syllables(text: str) -> list[tuple[str, ...]]:
    """g2p output as (phones..., tone) per character, pads dropped, for readable expectations."""
    phones, tones, word2ph = zh.g2p(text)
    out, i = [], 1
    for n in word2ph[1:-1]:
        out.append((*phones[i:i + n], tones[i]))
        i += n
    return out


# ---------------------------------------------------------------------------------------------
# g2p: exact upstream output
# ---------------------------------------------------------------------------------------------

def test_plain_sentence_matches_upstream_phones_tones_and_word2ph():
    phones, tones, word2ph = zh.g2p("你好,我不是一个老师.")
    assert phones == ["_", "n", "i", "h", "ao", ",", "w", "o", "b", "u", "sh", "ir", "y", "i", "g", "e",
                      "l", "ao", "sh", "ir", ".", "_"]
    # 你好: third-tone sandhi; 不是: bu2 before tone 4; 一个: yi2 before ge4, then 个 is neutral
    assert tones == [0, 2, 2, 3, 3, 0, 3, 3, 2, 2, 4, 4, 2, 2, 5, 5, 3, 3, 1, 1, 0, 0]
    assert word2ph == [1, 2, 2, 1, 2, 2, 2, 2, 2, 2, 2, 1, 1]


@pytest.mark.parametrize("text, expected", [
    ("你好", [("n", "i", 2), ("h", "ao", 3)]),                      # 3-3 -> 2-3
    ("展览馆", [("zh", "an", 2), ("l", "an", 2), ("g", "uan", 3)]),  # 3-3-3, split 展览/馆
    ("一个", [("y", "i", 2), ("g", "e", 5)]),                        # yi2 before tone 4; measure 个 neutral
    ("一天", [("y", "i", 4), ("t", "ian", 1)]),                      # yi4 before other tones
    ("第一", [("d", "i", 4), ("y", "i", 1)]),                        # ordinal keeps yi1
    ("看一看", [("k", "an", 4), ("y", "i", 5), ("k", "an", 4)]),     # verb-一-verb: neutral 一
    ("不是", [("b", "u", 2), ("sh", "ir", 4)]),                      # bu2 before tone 4
    ("不对", [("b", "u", 2), ("d", "ui", 4)]),
    ("不好", [("b", "u", 4), ("h", "ao", 3)]),                       # bu4 otherwise
    ("朋友", [("p", "eng", 2), ("y", "ou", 5)]),                     # neutral-tone word list
    ("桌子", [("zh", "uo", 1), ("z", "i0", 5)]),                     # noun suffix 子
    ("我们", [("w", "o", 3), ("m", "en", 5)]),                       # pronoun suffix 们
])
def test_tone_sandhi_follows_upstream_rules(text, expected):
    assert syllables(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("爱", [("AA", "ai", 4)]),         # zero-initial a/e/o syllables get AA/EE/OO
    ("而", [("EE", "er", 2)]),
    ("欧", [("OO", "ou", 1)]),
    ("鱼", [("y", "v", 2)]),           # ü is v; zero-initial v -> yu
    ("元", [("y", "van", 2)]),
    ("女", [("n", "v", 3)]),
    ("学", [("x", "ve", 2)]),
    ("贵", [("g", "ui", 4)]),          # uei/iou/uen abbreviated after an initial
    ("六", [("l", "iu", 4)]),
    ("论", [("l", "un", 4)]),
    ("四", [("s", "i0", 4)]),          # apical vowels after z/c/s and zh/ch/sh/r
    ("是", [("sh", "ir", 4)]),
])
def test_pinyin_maps_to_opencpop_strict_phones(text, expected):
    assert syllables(text) == expected


def test_punctuation_is_its_own_phone_with_tone_zero():
    assert syllables("好!真的?") == [("h", "ao", 3), ("!", 0), ("zh", "en", 1), ("d", "e", 5), ("?", 0)]
    text = "对,是.好…'行'-吗!"
    punct = [s for s in syllables(text) if s[0] in PUNCTUATION]
    assert punct == [(c, 0) for c in text if c in PUNCTUATION]


def test_pads_wrap_the_sequence_with_tone_zero_and_one_slot_each():
    phones, tones, word2ph = zh.g2p("好")
    assert (phones[0], phones[-1], tones[0], tones[-1], word2ph[0], word2ph[-1]) == ("_", "_", 0, 0, 1, 1)
    assert zh.g2p("") == (["_", "_"], [0, 0], [1, 1])


def test_character_without_a_reading_becomes_unk_instead_of_crashing():
    # 兙 (an old compound unit character) has no pinyin; upstream asserts here
    assert zh.g2p("兙好") == (["_", "UNK", "h", "ao", "_"], [0, 0, 3, 3, 0], [1, 1, 2, 1])


def test_g2p_rejects_text_that_was_not_normalised():
    with pytest.raises(ValueError, match="normalise"):
        zh.g2p("我有3个apple")


@pytest.mark.parametrize("text", ORDINARY_SENTENCES)
def test_output_invariants_hold_for_ordinary_sentences(text, minilm_tokenizer):
    phones, tones, word2ph = zh.g2p(text, minilm_tokenizer)
    assert len(phones) == len(tones) == sum(word2ph)
    assert set(phones) <= set(BASE_SYMBOLS)
    assert all(0 <= t < zh.NUM_TONES for t in tones)
    assert len(word2ph) == len(text) + 2 == len(minilm_tokenizer.tokenize(text)) + 2


def test_registry_exposes_the_zh_frontend(minilm_tokenizer):
    text = frontends.normalize("zh", "你好，世界！")
    assert text == "你好,世界!"
    result = frontends.g2p("zh", text, minilm_tokenizer)
    assert result.phones[:3] == ["_", "n", "i"]
    assert frontends.backend_info("zh") == (6, zh.VERSION)


# ---------------------------------------------------------------------------------------------
# normalize
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("我有3个苹果", "我有三个苹果"),
    ("共12345人", "共一万二千三百四十五人"),
    ("1,234,567元", "一百二十三万四千五百六十七元"),
    ("圆周率约3.14", "圆周率约三点一四"),
    ("零下-5度", "零下负五度"),
    ("3-5个人", "三-五个人"),               # a range keeps its dash (a pause), not a minus
    ("2024年3月5日", "二零二四年三月五日"),
    ("2024-03-05", "二零二四年三月五日"),
    ("2024/3/5", "二零二四年三月五日"),
    ("03月05日", "三月五日"),
    ("增长50%", "增长百分之五十"),
    ("利率3.5%", "利率百分之三点五"),
    ("下降-2%", "下降负百分之二"),
    ("¥100", "一百元"),
    ("￥9.9", "九点九元"),
    ("$5", "五美元"),
    ("100元", "一百元"),
    ("电话13812345678", "电话幺三八幺二三四五六七八"),
    ("010-12345678", "零幺零-幺二三四五六七八"),
    ("编号007", "编号零零七"),
    ("10:30开会", "十点三十分开会"),
    ("2:05", "两点零五分"),
    ("08:00", "八点"),
    ("1/2的人", "二分之一的人"),
    ("２０２４年", "二零二四年"),                # full-width forms
    ("１０：３０，涨了２０％", "十点三十分,涨了百分之二十"),
    ("12345678901234567890", "一二三四五六七八九零一二三四五六七八九零"),  # too long for a quantity
])
def test_normalize_spells_out_numbers(raw, expected):
    assert zh.normalize(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("你好，世界。", "你好,世界."),
    ("真的吗？！", "真的吗?!"),
    ("注意：第一；第二、第三", "注意,第一,第二,第三"),
    ("注意:冒号;分号", "注意,冒号,分号"),          # ASCII forms too (upstream drops them)
    ("等等...", "等等…"),
    ("“引号”‘单引’《书名》（括号）【方括】「直角」", "'引号''单引''书名''括号''方括''直角'"),
    ("破折—波浪～", "破折-波浪-"),
    ("第一行\n第二行", "第一行.第二行"),
    ("嗯，呣", "恩,母"),                             # bare-nasal interjections, as upstream
    ("中 间 的 空 格", "中间的空格"),
])
def test_normalize_maps_punctuation_like_upstream(raw, expected):
    assert zh.normalize(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("我爱Python和C++", "我爱和"),
    ("今天😀很开心🎉", "今天很开心"),
    ("こんにちは世界", "世界"),
    ("OK", ""),
])
def test_normalize_drops_other_scripts_and_g2p_still_works(raw, expected):
    text = zh.normalize(raw)
    assert text == expected
    phones, tones, word2ph = zh.g2p(text)
    assert sum(word2ph) == len(phones) and len(word2ph) == len(text) + 2


@pytest.mark.parametrize("text", ORDINARY_SENTENCES)
def test_normalize_leaves_normalised_text_unchanged(text):
    assert zh.normalize(text) == text


def test_every_aishell3_transcript_normalises_and_converts(real_speech, minilm_tokenizer):
    lines = (real_speech / "zh_aishell3" / "metadata.csv").read_text(encoding="utf-8").splitlines()
    transcripts = [line.split("|", 1)[1] for line in lines if line.strip()]
    assert transcripts
    for raw in transcripts:
        text = zh.normalize(raw)
        assert text, raw
        phones, tones, word2ph = zh.g2p(text, minilm_tokenizer)
        assert len(phones) == len(tones) == sum(word2ph), raw
        assert set(phones) <= set(BASE_SYMBOLS), raw
        assert "UNK" not in phones, raw
        assert len(word2ph) == len(minilm_tokenizer.tokenize(text)) + 2, raw
