"""tasks/training/vc.py on the tiny corpus: with the asr stage's encoder frozen, the mel loss falls,
a stopped run continues exactly, references are other clips of the speaker, and without the asr
stage's record the error says what to run. Tiny random-init nets: these prove the loop, not
conversion quality (that is the held-out evaluation's, not built yet)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tasks.core.cache import ResultCache
from tasks.core.checkpoints import CheckpointStore
from tasks.core.config import parse_params
from tasks.core.storage import open_storage
from tasks.prep.content import VC_CACHE_NAME, plan_vc, read_vc, vc_chunk, vc_settings
from tasks.prep.ingest import read_index
from tasks.training import asr
from tests.tasks.training.test_asr_training import make_project

TINY_VC = {"enabled": True, "device": "cpu", "batch_size": 4, "max_steps": 4, "save_interval": 2, "eval_interval": 2,
           "log_interval": 1, "val_max_utterances": 2, "segment_frames": 8, "reference_seconds": 1.0,
           "learning_rate": 1e-3,
           "model": {"f0_channels": 8, "speaker_dim": 16, "upsample_initial_channel": 32, "resblock": "2",
                     "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3]], "disc_divisor": 16}}


def _params(project: Path, **vc):
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["vc"] = {**TINY_VC, **vc}
    return parse_params(data)


@pytest.fixture(scope="module")
def project(train_corpus, tmp_path_factory) -> Path:
    """The asr test's project with a 2-step content encoder, its record, and the vc features."""
    work = make_project(train_corpus, tmp_path_factory.mktemp("vc"))
    params = _params(work)
    result = asr.train(params.model_copy(update={"asr": params.asr.model_copy(update={"max_steps": 2})}), work)
    (work / "train").mkdir(exist_ok=True)
    (work / "train/asr.json").write_text(json.dumps({"enabled": True, "run_id": result.run_id,
                                                     "checkpoint": {"uri": "unused", "step": result.step}}))
    items = plan_vc(read_index(work / "data/ingest"), params.audio.sample_rate)
    ResultCache(work / ".cache/vitsflow" / f"{VC_CACHE_NAME}.sqlite").put_many(
        vc_chunk(items, work / "data/ingest", vc_settings(params.audio.sample_rate)))
    return work


def test_the_vc_features_are_the_sources_yin_frames_and_its_audio_at_24k(project):
    from tasks.training.vc import clips

    params = _params(project)
    from tasks.prep.content import read_mel

    row = clips(project, params)["train"][0]
    lf0, pcm = read_vc(ResultCache(project / ".cache/vitsflow/vc.sqlite"), row["key"])
    seconds = row["num_samples"] / params.audio.sample_rate
    assert abs(len(pcm) - seconds * 24000) <= 2 and len(lf0) == int(seconds * 16000 + 0.5) // 160
    assert len(lf0) == read_mel(ResultCache(project / ".cache/vitsflow/asr.sqlite"), row["mel_key"]).shape[1]
    assert (lf0 > 0).mean() > 0.2 and ((lf0 == 0) | ((lf0 > 3.9) & (lf0 < 6.7))).all()  # 50-800 Hz or unvoiced


@pytest.mark.slow
def test_the_mel_loss_falls_and_a_stopped_run_continues_as_an_uninterrupted_one(project):
    from tasks.training.vc import DISC, NET, train

    losses = []
    learned = train(_params(project, max_steps=80, save_interval=80, eval_interval=80, run_id="vc-learns"), project,
                    on_step=lambda s: losses.append(s["g/mel"]))
    assert sum(losses[-10:]) / 10 < 0.75 * sum(losses[:10]) / 10, losses
    _assert_encoder_frozen(learned.model, project)
    nets, state, _ = CheckpointStore(open_storage(f"file://{project}/storage"), "vc-learns").load()
    assert learned.val_loss is not None and set(nets) == {NET, DISC} and state["step"] == 80
    assert state["encoder"]["run_id"].startswith("asr-")  # the content encoder it trained on
    straight, resumed = [], []
    full = train(_params(project, max_steps=4, run_id="vc-straight"), project, on_step=lambda s: straight.append(s))
    train(_params(project, max_steps=2, run_id="vc-stopped"), project, on_step=lambda s: resumed.append(s))
    again = train(_params(project, max_steps=4, run_id="vc-stopped"), project, on_step=lambda s: resumed.append(s))
    assert again.step == 4 and resumed == straight
    _assert_encoder_frozen(again.model, project)
    for (k, p), q in zip(full.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(p, q), k


def _assert_encoder_frozen(model, project: Path) -> None:
    from tasks.training.vc import asr_checkpoint

    encoder = asr_checkpoint(project, _params(project))[0]
    assert not model.content.training and not any(p.requires_grad for p in model.content.parameters())
    assert all(torch.equal(encoder[k], v) for k, v in model.content.state_dict().items())


def test_each_clips_reference_is_another_clip_of_its_speaker(project):
    from tasks.training.vc import Clips, build_model, clips

    params = _params(project)
    split = clips(project, params)
    model = build_model(params, {**params.asr.model.model_dump(), "p_dropout": 0.0})
    cache = lambda name: ResultCache(project / ".cache/vitsflow" / f"{name}.sqlite")  # noqa: E731
    # (the tiny corpus has one train clip a speaker; its val clips make the pool, as validation's)
    c = Clips(model, cache("asr"), cache("vc"), split["train"], split["train"] + split["val"], params,
              torch.device("cpu"))
    picked, reference = [], c.reference
    c.reference = lambda row, rng: (picked.append(row), reference(row, rng))[1]
    c.batch(list(range(len(c.rows))), 0, params.vc.seed)
    assert len(picked) == len(c.rows) and any(others != [row] for row, others in zip(c.rows, c.others))
    for row, others, ref in zip(c.rows, c.others, picked):
        assert ref["speaker"] == row["speaker"] and ref in others
        assert ref["id"] != row["id"] or others == [row]  # itself only for a speaker with one clip


def test_without_the_asr_stages_record_the_error_says_to_run_it(train_corpus, tmp_path):
    from tasks.training.vc import VcError, train

    bare = make_project(train_corpus, tmp_path, fill=False)
    with pytest.raises(VcError, match=r"asr\.json: the asr stage's record is missing.*asr\.enabled"):
        train(_params(bare), bare)


@pytest.mark.slow
def test_two_ddp_processes_train_one_run_and_rank_0_saves_every_ranks_rng(project):
    """torchrun --nproc_per_node 2 -m tasks.training.vc on gloo (plumbing: each rank its share of
    the batch order, one bundle with both ranks' RNG states, resumable by the same world)."""
    import os
    import subprocess
    import sys

    data = yaml.safe_load((project / "params.yaml").read_text())
    data["vc"] = {**TINY_VC, "batch_size": 2, "max_steps": 2, "run_id": "vc-ddp"}
    path = project / "params_ddp.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    repo = Path(__file__).resolve().parents[3]
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2", "-m",
           "tasks.training.vc", "--params", str(path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=project)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed["run_id"] == "vc-ddp" and printed["step"] == 2 and proc.stdout.count('"run_id"') == 1
    _, state, _ = CheckpointStore(open_storage(f"file://{project}/storage"), "vc-ddp").load()
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 2
    data["vc"]["max_steps"] = 3
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=project)
    assert again.returncode == 0 and "resumed run vc-ddp at step 2" in again.stderr, again.stderr[-3000:]
    assert "not an exact resume" not in again.stderr


def test_tensorboard_gets_the_losses_val_conversions_as_audio_and_the_asrs_recognised_phones(project):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tasks.training.vc import train

    train(_params(project, max_steps=2, run_id="vc-tb"), project)
    events = EventAccumulator(str(project / "logs" / "vc-tb"), size_guidance={"audio": 0})
    events.Reload()
    tags = events.Tags()
    assert {"vc/g/mel", "vc/d/total", "vc/val_mel_l1"} <= set(tags["scalars"])
    audio = [t for t in tags["audio"] if t.startswith("vc/val/")]
    assert audio and events.Audio(audio[0])[-1].sample_rate == 24000
    asr_logs = [d for d in (project / "logs").iterdir() if d.name.startswith("asr-")]
    asr_events = EventAccumulator(str(asr_logs[0]), size_guidance={"tensors": 0})
    asr_events.Reload()
    texts = [t for t in asr_events.Tags()["tensors"] if t.startswith("asr/val/")]
    assert texts, asr_events.Tags()
    said = asr_events.Tensors(texts[0])[-1].tensor_proto.string_val[0].decode()
    assert said.startswith("said: ") and "heard: " in said


def test_the_content_warp_resizes_the_mel_along_frequency_and_keeps_its_shape():
    import math

    from tasks.training.vc import warp_mel

    mel = torch.full((1, 80, 5), math.log(1e-5))
    mel[:, 20] = 0.0  # one bright band at bin 20
    assert torch.equal(warp_mel(mel, 1.0), mel)
    up, down = warp_mel(mel, 1.15), warp_mel(mel, 0.85)
    assert up.shape == down.shape == mel.shape
    assert int(up[0, :, 0].argmax()) == 23 and int(down[0, :, 0].argmax()) == 17  # 20 * 1.15, 20 * 0.85
    assert float(down[0, -5:].max()) == pytest.approx(math.log(1e-5))  # padded with the floor
