"""HiFi-VC's speaker path learns from real speech: after a short CPU training on two real speakers
of tests/data/speech (LJ Speech's reader, ~210 Hz, and the three Common Voice ja clips at ~107 Hz,
taken as one male speaker: the set names no speakers), the VAE's embeddings of other clips put
the two speakers far apart and each speaker's clips close together, and the same source converted
with the other speaker's reference is a different output. The content encoder is a 100-step tiny
asr run (200 steps proved the same in 85 s alone, against 60 s). Not proven here (measured, see
the README's HiFi-VC figures): that the output's GE2E embedding moves toward the reference; after
300-1000 such steps the output is not yet voiced (pYIN finds no F0 in it) and the GE2E shift is
noise (-0.16 to +0.04)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.helpers import MINILM

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

SPEECH = Path(__file__).resolve().parents[2] / "data" / "speech"
LJ = [f"LJ001-{i:04d}" for i in range(1, 9)]
JA_M = ["common_voice_ja_38853932_16k", "common_voice_ja_38898180_16k", "common_voice_ja_38925334_16k"]
ASR_STEPS, STEPS = 100, 300


def _project(root: Path) -> Path:
    texts = {**dict(line.split("|", 1) for line in (SPEECH / "en_ljspeech/metadata.csv").read_text().splitlines()),
             **dict(line.split("|", 1) for line in (SPEECH / "ja_commonvoice/metadata.csv").read_text().splitlines())}
    for name, src, ids, lang in (("lj", "en_ljspeech", LJ, "EN"), ("ja_m", "ja_commonvoice", JA_M, "JA")):
        folder = root / "corpus" / name
        folder.mkdir(parents=True)
        (folder / "wavs").symlink_to(SPEECH / src / "wavs")
        (folder / "filelist.list").write_text("".join(f"wavs/{i}.wav|{name}|{lang}|{texts[i]}\n" for i in ids))
    bert = {"model": MINILM, "layer": -3}
    data = {"datasets": [{"name": "lj", "language": "en", "path": "corpus/lj", "format": "bv2_list"},
                         {"name": "ja_m", "language": "ja", "path": "corpus/ja_m", "format": "bv2_list"}],
            "languages": {"en": {"normalizer": "en", "g2p": "en", "bert": bert},
                          "ja": {"normalizer": "ja", "g2p": "ja", "bert": bert}},
            "audio": {"sample_rate": 24000, "loudness_lufs": -23.0, "trim_db": 40.0, "min_seconds": 0.4,
                      "max_seconds": 15.0},
            "split": {"seed": 7, "val_per_speaker": 0, "min_train_per_speaker": 1},
            "asr": {"enabled": True, "device": "cpu", "batch_size": 4, "max_steps": ASR_STEPS, "log_interval": 50,
                    "eval_interval": 10000, "save_interval": 10000, "learning_rate": 2e-3,
                    "model": {"d_model": 32, "n_heads": 2, "n_layers": 2, "ff_mult": 2, "conv_kernel": 7}},
            "vc": {"enabled": True, "device": "cpu", "batch_size": 4, "max_steps": STEPS, "log_interval": 100,
                   "eval_interval": 10000, "save_interval": 10000, "segment_frames": 16, "reference_seconds": 2.0,
                   "learning_rate": 1e-3, "c_kl": 0.001,
                   "model": {"f0_channels": 16, "speaker_dim": 64, "upsample_initial_channel": 64, "resblock": "2",
                             "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3]], "disc_divisor": 16}},
            "train": {"log_dir": str(root / "logs")}, "storage": {"uri": f"file://{root}/storage"},
            "runtime": {"cache_dir": ".cache/vitsflow"}}
    (root / "params.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    return root


def test_a_short_training_on_two_speakers_separates_them_in_the_embedding_and_the_output_follows_the_reference(
        tmp_path):
    from tasks.core.cache import ResultCache
    from tasks.core.config import load_params
    from tasks.evaluation.judges import Ge2e, cosine
    from tasks.inference.convert import load_converter
    from tasks.prep import content, text
    from tasks.prep.audio import decode, resample
    from tasks.prep.ingest import assemble, audio_settings, ingest_chunk, plan_ingest, read_index
    from tasks.training import asr, vc

    root = _project(tmp_path)
    params = load_params(root / "params.yaml")
    cache = lambda name: ResultCache(root / ".cache/vitsflow" / f"{name}.sqlite")  # noqa: E731
    plan = plan_ingest(params, root)
    cache("ingest").put_many(ingest_chunk(plan.storages, plan.items, audio_settings(params)))
    assemble(plan, cache("ingest"), root / "data/ingest", params)
    rows = read_index(root / "data/ingest")
    items = text.plan_text(rows, params, root)
    cache("text").put_many(text.text_chunk(items, params, root))
    text.assemble(items, cache("text"), root / "data/text", params)
    sr = params.audio.sample_rate
    cache("asr").put_many(content.content_chunk(content.plan_content(rows, sr), root / "data/ingest",
                                                content.content_settings(sr)))
    cache("vc").put_many(content.vc_chunk(content.plan_vc(rows, sr), root / "data/ingest", content.vc_settings(sr)))
    a = asr.train(params, root)
    (root / "train").mkdir()
    (root / "train/asr.json").write_text(json.dumps({"enabled": True, "run_id": a.run_id,
                                                     "checkpoint": {"uri": "unused", "step": a.step}}))
    result = vc.train(params, root)
    assert result.step == STEPS
    conv = load_converter(f"file://{root}/storage/runs/{result.run_id}", root / "params.yaml")

    def wav(name: str) -> tuple[np.ndarray, int]:
        folder = "en_ljspeech" if name.startswith("LJ") else "ja_commonvoice"
        return decode((SPEECH / folder / "wavs" / f"{name}.wav").read_bytes(), f"{name}.wav")

    def mean_embedding(name: str) -> torch.Tensor:
        x, rate = wav(name)
        with torch.no_grad():
            mean, _ = conv.model.speaker_encoder(conv.model.speaker_mel(torch.from_numpy(resample(x, rate, 24000))[None]))
        return mean.flatten()

    lj_a, lj_b, ja_a, ja_b = (mean_embedding(n) for n in ("LJ001-0004", "LJ001-0005", JA_M[0], JA_M[2]))
    within = max(float((lj_a - lj_b).norm()), float((ja_a - ja_b).norm()))
    between = min(float((lj_a - ja_a).norm()), float((lj_b - ja_b).norm()), float((lj_a - ja_b).norm()))
    assert between > 3 * within, (between, within)  # measured: 3.14 apart, 0.40 within (asr 200 steps: 0.5-0.8, 0.06-0.1)
    src = wav("LJ001-0002")
    to_own, _ = conv.convert(*src, *wav("LJ001-0004"))
    to_other, _ = conv.convert(*src, *wav(JA_M[0]))
    change = float(np.abs(to_other - to_own).mean() / np.abs(to_own).mean())
    assert change > 0.01, change  # the reference reaches the output (measured: 32% of its level; asr 200 steps: ~4%)
    judge = Ge2e()  # what the held-out evaluation reports, printed for the record
    e_ja = judge.embed(*wav(JA_M[0]))
    shift = cosine(judge.embed(to_other, 24000), e_ja) - cosine(judge.embed(to_own, 24000), e_ja)
    print(f"output change {change:.3f}, speakers {between:.3f} apart / {within:.3f} within, GE2E shift {shift:+.3f}")
