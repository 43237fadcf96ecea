"""Inference: text to speech and voice conversion with a trained generator.

    voice = load_voice("exports/demo")                       # an export folder (tasks/inference/export.py)
    voice = load_voice("file://storage/runs/<run_id>")       # a run's latest checkpoint bundle
    voice = load_voice("s3://bucket/prefix/runs/<run_id>/step_00000100", params_path="params.yaml")
    wav, sr = voice.synthesize("お元気ですか？", "ja", "ja_f1")
    out = voice.convert(wav, sr, "ja_f1", "en_m1")           # checkpoint bundles only

What a model reference can be, and where each piece comes from:

- an export folder (has `config.json`, written by tasks.inference.export.export_inference): everything comes
  from its config.json: symbol table, language ids and tone offsets, the language configs
  (normaliser, G2P backend and options, BERT model/layer/slot), BERT dims and fill, audio
  parameters, speaker map, generator hyperparameters; weights from model.safetensors. Inference
  only: it has no posterior encoder, so no voice conversion. `params_path`, when given, only
  supplies a language config the export lacks, and the BERT batch shape (features.bert) to an
  export that does not record it (`bert.batch`, written since 2026-12-07).
- a checkpoint bundle (`file://…/runs/<id>/step_N`, `s3://…/runs/<id>/step_N`, a local path to
  such a folder, or the run folder `…/runs/<id>` for its latest bundle, or the train stage's
  `train/run.json`): the generator's weights, symbol table, speaker list, model section,
  sample rate and STFT come from the bundle (state.pt, as the trainer saved them); the BERT width
  from the weights. The text frontends and BERT models (params `languages`), the BERT batch shape
  (`features.bert`) and the S3 endpoint come from `params_path` (default: params.yaml
  in the current folder), i.e. the repo's params, as the bundle does not record them.

Text becomes inputs in `tasks.inference.inputs.TextFrontend` (upstream 2.3's modes: one language
with `|`-separated utterances, mix, auto, style text, long text), which takes the training data's
path for every step, reusing its code: `tasks.prep.text.text_one` (normalise, G2P, the word2ph/phone
checks), `tasks.prep.bert.encode_features` (tokenizer, encoder cut at the configured layer, the
bert stage's batch shapes, word2ph expansion; fp16 rounding as the stage stores them), the slot
rule of `tasks.prep.bert.slot_inputs` and upstream's intersperse (add_blank as in training); then
`SynthesizerTrn.infer` once per utterance.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch

from model.mel_processing import STFTParams, linear_spectrogram
from model.models import VARIANTS, SynthesizerTrn
from tasks.inference.inputs import (DEFAULT_PARA_PAUSE, DEFAULT_SENT_PAUSE, DEFAULT_STYLE_WEIGHT, SynthError,
                                    TextFrontend, UtteranceInputs, split_text)
from tasks.prep.bert import BATCH_POLICY, SLOTS
from tasks.core.config import (SYNTHESIS_DEFAULTS, BertStageConfig, LanguageConfig, ModelConfig, Params,
                               find_repo_root, load_params)
from tasks.frontends import backend_info
from tasks.frontends.symbols import SymbolTable
from tasks.training.train import generator as build_g

logger = logging.getLogger("vitsflow.synth")

PathLike = Union[str, os.PathLike]
_RUN_REF = re.compile(r"^(?P<root>.*?)/?runs/(?P<run>[A-Za-z0-9][A-Za-z0-9_.-]*)(?:/step_(?P<step>\d+))?/*$")


@dataclass
class Synthesis:
    """One free-running synthesis: the waveform and the monotonic alignment that timed it."""
    wav: np.ndarray  # float32 [samples]
    sample_rate: int
    alignment: np.ndarray  # [frames, phones] (blanks included when the model adds them), 0/1


@dataclass
class Voice:
    """A generator with everything needed to turn text into its inputs."""

    generator: SynthesizerTrn
    symbols: SymbolTable
    speakers: dict[str, int]  # name -> speaker id
    languages: dict[str, LanguageConfig]  # code -> frontends and BERT model (languages with a config)
    bert_dims: dict[str, Optional[int]]  # slot -> width (tasks.prep.bert meta "dims")
    add_blank: bool
    sample_rate: int
    hop_length: int
    stft: Optional[STFTParams]  # the training STFT (checkpoint bundles; exports record it when given)
    kind: str  # "export" or "checkpoint"
    source: str  # the model reference as given
    root: Path = field(default_factory=Path.cwd)  # where relative BERT model paths resolve
    bert_stage: BertStageConfig = field(default_factory=BertStageConfig)  # batch shape of encode_batch
    device: str = "cpu"
    info: dict[str, Any] = field(default_factory=dict)  # run id, step, variant...

    # -- lookups with clear errors
    def speaker_id(self, speaker: str) -> int:
        if speaker not in self.speakers:
            raise SynthError(f"unknown speaker {speaker!r}; this model knows {sorted(self.speakers)}")
        return self.speakers[speaker]

    @property
    def frontend(self) -> TextFrontend:
        """Text -> this model's inputs (tasks/inference/inputs.py), one per Voice."""
        if "_frontend" not in self.__dict__:
            self.__dict__["_frontend"] = TextFrontend(self.symbols, self.languages, dict(self.bert_dims),
                                                      self.generator.use_bert, self.add_blank, self.root,
                                                      self.bert_stage, self.device)
        return self.__dict__["_frontend"]

    def language(self, language: str) -> LanguageConfig:
        return self.frontend.language(language)

    # -- text -> model inputs
    def text_inputs(self, text: str, language: str) -> dict[str, Any]:
        """One sentence's inputs as `infer` takes them ([1, T] tensors) and the frontend's result
        (normalise + G2P + BERT + ids, exactly as the text and bert stages and the training dataset)."""
        [utt] = self.frontend.request(text.replace("|", " "), language)
        row = utt.rows[0]
        return {"norm_text": row["norm_text"], "phones": row["phones"], **utt.tensors()}

    def bert_features(self, language: str, norm_text: str, word2ph: list[int]) -> np.ndarray:
        """[dim, n_phones] float16 through the bert stage's own encoder (a request's batch rows)."""
        [feats] = self.frontend._bert([(0, {"language": language, "norm_text": norm_text, "word2ph": word2ph})]).values()
        return feats.astype(np.float16)

    # -- synthesis
    @torch.no_grad()
    def infer(self, text: str, language: str, speaker: str, sdp_ratio: float = SYNTHESIS_DEFAULTS["sdp_ratio"],
              noise_scale: float = SYNTHESIS_DEFAULTS["noise_scale"], noise_scale_w: float = SYNTHESIS_DEFAULTS["noise_scale_w"],
              length_scale: float = SYNTHESIS_DEFAULTS["length_scale"], seed: Optional[int] = None,
              style_text: Optional[str] = None, style_weight: float = DEFAULT_STYLE_WEIGHT) -> "Synthesis":
        """Free-running synthesis with its alignment (Synthesis). `language` is a language code, `mix`
        (speakers from the text's [speaker] tags) or `auto`; `|` separates utterances, spoken one
        after another as upstream does. `seed` makes the noise reproducible."""
        self._check_knobs(sdp_ratio, length_scale)
        if language != "mix":
            self.speaker_id(speaker)
        utts = self.frontend.request(text, language, style_text, style_weight, set(self.speakers))
        return self._speak(utts, speaker, dict(sdp_ratio=sdp_ratio, noise_scale=noise_scale,
                                               noise_scale_w=noise_scale_w, length_scale=length_scale), seed)

    @staticmethod
    def _check_knobs(sdp_ratio: float, length_scale: float) -> None:
        if not 0.0 <= sdp_ratio <= 1.0:
            raise SynthError(f"sdp_ratio {sdp_ratio}: expected 0..1")
        if length_scale <= 0:
            raise SynthError(f"length_scale {length_scale}: expected > 0")

    def _speak(self, utts: list[UtteranceInputs], speaker: Optional[str], knobs: dict[str, float],
               seed: Optional[int]) -> "Synthesis":
        """Each utterance through the generator, the waveforms joined, the alignments block-diagonal."""
        dev = torch.device(self.device)
        wavs, aligns = [], []
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            for utt in utts:
                args = utt.tensors(self.device)
                sid = self.speaker_id(utt.utterance.speaker or speaker)
                o, attn, y_mask, _ = self.generator.infer(
                    args["x"], args["x_lengths"], torch.LongTensor([sid]).to(dev), args["tone"], args["language"],
                    args.get("bert"), args.get("ja_bert"), args.get("en_bert"), **knobs)
                frames = int(y_mask.sum().item())
                wavs.append(o[0, 0, :frames * self.hop_length].float().cpu().numpy().astype(np.float32))
                aligns.append(attn[0, 0, :frames].float().cpu().numpy())
        alignment = np.zeros((sum(a.shape[0] for a in aligns), sum(a.shape[1] for a in aligns)), np.float32)
        r = c = 0
        for a in aligns:
            alignment[r:r + a.shape[0], c:c + a.shape[1]] = a
            r, c = r + a.shape[0], c + a.shape[1]
        return Synthesis(np.concatenate(wavs), self.sample_rate, alignment)

    def synthesize(self, text: str, language: str, speaker: str, **knobs) -> tuple[np.ndarray, int]:
        """(waveform float32 [samples], sample rate); `knobs` as :meth:`infer`."""
        s = self.infer(text, language, speaker, **knobs)
        return s.wav, s.sample_rate

    @torch.no_grad()
    def synthesize_long(self, text: str, language: str, speaker: str, sent_pause: float = DEFAULT_SENT_PAUSE,
                        para_pause: float = DEFAULT_PARA_PAUSE, seed: Optional[int] = None, style_text: Optional[str] = None,
                        style_weight: float = DEFAULT_STYLE_WEIGHT, on_piece=None,
                        **knobs) -> tuple[np.ndarray, int, list[dict[str, Any]]]:
        """A page of text: upstream's tts_split (paragraphs, sentences, pauses at this model's rate),
        every piece's BERT batched together, the model run piece by piece. Returns (waveform, rate,
        pieces [{text, seconds, pause}]); `on_piece(i, wav)` is called as each piece is ready."""
        if language == "mix":
            raise SynthError("split: mix text carries [speaker] tags that cutting at sentences would separate "
                             "from their text; use `|` between utterances instead")
        self._check_knobs(knobs.get("sdp_ratio", SYNTHESIS_DEFAULTS["sdp_ratio"]),
                          knobs.get("length_scale", SYNTHESIS_DEFAULTS["length_scale"]))
        self.speaker_id(speaker)
        pieces, pauses = split_text(text, sent_pause, para_pause, self.sample_rate)
        # The first piece alone, spoken before the rest's BERT runs (batched): its audio is ready
        # first. Its features are the same either way on the CPU (tasks/inference/inputs.py).
        speakers = set(self.speakers)
        knobs = {k: knobs.get(k, v) for k, v in SYNTHESIS_DEFAULTS.items()}
        out, info = [], []
        for i, piece in enumerate(pieces):
            if i == 0:
                todo = self.frontend.requests(pieces[:1], language, style_text, style_weight, speakers, ["piece 1: "])
            elif i == 1:
                todo = self.frontend.requests(pieces[1:], language, style_text, style_weight, speakers,
                                              [f"piece {n}: " for n in range(2, len(pieces) + 1)])
            wav = self._speak(todo.pop(0), speaker, knobs, None if seed is None else seed + i).wav
            if on_piece is not None:
                on_piece(i, wav)
            out += [wav, np.zeros(int(round(pauses[i] * self.sample_rate)), np.float32)]
            info.append({"text": piece, "seconds": round(len(wav) / self.sample_rate, 3), "pause": pauses[i]})
        return np.concatenate(out), self.sample_rate, info

    # -- voice conversion
    @torch.no_grad()
    def convert(self, wav: np.ndarray, sr: int, source_speaker: str, target_speaker: str) -> np.ndarray:
        """Upstream VITS's voice_conversion: linear spectrogram (the training STFT) -> posterior
        encoder and flow with the source speaker -> reverse flow and decoder with the target
        speaker. Returns float32 [frames * hop] at self.sample_rate (input resampled to it)."""
        if getattr(self.generator, "enc_q", None) is None or self.stft is None:
            raise SynthError(f"{self.source}: voice conversion needs the posterior encoder (enc_q), which "
                             f"{'an export folder (inference-only)' if self.kind == 'export' else 'this model'} "
                             "does not have; use a checkpoint bundle (…/runs/<run_id>[/step_N])")
        if self.generator.n_speakers < 1:
            raise SynthError("voice conversion needs a multi-speaker model (speaker embeddings)")
        src, tgt = self.speaker_id(source_speaker), self.speaker_id(target_speaker)
        from tasks.prep.audio import resample

        x = np.asarray(wav, dtype=np.float32)
        if x.ndim == 2:  # [samples, channels] -> mono, as ingest does
            x = x.mean(axis=1)
        if x.ndim != 1:
            raise SynthError(f"expected a mono waveform [samples] or [samples, channels], got shape {x.shape}")
        x = resample(x, int(sr), self.sample_rate)
        if x.shape[0] < self.stft.n_fft:
            raise SynthError(f"audio too short: {x.shape[0]} samples at {self.sample_rate} Hz, "
                             f"need at least n_fft = {self.stft.n_fft}")
        dev = torch.device(self.device)
        g = self.generator
        spec = linear_spectrogram(torch.from_numpy(np.ascontiguousarray(x)).to(dev)[None], self.stft)
        lengths = torch.LongTensor([spec.shape[-1]]).to(dev)
        g_src = g._speaker(torch.LongTensor([src]).to(dev), None)
        g_tgt = g._speaker(torch.LongTensor([tgt]).to(dev), None)
        z, _, _, y_mask = g.enc_q(spec, lengths, g=g_src)
        z_p = g.flow(z, y_mask, g=g_src)
        z_hat = g.flow(z_p, y_mask, g=g_tgt, reverse=True)
        o = g.dec(z_hat * y_mask, g=g_tgt)
        return o[0, 0].float().cpu().numpy().astype(np.float32)


# ----------------------------------------------------------------------------- loading


def _params(params_path: Optional[PathLike], required: bool, why: str) -> Optional[Params]:
    path = Path(params_path) if params_path is not None else Path("params.yaml")
    if path.is_file():
        return load_params(path)
    if required or params_path is not None:
        raise SynthError(f"{path}: params file not found; {why}")
    return None


def _language_configs(entries: Mapping[str, Any]) -> dict[str, LanguageConfig]:
    out = {}
    for code, cfg in entries.items():
        if cfg is None:
            continue
        out[code] = cfg if isinstance(cfg, LanguageConfig) else LanguageConfig.model_validate(cfg)
    return out


def check_frontends(recorded: Mapping[str, Any], languages: Mapping[str, LanguageConfig], source: str) -> None:
    """Refuse a text frontend other than the one the model was trained with: it would feed the
    model phones and tones it never learned (e.g. `N` where it learned `n`)."""
    if not recorded:
        logger.warning("%s: the model does not record its text frontends (an older checkpoint); cannot check "
                       "that this code's frontends are the ones it was trained with", source)
        return
    for code, lang in languages.items():
        was = recorded.get(code)
        now = backend_info(lang.g2p)[1]
        if was is not None and was != now:
            raise SynthError(f"{source}: language {code!r} was trained with text frontend {was}, this code's "
                             f"{lang.g2p!r} frontend is {now}: it would hear other phones than it learned. "
                             "Synthesise with the vitsflow version that trained it, or re-run the text stage "
                             "and train again")


def _load_export(folder: Path, ref: str, params_path: Optional[PathLike], device: str) -> Voice:
    from tasks.inference.export import load_inference, read_inference_config

    config = read_inference_config(folder)
    params = _params(params_path, False, "")
    generator = load_inference(folder, map_location=device)
    symbols = SymbolTable.from_json(config["symbols"])
    languages = _language_configs({code: entry.get("config") for code, entry in config["languages"].items()})
    if params is not None:  # only fills languages the export has no config for
        languages = {**{c: l for c, l in params.languages.items() if c in symbols.language_ids}, **languages}
    check_frontends(config.get("frontends") or {}, languages, ref)
    audio = config["audio"]
    stft = None
    if all(k in audio for k in ("sample_rate", "n_fft", "hop_length", "win_length")):
        stft = STFTParams(audio["sample_rate"], audio["n_fft"], audio["hop_length"], audio["win_length"],
                          audio.get("n_mels", 80), audio.get("fmin", 0.0), audio.get("fmax"))
    model_params = config["model"].get("params") or {}
    return Voice(generator, symbols, {str(k): int(v) for k, v in config["speakers"].items()}, languages,
                 {slot: config["bert"]["dims"].get(slot) for slot in SLOTS}, bool(model_params.get("add_blank", True)),
                 int(audio["sample_rate"]), int(audio["hop_length"]), stft, "export", ref,
                 find_repo_root(Path(params_path)) if params_path is not None else Path.cwd(),
                 _export_bert_batch(config, params), device,
                 {"variant": config["variant"], "lineage": config.get("lineage")})


def _export_bert_batch(config: Mapping[str, Any], params: Optional[Params]) -> BertStageConfig:
    """The batch shape policy the export records; params' (or the defaults) for an older export."""
    base = params.features.bert if params is not None else BertStageConfig()
    recorded = config["bert"].get("batch")
    if not recorded:
        return base
    from pydantic import ValidationError

    try:
        return BertStageConfig.model_validate({**base.model_dump(), **{k: recorded[k] for k in BATCH_POLICY}})
    except ValidationError as e:
        detail = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
    except (KeyError, TypeError) as e:
        detail = f"{e!r} missing"
    raise SynthError(f"config.json bert.batch: not a batch policy ({detail})")


def _checkpoint_location(ref: str) -> Optional[tuple[str, str, Optional[int]]]:
    """(storage root URI, run id, step or None for latest) of a checkpoint reference, or None."""
    m = _RUN_REF.match(ref.rstrip("/"))
    if m is None:
        return None
    root = m.group("root") or "."
    if root in ("file:", "file:/"):  # file:///runs/... (a storage at the filesystem root)
        root = "file:///"
    return root, m.group("run"), (int(m.group("step")) if m.group("step") is not None else None)


def _load_checkpoint(ref: str, params_path: Optional[PathLike], device: str) -> Voice:
    from tasks.core.checkpoints import CheckpointStore
    from tasks.core.storage import open_storage

    loc = _checkpoint_location(ref)
    if loc is None:
        raise SynthError(f"{ref}: not a model reference: expected an export folder (with config.json), a "
                         "checkpoint bundle …/runs/<run_id>/step_N, a run folder …/runs/<run_id> or a train "
                         "manifest (train/run.json)")
    storage_root, run_id, step = loc
    params = _params(params_path, True, "a checkpoint bundle takes its text frontends and BERT models "
                                        "from the params `languages` (pass --params)")
    root = find_repo_root(Path(params_path) if params_path is not None else Path("params.yaml"))
    storage = open_storage(storage_root, root, params.storage.endpoint_url, params.storage.region)
    nets, state, manifest = CheckpointStore(storage, run_id).load(step)
    if "G" not in nets:
        raise SynthError(f"{ref}: the checkpoint has no generator (nets {sorted(nets)})")
    missing = [k for k in ("symbols", "speakers", "model", "sample_rate", "stft") if k not in state]
    if missing:
        raise SynthError(f"{ref}: the checkpoint's state lacks {missing}; it was not written by this trainer")
    symbols = SymbolTable.from_json(state["symbols"])
    model_cfg = ModelConfig.model_validate(state["model"])
    stft = STFTParams(**state["stft"])
    sd = nets["G"]
    use_bert = VARIANTS[model_cfg.variant]["use_bert"]
    bert_dim = int(sd["enc_p.bert_proj.weight"].shape[1]) if use_bert else 1024
    generator = build_g(model_cfg, symbols, len(state["speakers"]), bert_dim, stft.n_fft,
                        params.train.segment_size // stft.hop_length)
    generator.load_state_dict(sd, strict=True)
    generator.to(device).eval()
    languages = {c: l for c, l in params.languages.items() if c in symbols.language_ids}
    check_frontends(state.get("frontends") or {}, languages, ref)
    not_in_model = sorted(set(params.languages) - set(symbols.language_ids))
    if not_in_model:
        logger.warning("%s: params languages %s are not in the checkpoint's symbol table; ignored", ref, not_in_model)
    return Voice(generator, symbols, {name: i for i, name in enumerate(state["speakers"])}, languages,
                 {slot: (bert_dim if use_bert else None) for slot in SLOTS}, model_cfg.add_blank,
                 int(state["sample_rate"]), stft.hop_length, stft, "checkpoint", ref, root,
                 params.features.bert, device,
                 {"variant": model_cfg.variant, "run_id": run_id, "step": manifest["step"],
                  "lineage": manifest.get("lineage"), "checkpoint": f"{storage_root.rstrip('/')}/runs/{run_id}/"
                  f"{CheckpointStore.bundle_name(manifest['step'])}", "model": model_cfg.model_dump(mode="json"),
                  "frontends": dict(state.get("frontends") or {})})


def load_voice(model_ref: PathLike, params_path: Optional[PathLike] = None, device: str = "cpu") -> Voice:
    """A Voice from an export folder, a checkpoint bundle, a run folder (its latest bundle) or the
    train stage's run record (see the module docstring for what each provides)."""
    ref = os.fspath(model_ref)
    if not ref.startswith("s3://"):
        local = Path(ref.removeprefix("file://")).expanduser()
        if local.is_dir() and (local / "config.json").is_file():
            return _load_export(local, ref, params_path, device)
        if local.is_file() and local.suffix == ".json":
            try:
                uri = json.loads(local.read_text(encoding="utf-8"))["checkpoint"]["uri"]
            except (ValueError, KeyError, TypeError):
                raise SynthError(f"{ref}: not a run record (no checkpoint.uri)") from None
            return _load_checkpoint(uri, params_path, device)
        if not local.exists() and _checkpoint_location(ref) is None:
            raise SynthError(f"{ref}: no such model (not a folder, file or checkpoint URI)")
    return _load_checkpoint(ref, params_path, device)


BATCH_KEYS = {"text", "lang", "speaker", "style_text", "style_weight", "split", "sent_pause", "para_pause"}
_BATCH_TYPES = {"text": (str,), "lang": (str, type(None)), "speaker": (str, type(None)),
                "style_text": (str, type(None)), "style_weight": (int, float), "split": (bool,),
                "sent_pause": (int, float), "para_pause": (int, float)}
_BATCH_TYPE_NAMES = {"text": "a string", "lang": "a string", "speaker": "a string", "style_text": "a string or null",
                     "style_weight": "a number", "split": "true or false", "sent_pause": "a number",
                     "para_pause": "a number"}


def parse_batch(lines: list[str], language: Optional[str], speaker: Optional[str],
                defaults: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    """Batch lines -> jobs {line, speaker, lang, text, style_text, style_weight, split, sent_pause,
    para_pause}. A line is `speaker|lang|text`, a JSON object with those keys, or plain text that
    takes the default language and speaker; blank lines and lines starting with `#` are skipped.
    `defaults` fills what a line leaves out (the command line's style and split options). A line
    that cannot be read becomes {line, error}: it fails alone."""
    base = {"style_text": None, "style_weight": DEFAULT_STYLE_WEIGHT, "split": False, "sent_pause": DEFAULT_SENT_PAUSE,
            "para_pause": DEFAULT_PARA_PAUSE, **(defaults or {})}
    out = []
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out.append({"line": n, **_batch_job(line, language, speaker, base)})
        except SynthError as err:  # one bad line fails that line only
            out.append({"line": n, "error": str(err)})
    return out


def _batch_job(line: str, language: Optional[str], speaker: Optional[str], base: dict[str, Any]) -> dict[str, Any]:
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError as err:
            raise SynthError(f"not JSON ({err})") from None
        unknown = sorted(set(obj) - BATCH_KEYS) if isinstance(obj, dict) else None
        if unknown is None or unknown or "text" not in obj:
            raise SynthError(f"expected a JSON object with \"text\" and keys from {sorted(BATCH_KEYS)}"
                             + (f"; unknown {unknown}" if unknown else ""))
        job = {**base, "speaker": speaker, "lang": language, **obj}
        for key, kinds in _BATCH_TYPES.items():
            if not isinstance(job[key], kinds) or (kinds == (int, float) and isinstance(job[key], bool)):
                raise SynthError(f"{key!r}: {job[key]!r} is not {_BATCH_TYPE_NAMES[key]}")
    elif line.count("|") >= 2:
        spk, lang, text = (part.strip() for part in line.split("|", 2))
        job = {**base, "speaker": spk, "lang": lang, "text": text}
    else:
        job = {**base, "speaker": speaker, "lang": language, "text": line}
    if job["lang"] is None or (job["speaker"] is None and job["lang"] != "mix"):
        raise SynthError("plain text needs --lang and --speaker (or write `speaker|lang|text`)")
    if not job["text"].strip():
        raise SynthError("no text")
    return job


__all__ = ["SynthError", "Synthesis", "Voice", "load_voice", "parse_batch"]
