"""P1 and P2: the feature stages against what upstream Bert-VITS2 does, in the same process.

P1 (bert): utterances/s of our batched, fixed-shape encoder (tasks.prep.bert.bert_chunk) against a
baseline that does what upstream's bert_gen.py does: one sentence at a time through
AutoModelForMaskedLM (upstream loads the masked-LM head too), hidden_states[-3], a Python loop
repeating each token's vector per phone, one torch.save per utterance. Same model, same threads.

P2 (spec): times real time of the spec stage's work (read the ingest shards, the model's torch
STFT and mel per utterance in `runtime.workers` processes, commit to the stage cache) against a
per-file librosa loop doing upstream's per-file job: load each wav, linear magnitude STFT plus mel
(the same framing), save each utterance's features to its own file. Same audio, same machine.

    .venv/bin/python benchmarks/bench_features.py [--copies 4]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402


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


def upstream_style_bert(text_rows, params, out_dir: Path) -> float:
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    from tasks.core.config import resolve_model_path

    path = resolve_model_path(REPO, params.languages["en"].bert.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForMaskedLM.from_pretrained(path)
    start = time.perf_counter()
    for i, row in enumerate(text_rows):
        with torch.no_grad():
            inputs = tokenizer(row["norm_text"], return_tensors="pt")
            res = model(**inputs, output_hidden_states=True)
            res = torch.cat(res["hidden_states"][-3:-2], -1)[0].cpu()
        phone_level = [res[j].repeat(row["word2ph"][j], 1) for j in range(len(row["word2ph"]))]
        torch.save(torch.cat(phone_level, dim=0).T, out_dir / f"{i}.bert.pt")
    return time.perf_counter() - start


def our_bert(text_rows, params) -> float:
    from tasks.prep.bert import batch_order, bert_chunk, plan_bert
    from tasks.core.hf import encoder_for, tokenizer_for

    for lang in params.languages.values():  # loading is once per process, outside the loop
        tokenizer_for(REPO, lang.bert), encoder_for(REPO, lang.bert, "cpu")
    torch.set_num_threads(os.cpu_count() or 1)
    items = batch_order(plan_bert(text_rows, params, REPO, "cpu"), params.features.bert.length_bucket)
    start = time.perf_counter()
    chunk = params.features.bert.chunk_size
    for s in range(0, len(items), chunk):
        bert_chunk(items[s:s + chunk], params, REPO, "cpu")
    return time.perf_counter() - start


def librosa_files(wavs: list[Path], out_dir: Path, p) -> float:
    """The per-file loop: load each wav, STFT + mel with librosa, save one .npy per feature per file."""
    import librosa

    librosa.stft(np.zeros(4096, dtype=np.float32), n_fft=p.n_fft)  # numba warm-up, not timed
    mel_basis = librosa.filters.mel(sr=p.sample_rate, n_fft=p.n_fft, n_mels=p.n_mels, fmin=p.fmin, fmax=p.fmax)
    os.sync()  # both sides start with the earlier runs' writes on disk, not pending
    start = time.perf_counter()
    for wav in wavs:
        y, _ = librosa.load(wav, sr=None)
        y = np.pad(y, ((p.n_fft - p.hop_length) // 2,) * 2, mode="reflect")
        mag = np.abs(librosa.stft(y, n_fft=p.n_fft, hop_length=p.hop_length, win_length=p.win_length,
                                  center=False))
        np.save(out_dir / f"{wav.stem}.spec.npy", mag)
        np.save(out_dir / f"{wav.stem}.mel.npy", np.log(np.clip(mel_basis @ mag, 1e-5, None)))
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
    args = ap.parse_args()
    from tasks.core.shards import read_pcm
    from tasks.prep.spec import stft_params, stft_settings

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        params, rows, text_rows = demo_rows(work, args.copies)
        n = len(text_rows)
        (work / "pt").mkdir()
        t_up = upstream_style_bert(text_rows, params, work / "pt")
        t_ours = our_bert(text_rows, params)
        print(f"P1 bert ({n} utterances, CPU, {torch.get_num_threads()} threads)")
        print(f"  upstream-style, one sentence at a time: {n / t_up:8.1f} utt/s ({t_up:.2f} s)")
        print(f"  vitsflow batched (batch {params.features.bert.batch_size}):       {n / t_ours:8.1f} utt/s ({t_ours:.2f} s)")
        print(f"  ratio: {t_up / t_ours:.2f}x")

        p = stft_params(params)
        seconds = sum(r["num_samples"] for r in rows) / p.sample_rate
        (work / "wavs").mkdir()
        (work / "npy").mkdir()
        wavs = [work / "wavs" / f"{k}.wav" for k in range(len(rows))]
        for wav, row in zip(wavs, rows):
            sf.write(wav, read_pcm(work / "ingest", row), p.sample_rate, subtype="PCM_16")
        # Best of three for each side (the same work each time: store_chunk computes and commits
        # every chunk it is given): this 2-core VM's timings vary by +-15% from run to run.
        t_lib = min(librosa_files(wavs, work / "npy", p) for _ in range(3))
        from tasks.prep.spec import SpecItem, SpecProcesses

        with SpecProcesses(params.runtime.workers, work / "spec.sqlite") as workers:
            start = time.perf_counter()  # one utterance per worker, at once: every worker starts
            with ThreadPoolExecutor(params.runtime.workers) as pool:
                list(pool.map(lambda r: workers.store_chunk([SpecItem(r, r["id"])], work / "ingest",
                                                            stft_settings(params)), rows[:params.runtime.workers]))
            t_start = time.perf_counter() - start
            t_ours = min(our_spec(rows, work / "ingest", workers, stft_settings(params), params) for _ in range(3))
        print(f"P2 spec ({len(rows)} utterances, {seconds / 60:.1f} min of audio, {os.cpu_count()} cores, best of 3)")
        print(f"  librosa per-file loop (load, STFT + mel, save):         {seconds / t_lib:8.1f}x real time ({t_lib:.2f} s)")
        print(f"  vitsflow stage ({params.runtime.workers} processes: read shards, STFT + mel, cache): "
              f"{seconds / t_ours:8.1f}x real time ({t_ours:.2f} s)")
        print(f"  ratio: {t_lib / t_ours:.2f}x")
        print(f"  not in the ratio: the workers' start, once per stage run (a forkserver importing torch): {t_start:.2f} s")


if __name__ == "__main__":
    main()
