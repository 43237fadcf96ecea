"""`vitsflow`: the command line. Each pipeline command runs one stage's Prefect flow."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from params paths; never a surprise download
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls from a temporary server

app = typer.Typer(help="Reproducible data and training pipeline for Bert-VITS2 text-to-speech.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

PARAMS = typer.Option("params.yaml", "--params", "-p", help="The pipeline's params file.")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def _run(flow_name: str, **kwargs) -> dict:
    from flows import stages
    from tasks.config import ConfigError
    from tasks.datasets import DatasetError

    try:
        flow = stages.with_workers(getattr(stages, flow_name), kwargs["params_path"])
        return flow(**kwargs)
    except (ConfigError, DatasetError, FileNotFoundError) as err:
        _fail(str(err))


@app.command()
def validate(params: str = PARAMS) -> None:
    """Check params.yaml against the schema and print the parsed configuration."""
    from tasks.config import ConfigError, load_params

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
    from tasks.config import ConfigError, find_repo_root, load_params, resolve_local
    from tasks.datasets import DatasetError, fingerprint_dataset
    from tasks.storage import atomic_write_bytes

    try:
        p = load_params(params)
        root = find_repo_root(Path(params))
        ds = next((d for d in p.datasets if d.name == dataset), None)
        if ds is None:
            _fail(f"dataset {dataset!r} is not in {params} (datasets: {[d.name for d in p.datasets]})")
        info = fingerprint_dataset(ds, root)
    except (ConfigError, DatasetError) as err:
        _fail(str(err))
    atomic_write_bytes(resolve_local(root, out), json.dumps(info, indent=1, ensure_ascii=False).encode("utf-8"))
    typer.echo(f"{dataset}: {len(info['files'])} files")


@app.command()
def ingest(params: str = PARAMS, out: str = typer.Option("data/ingest", help="Output folder.")) -> None:
    """Stage `ingest`: decode, resample, condition, dedup, shard and split every dataset."""
    _run("ingest_flow", params_path=params, out=out)


@app.command()
def text(params: str = PARAMS,
         ingest_dir: str = typer.Option("data/ingest", "--in", help="The ingest stage's folder."),
         out: str = typer.Option("data/text", help="Output folder.")) -> None:
    """Stage `text`: normalisation and G2P (phones, tones, word2ph) for every utterance."""
    _run("text_flow", params_path=params, ingest_dir=ingest_dir, out=out)


@app.command()
def bert(params: str = PARAMS,
         text_dir: str = typer.Option("data/text", "--in", help="The text stage's folder."),
         out: str = typer.Option("data/bert", help="Output folder.")) -> None:
    """Stage `bert`: phone-level BERT features (fp16, sharded), batched, cached by content."""
    _run("bert_flow", params_path=params, text_dir=text_dir, out=out)


@app.command()
def spec(params: str = PARAMS,
         ingest_dir: str = typer.Option("data/ingest", "--in", help="The ingest stage's folder."),
         out: str = typer.Option("data/spec", help="Output folder.")) -> None:
    """Stage `spec`: linear and mel spectrograms with the model's own STFT (cached or on the fly)."""
    _run("spec_flow", params_path=params, ingest_dir=ingest_dir, out=out)


@app.command()
def stats(params: str = PARAMS, out: str = typer.Option("reports", help="Output folder.")) -> None:
    """Stage `stats`: corpus statistics, sampler buckets and dropped clips (metrics, markdown, PNG)."""
    _run("stats_flow", params_path=params, out=out)


@app.command()
def train(params: str = PARAMS,
          out: str = typer.Option("train/manifest.json", help="The run manifest to write (run id, checkpoint, metrics).")
          ) -> None:
    """Stage `train`: train Bert-VITS2 on data/ (in-process, or torchrun for train.nproc > 1); a rerun resumes."""
    import subprocess

    from flows.train import train_flow
    from tasks.checkpoints import CheckpointError
    from tasks.config import ConfigError

    try:
        summary = train_flow(params_path=params, out=out)
    except (ConfigError, FileNotFoundError, CheckpointError, subprocess.CalledProcessError) as err:
        _fail(str(err))
    typer.echo(json.dumps({k: summary[k] for k in ("run_id", "checkpoint", "metrics")}))


@app.command()
def remote(params: str = PARAMS) -> None:
    """Point DVC's default remote at params.yaml `storage` (s3:// or file://); no credentials stored."""
    from tasks.config import ConfigError, find_repo_root, load_params
    from tasks.remote import configure_dvc_remote

    try:
        typer.echo(json.dumps(configure_dvc_remote(load_params(params), find_repo_root(Path(params)))))
    except (ConfigError, RuntimeError) as err:
        _fail(str(err))


@app.command()
def g2p(text_: str = typer.Argument(..., metavar="TEXT", help="The sentence to convert."),
        lang: str = typer.Option(..., "--lang", "-l", help="A language code from params.yaml (zh, ja, en, ...)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON (the default prints it too)."),
        params: str = PARAMS) -> None:
    """Print normalised text, phones, tones (language-local) and word2ph for one sentence."""
    from tasks.config import ConfigError, find_repo_root, load_params
    from tasks.text import g2p_json

    try:
        p = load_params(params)
        result = g2p_json(p, find_repo_root(Path(params)), lang, text_)
    except (ConfigError, KeyError) as err:
        _fail(str(err).strip("'\""))
    typer.echo(json.dumps(result, ensure_ascii=False))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
