"""The trainer's data: dataset items as upstream's loader makes them, the collate, the bucketed sampler."""
import json
import logging
from collections import Counter

import numpy as np
import pytest
import torch

from tasks.core.shards import read_pcm
from tasks.prep.bert import read_features
from tasks.training.corpus import BucketSampler, Corpus, TextAudioDataset, add_blanks, blank_features, collate
from tests.train_corpus import run_spec


def open_corpus(root, spec="data/spec"):
    return Corpus.open(root / "data/ingest", root / "data/text", root / "data/bert", root / spec)


@pytest.fixture(scope="module")
def corpus(train_corpus):
    return open_corpus(train_corpus)


def test_the_corpus_joins_the_stages_and_maps_speakers_over_every_split(corpus):
    assert len(corpus.rows) == 12 and not any(corpus.missing.values())
    assert corpus.speakers == sorted({r["speaker"] for r in corpus.rows}) and len(corpus.speakers) == 8
    assert {r["split"] for r in corpus.rows} == {"train", "val"}
    assert corpus.bert_dim == 384 and len(corpus.symbols.symbols) > 112  # German extends the table


def test_an_item_is_upstreams_add_blank_layout_with_the_slot_filled(corpus):
    ds = TextAudioDataset(corpus, "train", add_blank=True)
    plain = TextAudioDataset(corpus, "train", add_blank=False)
    by_lang = {}
    for i, row in enumerate(ds.rows):
        by_lang.setdefault(row["language"], i)
    assert set(by_lang) == {"en", "zh", "ja", "de"}
    for lang, i in by_lang.items():
        row, item, raw = ds.rows[i], ds[i], plain[i]
        n = len(row["phones"])
        ids, tones, langs = corpus.symbols.to_ids(row["phones"], row["tones"], lang)
        assert raw["phones"].tolist() == ids and raw["tones"].tolist() == tones and raw["langs"].tolist() == langs
        assert item["phones"].shape == (2 * n + 1,) and item["phones"][1::2].tolist() == ids
        assert not item["phones"][0::2].any() and not item["tones"][0::2].any() and not item["langs"][0::2].any()
        assert item["tones"][1::2].tolist() == [t + corpus.symbols.tone_offsets[lang] for t in row["tones"]]
        assert set(item["langs"][1::2].tolist()) == {corpus.symbols.language_ids[lang]}
        # BERT: the language's slot carries its features, the others zeros; blank layout
        feats = torch.from_numpy(read_features(corpus.bert_dir, row["bert"]).astype(np.float32))
        slot = {"zh": "bert", "ja": "ja_bert", "en": "en_bert", "de": "en_bert"}[lang]
        for key in ("bert", "ja_bert", "en_bert"):
            assert item[key].shape == (384, 2 * n + 1)
            assert bool(item[key].any()) == (key == slot), (lang, key)
        assert torch.equal(raw[slot], feats)
        assert torch.equal(item[slot][:, 1::2], feats)  # each phone keeps its own word's features
        assert torch.equal(item[slot][:, 0], feats[:, 0])  # the leading blank belongs to the first token
        assert torch.equal(item[slot][:, 2::2][:, :-1], feats[:, :-1])  # a blank follows its phone's word
        # audio and spectrogram
        pcm = read_pcm(corpus.ingest_dir, row["pcm"])
        assert item["wav"].shape == (1, len(pcm)) and torch.equal(item["wav"][0] * 32768, torch.from_numpy(pcm).float())
        assert item["spec"].shape == (513, row["spec"]["frames"]) == (513, len(pcm) // 256)
        assert item["sid"] == corpus.speakers.index(row["speaker"])


def test_blank_layout_matches_upstreams_word2ph_doubling():
    # upstream: intersperse phones with 0; word2ph[i] *= 2; word2ph[0] += 1; token features repeated by word2ph
    word2ph, tokens = [1, 2, 3, 1], torch.arange(4.0)[None]  # 4 tokens, 7 phones
    phone_feats = tokens.repeat_interleave(torch.tensor(word2ph), dim=1)
    doubled = [2 * w for w in word2ph]
    doubled[0] += 1
    upstream = tokens.repeat_interleave(torch.tensor(doubled), dim=1)
    assert torch.equal(blank_features(phone_feats), upstream)
    assert add_blanks([5, 6]) == [0, 5, 0, 6, 0]


def test_spectrograms_on_the_fly_equal_the_cached_ones(train_corpus, corpus):
    run_spec(train_corpus, train_corpus / "data/spec_nocache", cache=False)
    live = TextAudioDataset(open_corpus(train_corpus, "data/spec_nocache"), "val")
    cached = TextAudioDataset(corpus, "val")
    assert not live.cached_spec and cached.cached_spec
    a, b = live[0]["spec"], cached[0]["spec"]
    assert a.shape == b.shape and torch.equal(a.half().float(), b)  # the cache is fp16 of the same STFT


def test_collate_pads_longest_first(corpus):
    ds = TextAudioDataset(corpus, "train")
    items = [ds[i] for i in range(4)]
    batch = collate(items)
    frames = sorted((it["spec"].shape[1] for it in items), reverse=True)
    assert batch["spec_lengths"].tolist() == frames and batch["spec"].shape == (4, 513, frames[0])
    for i, uid in enumerate(batch["ids"]):
        it = next(x for x in items if x["id"] == uid)
        n, t = len(it["phones"]), it["wav"].shape[1]
        assert batch["x_lengths"][i] == n and batch["wav_lengths"][i] == t
        assert torch.equal(batch["phones"][i, :n], it["phones"]) and not batch["phones"][i, n:].any()
        assert torch.equal(batch["en_bert"][i, :, :n], it["en_bert"]) and not batch["en_bert"][i, :, n:].any()
        assert torch.equal(batch["wav"][i, :, :t], it["wav"]) and not batch["wav"][i, :, t:].any()
        assert batch["sid"][i] == it["sid"]


LENGTHS = [40, 45, 90, 95, 99, 120, 130, 140, 149, 160, 170, 180, 199, 250, 260, 290, 20, 32, 5000] + \
          list(range(101, 131))


def test_sampler_buckets_are_seeded_even_across_ranks_and_drops_are_counted(caplog):
    boundaries = [32, 100, 150, 200, 300]
    with caplog.at_level(logging.WARNING, logger="tasks.training.corpus"):
        samplers = [BucketSampler(LENGTHS, 4, boundaries, num_replicas=2, rank=r, seed=3) for r in range(2)]
    assert [d["frames"] for d in samplers[0].dropped] == [20, 32, 5000]
    assert "dropped 3 of 49 clips" in caplog.text and "too long" in caplog.text
    epochs = [[s.epoch_batches(e) for s in samplers] for e in range(3)]
    assert epochs[0] == [s.epoch_batches(0) for s in samplers]  # deterministic
    assert epochs[0][0] != epochs[1][0]  # reshuffled per epoch
    kept = {i for i, n in enumerate(LENGTHS) if 32 < n <= 300}
    for r0, r1 in epochs:
        assert len(r0) == len(r1) == len(samplers[0])  # every rank steps the same number of times
        assert all(len(b) == 4 for b in r0 + r1)
        for b in r0 + r1:  # one bucket per batch
            assert len({next(i for i in range(4) if boundaries[i] < LENGTHS[j] <= boundaries[i + 1]) for j in b}) == 1
        seen = Counter(j for b in r0 + r1 for j in b)
        assert set(seen) == kept  # every kept clip, padding repeats a few


def test_sampler_resumes_at_the_batch_it_stopped_at():
    a = BucketSampler(LENGTHS, 4, [32, 100, 150, 200, 300], seed=1)
    a.set_epoch(2)
    it = iter(a)
    consumed = [next(it) for _ in range(3)]
    for _ in consumed:
        a.advance()
    state = json.loads(json.dumps(a.state_dict()))
    b = BucketSampler(LENGTHS, 4, [32, 100, 150, 200, 300], seed=1)
    b.load_state_dict(state)
    assert list(b) == a.epoch_batches(2)[3:] == list(it)
    b.set_epoch(3)
    assert list(b) == a.epoch_batches(3)
    with pytest.raises(ValueError, match=r"this run has 2 process\(es\)"):
        BucketSampler(LENGTHS, 4, [32, 100, 150, 200, 300], num_replicas=2, seed=1).load_state_dict(state)


def test_missing_stage_outputs_name_the_stage(tmp_path, train_corpus):
    with pytest.raises(FileNotFoundError, match="run the bert stage"):
        Corpus.open(train_corpus / "data/ingest", train_corpus / "data/text", tmp_path, train_corpus / "data/spec")


def test_a_spec_folder_in_another_layout_is_refused_with_the_way_out(tmp_path, train_corpus):
    import shutil

    spec = tmp_path / "spec"
    shutil.copytree(train_corpus / "data/spec", spec)
    meta = json.loads((spec / "meta.json").read_text(encoding="utf-8"))
    meta["layout"] = "linear [frames, n_freq] then mel [frames, n_mels], row-major (time-major)"  # before 2026-12-07
    (spec / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ValueError, match=r"spec/meta.json: layout .*then mel.* re-run the spec stage"):
        Corpus.open(train_corpus / "data/ingest", train_corpus / "data/text", train_corpus / "data/bert", spec)
