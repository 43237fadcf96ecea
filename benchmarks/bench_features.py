"""P1 and P2: the feature stages against what upstream Bert-VITS2 does, in the same process.

P1 (bert): utterances/s of the bert stage's work (tasks.prep.bert: the run cut into whole batches
by `chunks`, `bert_chunk` on each, its results committed to the stage cache) against what
upstream's bert_gen.py does: one sentence at a time through AutoModelForMaskedLM (upstream loads
the masked-LM head too), hidden_states[-3], a Python loop repeating each token's vector per phone,
one torch.save per utterance. Same model, same torch threads on both sides, both in float32 (as
upstream's transformers 4 loaded the models). Run twice: with the demo's MiniLM (6 layers of 384)
on the demo corpus, and at upstream's size (`--upstream-size N`: random-init models of upstream's
own architectures from tests/data/upstream_bv2_23/tokenizers/*/config.json, with those real
tokenizers, on N sentences each of zh and ja: upstream's gold sentences, then real transcripts,
then new sentences of their clauses, `real_sentences`).

P1 profile at upstream's size (96 sentences, 2 threads, 2026-12-07; seconds):

    vitsflow  38.1 total: forward ja 26.5, forward zh 11.5, tokenise 0.04, per-phone repeat 0.01,
              fp16 + bytes ~0.01, cache commit 0.04
    upstream  80.4 total: forward (24 layers + MLM head) 80.1, tokenise 0.06, torch.save 0.13

The forward is everything. Before this profile the stage loaded the Japanese DeBERTa in float16
(transformers 5 follows its config's torch_dtype): 1.9 s a row at 32 tokens on this AVX2 CPU,
4-5x float32, and other numbers than upstream's; both sides now load float32. What is left:
tokens/s of one encoder forward against its shape (rows x padded length), 2 threads:

    roberta-large   1 x 16: 39   1 x 32: 90   16 x 16: 187   8 x 32: 137   16 x 32: 184
    deberta-v2-ja   1 x 16: 25   1 x 32: 31   16 x 16:  89   8 x 32:  90   16 x 32: 103

(DeBERTa projects its 512 relative-position embeddings with each layer's key and query weights in
every forward, whatever the batch: 85 tokens' worth of work a layer, which rows share.) Upstream
pays one forward per sentence at its exact length; the stage pays padding for a fixed shape per
length (module doc of tasks/prep/bert.py). The old shape, 16 rows at a 16-token bucket, filled
2.14 token slots per real token on 96 sentences; rows by a 256-token budget at an 8-token bucket
fill 1.82 (budget 128: 1.38, but M = 128 runs at 2/3 of M = 256's rate; 512: 2.48). At 480
sentences a language the short last batch of each shape matters less and the 8-token bucket
pads a sentence by 4 tokens on average instead of 8. With the pad position every row now keeps
(tasks/prep/bert.py batch_shape: SDPA drops the mask of a batch without padding), the slots per
real token are 1.83 on 96 sentences and 1.22 on 960 (raw sentences through the tokenizers).

Measured (2026-12-07, 2 threads): 480 + 480 sentences upstream 778 s, ours 275 s (2.83x);
48 + 48 upstream 68.6 s, ours 26.2 s (2.62x; the day before, without the pad position, 1.74x:
1.53 against 2.65 utt/s; the 48 case is a minute a side, and this VM's speed varies by the day).

P2 (spec): times real time of the spec stage's work (read the ingest shards, the model's torch
STFT per utterance in `runtime.workers` processes, commit to the stage cache) against what
upstream does in its DataLoader workers: read each wav, `spectrogram_torch` (the same linear STFT),
`torch.save` of the spectrogram to its own file, in the same number of processes with one torch
thread each (as DataLoader workers have). Worker start is outside both timings. Same audio.

P2 profile, microseconds per utterance of the demo corpus (2.5 s at 22.05 kHz, n_fft 1024, hop
256), one process, one thread, 2026-12-07:

    vitsflow before  read pcm 45, STFT 1021, mel 510, fp16 + bytes 118, cache commit 615: 2310
    vitsflow after   read pcm 56, STFT 1110, fp16 + bytes 96, cache commit 182: 1444
    upstream         read wav 526, STFT 1338, torch.save 1001: 2865

Two things went. The mel: nothing read it (the trainer takes its mel from the linear spectrogram
of each batch, as upstream's train_ms.py does), so the stage stores the linear one only, and with
it the mel's fp16 copy. And one file per utterance: most of the commit was creating each
payload's file (open() under /tmp on this VM: 350-590 us, against 100 us for writing its 220 KB;
under /work, the same ext4: 25-100 us), so the cache now writes one pack file per committed
batch (tasks/core/cache.py); upstream's torch.save still creates one per utterance. Ratios, each
against upstream in the same run: 0.95x before both; 1.29x-1.87x in four runs with the mel gone
(one side's half-second runs vary by 15% and more from round to round, so the rounds now
alternate the sides, 7 of them); with packs 1.76x and 2.63x in two runs (best of 7; round by
round 1.63x-2.44x and 1.78x-3.38x, medians 1.76x and 2.02x).
A batched STFT over a chunk's utterances was not tried: the STFT left is a 1024-point FFT per
frame, which batching does not shorten, and the per-call overhead it would save is a few percent
of 1 ms.

    .venv/bin/python benchmarks/bench_features.py [--copies 4] [--upstream-size 48]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

THREADS = os.cpu_count() or 1  # torch intra-op threads for both sides of P1
UPSTREAM_BERTS = {"zh": "chinese-roberta-wwm-ext-large", "ja": "deberta-v2-large-japanese-char-wwm"}


def demo_rows(work: Path, copies: int):
    """The demo corpus through ingest and text (no Prefect), repeated `copies` times."""
    from tasks.core.cache import ResultCache
    from tasks.core.config import load_params
    from tasks.prep.demo import make_demo_corpus
    from tasks.prep import ingest, text

    make_demo_corpus(REPO / "demo" / "sentences", work / "demo")
    params = load_params(REPO / "params.yaml")
    datasets = [d.model_copy(update={"path": str(work / "demo" / Path(d.path).name)}) for d in params.datasets]
    params = params.model_copy(update={"datasets": datasets})
    plan = ingest.plan_ingest(params, REPO)
    cache = ResultCache(work / "ingest.sqlite")
    cache.put_many(ingest.ingest_chunk(plan.storages, plan.items, ingest.audio_settings(params)))
    ingest.assemble(plan, cache, work / "ingest", params)
    rows = ingest.read_index(work / "ingest")
    items = text.plan_text(rows, params, REPO)
    tcache = ResultCache(work / "text.sqlite")
    tcache.put_many(text.text_chunk(items, params, REPO))
    text_rows = [{"id": i.row["id"], "language": i.row["language"], **e.meta}
                 for i, (_, e) in zip(items, tcache.iter_entries(i.key for i in items))]
    uniq = lambda rs, k: [dict(r, id=f"{r['id']}#{k}") for r in rs]  # noqa: E731
    return params, [r for k in range(copies) for r in uniq(rows, k)], [r for k in range(copies) for r in uniq(text_rows, k)]


def upstream_style_bert(text_rows, params, out_dir: Path, device: str = "cpu") -> float:
    """bert_gen.py's loop; each row's language's model (loaded, and on `device`, before the clock
    starts)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    from tasks.core.config import resolve_model_path

    models = {}
    for code in {r["language"] for r in text_rows}:
        path = resolve_model_path(REPO, params.languages[code].bert.model)
        # float32 as upstream's transformers 4 loaded it (transformers 5 would follow a config's
        # torch_dtype: float16 for the Japanese model, 4-5x slower on this CPU)
        models[code] = (AutoTokenizer.from_pretrained(path),
                        AutoModelForMaskedLM.from_pretrained(path, dtype=torch.float32).eval().to(device))
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    for i, row in enumerate(text_rows):
        tokenizer, model = models[row["language"]]
        with torch.no_grad():
            inputs = tokenizer(row["norm_text"], return_tensors="pt").to(device)
            res = model(**inputs, output_hidden_states=True)
            res = torch.cat(res["hidden_states"][-3:-2], -1)[0].cpu()
        phone_level = [res[j].repeat(row["word2ph"][j], 1) for j in range(len(row["word2ph"]))]
        torch.save(torch.cat(phone_level, dim=0).T, out_dir / f"{i}.bert.pt")
    return time.perf_counter() - start


def our_bert(text_rows, params, cache_path: Path, device: str = "cpu") -> float:
    """The bert stage's chunks, each committed to the stage cache as the flow does."""
    from tasks.core.cache import ResultCache
    from tasks.core.hf import encoder_for, tokenizer_for
    from tasks.prep.bert import bert_chunk, chunks, plan_bert

    for code in {r["language"] for r in text_rows}:  # loading is once per process, outside the loop
        bert = params.languages[code].bert
        tokenizer_for(REPO, bert), encoder_for(REPO, bert, device)
    torch.set_num_threads(THREADS)
    cache = ResultCache(cache_path)
    items = plan_bert(text_rows, params, REPO, device)
    start = time.perf_counter()
    for chunk in chunks(items, params.features.bert):  # as the flow cuts them: whole batches
        cache.put_many(bert_chunk(chunk, params, REPO, device))
    if device == "cuda":  # bert_chunk's .cpu() already waits; the clock stops when all is done
        torch.cuda.synchronize()
    return time.perf_counter() - start


def random_upstream_bert(work: Path, name: str, layers: int = 0) -> Path:
    """A random-init model of upstream's BERT `name` (its config from tests/data, all its layers
    or `layers`), saved with the masked-LM head as upstream's folders hold it, beside the real
    tokenizer's files."""
    import shutil

    from transformers import AutoConfig, AutoModelForMaskedLM

    src = REPO / "tests" / "data" / "upstream_bv2_23" / "tokenizers" / name
    config = AutoConfig.from_pretrained(str(src))
    if layers:
        config.num_hidden_layers = layers
    torch.manual_seed(0)
    folder = work / name
    AutoModelForMaskedLM.from_config(config).save_pretrained(folder)
    for f in src.iterdir():
        if f.name != "config.json":
            shutil.copy(f, folder / f.name)
    return folder


def upstream_size_rows(work: Path, n: int):
    """Params whose zh and ja BERTs are random-init models of upstream's architectures (saved with
    the masked-LM head, as upstream's folders hold them) beside upstream's real tokenizers, and
    text rows of `n` gold sentences each through our frontends."""
    from tasks.core.config import load_params
    from tasks.core.hf import tokenizer_for
    from tasks.prep.text import text_one

    params = load_params(REPO / "params.yaml")
    langs, rows = dict(params.languages), []
    for code, name in UPSTREAM_BERTS.items():
        folder = random_upstream_bert(work, name)
        langs[code] = langs[code].model_copy(update={"bert": langs[code].bert.model_copy(update={"model": str(folder)})})
        lang, kept = langs[code], 0
        for i, sentence in enumerate(real_sentences(code, 2 * n)):  # spares: a frontend reject is replaced
            meta = text_one(sentence, code, lang, tokenizer_for(REPO, lang.bert)).meta
            if "reject" not in meta:
                rows.append({"id": f"{code}{i}", "language": code, **meta})
                kept += 1
                if kept == n:
                    break
        if kept < n:
            raise SystemExit(f"{code}: only {kept} of {n} sentences pass the frontend")
    return params.model_copy(update={"languages": langs}), rows


def real_sentences(code: str, n: int) -> list[str]:
    """`n` sentences of language `code`: upstream's gold sentences first, then the demo's and the
    test speech sets' transcripts, then (when more are asked for than these ~150) new sentences of
    their clauses, each as long as a real sentence drawn at random. The models are random-init, so
    what matters is real text of realistic length through the real tokenizers."""
    import csv
    import json
    import random
    import re

    data = REPO / "tests" / "data"
    pool = [i["text"] for i in json.loads((data / "upstream_bv2_23" / f"{code}.json").read_text(encoding="utf-8"))["items"]]
    pool += (REPO / "demo" / "sentences" / f"{code}.txt").read_text(encoding="utf-8").split()
    speech = {"zh": "zh_aishell3", "ja": "ja_commonvoice"}[code]
    with open(data / "speech" / speech / "metadata.csv", encoding="utf-8") as f:
        pool += [row[1] for row in csv.reader(f, delimiter="|") if len(row) > 1]
    pool = list(dict.fromkeys(p.strip() for p in pool if p.strip()))
    clauses = [c for p in pool for c in re.findall(r"[^，。！？、,.!?]+[，。！？、,.!?]?", p)]
    rng, out = random.Random(0), pool[:n]
    while len(out) < n:
        target, sentence = len(rng.choice(pool)), ""
        while len(sentence) < target:
            sentence += rng.choice(clauses)
        sentence = sentence.rstrip("，、,") + ("" if sentence[-1] in "。！？.!?" else "。")
        if sentence not in out:  # distinct texts: the stage computes a repeated one once
            out.append(sentence)
    return out


def shape_policy(params) -> str:
    b = params.features.bert
    return f"rows {b.token_budget} // length <= {b.batch_size}, length bucket {b.length_bucket}"


def _one_thread() -> None:
    torch.set_num_threads(1)  # as in a DataLoader worker


def _upstream_spec_file(wav: str, p) -> None:
    """Upstream's get_audio for a file without a cached .spec.pt: load the wav, scale by 32768,
    `spectrogram_torch` (model.mel_processing.linear_spectrogram is the same STFT), torch.save."""
    from model.mel_processing import linear_spectrogram

    pcm, _ = sf.read(wav, dtype="int16")
    audio = torch.from_numpy(pcm.astype(np.float32)) / 32768.0
    spec = linear_spectrogram(audio.unsqueeze(0), p).squeeze(0)
    torch.save(spec, wav.replace(".wav", ".spec.pt"))


def upstream_spec_files(wavs: list[Path], pool, p) -> float:
    os.sync()  # both sides start with the earlier runs' writes on disk, not pending
    start = time.perf_counter()
    list(pool.map(_upstream_spec_file, [str(w) for w in wavs], [p] * len(wavs), chunksize=8))
    return time.perf_counter() - start


def our_spec(rows, ingest_dir: Path, workers, settings, params) -> float:
    """The spec stage's path as its flow runs it: `in_flight_chunks` task threads hand chunks to
    the worker processes, which read the ingest shards, compute and commit to the cache."""
    from tasks.prep.spec import SpecItem

    items = [SpecItem(r, r["id"]) for r in rows]
    chunk = params.features.spec.chunk_size
    os.sync()  # both sides start with the earlier runs' writes on disk, not pending
    start = time.perf_counter()
    with ThreadPoolExecutor(params.runtime.in_flight_chunks) as tasks:
        list(tasks.map(lambda s: workers.store_chunk(items[s:s + chunk], ingest_dir, settings),
                       range(0, len(items), chunk)))
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=4, help="repeat the 120-utterance demo corpus")
    ap.add_argument("--upstream-size", type=int, default=0, metavar="N",
                    help="also P1 with random-init models of upstream's BERT architectures on N zh + N ja sentences")
    args = ap.parse_args()
    import soundfile as sf

    from tasks.core.shards import read_pcm
    from tasks.prep.spec import stft_params, stft_settings

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        params, rows, text_rows = demo_rows(work, args.copies)
        n = len(text_rows)
        (work / "pt").mkdir()
        t_up = upstream_style_bert(text_rows, params, work / "pt")
        t_ours = our_bert(text_rows, params, work / "bert.sqlite")
        print(f"P1 bert, demo MiniLM ({n} utterances, CPU, {THREADS} threads on both sides)")
        print(f"  upstream-style, one sentence at a time, torch.save each: {n / t_up:8.1f} utt/s ({t_up:.2f} s)")
        print(f"  vitsflow stage ({shape_policy(params)}, cache commit):      "
              f"{n / t_ours:8.1f} utt/s ({t_ours:.2f} s)")
        print(f"  ratio: {t_up / t_ours:.2f}x")
        if args.upstream_size:
            up_params, up_rows = upstream_size_rows(work / "upstream_bert", args.upstream_size)
            (work / "pt_up").mkdir()
            t_up = upstream_style_bert(up_rows, up_params, work / "pt_up")
            t_ours = our_bert(up_rows, up_params, work / "bert_up.sqlite")
            m, per = len(up_rows), Counter(r["language"] for r in up_rows)
            print(f"P1 bert at upstream's size (random-init chinese-roberta-wwm-ext-large and "
                  f"deberta-v2-large-japanese-char-wwm, 24 x 1024, real tokenizers; "
                  f"{per['zh']} zh + {per['ja']} ja sentences)")
            print(f"  upstream-style, one sentence at a time, torch.save each: {m / t_up:8.2f} utt/s ({t_up:.2f} s)")
            print(f"  vitsflow stage ({shape_policy(up_params)}, cache commit):      "
                  f"{m / t_ours:8.2f} utt/s ({t_ours:.2f} s)")
            print(f"  ratio: {t_up / t_ours:.2f}x")

        p = stft_params(params)
        seconds = sum(r["num_samples"] for r in rows) / p.sample_rate
        (work / "wavs").mkdir()
        wavs = [work / "wavs" / f"{k}.wav" for k in range(len(rows))]
        for wav, row in zip(wavs, rows):
            sf.write(wav, read_pcm(work / "ingest", row), p.sample_rate, subtype="PCM_16")
        # Rounds alternate the two sides (the same work each time: store_chunk computes and commits
        # every chunk it is given) and each side's best counts: on this 2-core VM one side's run
        # of half a second varies by +-15% and more from round to round, as other tenants come and go.
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from tasks.prep.spec import SpecItem, SpecProcesses

        context = multiprocessing.get_context("forkserver")
        rounds, t_libs, t_ourss = 7, [], []
        with ProcessPoolExecutor(params.runtime.workers, context, _one_thread) as pool, \
                SpecProcesses(params.runtime.workers, work / "spec.sqlite") as workers:
            list(pool.map(_upstream_spec_file, [str(w) for w in wavs[:params.runtime.workers]],
                          [p] * params.runtime.workers))  # every worker started and warm, not timed
            start = time.perf_counter()  # one utterance per worker, at once: every worker starts
            with ThreadPoolExecutor(params.runtime.workers) as threads:
                list(threads.map(lambda r: workers.store_chunk([SpecItem(r, r["id"])], work / "ingest",
                                                               stft_settings(params)), rows[:params.runtime.workers]))
            t_start = time.perf_counter() - start
            for _ in range(rounds):
                t_libs.append(upstream_spec_files(wavs, pool, p))
                t_ourss.append(our_spec(rows, work / "ingest", workers, stft_settings(params), params))
        t_lib, t_ours = min(t_libs), min(t_ourss)
        per_round = sorted(a / b for a, b in zip(t_libs, t_ourss))
        print(f"P2 spec ({len(rows)} utterances, {seconds / 60:.1f} min of audio, {os.cpu_count()} cores, "
              f"best of {rounds} alternating rounds)")
        print(f"  upstream-style ({params.runtime.workers} processes: read wav, spectrogram_torch, torch.save): "
              f"{seconds / t_lib:8.1f}x real time ({t_lib:.2f} s)")
        print(f"  vitsflow stage ({params.runtime.workers} processes: read shards, STFT, cache): "
              f"{seconds / t_ours:8.1f}x real time ({t_ours:.2f} s)")
        print(f"  ratio: {t_lib / t_ours:.2f}x (round by round: {per_round[0]:.2f}x to {per_round[-1]:.2f}x, "
              f"median {per_round[len(per_round) // 2]:.2f}x)")
        print(f"  not in the ratio: the workers' start, once per stage run (a forkserver importing torch): {t_start:.2f} s")


if __name__ == "__main__":
    main()
