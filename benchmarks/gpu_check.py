"""The GPU check: the figures only a CUDA machine gives, each printed as one line `name value unit`
and appended to --out. `bash benchmarks/gpu_check.sh` sets up and runs it on a bare machine.

    python benchmarks/gpu_check.py [--out gpu_check.txt] [--corpus DIR] [--smoke]

- p6: training steps/s at upstream 2.3's full config (44.1 kHz, n_fft 2048, hop 512, segment
  16384, batch 16, 1024-wide BERT, bf16 autocast) of tasks.training.train.train_step against an
  upstream-style step on the same nets and the same batch (`upstream_step`: what train_ms.py does
  per step: G forward and the mels inside the bf16 autocast, DUR's step inside it, then D's, then
  G's; its GradScaler, enabled whenever bf16 is; clip_grad_norm_ at 200 / 500 under bf16; its
  clip_grad_value_(None), which reads each parameter's gradient norm with .item(); no compile,
  one process: upstream's DDP wrapper of a one-GPU run is not in it, and neither side has the
  WavLM discriminator, which needs a WavLM model). Rounds alternate the sides; each side's best round counts. Goal 1.3x; upstream's
  public anchor ~1.5 it/s at batch 16 on an RTX 4090.
- p1: the bert stage on CUDA (tasks.prep.bert: batches by batch_shape, cache commit) against
  bert_gen.py's loop on CUDA (benchmarks/bench_features.py), random-init models of upstream's
  24 x 1024 architectures with the real tokenizers, on upstream's own gold frontend output
  (tests/data/upstream_bv2_23: 97 zh + 102 ja sentences, norm_text and word2ph), so no frontend
  runs here. Goal 5x.
- waveglow: benchmarks/bench_waveglow.py on CUDA in fp16 (NVIDIA's inference.py --is_fp16; its
  fp16_run training with a GradScaler), NVIDIA's 256-channel config, 10 s of audio: inference
  and training-step speed-up over NVIDIA's glow.py loops (issue 26's 1.3x and 1.0x), each
  side's real-time factor.
- p8, resume, torchrun: these need a preprocessed corpus: --corpus DIR (a folder with params.yaml
  and data/, as the stages write it), else the tests' tiny corpus is built (tests/train_corpus.py;
  it needs espeak-ng and the G2P packages); without either they print `skipped` and why.
  p8: the loader's batches/s at upstream's batch size and bucket boundaries (as train() builds it,
  2 workers) against p6's step rate; goal 3x. resume: the trainer on CUDA, SIGKILLed after its
  first checkpoint and run again, against an uninterrupted run: the largest weight difference
  (CUDA kernels are not bit-deterministic, so it is a number, not a yes). torchrun: the same
  training launched by `torchrun --standalone --nproc_per_node 1` to its last step (one rank:
  train() starts no process group for a world of 1, so this proves the launch, not NCCL).

--smoke runs the same code on the CPU at the tests' tiny network, fp32, a few steps and 4-layer
BERTs: the suite proves the script runs (its figures mean nothing there).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The distributions the check imports beyond torch and the standard library (pins: requirements.lock);
# gpu_check.sh installs the ones a machine lacks and leaves its own torch stack alone.
REQUIREMENTS = ("pydantic", "pydantic_core", "annotated-types", "typing-inspection", "typing_extensions",
                "orjson", "pydot", "pyparsing", "PyYAML", "numpy", "transformers", "tokenizers", "safetensors",
                "huggingface-hub", "tqdm", "regex", "packaging", "filelock", "fsspec", "numba", "llvmlite",
                "tensorboard")
IMPORTS = {"pydantic_core": "pydantic_core", "annotated-types": "annotated_types",
           "typing-inspection": "typing_inspection", "PyYAML": "yaml", "huggingface-hub": "huggingface_hub"}


def requirements(only_missing: bool) -> list[str]:
    """`name==pin` of each REQUIREMENTS distribution (only those this Python cannot import)."""
    import importlib.util

    pins = {}
    for line in (REPO / "requirements.lock").read_text(encoding="utf-8").splitlines():
        name, _, version = line.partition("==")
        if version:
            pins[name.strip().lower().replace("_", "-")] = f"{name.strip()}=={version.split(';')[0].strip()}"
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in REQUIREMENTS:
        module = IMPORTS.get(dist, dist.lower().replace("-", "_"))
        pin = pins.get(dist.lower().replace("_", "-"), dist)  # the lock's spelling
        if not only_missing or importlib.util.find_spec(module) is None:
            out.append(pin)
            continue
        try:  # present at another version: the machine's stack is kept (it matches its torch); say so
            have = version(dist)
        except PackageNotFoundError:
            continue
        if "==" in pin and have != pin.split("==")[1]:
            print(f"gpu_check: keeping the machine's {dist} {have} (requirements.lock: {pin})", file=sys.stderr)
    return out


class Figures:
    """Each figure printed as `name value unit` and appended to a file as it comes, so a run cut
    short keeps what it measured."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, name: str, value, unit: str = "") -> None:
        line = f"{name} {value:.4g} {unit}".rstrip() if isinstance(value, float) else f"{name} {value} {unit}".rstrip()
        print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


# ----------------------------------------------------------------------------- p6: the training step


def upstream_step(s, batch: dict, step: int, scaler) -> None:
    """One step as upstream 2.3's train_ms.py takes it, on tasks.training's nets and losses."""
    import torch
    from torch.nn import functional as F

    from model import commons
    from model.losses import discriminator_loss, feature_loss, generator_loss, kl_loss
    from model.mel_processing import mel_spectrogram, spec_to_mel

    net_g, net_d, net_dur = s.nets["G"], s.nets["D"], s.nets.get("DUR")
    optim_g, optim_d, optim_dur = s.optims["G"], s.optims["D"], s.optims.get("DUR")
    hop, b = s.stft.hop_length, batch
    net_g.update_mas_noise_scale(step)
    autocast = lambda: torch.autocast(device_type=s.device.type, dtype=torch.bfloat16, enabled=s.bf16)  # noqa: E731
    with autocast():
        (y_hat, l_length, attn, ids_slice, x_mask, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q),
         (hidden_x, logw, logw_, logw_sdp), g) = net_g(b["phones"], b["x_lengths"], b["spec"], b["spec_lengths"],
                                                       b["sid"], b["tones"], b["langs"], b["bert"], b["ja_bert"],
                                                       b["en_bert"])
        mel = spec_to_mel(b["spec"], s.stft)  # upstream: inside the autocast
        y_mel = commons.slice_segments(mel, ids_slice, s.segment_size // hop)
        y_hat_mel = mel_spectrogram(y_hat.squeeze(1).float(), s.stft)
        y = commons.slice_segments(b["wav"], ids_slice * hop, s.segment_size)
        y_d_hat_r, y_d_hat_g, _, _ = net_d(y, y_hat.detach())
        loss_disc, _, _ = discriminator_loss(y_d_hat_r, y_d_hat_g)
        if net_dur is not None:
            r, gen = net_dur(hidden_x.detach(), x_mask.detach(), logw_.detach(), logw.detach(), g.detach())
            r_sdp, gen_sdp = net_dur(hidden_x.detach(), x_mask.detach(), logw_.detach(), logw_sdp.detach(), g.detach())
            loss_dur_disc, _, _ = discriminator_loss(r + r_sdp, gen + gen_sdp)
            optim_dur.zero_grad()
            scaler.scale(loss_dur_disc).backward()
            scaler.unscale_(optim_dur)
            commons.clip_grad_value_(net_dur.parameters(), None)
            scaler.step(optim_dur)
    optim_d.zero_grad()
    scaler.scale(loss_disc).backward()
    scaler.unscale_(optim_d)
    if s.bf16:
        torch.nn.utils.clip_grad_norm_(net_d.parameters(), max_norm=200)
    commons.clip_grad_value_(net_d.parameters(), None)
    scaler.step(optim_d)
    with autocast():
        _, y_d_hat_g, fmap_r, fmap_g = net_d(y, y_hat)
        if net_dur is not None:
            _, dur_g = net_dur(hidden_x, x_mask, logw_, logw, g)
            _, dur_g_sdp = net_dur(hidden_x, x_mask, logw_, logw_sdp, g)
        loss_gen_all = (generator_loss(y_d_hat_g)[0] + feature_loss(fmap_r, fmap_g)
                        + F.l1_loss(y_mel, y_hat_mel) * s.c_mel + torch.sum(l_length.float())
                        + kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * s.c_kl)
        if net_dur is not None:
            loss_gen_all = loss_gen_all + generator_loss(dur_g + dur_g_sdp)[0]
    optim_g.zero_grad()
    scaler.scale(loss_gen_all).backward()
    scaler.unscale_(optim_g)
    if s.bf16:
        torch.nn.utils.clip_grad_norm_(net_g.parameters(), max_norm=500)
    commons.clip_grad_value_(net_g.parameters(), None)
    scaler.step(optim_g)
    scaler.update()


def check_step(fig: Figures, device, smoke: bool) -> float:
    """p6; returns our steps/s (p8's yardstick)."""
    from types import SimpleNamespace

    import torch

    from benchmarks.bench_train import params_for, synthetic_batch
    from tasks.frontends.symbols import SymbolTable
    from tasks.training.train import build_nets, build_setup, train_step

    if smoke:  # the repo's CPU demo network
        params, frames, bert_dim, steps, rounds = params_for("tiny", bf16=False), 64, 384, 1, 2
    else:
        params, frames, bert_dim, steps, rounds = params_for("upstream", bf16=True), 400, 1024, 10, 3
    corpus = SimpleNamespace(symbols=SymbolTable(), speakers=[f"s{i}" for i in range(8)], bert_dim=bert_dim)
    setups = {}
    for side in ("vitsflow", "upstream_style"):
        torch.manual_seed(0)  # the same initial weights on both sides
        setups[side] = build_setup(params, build_nets(params, corpus), device, REPO)
    batch = synthetic_batch(params, frames, bert_dim, len(corpus.speakers), device)
    scaler = torch.amp.GradScaler(device.type, enabled=params.train.bf16)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    run = {"vitsflow": lambda st, i: train_step(st, batch, i),
           "upstream_style": lambda st, i: upstream_step(st, batch, i, scaler)}
    best = {side: float("inf") for side in run}
    for side, st in setups.items():  # warm-up: numba's MAS, cuDNN's autotune, the allocator
        run[side](st, 0)
        run[side](st, 1)
    for _ in range(rounds):
        for side, st in setups.items():
            sync()
            start = time.perf_counter()
            for i in range(steps):
                run[side](st, 2 + i)
            sync()
            best[side] = min(best[side], (time.perf_counter() - start) / steps)
    ours, theirs = 1 / best["vitsflow"], 1 / best["upstream_style"]
    fig("p6_step_vitsflow", ours, "steps/s")
    fig("p6_step_upstream_style", theirs, "steps/s")
    fig("p6_step_ratio", ours / theirs, "x")
    if device.type == "cuda":  # both sides' nets and optimizers were on the GPU together
        fig("p6_peak_memory_both_sides", torch.cuda.max_memory_allocated(device) / 2**30, "GiB")
    del setups
    return ours


# ----------------------------------------------------------------------------- p1: the bert stage


def gold_rows() -> list[dict]:
    """upstream 2.3's own frontend output for its gold sentences (norm_text, word2ph), zh and ja."""
    rows = []
    for code in ("zh", "ja"):
        items = json.loads((REPO / "tests/data/upstream_bv2_23" / f"{code}.json").read_text(encoding="utf-8"))["items"]
        rows += [{"id": f"{code}{i}", "language": code, "norm_text": it["norm_text"], "word2ph": it["word2ph"]}
                 for i, it in enumerate(items)]
    return rows


def check_bert(fig: Figures, device, smoke: bool, work: Path) -> None:
    from benchmarks.bench_features import UPSTREAM_BERTS, our_bert, random_upstream_bert, upstream_style_bert
    from tasks.core.config import load_params

    params = load_params(REPO / "params.yaml")
    langs = dict(params.languages)
    for code, name in UPSTREAM_BERTS.items():
        folder = random_upstream_bert(work / "bert", name, layers=4 if smoke else 0)
        langs[code] = langs[code].model_copy(update={"bert": langs[code].bert.model_copy(update={"model": str(folder)})})
    params = params.model_copy(update={"languages": langs})
    rows = gold_rows()
    if smoke:
        rows = rows[:4] + rows[-4:]
    warm = [dict(r, id=f"warm-{r['id']}", norm_text=r["norm_text"]) for r in rows[:4] + rows[-4:]]
    (work / "pt").mkdir()
    upstream_style_bert(warm, params, work / "pt", device.type)  # CUDA's start, cuBLAS, the allocator
    our_bert(warm, params, work / "warm.sqlite", device.type)
    t_up = upstream_style_bert(rows, params, work / "pt", device.type)
    t_ours = our_bert(rows, params, work / "bert.sqlite", device.type)
    fig("p1_bert_vitsflow", len(rows) / t_ours, "utt/s")
    fig("p1_bert_upstream_style", len(rows) / t_up, "utt/s")
    fig("p1_bert_ratio", t_up / t_ours, "x")


def check_waveglow(fig: Figures, device, smoke: bool) -> None:
    import re

    args = ["--device", "cpu", "--seconds", "0.1", "--channels", "32", "--repeats", "1", "--segment", "4096"] \
        if smoke else ["--device", "cuda", "--half", "--seconds", "10", "--repeats", "5"]
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_waveglow.py"), *args], env=_env(),
                         capture_output=True, text=True, timeout=600)
    print(out.stdout, file=sys.stderr)
    if out.returncode != 0:
        fig("waveglow", "failed", f"rc_{out.returncode}")
        print(out.stderr[-3000:], file=sys.stderr)
        return
    part = "infer"
    for line in out.stdout.splitlines():
        if line.startswith("training step"):
            part = "train"
        m = re.match(r"\s+(.+?)\s{2,}([\d.]+) ms\s+(?:RTF ([\d.]+)|[\d.]+ steps/s)\s+speed-up vs NVIDIA ([\d.]+)x", line)
        if m:
            side = re.sub(r"\W+", "_", m.group(1)).strip("_")
            fig(f"waveglow_{part}_{side}", float(m.group(2)), "ms")
            if m.group(3):
                fig(f"waveglow_{part}_{side}_rtf", float(m.group(3)))
            if side != "nvidia":
                fig(f"waveglow_{part}_{side}_ratio", float(m.group(4)), "x")


# ----------------------------------------------------------------------------- with a corpus


def find_corpus(arg: str | None, work: Path, fig: Figures) -> Path | None:
    if arg:
        return Path(arg).resolve()
    try:
        from tests.train_corpus import build

        build(work / "corpus")
        return work / "corpus"
    except Exception as e:  # espeak-ng or a G2P package missing: say so, measure the rest
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:200].replace(" ", "_")
        for name in ("p8_loader", "resume", "torchrun_1gpu"):
            fig(name, "skipped", f"no_corpus_({reason})")
        return None


def check_loader(fig: Figures, corpus_root: Path, step_rate: float, smoke: bool) -> None:
    import torch

    from tasks.core.config import load_params
    from tasks.core.paths import DATA_DIRS
    from tasks.training.corpus import Corpus
    from tasks.training.train import make_loaders

    params = load_params(corpus_root / "params.yaml")
    train_cfg = params.train.model_copy(update={"batch_size": 16, "num_workers": 2,
                                                "bucket_boundaries": [32, 300, 400, 500, 600, 700, 800, 900, 1000]})
    params = params.model_copy(update={"train": train_cfg})
    corpus = Corpus.open(**{k: corpus_root / v for k, v in DATA_DIRS.items()})
    loader, _, _ = make_loaders(params, corpus, 0, 1, torch.device("cpu"))
    if len(loader) == 0:
        fig("p8_loader", "skipped", f"fewer_train_clips_than_a_batch_of_{train_cfg.batch_size}")
        return
    n, start, it = 0, None, 0
    target = 20 if smoke else 200
    while n < target:
        for _ in loader:
            it += 1
            if it == 2:  # the workers' start is not timed
                start = time.perf_counter()
            elif it > 2:
                n += 1
            if n >= target:
                break
    rate = n / (time.perf_counter() - start)
    fig("p8_loader", rate, "batches/s")
    fig("p8_loader_over_step", rate / step_rate, "x")


def _train_cmd(params_path: Path, torchrun: bool) -> list[str]:
    if torchrun:
        exe = Path(sys.executable).with_name("torchrun")
        return [str(exe), "--standalone", "--nproc_per_node", "1", "-m", "tasks.training.train", "--params", str(params_path)]
    return [sys.executable, "-m", "tasks.training.train", "--params", str(params_path)]


def _project(corpus_root: Path, work: Path, device: str, steps: int) -> Path:
    """A params file under `work` that trains on the corpus: its own storage and logs."""
    import yaml

    from tasks.core.paths import DATA_DIRS

    data = yaml.safe_load((corpus_root / "params.yaml").read_text(encoding="utf-8"))
    data["train"].update(device=device, max_steps=steps, save_interval=2, eval_interval=100, log_interval=100,
                         log_dir=str(work / "logs"), num_workers=0)
    data["storage"] = {"uri": f"file://{work}/storage"}
    work.mkdir(parents=True, exist_ok=True)
    for rel in DATA_DIRS.values():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).symlink_to(corpus_root / rel)
    (work / "params.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return work / "params.yaml"


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def check_resume(fig: Figures, corpus_root: Path, device: str, work: Path) -> None:
    import torch

    from tasks.core.checkpoints import CheckpointStore
    from tasks.core.storage import open_storage

    steps = 6
    ref_params = _project(corpus_root, work / "ref", device, steps)
    ref = subprocess.run(_train_cmd(ref_params, False), env=_env(), capture_output=True, text=True, timeout=900)
    if ref.returncode != 0:
        fig("resume", "failed", f"uninterrupted_run_rc_{ref.returncode}")
        print(ref.stderr[-3000:], file=sys.stderr)
        return
    run_id = json.loads(ref.stdout.strip().splitlines()[-1])["run_id"]
    killed = _project(corpus_root, work / "killed", device, steps)
    latest = work / "killed" / "storage" / "runs" / run_id / "latest.json"
    proc = subprocess.Popen(_train_cmd(killed, False), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not latest.exists():
        fig("resume", "failed", "no_checkpoint_before_the_kill")
        return
    killed_at = json.loads(latest.read_text())["step"]
    rerun = subprocess.run(_train_cmd(killed, False), env=_env(), capture_output=True, text=True, timeout=900)
    if rerun.returncode != 0 or f"at step {killed_at}" not in rerun.stderr:
        fig("resume", "failed", f"rerun_rc_{rerun.returncode}_did_not_resume_at_{killed_at}")
        print(rerun.stderr[-3000:], file=sys.stderr)
        return
    a = CheckpointStore(open_storage(f"file://{work}/ref/storage"), run_id).load()
    b = CheckpointStore(open_storage(f"file://{work}/killed/storage"), run_id).load()
    worst = max((a[0][n][k].float() - b[0][n][k].float()).abs().max().item()
                for n in a[0] for k in a[0][n] if torch.is_floating_point(a[0][n][k]))
    fig("resume_killed_at_step", killed_at)
    fig("resume_final_step", b[1]["step"])
    fig("resume_max_weight_diff", worst)


def check_torchrun(fig: Figures, corpus_root: Path, device: str, work: Path) -> None:
    params = _project(corpus_root, work / "torchrun", device, 4)
    out = subprocess.run(_train_cmd(params, True), env=_env(), capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        fig("torchrun_1gpu", "failed", f"rc_{out.returncode}")
        print(out.stderr[-3000:], file=sys.stderr)
        return
    fig("torchrun_1gpu_final_step", json.loads(out.stdout.strip().splitlines()[-1])["step"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "gpu_check.txt"))
    ap.add_argument("--corpus", help="a preprocessed corpus folder (params.yaml and data/)")
    ap.add_argument("--smoke", action="store_true", help="the same code on the CPU at the tiny config")
    ap.add_argument("--missing", action="store_true", help="print the requirements this Python lacks, and exit")
    ap.add_argument("--requirements", action="store_true", help="print every requirement, and exit")
    ap.add_argument("--only", nargs="*", default=None, help="of p6 p1 waveglow corpus (default: all)")
    args = ap.parse_args()
    if args.missing or args.requirements:
        print(" ".join(requirements(only_missing=args.missing)))
        return
    import torch

    fig = Figures(Path(args.out))
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: CUDA is not available (--smoke runs the code on the CPU)")
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as upstream's train_ms.py and our trainer
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        fig("gpu", torch.cuda.get_device_name().replace(" ", "_"))
    fig("torch", torch.__version__)
    only = set(args.only or ("p6", "p1", "waveglow", "corpus"))
    step_rate = None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        if "p6" in only:
            step_rate = check_step(fig, device, args.smoke)
            fig("p6_seconds", time.perf_counter() - started, "s")
        if "p1" in only:
            check_bert(fig, device, args.smoke, work)
        if "waveglow" in only:
            check_waveglow(fig, device, args.smoke)
        if "corpus" in only:
            corpus = find_corpus(args.corpus, work, fig)
            if corpus is not None:
                if step_rate is not None:
                    check_loader(fig, corpus, step_rate, args.smoke)
                check_resume(fig, corpus, device.type, work / "resume")
                check_torchrun(fig, corpus, device.type, work)
        fig("total_seconds", time.perf_counter() - started, "s")


if __name__ == "__main__":
    main()
