"""P7 (issue 27): a page of text through `Voice.synthesize_long` (what `vitsflow synth --split` runs)
against upstream 2.3's per-sentence loop, at upstream's size, in the same process.

Both sides: the same random-init generator of upstream 2.3's published config (192 hidden, 6
layers, 512-channel HiFi-GAN at 44.1 kHz, hop 512; ModelConfig's defaults), loaded once; random-
init BERTs of upstream's own architectures (24 x 1024: chinese-roberta-wwm-ext-large,
deberta-v2-large-japanese-char-wwm) with the real tokenizers; the same text cut the same way
(upstream's tts_split: paragraphs, sentences, pauses); our frontends for G2P on both sides (their
output equals upstream's: tests/tasks/frontends/test_upstream_gold.py); the same torch threads;
zero noise, so both sides speak the same frames.

- upstream: for each sentence, what `tts_split -> process_text -> generate_audio -> infer ->
  get_text` does: G2P, `get_bert_feature` (the tokenizer, one unpadded forward of the masked-LM
  model upstream loads, all 24 layers and its head, hidden_states[-3], the per-token repeat loop),
  intersperse, `net_g.infer`, the pause as zeros.
- vitsflow: the whole page's G2P, then its BERT batched across the sentences by the bert stage's
  shapes (encoder cut above the layer read), then `net_g.infer` per sentence.

Printed: seconds per side, the ratio, real-time factor (seconds of compute per second of audio),
and the first-audio latency (seconds until the first sentence's waveform exists; upstream's web
UI returns the page's audio only when all of it is done, so its latency to first audio is its
total; its loop's first sentence is also printed).

Measured (2026-12-07, 2 threads, 2,005 characters, 26 paragraphs, 95 sentences; seconds):

    run   upstream (generator + text/BERT)   vitsflow (generator + text/BERT)   speedup
    1     102.2 (55.9 + 46.3)                 65.9 (49.6 + 16.4)                 1.55x
    2     100.8 (54.7 + 46.1)                 71.4 (54.4 + 17.0)                 1.41x
    3     115.8 (62.9 + 52.9)                 74.8 (56.0 + 18.8)                 1.55x

(an earlier run beside another job: 187.9 s against 85.7 s, 2.19x, not comparable). First audio
0.6-0.8 s on both sides. Our BERT: zh 4.2 s for 36 sentences, ja 12.6 s for 59 (DeBERTa). The
generator is the same work on both sides and its own spread decides 1.41x against 1.55x. Tried,
no gain on this CPU: cached weight norm, inference_mode, four sentences in one generator batch
(3.8 s against 3.0 s one by one); a token budget of 512 for the ja BERT (same bits) saves 1.6 s.
On 231 characters (14 sentences): 0.77x with the stage's full batch shapes (58 rows for 9
sentences), 1.26x once a short batch runs with its own rows.

    .venv/bin/python benchmarks/bench_inference.py [--chars 2000] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.bench_features import UPSTREAM_BERTS, random_upstream_bert, real_sentences  # noqa: E402
from tasks.frontends.symbols import intersperse  # noqa: E402  (upstream's commons.intersperse)


def page(chars: int) -> str:
    """Alternating Chinese and Japanese paragraphs of real sentences, `chars` characters in all."""
    pools = {code: iter(real_sentences(code, 400)) for code in ("zh", "ja")}
    paras, total, n = [], 0, 0
    while total < chars:
        code = ("zh", "ja")[n % 2]
        para = "".join(next(pools[code]) for _ in range(4))
        paras.append((code, para))
        total += len(para)
        n += 1
    return paras


def build_voice(work: Path, threads: int):
    from model.mel_processing import STFTParams
    from tasks.core.config import ModelConfig, load_params
    from tasks.frontends.symbols import SymbolTable
    from tasks.inference.synth import Voice
    from tasks.training.train import generator

    params = load_params(REPO / "params.yaml")
    langs = {}
    for code, name in UPSTREAM_BERTS.items():
        folder = random_upstream_bert(work, name)
        lang = params.languages[code]
        langs[code] = lang.model_copy(update={"bert": lang.bert.model_copy(update={"model": str(folder)})})
    symbols = SymbolTable()
    torch.manual_seed(0)
    m = ModelConfig(variant="bert-vits2-2.3")
    g = generator(m, symbols, 4, 1024, 2048, 32).eval()
    stft = STFTParams(44100, 2048, 512, 2048, 128)
    torch.set_num_threads(threads)
    return Voice(g, symbols, {f"spk{i}": i for i in range(4)}, langs, {"zh": 1024, "ja": 1024, "en": 1024},
                 m.add_blank, 44100, 512, stft, "checkpoint", "bench", REPO, params.features.bert, "cpu")


KNOBS = dict(sdp_ratio=0.0, noise_scale=0.0, noise_scale_w=0.0, length_scale=1.0)


def upstream_loop(voice, pieces: list[str], langs: list[str], pauses: list[float], models) -> tuple[float, float, float]:
    """(seconds, first sentence's seconds, audio seconds) of upstream's per-sentence loop."""
    from tasks.core.hf import tokenizer_for
    from tasks.prep.text import text_one

    start = time.perf_counter()
    first, audio = None, []
    with torch.no_grad():
        for piece, code, pause in zip(pieces, langs, pauses):
            lang = voice.languages[code]
            row = text_one(piece, code, lang, tokenizer_for(REPO, lang.bert)).meta  # clean_text
            ids, tones, lang_ids = voice.symbols.to_ids(row["phones"], row["tones"], code)
            word2ph = [2 * w for w in row["word2ph"]]
            word2ph[0] += 1
            tokenizer, model = models[code]
            inputs = tokenizer(row["norm_text"], return_tensors="pt")  # get_bert_feature
            res = model(**inputs, output_hidden_states=True)
            res = torch.cat(res["hidden_states"][-3:-2], -1)[0].cpu()
            feats = torch.cat([res[i].repeat(word2ph[i], 1) for i in range(len(word2ph))], dim=0).T
            zeros = torch.zeros(1024, feats.shape[1])
            slots = {"zh": zeros, "ja": zeros, "en": zeros, code: feats}
            x = torch.LongTensor(intersperse(ids))[None]
            o = voice.generator.infer(x, torch.LongTensor([x.shape[1]]), torch.LongTensor([0]),
                                      torch.LongTensor(intersperse(tones))[None],
                                      torch.LongTensor(intersperse(lang_ids))[None], slots["zh"][None],
                                      slots["ja"][None], slots["en"][None], **KNOBS)[0][0, 0].numpy()
            audio += [o, np.zeros(int(round(pause * voice.sample_rate)))]
            if first is None:
                first = time.perf_counter() - start
    return time.perf_counter() - start, first, sum(len(a) for a in audio) / voice.sample_rate


def ours(voice, paras) -> tuple[float, float, float]:
    first = []
    start = time.perf_counter()
    wav = []
    for code, text in paras:  # one request a language (the page's paragraphs of one language)
        w, sr, _ = voice.synthesize_long(text, code, "spk0", 0.2, 1.0,
                                         on_piece=lambda i, _w: first.append(time.perf_counter() - start), **KNOBS)
        wav.append(w)
    return time.perf_counter() - start, first[0], sum(len(w) for w in wav) / voice.sample_rate


def main() -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from tasks.inference.inputs import split_text

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chars", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        voice = build_voice(Path(tmp), args.threads)
        paras = page(args.chars)
        # a language's paragraphs are one request each side (a page in one language is one request;
        # this page alternates two, as a bilingual reader's page would be read in two requests)
        by_lang = {}
        for code, para in paras:
            by_lang.setdefault(code, []).append(para)
        requests = [(code, "\n".join(p)) for code, p in by_lang.items()]
        pieces, langs, pauses = [], [], []
        for code, text in requests:
            p, s = split_text(text, 0.2, 1.0, voice.sample_rate)
            pieces += p
            langs += [code] * len(p)
            pauses += s
        models = {code: (AutoTokenizer.from_pretrained(voice.languages[code].bert.model),
                         AutoModelForMaskedLM.from_pretrained(voice.languages[code].bert.model,
                                                              dtype=torch.float32).eval())
                  for code in by_lang}
        voice.frontend.request("你好。", "zh"), voice.frontend.request("こんにちは。", "ja")  # models loaded, warm
        print(f"page: {sum(len(p) for _, p in paras)} characters, {len(paras)} paragraphs, {len(pieces)} sentences; "
              f"{args.threads} threads; generator {sum(p.numel() for p in voice.generator.parameters()) / 1e6:.1f} M "
              "params (upstream 2.3 config, 44.1 kHz)")
        spent = [0.0]
        infer = voice.generator.infer

        def timed_infer(*a, **k):  # the generator's share of each side (the same work on both)
            t = time.perf_counter()
            try:
                return infer(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t

        voice.generator.infer = timed_infer
        up = upstream_loop(voice, pieces, langs, pauses, models)
        gen_up, spent[0] = spent[0], 0.0
        us = ours(voice, requests)
        gen_us = spent[0]
        for name, (total, first, audio), gen in (("upstream per-sentence loop", up, gen_up),
                                                 ("vitsflow synth --split", us, gen_us)):
            print(f"{name:28s} {total:7.1f} s (generator {gen:5.1f} s, text + BERT {total - gen:5.1f} s)  "
                  f"audio {audio:6.1f} s  RTF {total / audio:.3f}  first sentence ready {first:5.1f} s")
        print(f"speedup {up[0] / us[0]:.2f}x (goal >= 1.5x); upstream's web UI answers after {up[0]:.1f} s, "
              f"vitsflow's first audio after {us[1]:.1f} s")


if __name__ == "__main__":
    main()
