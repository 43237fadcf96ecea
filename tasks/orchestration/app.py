"""`vitsflow app`: an HTTP API (FastAPI, OpenAPI docs at /docs) and one web page to listen to what the
pipeline trained: synthesis with every knob, A/B of two models on the same sentence, any-to-any
voice conversion (a source and a reference, uploaded or recorded), and the eval report's metrics
and samples.

Models are chosen by id from listings, never by a path in the request:

    production                 the production pointer models/<eval.promotion.model_name>/production.json
    run:<run_id>:<step>        a kept checkpoint bundle of a run on params.storage (runs/<run_id>/step_N)
    export:<folder>            an export folder under one of params.app.exports (or that folder itself)

A model is loaded on first use and kept (least recently used first out, params.app.max_cached_models);
`production` is cached under the checkpoint it points to, so a promotion is picked up. Routes:

    GET  /                      the web page (static/app.html: plain HTML + JS)
    GET  /api/health            {"status": "ok", "loaded": [...]}
    GET  /api/models            the listing above
    GET  /api/models/{id}       one model, loaded: speakers, languages, sample rate
    POST /api/synthesize        JSON {model, text, language (a code, mix, auto), speaker, style_text,
                                style_weight, split, sent_pause, para_pause, sdp_ratio, noise_scale,
                                noise_scale_w, length_scale, seed} -> audio/wav
    POST /api/batch             JSON {model, items: [{text, language, speaker}], knobs...} -> JSON of base64 WAVs
    POST /api/ab                JSON {model_a, model_b, text, language, speaker, knobs...} -> both, same seed
    GET  /api/eval              eval/metrics.json's numeric headline keys, its model, and its samples
                                (recording, synthesis, and WaveGlow copy-synthesis when evaluated);
                                ?model=<id>: only if that is the checkpoint evaluate judged (else 404)
    GET  /api/eval/samples/{f}  one sample WAV of eval/samples/ (names from its listing only)
    GET  /api/vc/models         the any-to-any conversion models (HiFi-VC): `vc` (the vc stage's
                                train/vc.json), `vc-production` (models/<name>-vc/production.json),
                                `export:<folder>` (export folders holding hifivc.json)
    GET|POST /voice             upstream 2.3 server_fastapi.py's route and query parameters (model_id is
                                the i-th of params app.voice_models, or of GET /api/models) -> audio/wav
    GET  /models/info           upstream's listing of those models (speakers, language, version)
    POST /api/convert           JSON {model, source_base64, source_name, reference_base64,
                                reference_name, pitch} (files as uploaded: wav/flac/ogg/mp3) -> audio/wav
                                at 24 kHz; X-Conversion-Report: what was used (JSON)

Bad input is a 4xx whose `detail` says why: 404 unknown model or sample, 422 a field out of range,
text over params.app.max_text_chars, a batch over params.app.max_batch, an unknown speaker or
language, nothing speakable.
"""
from __future__ import annotations

import base64
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from tasks.core import paths
from tasks.core.config import (PAUSE_DEFAULTS, PAUSE_LIMITS, STYLE_WEIGHT_DEFAULT, SYNTHESIS_DEFAULTS, Params,
                               find_repo_root, load_params, resolve_local)
from tasks.core.storage import storage_from_config

logger = logging.getLogger("vitsflow.app")

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
STEP_DIR = re.compile(r"^step_(\d+)$")
DEFAULT_SEED = 1234  # A/B draws the same noise for both models unless the request says otherwise


# ----------------------------------------------------------------------------- requests


class Knobs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sdp_ratio: float = Field(SYNTHESIS_DEFAULTS["sdp_ratio"], ge=0, le=1,
                             description="Share of the stochastic duration predictor")
    noise_scale: float = Field(SYNTHESIS_DEFAULTS["noise_scale"], ge=0, le=5, description="Prior noise")
    noise_scale_w: float = Field(SYNTHESIS_DEFAULTS["noise_scale_w"], ge=0, le=5, description="Duration noise")
    length_scale: float = Field(SYNTHESIS_DEFAULTS["length_scale"], gt=0, le=5,
                                description="Speaking time factor (> 1: slower)")
    seed: Optional[int] = Field(None, ge=0, le=2**31 - 1, description="Seed of the noise (reproducible output)")


class Sentence(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(..., description="The text to speak (`|` separates utterances)")
    language: str = Field(..., description="A language code of the model (zh, ja, en, ...), mix "
                          "(`[speaker]<zh>…<jp>…<en>…`) or auto (detected)")
    speaker: Optional[str] = Field(None, description="A speaker name of the model (mix text names its own)")
    style_text: Optional[str] = Field(None, description="A text whose BERT mean is blended in (one language only)")
    style_weight: float = Field(STYLE_WEIGHT_DEFAULT, ge=0, le=1, description="0: the text's own BERT .. 1: the "
                                "style text's")
    split: bool = Field(False, description="Cut into paragraphs and sentences, spoken with pauses (upstream tts_split)")
    sent_pause: float = Field(PAUSE_DEFAULTS["sent_pause"], ge=0, le=PAUSE_LIMITS["sent_pause"],
                              description="With split: seconds after each sentence")
    para_pause: float = Field(PAUSE_DEFAULTS["para_pause"], ge=0, le=PAUSE_LIMITS["para_pause"],
                              description="With split: seconds after a paragraph")


class SynthRequest(Knobs, Sentence):
    model: str = Field("production", description="A model id from GET /api/models")


class BatchRequest(Knobs):
    model: str = Field("production", description="A model id from GET /api/models")
    items: list[Sentence] = Field(..., min_length=1, description="Sentences (at most params app.max_batch)")


class ConvertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field("vc", description="A conversion model id from GET /api/vc/models")
    source_base64: str = Field(..., description="The recording to re-speak: a wav/flac/ogg/mp3 file, base64")
    source_name: str = Field("source.wav", description="Its file name (the extension says the format)")
    reference_base64: str = Field(..., description="A recording of the target voice (>= 1 s of speech), base64")
    reference_name: str = Field("reference.wav", description="Its file name")
    pitch: Optional[str] = Field(None, description="match (the reference's pitch level) or follow (the source's)")


class ABRequest(Knobs, Sentence):
    model_a: str = Field(..., description="A model id from GET /api/models")
    model_b: str = Field(..., description="Another model id")


# ----------------------------------------------------------------------------- models


class Models:
    """The listing of choosable models and a cache of the loaded ones (by resolved reference)."""

    def __init__(self, params_path: Path):
        self.params_path = Path(params_path).resolve()
        self.params: Params = load_params(self.params_path)
        self.root = find_repo_root(self.params_path)
        self._cache: "OrderedDict[str, Any]" = OrderedDict()
        self._lock = threading.Lock()
        self._synth_locks: dict[str, threading.Lock] = {}

    # -- listing
    def _storage(self):
        return storage_from_config(self.params.storage, self.root)

    def production(self) -> Optional[dict]:
        from tasks.orchestration.export import read_production_pointer

        return read_production_pointer(self.params, self.root)

    def checkpoints(self) -> list[dict]:
        """Every complete checkpoint bundle (one with a manifest) of every run on params.storage."""
        from tasks.core.checkpoints import MANIFEST

        found: dict[tuple[str, int], None] = {}
        for key in self._storage().list("runs/"):
            parts = key.split("/")
            if len(parts) == 4 and parts[3] == MANIFEST and RUN_ID.match(parts[1]):
                m = STEP_DIR.match(parts[2])
                if m:
                    found[(parts[1], int(m.group(1)))] = None
        return [{"id": f"run:{run}:{step}", "kind": "checkpoint", "run_id": run, "step": step,
                 "label": f"{run} step {step}"} for run, step in sorted(found)]

    def _export_folders(self) -> list[tuple[str, Path]]:
        """(name, folder) of each params.app.exports folder and of its immediate subfolders."""
        out = []
        for base in self.params.app.exports:
            folder = resolve_local(self.root, base)
            out += [(base, folder)] + ([(f"{base}/{d.name}", d) for d in sorted(folder.iterdir()) if d.is_dir()]
                                       if folder.is_dir() else [])
        return out

    def exports(self) -> list[dict]:
        from tasks.inference.export import ExportError, read_inference_config

        out = []
        for name, path in self._export_folders():
            if not (path / "config.json").is_file():
                continue
            try:
                config = read_inference_config(path)
            except (ExportError, ValueError, OSError):
                continue  # e.g. an upstream-format config.json: not a bundle this app loads
            lineage = config.get("lineage") or {}
            out.append({"id": f"export:{name}", "kind": "export", "folder": name,
                        "run_id": lineage.get("run_id"), "step": lineage.get("step"),
                        "checkpoint": lineage.get("checkpoint"), "label": f"export {name}"})
        return out

    def listing(self) -> list[dict]:
        pointer = self.production()
        models = []
        if pointer is not None:
            ckpt = pointer.get("checkpoint") or {}
            models.append({"id": "production", "kind": "production", "checkpoint": ckpt.get("uri"),
                           "run_id": pointer.get("run_id"), "step": ckpt.get("step"),
                           "label": f"production ({self.params.eval.promotion.model_name}): {pointer.get('run_id')} "
                                    f"step {ckpt.get('step')}"})
        return models + self.checkpoints() + self.exports()

    def reference(self, model_id: str) -> str:
        """The load_voice reference of a listed model id (404 for anything not listed)."""
        if model_id == "production":
            pointer = self.production()
            if pointer is None:
                raise HTTPException(404, f"no production model: models/{self.params.eval.promotion.model_name}/"
                                         f"production.json is not on {self.params.storage.uri}")
            return pointer["checkpoint"]["uri"]
        if model_id.startswith("run:"):
            if any(m["id"] == model_id for m in self.checkpoints()):
                _, run, step = model_id.split(":")
                uri = self.params.storage.uri.rstrip("/")
                if uri.startswith("file://"):  # relative to the params' folder, not the server's cwd
                    uri = "file://" + str(resolve_local(self.root, uri))
                return f"{uri}/runs/{run}/step_{int(step):08d}"
        elif model_id.startswith("export:"):
            for m in self.exports():
                if m["id"] == model_id:
                    return str(resolve_local(self.root, m["folder"]))
        raise HTTPException(404, f"unknown model {model_id!r}: choose an id from GET /api/models")

    def checkpoint_of(self, model_id: str) -> tuple[Optional[str], Optional[int]]:
        """(run id, step) a listed model was trained to."""
        for m in self.listing():
            if m["id"] == model_id:
                return m.get("run_id"), m.get("step")
        raise HTTPException(404, f"unknown model {model_id!r}: choose an id from GET /api/models")

    # -- loading
    def voice(self, model_id: str):
        from tasks.core.checkpoints import CheckpointError
        from tasks.core.config import ConfigError
        from tasks.inference.export import ExportError
        from tasks.inference.synth import SynthError, load_voice

        ref = self.reference(model_id)
        with self._lock:
            if ref in self._cache:
                self._cache.move_to_end(ref)
                return self._cache[ref]
            try:
                voice = load_voice(ref, self.params_path)
            except (SynthError, ExportError, CheckpointError, ConfigError, FileNotFoundError) as err:
                raise HTTPException(500, f"model {model_id!r} ({ref}) cannot be loaded: {err}") from None
            self._cache[ref] = voice
            self._synth_locks.setdefault(ref, threading.Lock())
            while len(self._cache) > self.params.app.max_cached_models:
                self._cache.popitem(last=False)
            logger.info("loaded %s (%s)", model_id, ref)
            return voice

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._cache)

    # -- conversion (HiFi-VC)
    def vc_listing(self) -> list[dict]:
        from tasks.evaluation.conversion import vc_production_key, vc_record
        from tasks.inference.convert import EXPORT_CONFIG

        out = []
        try:
            record = vc_record(self.root)
        except ValueError:
            record = None
        if record is not None:
            out.append({"id": "vc", "label": f"vc stage: {record.get('run_id')} step {record['checkpoint'].get('step')}",
                        "ref": str(resolve_local(self.root, paths.VC_RECORD))})
        key = vc_production_key(self.params)
        if self._storage().exists(key):
            pointer = json.loads(self._storage().read_bytes(key).decode("utf-8"))
            out.append({"id": "vc-production", "label": f"production: {pointer.get('run_id')} step "
                                                        f"{pointer['checkpoint'].get('step')}",
                        "ref": pointer["checkpoint"]["uri"]})
        out += [{"id": f"export:{name}", "label": f"export {name}", "ref": str(path)}
                for name, path in self._export_folders() if (path / EXPORT_CONFIG).is_file()]
        return out

    def converter(self, model_id: str):
        from tasks.core.checkpoints import CheckpointError
        from tasks.core.storage import StorageError
        from tasks.inference.convert import ConvertError, load_converter

        refs = {m["id"]: m["ref"] for m in self.vc_listing()}
        if model_id not in refs:
            raise HTTPException(404, f"unknown conversion model {model_id!r}: choose an id from GET /api/vc/models")
        ref = refs[model_id]
        key = "vc:" + ref
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            try:
                converter = load_converter(ref, self.params_path)
            except (ConvertError, CheckpointError, StorageError, FileNotFoundError) as err:
                raise HTTPException(500, f"conversion model {model_id!r} ({ref}) cannot be loaded: {err}") from None
            self._cache[key] = converter
            while len(self._cache) > self.params.app.max_cached_models:
                self._cache.popitem(last=False)
            return converter

    def convert(self, req: "ConvertRequest") -> tuple[bytes, dict]:
        from tasks.inference.convert import ConvertError
        from tasks.prep.audio import AudioError, decode, wav_bytes

        limit = self.params.app.max_upload_mb
        audio = []
        for field in ("source", "reference"):
            data, name = getattr(req, f"{field}_base64"), Path(getattr(req, f"{field}_name")).name
            if len(data) * 3 / 4 > limit * 1e6 / 2:
                raise HTTPException(422, f"{field}: {len(data) * 3 / 4e6:.1f} MB, over half the limit of {limit:g} MB "
                                         "(params app.max_upload_mb)")
            try:
                audio.append(decode(base64.b64decode(data, validate=True), name))
            except (ValueError, AudioError) as err:  # binascii.Error is a ValueError
                raise HTTPException(422, f"{field} ({name}): {err}") from None
        decoded = sum(x.nbytes for x, _ in audio) / 1e6  # compressed files expand: the limit is on samples
        if decoded > limit:
            raise HTTPException(422, f"{decoded:.1f} MB of decoded audio, over the limit of {limit:g} MB "
                                     "(params app.max_upload_mb)")
        converter = self.converter(req.model)
        started = time.perf_counter()
        try:
            with self._synth_locks.setdefault("vc:" + converter.source, threading.Lock()):
                wav, report = converter.convert(*audio[0], *audio[1], req.pitch, Path(req.source_name).name,
                                                Path(req.reference_name).name)
        except ConvertError as err:
            raise HTTPException(422, str(err)) from None
        report["conversion_seconds"] = round(time.perf_counter() - started, 3)
        return wav_bytes(wav, converter.sample_rate), {"model": req.model, **report}

    def synthesize(self, model_id: str, sentence: Sentence, knobs: Knobs) -> tuple[bytes, dict]:
        from tasks.inference.synth import SynthError
        from tasks.prep.audio import wav_bytes

        limit = self.params.app.max_text_chars
        text = sentence.text.strip()
        if not text:
            raise HTTPException(422, "text: empty; type a sentence")
        if len(text) > limit:
            raise HTTPException(422, f"text: {len(text)} characters, over the limit of {limit} (params app.max_text_chars)")
        if sentence.speaker is None and sentence.language != "mix":
            raise HTTPException(422, "speaker: required (mix text names its speakers in [speaker] tags)")
        started = time.perf_counter()
        voice = self.voice(model_id)
        loaded = time.perf_counter()
        info: dict[str, Any] = {}
        try:
            style = dict(style_text=sentence.style_text, style_weight=sentence.style_weight)
            noise = dict(sdp_ratio=knobs.sdp_ratio, noise_scale=knobs.noise_scale, noise_scale_w=knobs.noise_scale_w,
                         length_scale=knobs.length_scale, seed=knobs.seed)
            with self._synth_locks.setdefault(voice.source, threading.Lock()):
                if sentence.split:
                    wav, sr, pieces = voice.synthesize_long(text, sentence.language, sentence.speaker,
                                                            sentence.sent_pause, sentence.para_pause, **style, **noise)
                    info["pieces"] = len(pieces)
                else:
                    wav, sr = voice.synthesize(text, sentence.language, sentence.speaker, **style, **noise)
        except SynthError as err:
            raise HTTPException(422, str(err)) from None
        done = time.perf_counter()
        return wav_bytes(wav, sr), {"model": model_id, "sample_rate": sr, "audio_seconds": round(len(wav) / sr, 3),
                                    "load_seconds": round(loaded - started, 3),
                                    "synthesis_seconds": round(done - loaded, 3), **info}

    # -- upstream 2.3's server_fastapi.py
    def upstream_ids(self) -> list[str]:
        """Upstream's integer model_id -> a model id: params app.voice_models, or (when empty) the
        production model and the export folders, whose order a new checkpoint does not change."""
        if self.params.app.voice_models:
            return list(self.params.app.voice_models)
        return (["production"] if self.production() is not None else []) + [m["id"] for m in self.exports()]

    def upstream_info(self, model_id: str) -> dict[str, Any]:
        """Upstream's Model.to_dict for one model (loads it: upstream's models are all loaded); a
        model that cannot be loaded is listed with its error instead of failing the listing."""
        try:
            voice = self.voice(model_id)
        except HTTPException as err:
            return {"id": model_id, "error": err.detail}
        spk2id = dict(sorted(voice.speakers.items(), key=lambda kv: kv[1]))
        return {"config_path": voice.source, "model_path": voice.source, "device": voice.device,
                "language": UPSTREAM_LANGUAGE.get(default_language(voice), default_language(voice)),
                "spk2id": spk2id, "id2spk": {str(i): name for name, i in spk2id.items()},
                "version": "2.3" if voice.info.get("variant") == "bert-vits2-2.3" else voice.info.get("variant"),
                "id": model_id}


UPSTREAM_LANGUAGE = {"zh": "ZH", "ja": "JP", "en": "EN"}  # upstream's language strings
VOICE_SPLIT_PAUSE = 0.2  # server_fastapi's auto_split: cut_sent, then 0.2 s after every sentence
FROM_UPSTREAM = {v: k for k, v in UPSTREAM_LANGUAGE.items()}


def upstream_language(language: str) -> str:
    """Upstream's ZH/JP/EN (any case), mix and auto (any case), or one of this model's codes."""
    if language.upper() in FROM_UPSTREAM:
        return FROM_UPSTREAM[language.upper()]
    return language.lower() if language.lower() in ("mix", "auto") else language


def default_language(voice) -> str:
    """The language a /voice request without one gets (upstream: the model's configured default, ZH)."""
    return next((c for c in ("zh", "ja", "en") if c in voice.languages), sorted(voice.languages)[0])


def upstream_status(code: int, detail: str) -> Response:
    """Upstream's error answer: HTTP 200 with {"status", "detail"}, which its clients read."""
    return Response(json.dumps({"status": code, "detail": detail}, ensure_ascii=False), media_type="application/json")


# ----------------------------------------------------------------------------- eval report


def _headline(metrics: dict) -> dict[str, float]:
    """Every top-level finite number of eval/metrics.json (mcd_db, f0_rmse_cents, ... and whatever
    other metrics the evaluation writes, e.g. mos, cer, wer, speaker_similarity)."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def eval_report(root: Path, eval_dir: str = paths.EVAL) -> Optional[dict]:
    folder = resolve_local(root, eval_dir)
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    samples: dict[str, dict] = {}
    for wav in sorted((folder / "samples").glob("*.wav")) if (folder / "samples").is_dir() else []:
        name, _, kind = wav.name.removesuffix(".wav").rpartition(".")
        if kind in SAMPLE_KINDS and name:
            samples.setdefault(name, {"id": name})[SAMPLE_KINDS[kind]] = f"/api/eval/samples/{wav.name}"
    copy_path = folder / "copy_synthesis.json"  # the waveglow stage on: copy-synthesis beside the voice
    copy = json.loads(copy_path.read_text(encoding="utf-8")) if copy_path.is_file() else None
    copy = copy if copy and copy.get("enabled", True) else None
    return {"model": metrics.get("model") or {}, "metrics": _headline(metrics),
            "settings": metrics.get("settings"), "samples": [s for s in samples.values() if "synthesis" in s or
                                                             "reference" in s],
            "copy_synthesis": None if copy is None else {"vocoder": copy.get("vocoder"),
                                                         "metrics": _headline(copy.get("overall") or {})}}


# sample file kinds of eval/samples/<id>.<kind>.wav: the recording, the voice, WaveGlow's copy-synthesis
SAMPLE_KINDS = {"ref": "reference", "syn": "synthesis", "wg": "copy_synthesis"}


# ----------------------------------------------------------------------------- the app


def _page() -> str:
    return resources.files("tasks.orchestration").joinpath("static/app.html").read_text(encoding="utf-8")


def _b64(wav: bytes, info: dict) -> dict:
    return {**info, "wav_base64": base64.b64encode(wav).decode("ascii")}


def create_app(params_path: Path | str = "params.yaml") -> FastAPI:
    models = Models(Path(params_path))
    app = FastAPI(title="vitsflow", version="1", description="Listen to the models the pipeline trained: "
                  "synthesis, A/B of two models, the evaluation's metrics and samples.")
    app.state.models = models
    page = _page()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "loaded": models.loaded()}

    @app.get("/api/models")
    def list_models() -> dict:
        return {"models": models.listing(), "limits": {"max_text_chars": models.params.app.max_text_chars,
                                                        "max_batch": models.params.app.max_batch},
                "defaults": SYNTHESIS_DEFAULTS}

    @app.get("/api/models/{model_id:path}")
    def model_info(model_id: str) -> dict:
        voice = models.voice(model_id)
        return {"id": model_id, "kind": voice.kind, "speakers": sorted(voice.speakers, key=voice.speakers.get),
                "languages": sorted(voice.languages), "sample_rate": voice.sample_rate,
                "run_id": voice.info.get("run_id") or (voice.info.get("lineage") or {}).get("run_id"),
                "step": voice.info.get("step") or (voice.info.get("lineage") or {}).get("step"),
                "variant": voice.info.get("variant")}

    @app.post("/api/synthesize", response_class=Response,
              responses={200: {"content": {"audio/wav": {}}, "description": "16-bit PCM WAV"}})
    def synthesize(req: SynthRequest) -> Response:
        wav, info = models.synthesize(req.model, req, req)
        headers = {"X-Model": req.model, "X-Audio-Seconds": str(info["audio_seconds"]),
                   "X-Synthesis-Seconds": str(info["synthesis_seconds"]), "X-Load-Seconds": str(info["load_seconds"])}
        if "pieces" in info:
            headers["X-Pieces"] = str(info["pieces"])
        return Response(wav, media_type="audio/wav", headers=headers)

    @app.post("/api/batch")
    def batch(req: BatchRequest) -> dict:
        limit = models.params.app.max_batch
        if len(req.items) > limit:
            raise HTTPException(422, f"items: {len(req.items)} sentences, over the limit of {limit} "
                                     "(params app.max_batch)")
        out = []
        for n, item in enumerate(req.items):
            knobs = req.model_copy(update={"seed": None if req.seed is None else req.seed + n})
            try:
                wav, info = models.synthesize(req.model, item, knobs)
            except HTTPException as err:
                raise HTTPException(err.status_code, f"items.{n}: {err.detail}") from None
            out.append(_b64(wav, {"index": n, **info}))
        return {"model": req.model, "items": out}

    @app.post("/api/ab")
    def ab(req: ABRequest) -> dict:
        knobs = req.model_copy(update={"seed": DEFAULT_SEED if req.seed is None else req.seed})
        result = {}
        for side, model_id in (("a", req.model_a), ("b", req.model_b)):
            try:
                wav, info = models.synthesize(model_id, req, knobs)
            except HTTPException as err:
                raise HTTPException(err.status_code, f"model_{side}: {err.detail}") from None
            result[side] = _b64(wav, info)
        return {"text": req.text, "seed": knobs.seed, **result}

    @app.get("/api/vc/models")
    def list_vc_models() -> dict:
        return {"models": [{k: m[k] for k in ("id", "label")} for m in models.vc_listing()],
                "limits": {"max_upload_mb": models.params.app.max_upload_mb}}

    @app.post("/api/convert", response_class=Response,
              responses={200: {"content": {"audio/wav": {}}, "description": "16-bit PCM WAV at 24 kHz"}})
    def convert(req: ConvertRequest) -> Response:
        wav, info = models.convert(req)
        return Response(wav, media_type="audio/wav",
                        headers={"X-Model": req.model, "X-Audio-Seconds": str(info["seconds"]),
                                 "X-Conversion-Report": json.dumps(info, ensure_ascii=True)})

    # -- upstream Bert-VITS2 2.3's server_fastapi.py routes, so its clients work unchanged
    def voice_route(text: str, model_id: int, speaker_name: Optional[str], speaker_id: Optional[int],
                    sdp_ratio: float, noise: float, noisew: float, length: float, language: Optional[str],
                    auto_translate: bool, auto_split: bool, style_text: Optional[str], style_weight: float) -> Response:
        ids = models.upstream_ids()
        if not 0 <= model_id < len(ids):
            return upstream_status(10, f"模型model_id={model_id}未加载 (model_id {model_id} is not loaded; "
                                       f"there are {len(ids)}: GET /models/info)")
        mid = ids[model_id]
        voice = models.voice(mid)
        if speaker_name is None and speaker_id is None:
            return upstream_status(11, "请提供speaker_name或speaker_id (give speaker_name or speaker_id)")
        if speaker_name is None:
            names = {i: name for name, i in voice.speakers.items()}
            if speaker_id not in names:
                return upstream_status(12, f"角色speaker_id={speaker_id}不存在 (no speaker_id {speaker_id})")
            speaker_name = names[speaker_id]
        if speaker_name not in voice.speakers:
            return upstream_status(13, f"角色speaker_name={speaker_name}不存在 (no speaker {speaker_name!r})")
        code = default_language(voice) if language is None else upstream_language(language)
        if auto_translate:
            if code in ("mix", "auto"):
                return upstream_status(20, f"请勿同时使用language = {language}与auto_translate模式 "
                                           f"(auto_translate cannot be used with language={language})")
            raise HTTPException(422, "auto_translate: translation needs an online service, which vitsflow does not "
                                     "call; send the text in the language to speak")
        if code == "mix":  # upstream's mix text names its speakers; the query's speaker is checked as upstream does
            speaker_name = None
        sentence = Sentence(text=text, language=code, speaker=speaker_name,
                            style_text=style_text, style_weight=style_weight, split=auto_split,
                            sent_pause=VOICE_SPLIT_PAUSE, para_pause=VOICE_SPLIT_PAUSE)
        wav, info = models.synthesize(mid, sentence, Knobs(sdp_ratio=sdp_ratio, noise_scale=noise,
                                                           noise_scale_w=noisew, length_scale=length))
        return Response(wav, media_type="audio/wav", headers={"X-Model": mid,
                                                              "X-Audio-Seconds": str(info["audio_seconds"])})

    voice_doc = ("Upstream Bert-VITS2 2.3's /voice: text to audio/wav. Its errors as upstream answers them "
                 "(HTTP 200, JSON {status, detail}: 10 no such model_id, 11 no speaker given, 12/13 unknown "
                 "speaker_id/speaker_name, 20 auto_translate with mix/auto); anything else a 4xx with detail.")

    @app.get("/voice", response_class=Response, description=voice_doc)
    def voice_get(text: str = Query(..., description="输入文字 / the text"),
                  model_id: int = Query(..., description="模型ID: GET /models/info"),
                  speaker_name: Optional[str] = Query(None, description="说话人名 (or speaker_id)"),
                  speaker_id: Optional[int] = Query(None, description="说话人id"),
                  sdp_ratio: float = Query(0.2, ge=0, le=1), noise: float = Query(0.2, ge=0, le=5),
                  noisew: float = Query(0.9, ge=0, le=5), length: float = Query(1.0, gt=0, le=5),
                  language: Optional[str] = Query(None, description="ZH, JP, EN, mix, auto (or a language code)"),
                  auto_translate: bool = Query(False), auto_split: bool = Query(False),
                  emotion: Optional[str] = Query(None, description="accepted; unused in 2.3 (as upstream)"),
                  style_text: Optional[str] = Query(None, description="风格文本 / style text"),
                  style_weight: float = Query(STYLE_WEIGHT_DEFAULT, ge=0, le=1, description="风格权重")) -> Response:
        return voice_route(text, model_id, speaker_name, speaker_id, sdp_ratio, noise, noisew, length, language,
                           auto_translate, auto_split, style_text, style_weight)

    @app.post("/voice", response_class=Response, description=voice_doc)
    def voice_post(text: str = Form(..., description="输入文字 / the text"),
                   model_id: int = Query(...), speaker_name: Optional[str] = Query(None),
                   speaker_id: Optional[int] = Query(None), sdp_ratio: float = Query(0.2, ge=0, le=1),
                   noise: float = Query(0.2, ge=0, le=5), noisew: float = Query(0.9, ge=0, le=5),
                   length: float = Query(1.0, gt=0, le=5), language: Optional[str] = Query(None),
                   auto_translate: bool = Query(False), auto_split: bool = Query(False),
                   emotion: Optional[str] = Query(None), reference_audio: Optional[UploadFile] = File(None),
                   style_text: Optional[str] = Form(None), style_weight: float = Query(STYLE_WEIGHT_DEFAULT, ge=0, le=1)) -> Response:
        # reference_audio: accepted and unused, as in upstream 2.3 (its emotion/CLAP path is commented out)
        return voice_route(text, model_id, speaker_name, speaker_id, sdp_ratio, noise, noisew, length, language,
                           auto_translate, auto_split, style_text, style_weight)

    @app.get("/models/info")
    def upstream_models_info() -> dict:
        """Upstream's /models/info: {model_id: {config_path, model_path, device, language, spk2id, id2spk,
        version}} (plus this app's model id), every model loaded."""
        return {str(i): models.upstream_info(mid) for i, mid in enumerate(models.upstream_ids())}

    @app.get("/api/eval")
    def evaluation(model: Optional[str] = Query(None, description="Only if this model id is the checkpoint "
                                                "evaluate judged")) -> dict:
        report = eval_report(models.root)
        if report is None:
            raise HTTPException(404, f"no evaluation: {paths.EVAL}/metrics.json does not exist (run `dvc repro "
                                     "evaluate` or `vitsflow evaluate`)")
        if model is not None:
            run_id, step = models.checkpoint_of(model)
            judged = (report["model"].get("run_id"), report["model"].get("step"))
            if (run_id, step) != judged:
                raise HTTPException(404, f"no evaluation of {model!r} ({run_id} step {step}): "
                                         f"{paths.EVAL}/metrics.json judged {judged[0]} step {judged[1]}")
        return report

    @app.get("/api/eval/samples/{name}", response_class=FileResponse)
    def sample(name: str) -> FileResponse:
        report = eval_report(models.root)
        known = {Path(url).name for s in (report or {}).get("samples", [])
                 for url in (s.get(kind) for kind in SAMPLE_KINDS.values()) if url}
        if name not in known:
            raise HTTPException(404, f"no eval sample {name!r}; GET /api/eval lists them")
        return FileResponse(resolve_local(models.root, paths.EVAL) / "samples" / name, media_type="audio/wav")

    return app


def serve(params_path: Path | str = "params.yaml", host: Optional[str] = None, port: Optional[int] = None) -> None:
    """Run the app with uvicorn until interrupted (host/port default to params.app)."""
    import uvicorn

    application = create_app(params_path)
    cfg = application.state.models.params.app
    uvicorn.run(application, host=host or cfg.host, port=port or cfg.port, log_level="info")


__all__ = ["Models", "create_app", "eval_report", "serve"]
