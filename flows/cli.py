"""`vitsflow`: the command line. Each pipeline command runs one stage's Prefect flow."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from tasks.core import paths
from tasks.core.config import PAUSE_DEFAULTS, STYLE_WEIGHT_DEFAULT, SYNTHESIS_DEFAULTS

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from params paths; never a surprise download
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls from a temporary server

app = typer.Typer(help="Reproducible data and training pipeline for Bert-VITS2 text-to-speech.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

PARAMS = typer.Option("params.yaml", "--params", "-p", help="The pipeline's params file.")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def _run(flow_name: str, **kwargs) -> dict:
    from prefect.settings import temporary_settings

    from flows import stages
    from tasks.core.config import ConfigError
    from tasks.prep.datasets import DatasetError

    # A stage's flow run sends no heartbeats unless PREFECT_FLOWS_HEARTBEAT_FREQUENCY asks for them:
    # stages are short and `dvc repro` reports their failures, and joining Prefect's heartbeat thread
    # (it sleeps in 1 s steps) cost each stage up to a second at exit: a third of a stage with no work.
    heartbeats = {} if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in os.environ else {"flows.heartbeat_frequency": None}
    try:
        flow = stages.with_workers(getattr(stages, flow_name), kwargs["params_path"])
        with temporary_settings(updates=heartbeats):
            return flow(**kwargs)
    except (ConfigError, DatasetError, FileNotFoundError) as err:
        _fail(str(err))


@app.command()
def validate(params: str = PARAMS) -> None:
    """Check params.yaml against the schema and print the parsed configuration."""
    from tasks.core.config import ConfigError, load_params

    try:
        parsed = load_params(params)
    except ConfigError as err:
        _fail(str(err))
    typer.echo(json.dumps(parsed.model_dump(), indent=2, ensure_ascii=False))


@app.command()
def demo(params: str = PARAMS) -> None:
    """Stage `demo`: synthesise the embedded multilingual demo corpus with espeak-ng."""
    _run("demo_flow", params_path=params)


@app.command()
def fingerprint(dataset: str = typer.Option(..., help="A dataset name from params.yaml."),
                out: str = typer.Option(..., help="The JSON file to write."), params: str = PARAMS) -> None:
    """Stage `source@N`: list a dataset's files with their hashes, so ingest sees corpus changes."""
    from tasks.core.cache import FileHashes
    from tasks.core.config import ConfigError, find_repo_root, load_params, resolve_local
    from tasks.prep.datasets import DatasetError, fingerprint_dataset
    from tasks.core.storage import atomic_write_bytes

    try:
        p = load_params(params)
        root = find_repo_root(Path(params))
        ds = next((d for d in p.datasets if d.name == dataset), None)
        if ds is None:
            _fail(f"dataset {dataset!r} is not in {params} (datasets: {[d.name for d in p.datasets]})")
        info = fingerprint_dataset(ds, root, FileHashes.in_dir(resolve_local(root, p.runtime.cache_dir)))
    except (ConfigError, DatasetError) as err:
        _fail(str(err))
    atomic_write_bytes(resolve_local(root, out), json.dumps(info, indent=1, ensure_ascii=False).encode("utf-8"))
    typer.echo(f"{dataset}: {len(info['files'])} files")


@app.command()
def prepare(params: str = PARAMS, out: str = typer.Option(paths.PREPARED, help="Output folder.")) -> None:
    """Stage `prepare`: slice and transcribe every raw_audio dataset's long recordings into clips."""
    typer.echo(json.dumps(_run("prepare_flow", params_path=params, out=out)))


@app.command("slice")
def slice_(in_: str = typer.Option(..., "--in", "-i", help="A long recording, or a folder of them."),
           out: str = typer.Option(..., "--out", "-o", help="The folder for the clips and manifest.jsonl."),
           min_seconds: Optional[float] = typer.Option(None, help="Shortest clip (default 1.0)."),
           max_seconds: Optional[float] = typer.Option(None, help="Longest clip (default 12.0)."),
           min_silence: Optional[float] = typer.Option(None, help="A pause this long separates clips (default 0.4)."),
           padding: Optional[float] = typer.Option(None, help="Seconds kept around each clip (default 0.1).")) -> None:
    """Cut long recordings into clips at pauses (Silero VAD); print a JSON summary."""
    from pydantic import ValidationError

    from tasks.core.config import SliceParams
    from tasks.prep.slicing import slice_files

    given = {k: v for k, v in dict(min_seconds=min_seconds, max_seconds=max_seconds, min_silence=min_silence,
                                   padding=padding).items() if v is not None}
    try:
        cfg = SliceParams(**given)
    except ValidationError as err:
        _fail("; ".join(e["msg"] for e in err.errors()))
    src = Path(in_)
    inputs = sorted(p for p in src.rglob("*") if p.suffix.lower() in {".wav", ".flac", ".ogg", ".mp3"}) \
        if src.is_dir() else [src]
    if not inputs or not all(p.is_file() for p in inputs):
        _fail(f"{in_}: no audio file (wav, flac, ogg, mp3) found")
    try:
        result = slice_files(inputs, Path(out), cfg)
    except ValueError as err:
        _fail(str(err))
    typer.echo(json.dumps({"clips": len(result["clips"]), "dropped": result["dropped"],
                           "seconds_in": round(result["seconds_in"], 3), "seconds_out": round(result["seconds_out"], 3),
                           "manifest": str(Path(out) / "manifest.jsonl")}))


@app.command()
def transcribe(in_: str = typer.Option(..., "--in", "-i", help="A folder of clips (e.g. `vitsflow slice` output)."),
               out: str = typer.Option(..., "--out", "-o", help="The dataset list to write."),
               lang: str = typer.Option(..., "--lang", help="The clips' language code (en, zh, ja, ...)."),
               speaker: str = typer.Option("speaker", help="The speaker name written in the list."),
               model: str = typer.Option("pocketsphinx", help="pocketsphinx (English) or a transformers "
                                         "speech-recognition model: a local folder or a Hugging Face id."),
               format_: str = typer.Option("bv2_list", "--format", help="bv2_list or jsonl."),
               min_confidence: float = typer.Option(0.3, help="Clips less sure than this go to the review file."),
               review: Optional[str] = typer.Option(None, help="The review file (default: OUT with .review.jsonl).")
               ) -> None:
    """Transcribe clips into a dataset list; unsure transcripts go to a review file instead."""
    from tasks.core.storage import atomic_write_bytes
    from tasks.prep.asr import bv2_line, load_asr, transcribe_clips
    from tasks.prep.audio import AudioError, decode

    if format_ not in ("bv2_list", "jsonl"):
        _fail(f"--format must be bv2_list or jsonl, not {format_!r}")
    folder, out_path = Path(in_), Path(out)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".wav", ".flac", ".ogg", ".mp3"})
    if not files:
        _fail(f"{in_}: no audio clips found")
    try:
        asr = load_asr(model, lang, path=model if Path(model).is_dir() else None)
    except (ValueError, OSError) as err:
        _fail(str(err))
    clips = []
    for f in files:
        try:
            wav, sr = decode(f.read_bytes(), f.name)
        except (OSError, AudioError) as err:
            _fail(f"{f}: {err}")
        clips.append((f.relative_to(folder).as_posix(), wav, sr))  # relative to --in (a dataset's path or audio_root)
    rows, unsure = transcribe_clips(clips, asr, lang, speaker, min_confidence)
    text = "".join((bv2_line(r) if format_ == "bv2_list" else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)
    atomic_write_bytes(out_path, text.encode("utf-8"))
    review_path = Path(review) if review else out_path.with_suffix(".review.jsonl")
    atomic_write_bytes(review_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in unsure).encode("utf-8"))
    typer.echo(json.dumps({"list": str(out_path), "clips": len(rows), "review": len(unsure),
                           "review_file": str(review_path)}))


@app.command()
def ingest(params: str = PARAMS, out: str = typer.Option(paths.INGEST, help="Output folder.")) -> None:
    """Stage `ingest`: decode, resample, condition, dedup, shard and split every dataset."""
    _run("ingest_flow", params_path=params, out=out)


@app.command()
def text(params: str = PARAMS,
         ingest_dir: str = typer.Option(paths.INGEST, "--in", help="The ingest stage's folder."),
         out: str = typer.Option(paths.TEXT, help="Output folder.")) -> None:
    """Stage `text`: normalisation and G2P (phones, tones, word2ph) for every utterance."""
    _run("text_flow", params_path=params, ingest_dir=ingest_dir, out=out)


@app.command()
def bert(params: str = PARAMS,
         text_dir: str = typer.Option(paths.TEXT, "--in", help="The text stage's folder."),
         out: str = typer.Option(paths.BERT, help="Output folder.")) -> None:
    """Stage `bert`: phone-level BERT features (fp16, sharded), batched, cached by content."""
    _run("bert_flow", params_path=params, text_dir=text_dir, out=out)


@app.command()
def spec(params: str = PARAMS,
         ingest_dir: str = typer.Option(paths.INGEST, "--in", help="The ingest stage's folder."),
         out: str = typer.Option(paths.SPEC, help="Output folder.")) -> None:
    """Stage `spec`: linear spectrograms with the model's own STFT (cached or on the fly)."""
    _run("spec_flow", params_path=params, ingest_dir=ingest_dir, out=out)


@app.command()
def stats(params: str = PARAMS, out: str = typer.Option(paths.REPORTS, help="Output folder.")) -> None:
    """Stage `stats`: corpus statistics, sampler buckets and dropped clips (metrics, markdown, PNG)."""
    _run("stats_flow", params_path=params, out=out)


@app.command()
def train(params: str = PARAMS,
          out: str = typer.Option(paths.RUN_RECORD, help="The run record to write (run id, checkpoint, metrics).")
          ) -> None:
    """Stage `train`: train Bert-VITS2 on data/ (in-process, or torchrun for train.nproc > 1); a rerun resumes."""
    import subprocess

    from flows.train import train_flow
    from tasks.core.checkpoints import CheckpointError
    from tasks.core.config import ConfigError

    try:
        summary = train_flow(params_path=params, out=out)
    except (ConfigError, FileNotFoundError, CheckpointError, subprocess.CalledProcessError,
            ValueError) as err:  # ValueError: e.g. TORCHRUN_ARGS with no rendezvous endpoint
        _fail(str(err))
    typer.echo(json.dumps({k: summary[k] for k in ("run_id", "checkpoint", "metrics")}))


@app.command()
def waveglow(params: str = PARAMS,
             out: str = typer.Option(paths.WAVEGLOW_RECORD, help="The vocoder's run record to write.")) -> None:
    """Stage `waveglow`: NVIDIA's WaveGlow trained on the ingested clips (params `vocoder`); a rerun resumes."""
    from model.waveglow import CheckpointError as WaveGlowCheckpointError
    from tasks.core.checkpoints import CheckpointError
    from tasks.core.config import ConfigError
    from tasks.training.waveglow import VocoderError

    try:
        record = _run("waveglow_flow", params_path=params, out=out)
    except (ConfigError, CheckpointError, WaveGlowCheckpointError, VocoderError, RuntimeError) as err:
        # (RuntimeError: torchrun's failure, as launch_torchrun reports it)
        _fail(str(err))
    typer.echo(json.dumps({k: record.get(k) for k in ("enabled", "run_id", "checkpoint", "metrics")}))


@app.command()
def asr(params: str = PARAMS,
        out: str = typer.Option(paths.ASR_RECORD, help="The content encoder's run record to write.")) -> None:
    """Stage `asr`: HiFi-VC's Conformer content encoder, CTC-trained on the text stage's phones (params `asr`); a rerun resumes."""
    from tasks.core.checkpoints import CheckpointError
    from tasks.core.config import ConfigError
    from tasks.training.asr import AsrError

    try:
        record = _run("asr_flow", params_path=params, out=out)
    except (ConfigError, CheckpointError, AsrError, RuntimeError) as err:
        _fail(str(err))
    typer.echo(json.dumps({k: record.get(k) for k in ("enabled", "run_id", "checkpoint", "metrics")}))


@app.command()
def vc(params: str = PARAMS,
       out: str = typer.Option(paths.VC_RECORD, help="The HiFi-VC run record to write.")) -> None:
    """Stage `vc`: HiFi-VC trained on the ingested clips with the asr stage's content encoder (params `vc`); a rerun resumes."""
    from tasks.core.checkpoints import CheckpointError
    from tasks.core.config import ConfigError
    from tasks.training.vc import VcError

    try:
        record = _run("vc_flow", params_path=params, out=out)
    except (ConfigError, CheckpointError, VcError) as err:
        _fail(str(err))
    typer.echo(json.dumps({k: record.get(k) for k in ("enabled", "run_id", "checkpoint", "metrics")}))


@app.command("train-node")
def train_node(params: Optional[str] = typer.Option(None, help="Train on this checkout's params (default: the flow "
                                                     "run's data version, or params.yaml)."),
               flow_run: Optional[str] = typer.Option(None, envvar="PREFECT__FLOW_RUN_ID",
                                                      help="The `train` flow run whose job this node joins.")) -> None:
    """Join a multi-node `train` job as a worker node: torchrun with TORCHRUN_ARGS (its rendezvous)."""
    from flows.train import train_node as join
    from tasks.core.config import ConfigError

    try:
        join(params, None if params else flow_run)
    except (ConfigError, ValueError, RuntimeError) as err:
        _fail(str(err))


@app.command()
def evaluate(params: str = PARAMS,
             run: str = typer.Option(paths.RUN_RECORD, "--run", help="The train stage's run record."),
             out: str = typer.Option(paths.EVAL, help="Output folder (metrics.json, report.md, samples/, plots/).")
             ) -> None:
    """Stage `evaluate`: metrics of the trained voice on the val split, then the promotion gate."""
    from flows.evaluate import evaluate_flow
    from tasks.core.checkpoints import CheckpointError
    from tasks.core.config import ConfigError
    from tasks.evaluation.evaluate import EvalError
    from tasks.inference.synth import SynthError

    try:
        summary = evaluate_flow(params_path=params, run_record=run, out=out)
    except (ConfigError, FileNotFoundError, CheckpointError, EvalError, SynthError) as err:
        _fail(str(err))
    typer.echo(json.dumps({k: summary[k] for k in ("metrics", "promotion")}))


@app.command()
def judge(ref: str = typer.Option(..., "--ref", help="The reference recording (wav/flac/ogg/mp3)."),
          syn: str = typer.Option(..., "--syn", help="The synthesis (or any audio) to judge against it."),
          text_: Optional[str] = typer.Option(None, "--text", help="What was said: gives cer and wer."),
          lang: str = typer.Option("en", "--lang", help="Language of the text (pocketsphinx covers en only)."),
          params: Optional[str] = typer.Option(None, "--params", "-p",
                                               help="Take eval.models and eval.f0_method from this params file "
                                                    "(default: the bundled judges, pYIN).")) -> None:
    """Judge one pair of audio files: print one JSON object with mos, mos_reference, speaker_similarity,
    cer, wer (null where not computed) and the signal metrics (MCD, F0 RMSE, V/UV, length ratio)."""
    from tasks.core.config import ConfigError, EvalConfig, find_repo_root, load_params
    from tasks.evaluation.judges import judge_pair

    try:
        cfg, root = (load_params(params).eval, find_repo_root(Path(params).resolve())) if params else (EvalConfig(), Path.cwd())
        result = judge_pair(Path(ref), Path(syn), cfg.models, root, text_, lang, cfg.f0_method)
    except (ConfigError, ValueError) as err:
        _fail(str(err))
    typer.echo(json.dumps(result, ensure_ascii=False))


@app.command()
def export(model: Optional[str] = typer.Option(None, "--model", "-m", help="A checkpoint bundle (file://…/runs/<id>/"
                                               "step_N, s3://…), a run folder (its latest bundle), train/run.json, "
                                               "`production` (the production pointer of params' model name) or "
                                               "`production:<name>`. Default: the checkpoint the evaluate stage "
                                               "judged (eval/metrics.json, else train/run.json)."),
           out: str = typer.Option(paths.EXPORT, "--out", "-o", help="The export folder to write."),
           formats: Optional[str] = typer.Option(None, "--formats", help="Comma-separated: safetensors, onnx, "
                                                 "torchscript, upstream. Default: the first three, plus upstream "
                                                 "(upstream/G_<step>.pth + config.json) when upstream 2.3 can run the "
                                                 "model; naming upstream requires it. Without --model: params "
                                                 "export.formats."),
           vocoder: Optional[str] = typer.Option(None, "--vocoder", help="A WaveGlow to export beside the voice "
                                                 "(waveglow/: safetensors, TorchScript, ONNX): train/waveglow.json, a "
                                                 "bundle, an NVIDIA .pt. Default without --model: the waveglow stage's "
                                                 "when params vocoder.enabled."),
           vc: Optional[str] = typer.Option(None, "--vc", help="A HiFi-VC to export beside the voice (hifivc.ts, "
                                            "the seminar's TorchScript interface, + .safetensors, .json): "
                                            "train/vc.json or a vc bundle. Default without --model: the vc stage's "
                                            "when params vc.enabled."),
           params: str = PARAMS) -> None:
    """Stage `export`: a checkpoint as the inference bundle and in upstream Bert-VITS2 2.3's format."""
    from flows.export import export_flow
    from model.waveglow import CheckpointError as WaveGlowCheckpointError
    from tasks.core.checkpoints import CheckpointError
    from tasks.core.config import ConfigError
    from tasks.inference.export import ExportError
    from tasks.inference.synth import SynthError
    from tasks.inference.convert import ConvertError
    from tasks.inference.vocode import VocodeError

    try:
        summary = export_flow(params_path=params, model=model, out=out,
                              formats=None if formats is None else formats.split(","), vocoder=vocoder, vc=vc)
    except (ConfigError, FileNotFoundError, CheckpointError, ExportError, SynthError, VocodeError,
            WaveGlowCheckpointError, ConvertError) as err:
        _fail(str(err))
    typer.echo(json.dumps(summary, ensure_ascii=False))


@app.command()
def remote(params: str = PARAMS) -> None:
    """Point DVC's default remote at params.yaml `storage` (s3:// or file://); no credentials stored."""
    from tasks.core.config import ConfigError, find_repo_root, load_params
    from tasks.core.tools import ToolNotFound
    from tasks.orchestration.remote import configure_dvc_remote

    try:
        typer.echo(json.dumps(configure_dvc_remote(load_params(params), find_repo_root(Path(params)))))
    except (ConfigError, RuntimeError, ToolNotFound) as err:
        _fail(str(err))


@app.command()
def g2p(text_: Optional[str] = typer.Argument(None, metavar="[TEXT]", help="The sentence to convert."),
        lang: str = typer.Option(..., "--lang", "-l", help="A language code from params.yaml (zh, ja, en, ...)."),
        batch: Optional[str] = typer.Option(None, "--batch", help="A file of sentences, one a line: prints one JSON "
                                            "object a line, in the same order ({\"error\": ...} for a line that fails)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON (the default prints it too)."),
        params: str = PARAMS) -> None:
    """Print normalised text, phones, tones (language-local) and word2ph for one sentence or a file of them."""
    from tasks.core.config import ConfigError, find_repo_root, load_params
    from tasks.prep.text import g2p_json

    if (text_ is None) == (batch is None):
        _fail("give either TEXT or --batch FILE")
    try:
        p = load_params(params)
        root = find_repo_root(Path(params))
        if batch is None:
            typer.echo(json.dumps(g2p_json(p, root, lang, text_), ensure_ascii=False))
            return
        try:
            lines = Path(batch).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            _fail(f"{batch}: {err}")
        g2p_json(p, root, lang, "")  # an unknown language fails here, once, not on every line
        for n, line in enumerate(lines, 1):
            try:
                row = g2p_json(p, root, lang, line)
            except Exception as err:  # one sentence a frontend cannot convert must not stop the batch
                row = {"error": f"{batch}:{n}: {type(err).__name__}: {err}"}
            typer.echo(json.dumps(row, ensure_ascii=False))
    except (ConfigError, KeyError) as err:
        _fail(str(err).strip("'\""))


def _voice(model: str, params: Optional[str]):
    from tasks.core.checkpoints import CheckpointError
    from tasks.core.config import ConfigError
    from tasks.inference.export import ExportError
    from tasks.inference.synth import SynthError, load_voice

    try:
        return load_voice(model, params)
    except (SynthError, ConfigError, ExportError, CheckpointError, FileNotFoundError) as err:
        _fail(str(err))


MODEL = typer.Option(..., "--model", "-m", help="An export folder, a checkpoint bundle (file://…/runs/<id>/step_N, "
                     "s3://…), a run folder (its latest bundle) or train/run.json.")
SYNTH_PARAMS = typer.Option(None, "--params", "-p", help="params.yaml for the text frontends and BERT models "
                            "(checkpoint bundles; default ./params.yaml). Export folders carry their own.")


def _read_text_file(path: str) -> str:
    """A UTF-8 text file, or a clear error naming it and where its bytes stop being UTF-8."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        _fail(f"{path}: {err.strerror or err}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        _fail(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8")


LANG_MODES = "zh, ja, en (a language code of the model), mix (`[speaker]<zh>…<jp>…<en>…`) or auto (detected)"


@app.command()
def inputs(params: str = PARAMS,
           lang: Optional[str] = typer.Option(None, "--lang", "-l", help=f"The text's language: {LANG_MODES}."),
           text_: Optional[str] = typer.Option(None, "--text", "-t", help="The text (`|` separates utterances)."),
           style_text: Optional[str] = typer.Option(None, "--style-text", help="A text whose BERT mean is blended in "
                                                    "(one language only, as upstream)."),
           style_weight: float = typer.Option(STYLE_WEIGHT_DEFAULT, "--style-weight", help="0: the text's own BERT .. 1: the style's."),
           batch: Optional[str] = typer.Option(None, "--batch", help="CASES.jsonl: one {\"id\", \"lang\", \"text\", "
                                               "optional \"style_text\", \"style_weight\"} a line; writes DIR/<id>.npz."),
           out: str = typer.Option(..., "--out", "-o", help="F.npz (with --text) or DIR (with --batch).")) -> None:
    """Text -> the generator's inputs as upstream 2.3 builds them (phones, tones, lang_ids, bert, ja_bert,
    en_bert, utt_lengths; segments in mix/auto), written as .npz: what synth, the app and /voice feed the model."""
    import re

    import numpy as np

    from tasks.core.config import ConfigError
    from tasks.inference.inputs import SynthError, frontend_from_params, inputs_arrays

    if (text_ is None) == (batch is None):
        _fail("give either --text (with --lang) or --batch CASES.jsonl")
    if text_ is not None and lang is None:
        _fail("--text needs --lang")
    try:
        frontend = frontend_from_params(Path(params))
    except (ConfigError, FileNotFoundError) as err:
        _fail(str(err))

    def write(path: Path, case: dict) -> None:
        utts = frontend.request(case["text"], case["lang"], case.get("style_text"),
                                float(case.get("style_weight", STYLE_WEIGHT_DEFAULT)))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial.npz")
        np.savez(tmp, **inputs_arrays(utts, case["lang"]))
        os.replace(tmp, path)

    if batch is None:
        try:
            write(Path(out), {"text": text_, "lang": lang, "style_text": style_text, "style_weight": style_weight})
        except SynthError as err:
            _fail(str(err))
        typer.echo(json.dumps({"out": out}, ensure_ascii=False))
        return
    written, errors = [], []
    for n, line in enumerate(_read_text_file(batch).splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
            if not isinstance(case, dict) or not {"id", "lang", "text"} <= set(case):
                raise SynthError('expected {"id", "lang", "text", optional "style_text", "style_weight"}')
            for key, kinds in (("lang", str), ("text", str), ("style_text", (str, type(None))),
                               ("style_weight", (int, float))):
                if key in case and (not isinstance(case[key], kinds) or isinstance(case[key], bool)):
                    raise SynthError(f"{key!r}: {case[key]!r} has the wrong type")
            if not isinstance(case["id"], str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", case["id"]):
                raise SynthError(f"id {case['id']!r}: letters, digits, _ . - only (it names the .npz file)")
            write(Path(out) / f"{case['id']}.npz", case)
            written.append(case["id"])
        except (ValueError, TypeError) as err:  # SynthError and json's errors are ValueErrors
            errors.append({"line": n, "error": f"{batch}:{n}: {err}"})
    typer.echo(json.dumps({"out_dir": out, "written": written, "errors": errors}, ensure_ascii=False))
    if errors:
        raise typer.Exit(1)


@app.command()
def split(text_file: str = typer.Option(..., "--text-file", help="A UTF-8 text: paragraphs on their own lines."),
          sent_pause: float = typer.Option(PAUSE_DEFAULTS["sent_pause"], "--sent-pause", help="Seconds of silence after each sentence."),
          para_pause: float = typer.Option(PAUSE_DEFAULTS["para_pause"], "--para-pause", help="Seconds after a paragraph (used when larger "
                                           "than --sent-pause)."),
          sample_rate: int = typer.Option(44100, "--sample-rate", help="The model's rate: pauses are whole samples.")) -> None:
    """Print how a long text is spoken: upstream 2.3's tts_split with cut_by_sent, {"pieces", "pauses"}."""
    from tasks.inference.inputs import SynthError, split_text

    try:
        pieces, pauses = split_text(_read_text_file(text_file), sent_pause, para_pause, sample_rate)
    except SynthError as err:
        _fail(f"{text_file}: {err}")
    typer.echo(json.dumps({"pieces": pieces, "pauses": pauses}, ensure_ascii=False))


@app.command()
def synth(model: str = MODEL,
          text_: Optional[str] = typer.Option(None, "--text", "-t", help="The text to speak (`|` separates utterances)."),
          text_file: Optional[str] = typer.Option(None, "--text-file", help="A UTF-8 file with the text (a page: "
                                                  "use --split)."),
          lang: Optional[str] = typer.Option(None, "--lang", "-l", help=f"The text's language: {LANG_MODES}."),
          speaker: Optional[str] = typer.Option(None, "--speaker", "-s", help="A speaker name of the model (mix text "
                                                "names its own)."),
          out: Optional[str] = typer.Option(None, "--out", "-o", help="The WAV file to write (with --text)."),
          batch: Optional[str] = typer.Option(None, "--batch", help="A file of lines `speaker|lang|text`, JSON lines "
                                              "{\"text\", \"lang\", \"speaker\", \"style_text\", \"style_weight\", "
                                              "\"split\", \"sent_pause\", \"para_pause\"}, or plain text lines spoken "
                                              "with --lang/--speaker; # comments skipped."),
          out_dir: Optional[str] = typer.Option(None, "--out-dir", help="Where --batch writes 0001.wav, 0002.wav, ..."),
          style_text: Optional[str] = typer.Option(None, "--style-text", help="Blend this text's BERT mean in "
                                                   "(upstream 2.3's style text; one language only)."),
          style_weight: float = typer.Option(STYLE_WEIGHT_DEFAULT, "--style-weight", help="0: the text's own BERT .. 1: the style's."),
          split_: bool = typer.Option(False, "--split", help="Cut the text into paragraphs and sentences (upstream's "
                                      "tts_split) and speak them with pauses: one call for a page."),
          sent_pause: float = typer.Option(PAUSE_DEFAULTS["sent_pause"], "--sent-pause", help="With --split: seconds after each sentence."),
          para_pause: float = typer.Option(PAUSE_DEFAULTS["para_pause"], "--para-pause", help="With --split: seconds after a paragraph."),
          sdp_ratio: float = typer.Option(SYNTHESIS_DEFAULTS["sdp_ratio"], help="Share of the stochastic duration "
                                          "predictor (0..1)."),
          noise_scale: float = typer.Option(SYNTHESIS_DEFAULTS["noise_scale"], help="Prior noise (expressiveness)."),
          noise_scale_w: float = typer.Option(SYNTHESIS_DEFAULTS["noise_scale_w"], help="Duration noise of the "
                                              "stochastic predictor."),
          length_scale: float = typer.Option(SYNTHESIS_DEFAULTS["length_scale"], help="Speaking time factor "
                                             "(> 1: slower)."),
          seed: Optional[int] = typer.Option(None, help="Seed the noise for a reproducible output."),
          params: Optional[str] = SYNTH_PARAMS) -> None:
    """Text to speech with a trained model: a text (--text or --text-file, --out) or a batch file (--batch, --out-dir)."""
    from tasks.core.storage import atomic_write_bytes
    from tasks.inference.synth import SynthError, parse_batch
    from tasks.prep.audio import wav_bytes

    if text_file is not None:
        if text_ is not None:
            _fail("give --text or --text-file, not both")
        text_ = _read_text_file(text_file)
    if (text_ is None) == (batch is None):
        _fail("give either --text/--text-file (with --out) or --batch (with --out-dir)")
    if text_ is not None and (out is None or lang is None or (speaker is None and lang != "mix")):
        _fail("--text needs --lang, --speaker (not for mix) and --out")
    if batch is not None and out_dir is None:
        _fail("--batch needs --out-dir")
    defaults = {"style_text": style_text, "style_weight": style_weight, "split": split_, "sent_pause": sent_pause,
                "para_pause": para_pause}
    if batch is not None:
        jobs = parse_batch(_read_text_file(batch).splitlines(), lang, speaker, defaults)
        if not jobs:
            _fail(f"{batch}: no lines to synthesise")
    else:
        jobs = [{"line": 0, "speaker": speaker, "lang": lang, "text": text_, **defaults}]
    voice = _voice(model, params)
    knobs = dict(sdp_ratio=sdp_ratio, noise_scale=noise_scale, noise_scale_w=noise_scale_w, length_scale=length_scale)
    written, errors = [], []
    for n, job in enumerate(jobs, 1):
        try:
            if "error" in job:
                raise SynthError(job["error"])
            style = dict(style_text=job["style_text"], style_weight=float(job["style_weight"]))
            job_seed = None if seed is None else seed + n - 1
            if job["split"]:
                wav, sr, pieces = voice.synthesize_long(job["text"], job["lang"], job["speaker"],
                                                        float(job["sent_pause"]), float(job["para_pause"]),
                                                        seed=job_seed, **style, **knobs)
            else:
                wav, sr = voice.synthesize(job["text"], job["lang"], job["speaker"], seed=job_seed, **style, **knobs)
                pieces = None
        except (SynthError, TypeError, ValueError) as err:  # a batch line fails alone
            if batch is None:
                _fail(str(err))
            errors.append({"line": job["line"], "error": f"{batch}:{job['line']}: {err}"})
            continue
        path = Path(out) if batch is None else Path(out_dir) / f"{n:04d}.wav"
        atomic_write_bytes(path, wav_bytes(wav, sr))
        row = {"path": str(path), "speaker": job["speaker"], "lang": job["lang"], "seconds": round(len(wav) / sr, 3)}
        if pieces is not None:
            row["pieces"] = len(pieces)
        written.append(row)
    if batch is None:
        typer.echo(json.dumps(written[0], ensure_ascii=False))
        return
    typer.echo(json.dumps({"out_dir": out_dir, "files": written, "errors": errors}, ensure_ascii=False))
    if errors:
        raise typer.Exit(1)


@app.command()
def vocode(model: str = typer.Option(..., "--model", "-m", help="A WaveGlow: train/waveglow.json, a checkpoint bundle "
                                     "or run folder (file://…/runs/waveglow-<id>), an export folder with waveglow/, or "
                                     "an NVIDIA .pt / state dict / safetensors file."),
           in_: Optional[str] = typer.Option(None, "--in", "-i", help="A recording: copy-synthesis through its mel."),
           mel: Optional[str] = typer.Option(None, "--mel", help="A log mel .npy ([80, frames] or [1, 80, frames]), "
                                             "e.g. from another acoustic model."),
           out: str = typer.Option(..., "--out", "-o", help="The WAV file to write."),
           sigma: float = typer.Option(0.6, help="The prior's std at inference (0: deterministic)."),
           denoise: float = typer.Option(0.1, help="NVIDIA's denoiser strength (0: off)."),
           seed: Optional[int] = typer.Option(1234, help="Seed of the noise (sigma > 0)."),
           resample: bool = typer.Option(False, "--resample", help="Resample --in audio of another rate to the "
                                         "vocoder's (else it is an error)."),
           params: Optional[str] = SYNTH_PARAMS) -> None:
    """Mel to audio with WaveGlow, or copy-synthesis of a recording (recording -> mel -> WaveGlow)."""
    from model.waveglow import CheckpointError as WaveGlowCheckpointError
    from tasks.core.checkpoints import CheckpointError
    from tasks.core.storage import atomic_write_bytes
    from tasks.inference.vocode import VocodeError, load_vocoder, read_mel
    from tasks.prep.audio import AudioError, decode, wav_bytes

    if (in_ is None) == (mel is None):
        _fail("give exactly one of --in (a recording) and --mel (a .npy mel)")
    try:
        vocoder = load_vocoder(model, params)
        if in_ is not None:
            try:
                wav, sr = decode(Path(in_).read_bytes(), Path(in_).name)
            except (OSError, AudioError) as err:
                raise VocodeError(f"{in_}: {err}") from None
            if sr != vocoder.sample_rate and not resample:
                raise VocodeError(f"{in_}: {sr} Hz audio, the vocoder works at {vocoder.sample_rate} Hz "
                                  "(pass --resample to resample it)")
            audio = vocoder.copy_synthesis(wav, sr, sigma, denoise, seed, name=in_)
        else:
            audio = vocoder.vocode(read_mel(Path(mel)), sigma, denoise, seed, name=mel)
    except (VocodeError, CheckpointError, WaveGlowCheckpointError) as err:
        _fail(str(err))
    atomic_write_bytes(Path(out), wav_bytes(audio, vocoder.sample_rate))
    typer.echo(json.dumps({"path": out, "seconds": round(len(audio) / vocoder.sample_rate, 3),
                           "sample_rate": vocoder.sample_rate, "model": vocoder.info.get("run_id") or model}))


@app.command()
def convert(model: Optional[str] = typer.Option(None, "--model", "-m",
                                                help="Any-to-any: the HiFi-VC model (train/vc.json, the default; a vc "
                                                "bundle or run; an export folder with hifivc.json). In-set: a voice "
                                                "checkpoint bundle, its run folder or train/run.json (export folders "
                                                "have no posterior encoder)."),
            source_wav: Optional[str] = typer.Option(None, "--source", help="Any-to-any: the recording to re-speak "
                                                     "(wav/flac/ogg/mp3, any rate from 8 kHz, stereo averaged)."),
            reference: Optional[str] = typer.Option(None, "--reference", help="Any-to-any: a recording of the target "
                                                    "voice (>= 1 s of voice; longer than 30 s: its most voiced 30 s)."),
            pitch: Optional[str] = typer.Option(None, "--pitch", help="Any-to-any: match (the reference's pitch "
                                                "level, the default) or follow (the source's; models trained with "
                                                "vc.model.f0_norm: none)."),
            in_: Optional[str] = typer.Option(None, "--in", "-i", help="In-set: the source recording."),
            source: Optional[str] = typer.Option(None, "--from", help="In-set: the speaker of the recording (a "
                                                 "model speaker)."),
            target: Optional[str] = typer.Option(None, "--to", help="In-set: the speaker to convert to."),
            out: str = typer.Option(..., "--out", "-o", help="The WAV file to write."),
            params: Optional[str] = SYNTH_PARAMS) -> None:
    """Voice conversion. Any-to-any (HiFi-VC): --source S --reference R re-speaks S in R's voice,
    neither speaker needing to be a training speaker. In-set (the voice model): --in X --from A --to B
    re-speaks a recording of model speaker A as model speaker B."""
    from tasks.core.storage import atomic_write_bytes
    from tasks.prep.audio import AudioError, decode, wav_bytes

    any_to_any, in_set = (source_wav, reference, pitch), (in_, source, target)
    if any(v is not None for v in any_to_any) == any(v is not None for v in in_set):
        _fail("give either --source and --reference (any-to-any, HiFi-VC) or --in, --from and --to (in-set)")
    if in_ is None:
        from tasks.core import paths
        from tasks.core.checkpoints import CheckpointError
        from tasks.core.config import ConfigError
        from tasks.core.storage import StorageError
        from tasks.inference.convert import ConvertError, load_converter

        if source_wav is None or reference is None:
            _fail("any-to-any conversion needs both --source and --reference")
        try:
            recordings = []
            for path in (source_wav, reference):
                try:
                    recordings.append(decode(Path(path).read_bytes(), Path(path).name))
                except (OSError, AudioError) as err:
                    raise ConvertError(f"{path}: {err}") from None
            converter = load_converter(model or paths.VC_RECORD, params)
            (src, src_sr), (ref, ref_sr) = recordings
            converted, report = converter.convert(src, src_sr, ref, ref_sr, pitch, source_wav, reference)
        except (ConvertError, ConfigError, CheckpointError, StorageError) as err:
            _fail(str(err))
        atomic_write_bytes(Path(out), wav_bytes(converted, converter.sample_rate))
        typer.echo(json.dumps({"path": out, "model": converter.info.get("run_id") or converter.source,
                               "sample_rate": converter.sample_rate, **report}, ensure_ascii=False))
        return
    from tasks.inference.synth import SynthError

    if model is None or source is None or target is None:
        _fail("in-set conversion needs --model, --in, --from and --to")
    try:
        wav, sr = decode(Path(in_).read_bytes(), Path(in_).name)
    except (OSError, AudioError) as err:
        _fail(f"{in_}: {err}")
    voice = _voice(model, params)
    try:
        converted = voice.convert(wav, sr, source, target)
    except SynthError as err:
        _fail(str(err))
    atomic_write_bytes(Path(out), wav_bytes(converted, voice.sample_rate))
    typer.echo(json.dumps({"path": out, "from": source, "to": target,
                           "seconds": round(len(converted) / voice.sample_rate, 3)}, ensure_ascii=False))


@app.command()
def server(host: str = typer.Option("127.0.0.1", help="The address to listen on."),
           port: int = typer.Option(4200, help="The port of the API and the UI."),
           database_url: Optional[str] = typer.Option(None, "--database-url", envvar="VITSFLOW_DATABASE_URL",
                                                      help="postgresql+asyncpg://user@host/db (password from "
                                                      "the environment); default: SQLite in PREFECT_HOME.")) -> None:
    """Start a Prefect server (API + UI) for the pipeline's flow runs, deployments and schedules."""
    import signal
    import subprocess

    if database_url and not database_url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        _fail(f"--database-url {database_url.split('://')[0]}://...: expected postgresql+asyncpg://USER@HOST/DB "
              "(password from the environment or ~/.pgpass) or sqlite+aiosqlite:///PATH")
    env = dict(os.environ, PREFECT_UI_API_URL=f"http://{host}:{port}/api")
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    typer.echo(f"Prefect UI: http://{host}:{port}  (then: export PREFECT_API_URL=http://{host}:{port}/api)")
    from tasks.core.tools import ToolNotFound, executable

    try:
        child = subprocess.Popen([executable("prefect"), "server", "start", "--host", host, "--port", str(port)],
                                 env=env)
    except ToolNotFound as err:
        _fail(str(err))

    def stop(signum, frame):  # a service manager's SIGTERM (or Ctrl-C) stops the server too, not only us
        child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        code = child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    raise typer.Exit(code)


@app.command("app")
def app_(host: Optional[str] = typer.Option(None, help="The address to listen on (default: params app.host, "
                                        "127.0.0.1: this machine only)."),
         port: Optional[int] = typer.Option(None, help="The port (default: params app.port)."),
         params: str = PARAMS) -> None:
    """Serve the HTTP API (/docs) and the web page: synthesis, A/B of two models, the eval samples."""
    from tasks.core.config import ConfigError, load_params
    from tasks.orchestration.app import serve as serve_app

    try:
        cfg = load_params(params).app
    except ConfigError as err:
        _fail(str(err))
    typer.echo(f"vitsflow app: http://{host or cfg.host}:{port or cfg.port}  (API docs: /docs)")
    serve_app(params, host, port)


@app.command()
def deploy(params: str = PARAMS,
           image: Optional[str] = typer.Option(None, help="The pipeline image (infra/Dockerfile) the `train` "
                                               "deployment runs in; default: this checkout's code.")) -> None:
    """Register the `gpu` concurrency limit, the `train` deployment on its work pool and the scheduled `retrain`."""
    from flows.deploy import DeployError
    from flows.deploy import deploy as deploy_all
    from tasks.core.config import ConfigError

    try:
        typer.echo(json.dumps(deploy_all(params, image), indent=2))
    except (ConfigError, DeployError) as err:
        _fail(str(err))


@app.command()
def serve(params: str = PARAMS) -> None:
    """Deploy, then run `retrain` here on its schedule and on "run now" from the UI (until Ctrl-C)."""
    from flows.deploy import DeployError
    from flows.deploy import serve as serve_retrain
    from tasks.core.config import ConfigError

    try:
        serve_retrain(params)
    except (ConfigError, DeployError) as err:
        _fail(str(err))


@app.command()
def retrain(params: str = PARAMS) -> None:
    """Run the `retrain` flow once, now: new data → dvc repro → push → train → evaluate → promote."""
    from flows.retrain import retrain_flow
    from tasks.core.config import ConfigError
    from tasks.core.tools import ToolNotFound
    from tasks.orchestration.workspace import DvcError, WorkspaceBusy

    try:
        summary = retrain_flow(params_path=params)
    except (ConfigError, DvcError, WorkspaceBusy, ToolNotFound) as err:
        _fail(str(err))
    typer.echo(json.dumps(summary, default=str))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
