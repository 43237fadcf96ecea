"""A tiny preprocessed corpus for the trainer's tests: the demo corpus (espeak-ng, 4 languages, 2
voices each; German brings new symbols, a 4th language and tones beyond upstream's 12) run through
the ingest, text, bert and spec stage functions without Prefect, as the stage tests do."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.helpers import MINILM

SENTENCES = {
    "en": ["Is this the train to Leeds?", "Good morning, doctor Smith.", "Where are you going?"],
    "zh": ["你吃饭了吗？", "我们一起去公园吧！", "今天天气很好。"],
    "ja": ["お元気ですか？", "雨が降っています。", "この本は高いです。"],
    "de": ["Wie geht es dir?", "Guten Abend!", "Das Wetter ist schön."],
}

# The network at its smallest useful size, for CPU tests (hop 256: 8 * 8 * 4).
TINY_MODEL = {"variant": "bert-vits2-2.3", "inter_channels": 32, "hidden_channels": 32, "filter_channels": 64,
              "n_heads": 2, "n_layers": 3, "kernel_size": 3, "p_dropout": 0.1, "resblock": "2",
              "resblock_kernel_sizes": [3, 5], "resblock_dilation_sizes": [[1, 2], [1, 2]],
              "upsample_rates": [8, 8, 4], "upsample_initial_channel": 32, "upsample_kernel_sizes": [16, 16, 8],
              "gin_channels": 16, "n_flow_layer": 2, "n_layers_trans_flow": 3, "disc_divisor": 16}
TINY_TRAIN = {"batch_size": 4, "bucket_boundaries": [32, 100, 150, 200, 300, 1000], "seed": 1234,
              "segment_size": 4096, "max_steps": 4, "log_interval": 2, "eval_interval": 2, "save_interval": 2,
              "num_workers": 0, "val_max_utterances": 2, "audio_samples": 1, "device": "cpu"}


def params_dict(root: Path, **overrides: Any) -> dict[str, Any]:
    bert = {"model": MINILM, "layer": -3}
    data = {
        "datasets": [{"name": "demo_en_m1", "language": "en", "path": "corpus/en_m1", "format": "ljspeech",
                      "speaker": "en_m1"},
                     {"name": "demo_en_f1", "language": "en", "path": "corpus/en_f1", "format": "ljspeech",
                      "speaker": "en_f1"},
                     {"name": "demo_zh", "language": "zh", "path": "corpus/zh", "format": "bv2_list"},
                     {"name": "demo_ja", "language": "ja", "path": "corpus/ja", "format": "jsonl"},
                     {"name": "demo_de", "language": "de", "path": "corpus/de", "format": "bv2_list"}],
        "languages": {"zh": {"normalizer": "zh", "g2p": "zh", "bert": bert},
                      "ja": {"normalizer": "ja", "g2p": "ja", "bert": bert},
                      "en": {"normalizer": "en", "g2p": "en", "bert": bert},
                      "de": {"normalizer": "basic", "g2p": "espeak", "g2p_options": {"voice": "de"},
                             "bert": dict(bert, slot="en")}},
        "audio": {"sample_rate": 22050, "loudness_lufs": -23.0, "trim_db": 40.0, "min_seconds": 0.4,
                  "max_seconds": 15.0},
        "split": {"seed": 7, "val_per_speaker": 1, "min_train_per_speaker": 1},
        "features": {"spec": {"n_fft": 1024, "hop_length": 256, "win_length": 1024, "n_mels": 80},
                     "bert": {"batch_size": 4, "device": "cpu"}},
        "model": dict(TINY_MODEL),
        "train": dict(TINY_TRAIN),
        "storage": {"uri": "file://storage"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def write_params(root: Path, **overrides: Any) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params_dict(root, **overrides), allow_unicode=True, sort_keys=False),
                    encoding="utf-8")
    return path


def run_spec(root: Path, out: Path, cache: bool = True) -> None:
    from tasks.core.cache import ResultCache
    from tasks.core.config import load_params
    from tasks.prep.ingest import read_index
    from tasks.prep.spec import assemble, plan_spec, spec_chunk, stft_settings

    params = load_params(root / "params.yaml")
    items = plan_spec(read_index(root / "data/ingest"), params)
    store = None
    if cache:
        store = ResultCache(root / ".cache" / f"{out.name}.sqlite")
        store.put_many(spec_chunk(items, root / "data/ingest", stft_settings(params)))
    assemble(items, store, out, params)


def build(root: Path, sentences: dict[str, list[str]] = SENTENCES, **overrides: Any) -> Path:
    """Build corpus/ (demo audio of `sentences`) and data/{ingest,text,bert,spec} under `root`
    (params: `params_dict` with `overrides`); returns params.yaml."""
    from tasks.prep import bert, demo, text
    from tasks.core.cache import ResultCache
    from tasks.core.config import load_params
    from tasks.prep.ingest import assemble, audio_settings, ingest_chunk, plan_ingest, read_index

    folder = root / "sentences"
    folder.mkdir(parents=True, exist_ok=True)
    for lang, lines in sentences.items():
        (folder / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    demo.make_demo_corpus(folder, root / "corpus")
    params_path = write_params(root, **overrides)
    params = load_params(params_path)
    cache = lambda name: ResultCache(root / ".cache" / f"{name}.sqlite")  # noqa: E731

    plan = plan_ingest(params, root)
    c = cache("ingest")
    c.put_many(ingest_chunk(plan.storages, plan.items, audio_settings(params)))
    assemble(plan, c, root / "data/ingest", params)

    items = text.plan_text(read_index(root / "data/ingest"), params, root)
    c = cache("text")
    c.put_many(text.text_chunk(items, params, root))
    text.assemble(items, c, root / "data/text", params)

    bitems = bert.plan_bert(bert.read_text_rows(root / "data/text"), params, root, "cpu")
    c = cache("bert")
    c.put_many(bert.bert_chunk(bitems, params, root, "cpu"))
    bert.assemble(bitems, c, root / "data/bert", params, root)

    run_spec(root, root / "data/spec")
    return params_path


def tiny_params(root: Path, work: Path, model: dict | None = None, **train: Any):
    """The corpus's params with storage and TensorBoard logs under `work` and `train` overrides."""
    from tasks.core.config import parse_params

    data = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    data["train"].update(train, log_dir=str(work / "logs"))
    data["model"].update(model or {})
    data["storage"] = {"uri": f"file://{work}/storage"}
    return parse_params(data)
