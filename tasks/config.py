"""The one schema of params.yaml: typed, validated at load, unknown keys rejected.

Errors name the key path, the bad value and what was expected, e.g.
`params.yaml: datasets.0.format: got 'csv'; expected 'bv2_list', 'ljspeech' or 'jsonl'`.
Relative paths are resolved against the repository root (the folder holding params.yaml).
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")


class ConfigError(ValueError):
    """params.yaml is missing, unparsable or invalid; the message says where and why."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_path_text(value: str) -> str:
    if not value or "\x00" in value:
        raise ValueError("expected a non-empty path without NUL characters")
    return value


class BertConfig(Strict):
    # A Hugging Face id ("org/name"), a local folder, or "package:<module>/<subdir>" for a model
    # shipped inside an installed Python package (how tests and the demo stay offline).
    model: str
    revision: Optional[str] = None
    layer: int = -3
    # Which of the network's three BERT inputs (upstream 2.3: zh, ja, en) carries this language's
    # features; required for languages beyond those three.
    slot: Optional[Literal["zh", "ja", "en"]] = None

    @field_validator("model")
    @classmethod
    def _model_form(cls, v: str) -> str:
        check_path_text(v)
        if not (v.startswith(("package:", "/", ".", "~")) or HF_ID.match(v)):
            raise ValueError("expected a Hugging Face id, a local path or package:<module>/<subdir>")
        return v


class LanguageConfig(Strict):
    normalizer: str
    g2p: str
    g2p_options: dict[str, str] = Field(default_factory=dict)
    bert: BertConfig

    @field_validator("normalizer")
    @classmethod
    def _known_normalizer(cls, v: str) -> str:
        from tasks.frontends import NORMALIZERS

        if v not in NORMALIZERS:
            raise ValueError(f"expected one of {sorted(NORMALIZERS)}")
        return v

    @field_validator("g2p")
    @classmethod
    def _known_g2p(cls, v: str) -> str:
        from tasks.frontends import G2P_BACKENDS

        if v not in G2P_BACKENDS:
            raise ValueError(f"expected one of {sorted(G2P_BACKENDS)}")
        return v


class DatasetConfig(Strict):
    name: str
    language: str
    path: str  # a local folder or an s3:// prefix
    format: Literal["bv2_list", "ljspeech", "jsonl"]
    # The list file inside `path`; defaults per format (filelist.list, metadata.csv, metadata.jsonl).
    list_file: Optional[str] = None
    # A fixed speaker name; omit it to take each utterance's speaker from the list.
    speaker: Optional[str] = None
    # The value the list's language column must hold (bv2_list, jsonl); default: `language` in
    # upper case. Upstream lists write JP for Japanese.
    language_field: Optional[str] = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("expected letters, digits, '_', '-' or '.' (it becomes part of utterance ids)")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        check_path_text(v)
        if "://" in v and not v.startswith(("s3://", "file://")):
            raise ValueError("expected a local folder, file:// or s3:// prefix")
        return v

    @field_validator("list_file")
    @classmethod
    def _list_file(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and (Path(v).is_absolute() or ".." in Path(v).parts):
            raise ValueError("expected a file name inside the dataset folder")
        return v

    @model_validator(mode="after")
    def _speaker_source(self) -> "DatasetConfig":
        if self.format == "ljspeech" and self.speaker is None:
            raise ValueError("format ljspeech has no speaker column: give a fixed `speaker` name")
        return self

    @property
    def list_name(self) -> str:
        return self.list_file or {"bv2_list": "filelist.list", "ljspeech": "metadata.csv",
                                  "jsonl": "metadata.jsonl"}[self.format]


class AudioConfig(Strict):
    sample_rate: int = Field(44100, ge=8000, le=96000)
    # Integrated loudness target in LUFS (ITU-R BS.1770); null leaves levels as recorded.
    loudness_lufs: Optional[float] = Field(-23.0, ge=-70, le=0)
    # Leading/trailing frames quieter than this many dB below the clip's peak are cut; null keeps them.
    trim_db: Optional[float] = Field(40.0, gt=0, le=120)
    min_seconds: float = Field(0.5, ge=0)
    max_seconds: float = Field(20.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> "AudioConfig":
        if self.min_seconds >= self.max_seconds:
            raise ValueError(f"min_seconds ({self.min_seconds}) must be below max_seconds ({self.max_seconds})")
        return self


class SplitConfig(Strict):
    seed: int = 1234
    val_per_speaker: int = Field(2, ge=0)  # validation utterances per (language, speaker)
    min_train_per_speaker: int = Field(1, ge=0)  # never take the last training utterances of a speaker


class DemoConfig(Strict):
    sentences: str = "demo/sentences"
    out: str = "data/demo_corpus"


class StageConfig(Strict):
    shard_mb: int = Field(64, ge=1, le=4096)  # target shard size; files grow with shards, not utterances
    chunk_size: int = Field(16, ge=1, le=4096)  # utterances per task in the fan-out


class RuntimeConfig(Strict):
    # How, not what: no stage lists these as DVC params, so changing them re-runs nothing.
    workers: int = Field(2, ge=1, le=256)
    in_flight_chunks: int = Field(4, ge=1, le=1024)  # bounds memory: chunks submitted but not yet written
    # Per-utterance results keyed by content (tasks/cache.py); outside DVC's outs, safe to delete.
    cache_dir: str = ".cache/vitsflow"

    @field_validator("cache_dir")
    @classmethod
    def _cache_dir(cls, v: str) -> str:
        return check_path_text(v)


class SpecConfig(Strict):
    n_fft: int = Field(2048, ge=64)
    hop_length: int = Field(512, ge=16)
    win_length: int = Field(2048, ge=16)
    n_mels: int = Field(128, ge=8)
    fmin: float = Field(0.0, ge=0)
    fmax: Optional[float] = None
    # true: the spec stage stores linear and mel spectrograms (fp16); false: the data loader
    # computes them on the fly with the same STFT.
    cache: bool = True
    shard_mb: int = Field(256, ge=1, le=4096)
    chunk_size: int = Field(16, ge=1, le=4096)

    @model_validator(mode="after")
    def _window(self) -> "SpecConfig":
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})")
        if self.hop_length > self.win_length:
            raise ValueError(f"hop_length ({self.hop_length}) must not exceed win_length ({self.win_length})")
        return self


class BertStageConfig(Strict):
    batch_size: int = Field(16, ge=1, le=1024)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available
    shard_mb: int = Field(64, ge=1, le=4096)
    chunk_size: int = Field(64, ge=1, le=4096)


class FeaturesConfig(Strict):
    spec: SpecConfig = SpecConfig()
    bert: BertStageConfig = BertStageConfig()


class TrainConfig(Strict):
    batch_size: int = Field(16, ge=1)
    # Spectrogram-frame boundaries of the bucketed sampler (upstream's defaults); clips at or
    # below the first or above the last are dropped, and the stats stage lists them.
    bucket_boundaries: list[int] = Field(default_factory=lambda: [32, 300, 400, 500, 600, 700, 800, 900, 1000])

    @field_validator("bucket_boundaries")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if len(v) < 2 or any(b <= a for a, b in zip(v, v[1:])) or v[0] < 0:
            raise ValueError("expected at least two strictly increasing, non-negative frame counts")
        return v


class StorageConfig(Strict):
    # Where checkpoints and the DVC remote live: file://... or s3://bucket/prefix. Credentials are
    # never here: they come from the environment or an AWS profile.
    uri: str = "file://storage"
    endpoint_url: Optional[str] = None
    region: Optional[str] = None

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        if not v.startswith(("file://", "s3://")):
            raise ValueError("expected file://PATH or s3://BUCKET/PREFIX")
        return v


class ScheduleConfig(Strict):
    cron: str = "0 3 * * 0"
    timezone: str = "UTC"


class Params(Strict):
    demo: DemoConfig = DemoConfig()
    datasets: list[DatasetConfig]
    languages: dict[str, LanguageConfig]
    audio: AudioConfig = AudioConfig()
    split: SplitConfig = SplitConfig()
    ingest: StageConfig = StageConfig()
    text: StageConfig = StageConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    features: FeaturesConfig = FeaturesConfig()
    storage: StorageConfig = StorageConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    # Filled by the network/trainer and evaluation issues; free-form until their schemas land.
    train: TrainConfig = TrainConfig()
    model: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)

    @field_validator("languages")
    @classmethod
    def _language_codes(cls, v: dict[str, LanguageConfig]) -> dict[str, LanguageConfig]:
        bad = [code for code in v if not re.fullmatch(r"[a-z]{2,3}(-[a-z0-9]+)?", code)]
        if bad:
            raise ValueError(f"language codes {bad} are not lowercase ISO-style codes like 'en' or 'pt-br'")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> "Params":
        names = [d.name for d in self.datasets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"dataset names must be unique; repeated: {dupes}")
        for i, d in enumerate(self.datasets):
            if d.language not in self.languages:
                raise ValueError(f"datasets.{i}.language: got {d.language!r}; expected a key of "
                                 f"`languages` ({sorted(self.languages)})")
        for code, lang in self.languages.items():
            if code not in ("zh", "ja", "en") and lang.bert.slot is None:
                raise ValueError(f"languages.{code}.bert.slot: required for a language beyond zh/ja/en; "
                                 "expected zh, ja or en (the network input that carries its features)")
        return self


def find_repo_root(params_path: Path) -> Path:
    return params_path.resolve().parent


def resolve_local(root: Path, value: str) -> Path:
    """A path from params as an absolute local path (relative ones against the repo root)."""
    value = value.removeprefix("file://")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path)


def resolve_model_path(root: Path, model: str) -> str:
    """A BERT `model` value as what transformers' from_pretrained takes (a folder or a hub id)."""
    if model.startswith("package:"):
        module, _, sub = model.removeprefix("package:").partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"BERT model {model!r}: Python package {module!r} is not installed")
        path = Path(list(spec.submodule_search_locations)[0]) / sub
    elif model.startswith(("/", ".", "~")) or (root / model).exists():
        path = resolve_local(root, model)
    else:
        return model
    if not path.is_dir():
        raise ConfigError(f"BERT model {model!r}: folder {path} does not exist")
    return str(path)


def _format_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ").replace("Input should be", "expected")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and section)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        got = "" if e["type"] == "missing" else f"got {e['input']!r}; "
        if len(got) > 200:
            got = got[:200] + "…; "
        lines.append(f"{source}: {loc}: {got}{msg}")
    return "\n".join(lines)


def parse_params(data: Any, source: str = "params.yaml") -> Params:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_params(data, str(path))
