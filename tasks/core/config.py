"""The one schema of params.yaml: typed, validated at load, unknown keys rejected.

Errors name the key path, the bad value and what was expected, e.g.
`params.yaml: datasets.0.format: got 'csv'; expected 'bv2_list', 'ljspeech' or 'jsonl'`.
Relative paths are resolved against the repository root (the folder holding params.yaml).
"""
from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")


def _run_id(v: Optional[str]) -> Optional[str]:
    if v is not None and not NAME.match(v):
        raise ValueError("expected letters, digits, '_', '-' or '.'")
    return v


RunId = Annotated[Optional[str], AfterValidator(_run_id)]  # a run's folder name under runs/ (null: derived)


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

    @model_validator(mode="after")
    def _known_g2p_options(self) -> "LanguageConfig":
        from tasks.frontends import backend_options

        accepted, required = backend_options(self.g2p)
        unknown, missing = sorted(set(self.g2p_options) - accepted), sorted(required - set(self.g2p_options))
        if unknown or missing:
            raise ValueError(f"g2p_options for g2p {self.g2p!r}: " + "; ".join(
                [f"unknown {unknown} (accepted: {sorted(accepted) or 'none'})"] * bool(unknown) +
                [f"missing {missing}"] * bool(missing)))
        return self


class SliceParams(Strict):
    """Cutting long recordings into clips at pauses (tasks/prep/slicing.py, Silero VAD)."""
    min_seconds: float = Field(1.0, gt=0)    # shorter speech joins a neighbour, or is dropped
    max_seconds: float = Field(12.0, gt=0)   # longer speech is split at its longest pause, else its quietest point
    min_silence: float = Field(0.4, gt=0)    # a pause at least this long separates two clips
    padding: float = Field(0.1, ge=0)        # recording kept around each clip's speech (seconds)
    vad_threshold: float = Field(0.5, gt=0, lt=1)

    @model_validator(mode="after")
    def _bounds(self) -> "SliceParams":
        if self.min_seconds >= self.max_seconds:
            raise ValueError(f"min_seconds ({self.min_seconds}) must be below max_seconds ({self.max_seconds})")
        return self


class TranscribeParams(Strict):
    """Transcripts for the clips (tasks/prep/asr.py)."""
    # pocketsphinx (English, bundled) or a transformers speech-recognition model: HF id or local folder
    model: str = "pocketsphinx"
    # a clip whose transcript is empty or less sure than this (mean word posterior, where the model
    # gives one) goes to the review file, not the list
    min_confidence: float = Field(0.3, ge=0, le=1)


class PrepareConfig(Strict):
    """How a `raw_audio` dataset becomes clips with transcripts (stage `prepare`)."""
    slice: SliceParams = SliceParams()
    transcribe: TranscribeParams = TranscribeParams()


class DatasetConfig(Strict):
    name: str
    language: str
    path: str  # a local folder or an s3:// prefix
    # raw_audio: long recordings (every audio file under `path`), sliced and transcribed by the
    # `prepare` stage into data/prepared/<name>/ (`prepare` says how); needs a fixed `speaker`
    format: Literal["bv2_list", "ljspeech", "jsonl", "raw_audio"]
    prepare: Optional[PrepareConfig] = None
    # The list file inside `path`; defaults per format (filelist.list, metadata.csv, metadata.jsonl).
    list_file: Optional[str] = None
    # A fixed speaker name; omit it to take each utterance's speaker from the list.
    speaker: Optional[str] = None
    # The value the list's language column must hold (bv2_list, jsonl); default: `language` in
    # upper case. Upstream lists write JP for Japanese.
    language_field: Optional[str] = None
    # The folder the list's audio paths are relative to, and that every one must stay inside
    # (absolute paths in the list too); default `path`. An upstream Bert-VITS2 list
    # (`Data/<name>/wavs/x.wav|...`) imports unchanged with `audio_root` = upstream's checkout.
    audio_root: Optional[str] = None

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

    @field_validator("audio_root")
    @classmethod
    def _audio_root(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            check_path_text(v)
            if "://" in v:
                raise ValueError("expected a local folder (S3 datasets keep their audio under `path`)")
        return v

    @field_validator("list_file")
    @classmethod
    def _list_file(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and (Path(v).is_absolute() or ".." in Path(v).parts):
            raise ValueError("expected a file name inside the dataset folder")
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_prepare(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("format") == "raw_audio" and data.get("prepare") is None:
            data = {**data, "prepare": {}}  # the defaults of PrepareConfig
        return data

    @model_validator(mode="after")
    def _speaker_source(self) -> "DatasetConfig":
        if self.format in ("ljspeech", "raw_audio") and self.speaker is None:
            raise ValueError(f"format {self.format} has no speaker column: give a fixed `speaker` name")
        if self.format == "raw_audio":
            if "://" in self.path and not self.path.startswith("file://"):
                raise ValueError("raw_audio recordings are read from a local folder")
            if self.list_file is not None or self.audio_root is not None:
                raise ValueError("raw_audio has no list: list_file and audio_root do not apply")
        elif self.prepare is not None:
            raise ValueError(f"`prepare` is for format raw_audio, not {self.format}")
        return self

    @property
    def list_name(self) -> str:
        return self.list_file or {"bv2_list": "filelist.list", "ljspeech": "metadata.csv",
                                  "jsonl": "metadata.jsonl", "raw_audio": "metadata.jsonl"}[self.format]


class AudioConfig(Strict):
    sample_rate: int = Field(44100, ge=8000, le=96000)
    # Integrated loudness target in LUFS (ITU-R BS.1770); null leaves levels as recorded.
    loudness_lufs: Optional[float] = Field(-23.0, ge=-70, le=0)
    # Leading/trailing frames quieter than this many dB below the clip's peak are cut; null keeps them.
    trim_db: Optional[float] = Field(40.0, gt=0, le=120)
    min_seconds: float = Field(0.5, ge=0)
    max_seconds: float = Field(20.0, gt=0)
    # A clip whose loudest 20 ms stay below this level (dBFS, before any gain) is near-silence, not
    # speech: loudness normalisation would only turn its noise floor up. Speech peaks at -25..0 dBFS.
    silence_floor_dbfs: Optional[float] = Field(-50.0, ge=-120, le=0)

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


class TextStageConfig(StageConfig):
    # Spoken phones (no `_`, no punctuation) per second of audio outside these bounds means the
    # transcript does not belong to the clip (read speech: 10-20 phones/s in every base language).
    min_phones_per_second: float = Field(1.0, ge=0)
    max_phones_per_second: float = Field(40.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> "TextStageConfig":
        if self.min_phones_per_second >= self.max_phones_per_second:
            raise ValueError(f"min_phones_per_second ({self.min_phones_per_second}) must be below "
                             f"max_phones_per_second ({self.max_phones_per_second})")
        return self


class RuntimeConfig(Strict):
    # How, not what: no stage lists these as DVC params, so changing them re-runs nothing.
    workers: int = Field(2, ge=1, le=256)
    in_flight_chunks: int = Field(4, ge=1, le=1024)  # bounds memory: chunks submitted but not yet written
    # thread: a thread pool of `workers` in the stage's process; dask: a Dask cluster (prefect-dask),
    # `dask_address` or else a local one of `workers` single-threaded processes.
    task_runner: Literal["thread", "dask"] = "thread"
    dask_address: Optional[str] = None
    # Per-utterance results keyed by content (tasks/core/cache.py); outside DVC's outs, safe to delete.
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
    # true: the spec stage stores linear spectrograms (fp16); false: the data loader computes
    # them on the fly with the same STFT. The mel is the trainer's, from the linear one.
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
    # A batch's shape follows from its utterances' token count alone (tasks/prep/bert.py
    # batch_shape), so an utterance's features do not depend on its batch mates: the count plus
    # one pad position rounded up to `length_bucket` (at most 512), and `token_budget` // that
    # rows, at most `batch_size`.
    # Measured at upstream's size on 2 CPU cores: benchmarks/bench_features.py.
    batch_size: int = Field(32, ge=1, le=1024)
    length_bucket: int = Field(8, ge=1, le=512)
    token_budget: int = Field(256, ge=1, le=1 << 20)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available
    shard_mb: int = Field(64, ge=1, le=4096)
    chunk_size: int = Field(64, ge=1, le=4096)


class FeaturesConfig(Strict):
    spec: SpecConfig = SpecConfig()
    bert: BertStageConfig = BertStageConfig()


class InitFromConfig(Strict):
    """Upstream checkpoints to start a new run from (fine-tuning); ignored when the run resumes.

    Each of G, D, DUR, WD is a local path (relative to the repo) or an s3:// URI of an upstream
    `G_*.pth`-style file, or null. Loading is strict: any difference in keys or shapes is an error
    unless a pattern below covers it, and every allowed difference is logged."""
    G: Optional[str] = None
    D: Optional[str] = None
    DUR: Optional[str] = None
    WD: Optional[str] = None
    # Keys (fnmatch patterns) whose first dimension may differ: the speaker table (new speakers) and
    # the symbol/tone/language tables (languages added through params.yaml). Shared rows are copied.
    allow_resize: list[str] = Field(default_factory=lambda: ["emb_g", "enc_p.emb", "enc_p.tone_emb",
                                                             "enc_p.language_emb"])
    # Keys dropped from the checkpoint and left at their initial values, e.g. `enc_p.*bert_proj`
    # when the BERT width differs from upstream's 1024.
    reinit: list[str] = Field(default_factory=list)


class TrainConfig(Strict):
    """The trainer (tasks/training/train.py): upstream 2.3's train section with its names, plus the loop's own knobs."""
    batch_size: int = Field(16, ge=1)  # per process
    # Spectrogram-frame boundaries of the bucketed sampler (upstream's defaults); clips at or
    # below the first or above the last are dropped, and the stats stage lists them.
    bucket_boundaries: list[int] = Field(default_factory=lambda: [32, 300, 400, 500, 600, 700, 800, 900, 1000])
    seed: int = 1234
    learning_rate: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.8, 0.99)
    eps: float = Field(1e-9, gt=0)
    lr_decay: float = Field(0.99995, gt=0, le=1)  # ExponentialLR gamma, stepped once per epoch as upstream
    segment_size: int = Field(16384, ge=64)  # samples of the random slice the decoder trains on
    c_mel: float = Field(45.0, ge=0)
    c_kl: float = Field(1.0, ge=0)
    epochs: int = Field(1000, ge=1)
    max_steps: Optional[int] = Field(None, ge=0)  # stop at this global step (whichever of the two comes first)
    log_interval: int = Field(200, ge=1)  # steps between TensorBoard scalars/images
    eval_interval: int = Field(1000, ge=1)  # steps between validation losses
    save_interval: int = Field(1000, ge=1)  # steps between checkpoints (and one at the end)
    keep_best: int = Field(3, ge=1)  # checkpoints kept by validation loss, besides the latest
    bf16: bool = False  # opt-in bfloat16 autocast (CUDA or CPU); no GradScaler
    # Max gradient norms (null: no clipping, upstream's fp32 default; upstream's bf16 runs use 500 / 200).
    grad_clip_g: Optional[float] = Field(None, gt=0)
    grad_clip_d: Optional[float] = Field(None, gt=0)  # D, DUR and WD
    num_workers: int = Field(2, ge=0)  # data-loader processes per training process
    nproc: int = Field(1, ge=1)  # training processes (torchrun --nproc_per_node); 1: in-process
    device: Literal["auto", "cpu", "cuda"] = "auto"
    val_max_utterances: int = Field(16, ge=1)  # validation clips (the first of the val split) per evaluation
    audio_samples: int = Field(2, ge=0)  # validation clips rendered to TensorBoard per evaluation
    init_from: InitFromConfig = InitFromConfig()
    # The run's name under storage `runs/`; null: derived from model/train params and the data, so
    # the same params on the same data resume the same run.
    run_id: RunId = None
    log_dir: str = "logs"  # TensorBoard event files, under <log_dir>/<run_id>/

    @field_validator("bucket_boundaries")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if len(v) < 2 or any(b <= a for a, b in zip(v, v[1:])) or v[0] < 0:
            raise ValueError("expected at least two strictly increasing, non-negative frame counts")
        return v


class SLMConfig(Strict):
    """Upstream 2.3's WavLM (speech language model) discriminator and feature loss."""
    model: Optional[str] = None  # a local WavLM folder (transformers format); null: no WavLM terms, no WD
    sr: int = 16000
    hidden: int = 768
    nlayers: int = 13
    initial_channel: int = 64


class ModelConfig(Strict):
    """The network: upstream 2.3's `model` section with its names and defaults (config.json).

    Table sizes (symbols, tones, languages, speakers) and the BERT width come from the data; the
    spectrogram width from features.spec.n_fft."""
    variant: Literal["bert-vits2-2.3", "vits2", "vits"] = "bert-vits2-2.3"
    add_blank: bool = True  # a blank (id 0) between phones, as upstream data.add_blank
    inter_channels: int = Field(192, ge=2)
    hidden_channels: int = Field(192, ge=2)
    filter_channels: int = Field(768, ge=1)
    n_heads: int = Field(2, ge=1)
    n_layers: int = Field(6, ge=1)
    kernel_size: int = Field(3, ge=1)
    p_dropout: float = Field(0.1, ge=0, lt=1)
    resblock: Literal["1", "2"] = "1"
    resblock_kernel_sizes: list[int] = Field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = Field(default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]])
    upsample_rates: list[int] = Field(default_factory=lambda: [8, 8, 2, 2, 2])
    upsample_initial_channel: int = Field(512, ge=1)
    upsample_kernel_sizes: list[int] = Field(default_factory=lambda: [16, 16, 8, 2, 2])
    gin_channels: int = Field(512, ge=1)
    n_flow_layer: int = Field(4, ge=1)
    n_layers_trans_flow: int = Field(4, ge=1)
    flow_share_parameter: bool = False
    use_spectral_norm: bool = False  # of the discriminators
    # The multi-period discriminator's channel counts divided by this power of two (1: upstream's
    # widths, needed to load upstream D checkpoints; 8-16 for CPU-sized demo models).
    disc_divisor: int = Field(1, ge=1, le=64)
    slm: SLMConfig = SLMConfig()

    @model_validator(mode="after")
    def _shapes(self) -> "ModelConfig":
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes must have the same length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes must have the same length")
        if self.hidden_channels % self.n_heads:
            raise ValueError(f"hidden_channels ({self.hidden_channels}) must be a multiple of n_heads ({self.n_heads})")
        if self.disc_divisor & (self.disc_divisor - 1):
            raise ValueError(f"disc_divisor ({self.disc_divisor}) must be a power of two")
        if self.variant != "vits" and min(self.n_layers, self.n_layers_trans_flow) < 3:
            # the speaker embedding enters the transformers before their third block (VITS2)
            raise ValueError(f"n_layers ({self.n_layers}) and n_layers_trans_flow ({self.n_layers_trans_flow}) "
                             f"must be at least 3 for variant {self.variant!r}")
        return self

    def generator_kwargs(self) -> dict[str, Any]:
        """SynthesizerTrn arguments from this section (the data-dependent ones are added by the trainer)."""
        return self.model_dump(exclude={"variant", "add_blank", "use_spectral_norm", "disc_divisor", "slm"})


class WaveGlowConfig(Strict):
    """NVIDIA's `waveglow_config` (its config.json names and values). Whether they fit together
    (n_group even and dividing 256, n_early_size leaving channels, ...) is model/waveglow_config.py's
    rule, checked when the waveglow stage starts: importing it here would make every stage's code
    hash (and cache keys) depend on the vocoder's model code."""
    n_mel_channels: int = Field(80, ge=1)
    n_flows: int = Field(12, ge=1)
    n_group: int = Field(8, ge=2)
    n_early_every: int = Field(4, ge=1)
    n_early_size: int = Field(2, ge=0)
    WN_config: dict[str, int] = Field(default_factory=lambda: {"n_layers": 8, "n_channels": 256, "kernel_size": 3})


# WaveGlow's hop: its upsampling layer (ConvTranspose1d kernel 1024, stride 256) fixes it; the same
# fact as model/waveglow_config.py's HOP_LENGTH (tests/tasks/core/test_config.py checks they agree).
HOP_LENGTH = 256


class WaveGlowDataConfig(Strict):
    """NVIDIA's `data_config` (training_files aside: the pipeline's ingested clips are the files)."""
    segment_length: int = Field(16000, ge=1024)  # samples of the random slice each training item is
    sampling_rate: int = Field(22050, ge=8000, le=96000)  # the ingested audio is resampled to it
    filter_length: int = Field(1024, ge=64)
    hop_length: int = HOP_LENGTH  # fixed by NVIDIA's upsampling layer (ConvTranspose1d kernel 1024, stride 256)
    win_length: int = Field(1024, ge=16)
    mel_fmin: float = Field(0.0, ge=0)
    mel_fmax: Optional[float] = 8000.0

    @model_validator(mode="after")
    def _fits(self) -> "WaveGlowDataConfig":
        if self.hop_length != HOP_LENGTH:
            raise ValueError(f"hop_length must be {HOP_LENGTH} (NVIDIA's upsampling layer: kernel 1024, stride 256), "
                             f"got {self.hop_length}")
        if self.win_length > self.filter_length:
            raise ValueError(f"win_length ({self.win_length}) must not exceed filter_length ({self.filter_length})")
        if self.mel_fmax is not None and not self.mel_fmin < self.mel_fmax <= self.sampling_rate / 2:
            raise ValueError(f"mel_fmax ({self.mel_fmax}) must lie above mel_fmin and at most sampling_rate / 2")
        return self

    def mel_kwargs(self, n_mel_channels: int) -> dict[str, Any]:
        """The arguments of model.waveglow.mel_spectrogram."""
        return dict(sampling_rate=self.sampling_rate, filter_length=self.filter_length, hop_length=self.hop_length,
                    win_length=self.win_length, n_mel_channels=n_mel_channels, mel_fmin=self.mel_fmin,
                    mel_fmax=self.mel_fmax)


class VocoderConfig(Strict):
    """Stage `waveglow` (tasks/training/waveglow.py): NVIDIA's WaveGlow trained (or fine-tuned) on the
    ingested clips; evaluate copy-synthesises the val split through it; export writes it."""
    enabled: bool = False  # off: the stage only records that it is off
    waveglow_config: WaveGlowConfig = WaveGlowConfig()
    data_config: WaveGlowDataConfig = WaveGlowDataConfig()
    # NVIDIA's train_config names where they exist (sigma, learning_rate, batch_size, seed, fp16_run
    # as `precision`), the loop's own knobs after them
    sigma: float = Field(1.0, gt=0)  # the training prior's std (NVIDIA: 1.0)
    learning_rate: float = Field(1e-4, gt=0)  # Adam, as NVIDIA
    batch_size: int = Field(12, ge=1)  # per process
    seed: int = 1234
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"  # fp16/bf16: autocast on CUDA (fp16 with a GradScaler)
    max_steps: int = Field(1000, ge=0)
    epochs: int = Field(100000, ge=1)
    log_interval: int = Field(50, ge=1)
    eval_interval: int = Field(500, ge=1)
    save_interval: int = Field(500, ge=1)
    keep_best: int = Field(2, ge=1)
    val_max_utterances: int = Field(8, ge=1)
    nproc: int = Field(1, ge=1)  # > 1: torchrun --nproc_per_node nproc (DDP)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Start from an NVIDIA checkpoint (.pt as its train.py saves it, e.g. the published
    # waveglow_256channels_universal_v5.pt), a state dict or safetensors file (path or s3:// URI),
    # or an earlier run (`run:<run_id>`, its latest bundle, or `run:<run_id>:<step>`); its config
    # must equal waveglow_config. Ignored when the run resumes.
    init_from: Optional[str] = None
    # copy-synthesis (evaluate, vitsflow vocode): the inference prior's std and the denoiser strength
    infer_sigma: float = Field(0.6, ge=0)
    denoise: float = Field(0.1, ge=0, le=1)
    run_id: RunId = None  # null: derived from these params and the data (same params, same run)

    @field_validator("init_from")
    @classmethod
    def _init_from(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            check_path_text(v)
            if v.startswith("run:") and not re.fullmatch(r"run:[A-Za-z0-9][\w.-]*(:\d+)?", v):
                raise ValueError("expected run:<run_id> or run:<run_id>:<step>")
        return v

    @model_validator(mode="after")
    def _fits(self) -> "VocoderConfig":
        if self.data_config.segment_length % self.waveglow_config.n_group:
            raise ValueError(f"data_config.segment_length ({self.data_config.segment_length}) must be a multiple of "
                             f"waveglow_config.n_group ({self.waveglow_config.n_group})")
        return self


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
    """When the `retrain` deployment runs (flows/deploy.py): a cron line in a IANA timezone."""
    cron: str = "0 3 * * 0"
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        fields = v.split()
        if not (re.fullmatch(r"@(yearly|annually|monthly|weekly|daily|hourly)", v.strip()) or
                (len(fields) == 5 and all(re.fullmatch(r"[0-9A-Za-z*/,?#LW-]+", f) for f in fields))):
            raise ValueError("expected a 5-field cron line like '0 3 * * 0' (minute hour day month weekday)")
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("expected an IANA timezone like 'UTC' or 'Europe/Berlin'") from None
        return v


class RetrainConfig(Strict):
    """What one run of the `retrain` deployment does (flows/retrain.py)."""
    # local: the `train` stage in this workspace (torchrun when train.nproc > 1); work_pool: the
    # `train` deployment on `work_pool`, a GPU machine that pulls the data version from the DVC remote.
    training: Literal["local", "work_pool"] = "local"
    work_pool: str = "gpu"
    train_deployment: str = "gpu"  # the `train` flow's deployment name: train/<train_deployment>
    gpu_slots: int = Field(1, ge=1, le=1024)  # the global concurrency limit `gpu`: trainings at once
    push: bool = True  # `dvc push` after preprocessing and after evaluation
    train_timeout_s: Optional[int] = Field(None, ge=1)  # give up waiting for a work-pool training; null: wait

    @field_validator("work_pool", "train_deployment")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.fullmatch(v):
            raise ValueError("expected a name of letters, digits, '.', '_' or '-'")
        return v


class PromotionConfig(Strict):
    """The promotion gate of the `evaluate` stage: when a candidate replaces production."""
    # The pointer lives at models/<model_name>/production.json on params.storage.
    model_name: str = "default"
    # The candidate's mean MCD must be lower than production's by at least this many dB.
    min_mcd_improvement_db: float = Field(0.0, ge=0)
    # ...and its mean log-F0 RMSE may exceed production's by at most this many cents.
    max_f0_rmse_regression_cents: float = Field(0.0, ge=0)
    # ...and, where both have them, its mean predicted MOS may be lower by at most this much...
    max_mos_regression: float = Field(0.0, ge=0)
    # ...and its mean CER (where the ASR judge covers the language) higher by at most this much.
    max_cer_regression: float = Field(0.0, ge=0)

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("expected letters, digits, '_', '-' or '.' (it becomes a storage folder)")
        return v


class EvalModelsConfig(Strict):
    """The judges (tasks/evaluation/judges.py): the bundled one by its name (weights in their wheels,
    offline), or a Hugging Face id, a local folder or package:<module>/<subdir>; null: the metric
    is not computed (and the report says so)."""
    asr: Optional[str] = "pocketsphinx"  # speech recognition -> cer, wer (pocketsphinx: English only)
    mos: Optional[str] = "dnsmos"        # MOS predictor -> mos, mos_reference (HF: one regression output)
    speaker: Optional[str] = "ge2e"      # speaker encoder -> speaker_similarity (HF: an x-vector model)


# Synthesis knobs when nobody sets them (upstream's web UI defaults): `vitsflow synth`, the Voice
# API, the evaluate stage and the export's config.json all take them from here.
SYNTHESIS_DEFAULTS = {"sdp_ratio": 0.2, "noise_scale": 0.6, "noise_scale_w": 0.8, "length_scale": 1.0}
# Upstream 2.3's web UI: style text weight, and the pauses of a split text (seconds; its sliders'
# defaults and ranges). tasks/inference/inputs.py, the CLI and the app read them from here.
STYLE_WEIGHT_DEFAULT = 0.7
PAUSE_DEFAULTS = {"sent_pause": 0.2, "para_pause": 1.0}
PAUSE_LIMITS = {"sent_pause": 5.0, "para_pause": 10.0}


class EvalConfig(Strict):
    """Stage `evaluate` (tasks/evaluation/evaluate.py): free-running synthesis of the val split vs. its recordings."""
    noise_scale: float = Field(SYNTHESIS_DEFAULTS["noise_scale"], ge=0)
    noise_scale_w: float = Field(SYNTHESIS_DEFAULTS["noise_scale_w"], ge=0)
    sdp_ratio: float = Field(SYNTHESIS_DEFAULTS["sdp_ratio"], ge=0, le=1)
    length_scale: float = Field(SYNTHESIS_DEFAULTS["length_scale"], gt=0)
    seed: int = 1234  # the synthesis noise, so evaluations are comparable
    max_utterances: Optional[int] = Field(None, ge=1)  # cap on val utterances (the first ones); null: all
    samples: int = Field(4, ge=0)  # utterances whose audio (reference, synthesis) and mel PNG are written
    # F0 extractor of f0_rmse_cents and vuv_error (benchmarks/bench_f0.py): pyin, crepe or crepe-tiny
    f0_method: Literal["pyin", "crepe", "crepe-tiny"] = "pyin"
    models: EvalModelsConfig = EvalModelsConfig()
    promotion: PromotionConfig = PromotionConfig()


class ExportConfig(Strict):
    """Stage `export` (tasks/orchestration/export.py): the checkpoint `evaluate` judged, exported."""
    # Any of safetensors, onnx, torchscript, upstream. null: the first three, plus upstream's
    # G_<step>.pth + config.json when upstream 2.3's code can run the model (export.json says why
    # not otherwise); a list naming `upstream` requires it (an incompatible model fails the stage).
    formats: Optional[list[Literal["safetensors", "onnx", "torchscript", "upstream"]]] = None

    @field_validator("formats")
    @classmethod
    def _some(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v is not None and not v:
            raise ValueError("expected at least one format, or null for the default")
        return v


class AppConfig(Strict):
    """`vitsflow app` (tasks/orchestration/app.py): the HTTP API and web page to listen to models."""
    host: str = "127.0.0.1"  # loopback by default: nothing outside this machine reaches it
    port: int = Field(7860, ge=1, le=65535)
    max_text_chars: int = Field(3000, ge=1, le=100000)  # a request's text (a page with split): longer is a 422
    max_batch: int = Field(8, ge=1, le=1024)  # sentences per batch request: more is a 422
    max_cached_models: int = Field(4, ge=1, le=64)  # loaded models kept in memory (least recently used go)
    max_upload_mb: float = Field(64.0, gt=0, le=1024)  # a conversion's files, and their decoded float32 samples: more is a 422
    # Folders holding export folders (each one, or its immediate subfolders, with a vitsflow config.json).
    exports: list[str] = Field(default_factory=lambda: ["export", "exports"])
    # Upstream server_fastapi's integer model_id i (/voice, /models/info) is the i-th of these model
    # ids (production, run:<id>:<step>, export:<folder>); empty: production, then the export folders.
    voice_models: list[str] = Field(default_factory=list)


class AsrModelConfig(Strict):
    """The Conformer content encoder (model/hifivc.py ContentEncoder): HiFi-VC's ASR bottleneck."""
    d_model: int = Field(144, ge=8)
    n_heads: int = Field(4, ge=1)
    n_layers: int = Field(4, ge=1)
    ff_mult: int = Field(4, ge=1)
    conv_kernel: int = Field(15, ge=1)  # odd: a centred depthwise convolution
    p_dropout: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _shapes(self) -> "AsrModelConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel {self.conv_kernel} must be odd (a centred convolution)")
        return self


class AsrConfig(Strict):
    """Stage `asr` (tasks/training/asr.py): a Conformer with a CTC head trained on the corpus's
    phones (the text stage's symbols) from 16 kHz log-mels: HiFi-VC's content encoder, and an
    in-domain phone recogniser. Off by default (the demo trains the voice only)."""
    enabled: bool = False
    model: AsrModelConfig = AsrModelConfig()
    learning_rate: float = Field(5e-4, gt=0)  # AdamW
    batch_size: int = Field(8, ge=1)  # per process
    grad_clip: float = Field(5.0, gt=0)
    seed: int = 1234
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast on CUDA
    max_steps: int = Field(1000, ge=0)
    epochs: int = Field(100000, ge=1)
    log_interval: int = Field(50, ge=1)
    eval_interval: int = Field(250, ge=1)
    save_interval: int = Field(250, ge=1)
    keep_best: int = Field(2, ge=1)
    val_max_utterances: int = Field(16, ge=1)
    nproc: int = Field(1, ge=1)  # > 1: torchrun --nproc_per_node nproc (DDP)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    run_id: RunId = None  # null: derived from these params and the data (same params, same run)


class VcModelConfig(Strict):
    """HiFi-VC's F0 encoder, speaker encoder and HiFi-GAN generator (model/hifivc.py); the content
    encoder's size is the `asr` stage's (its checkpoint is loaded, frozen)."""
    f0_channels: int = Field(64, ge=1)
    # utterance: log-F0 normalised per utterance, the pitch level from the reference (the paper's);
    # none: absolute log-F0, the output follows the source's level unless shifted (--pitch match)
    f0_norm: Literal["utterance", "none"] = "utterance"
    speaker_dim: int = Field(128, ge=1)
    upsample_initial_channel: int = Field(256, ge=16)  # HiFi-GAN V1: 512
    resblock: Literal["1", "2"] = "1"
    resblock_kernel_sizes: list[int] = [3, 7, 11]
    resblock_dilation_sizes: list[list[int]] = [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    disc_divisor: int = Field(4, ge=1)  # the discriminators' widths divided by it (1: VITS' full width)

    @model_validator(mode="after")
    def _shapes(self) -> "VcModelConfig":
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes need one entry each per branch")
        if self.upsample_initial_channel % 16:
            raise ValueError(f"upsample_initial_channel {self.upsample_initial_channel} must divide by 16 "
                             "(four upsampling blocks halve it)")
        if self.disc_divisor & (self.disc_divisor - 1):
            raise ValueError(f"disc_divisor {self.disc_divisor} must be a power of two")
        return self


class VcEvalPair(Strict):
    """One held-out conversion of the evaluate stage: `source` re-spoken in `reference`'s voice,
    both recordings of speakers the vc stage did not train on (local paths, relative to the repo)."""
    source: str
    reference: str
    text: Optional[str] = None  # the source's transcript: CER/WER (English) and PER against it
    language: Optional[str] = None  # the transcript's language (a `languages` key for PER)
    name: Optional[str] = None  # the pair's name in the report (default: source~reference stems)

    @field_validator("source", "reference")
    @classmethod
    def _local(cls, v: str) -> str:
        if not v.strip() or "://" in v.removeprefix("file://"):
            raise ValueError(f"expected a local audio file path, got {v!r}")
        return v


class VcPromotionConfig(Strict):
    """The conversion model's gate: models/<eval.promotion.model_name>-vc/production.json changes
    when the candidate's held-out pairs pass these (tasks/evaluation/conversion.py)."""
    # the share of pairs whose output is closer (GE2E cosine) to the reference than to the source
    min_win_rate: float = Field(0.5, ge=0, le=1)
    # mean (similarity to reference - similarity to source) over production's, at least
    min_margin_improvement: float = 0.0
    max_per_regression: float = Field(0.05, ge=0)  # phone error rate, where both have it


class VcConfig(Strict):
    """Stage `vc` (tasks/training/vc.py): HiFi-VC trained on the ingested clips with the `asr`
    stage's content encoder frozen: HiFi-GAN's losses plus the speaker VAE's KL, each clip's
    reference another clip of its speaker. Off by default (it needs the asr stage on)."""
    enabled: bool = False
    model: VcModelConfig = VcModelConfig()
    segment_frames: int = Field(32, ge=4)  # 20 ms content frames a training slice (32: 0.64 s)
    reference_seconds: float = Field(2.0, gt=0.4)  # the reference window's length (shorter clips: whole)
    # Training only: the content encoder's input mel resized along frequency by a factor drawn from
    # this range (FreeVC's augmentation: the content path then cannot be trusted with the voice, so
    # the generator takes it from the reference); null: off.
    content_warp: Optional[tuple[float, float]] = (0.85, 1.15)

    @field_validator("content_warp")
    @classmethod
    def _warp(cls, v: Optional[tuple[float, float]]) -> Optional[tuple[float, float]]:
        if v is not None and not 0 < v[0] <= v[1]:
            raise ValueError(f"expected [low, high] with 0 < low <= high, got {list(v)}")
        return v
    c_mel: float = Field(45.0, ge=0)  # HiFi-GAN's mel L1 weight
    c_kl: float = Field(0.01, ge=0)  # the speaker VAE's KL weight
    learning_rate: float = Field(2e-4, gt=0)  # AdamW, as HiFi-GAN
    betas: tuple[float, float] = (0.8, 0.99)
    batch_size: int = Field(8, ge=1)
    seed: int = 1234
    max_steps: int = Field(1000, ge=0)
    epochs: int = Field(100000, ge=1)
    log_interval: int = Field(50, ge=1)
    eval_interval: int = Field(250, ge=1)
    save_interval: int = Field(250, ge=1)
    keep_best: int = Field(2, ge=1)
    val_max_utterances: int = Field(8, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast on CUDA (the mel loss in fp32)
    nproc: int = Field(1, ge=1)  # > 1: torchrun --nproc_per_node nproc (DDP)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    run_id: RunId = None  # null: derived from these params, the content encoder and the data
    eval: list[VcEvalPair] = []  # held-out pairs judged by the evaluate stage (eval/vc.json)
    promotion: VcPromotionConfig = VcPromotionConfig()


class Params(Strict):
    demo: DemoConfig = DemoConfig()
    datasets: list[DatasetConfig]
    languages: dict[str, LanguageConfig]
    audio: AudioConfig = AudioConfig()
    split: SplitConfig = SplitConfig()
    ingest: StageConfig = StageConfig()
    text: TextStageConfig = TextStageConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    features: FeaturesConfig = FeaturesConfig()
    storage: StorageConfig = StorageConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    retrain: RetrainConfig = RetrainConfig()
    train: TrainConfig = TrainConfig()
    model: ModelConfig = ModelConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    app: AppConfig = AppConfig()
    vocoder: VocoderConfig = VocoderConfig()
    asr: AsrConfig = AsrConfig()
    vc: VcConfig = VcConfig()

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
        hop = self.features.spec.hop_length
        if math.prod(self.model.upsample_rates) != hop:
            raise ValueError(f"model.upsample_rates: their product ({math.prod(self.model.upsample_rates)}) must "
                             f"equal features.spec.hop_length ({hop}): the decoder makes one hop per frame")
        if self.train.segment_size % hop:
            raise ValueError(f"train.segment_size ({self.train.segment_size}) must be a multiple of "
                             f"features.spec.hop_length ({hop})")
        return self


def find_repo_root(params_path: Path) -> Path:
    return params_path.resolve().parent


def resolve_local(root: Path, value: str) -> Path:
    """A path from params as an absolute local path (relative ones against the repo root)."""
    value = value.removeprefix("file://")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path)


def resolve_model_path(root: Path, model: str, what: str = "BERT model") -> str:
    """A model value from params (`package:<module>/<subdir>`, a folder, or a hub id) as what
    transformers' from_pretrained takes (a folder or a hub id); `what` names it in errors."""
    if model.startswith("package:"):
        module, _, sub = model.removeprefix("package:").partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"{what} {model!r}: Python package {module!r} is not installed")
        path = Path(list(spec.submodule_search_locations)[0]) / sub
    elif model.startswith(("/", ".", "~")) or (root / model).exists():
        path = resolve_local(root, model)
    else:
        return model
    if not path.is_dir():
        raise ConfigError(f"{what} {model!r}: folder {path} does not exist")
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
        # A whole section as "got" would bury the message: name values, not mappings.
        got = "" if e["type"] == "missing" or isinstance(e["input"], (dict, list)) else f"got {e['input']!r}; "
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
