"""The Dask task runner (runtime.task_runner: dask, a local 2-process cluster) writes exactly what
the default thread pool writes."""
import pytest
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import aishell_bv2_list, ljspeech_subset, write_params

pytestmark = pytest.mark.slow  # end to end: minutes, not seconds


def stage_outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_stages(root: Path, prefect_server: str) -> str:
    env = dict(os.environ, PREFECT_API_URL=prefect_server, OMP_NUM_THREADS="1")
    exe = str(Path(sys.executable).with_name("vitsflow"))
    output = ""
    for stage in ["ingest", "text"]:
        proc = subprocess.run([exe, stage, "--params", str(root / "params.yaml")], cwd=root, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        output += proc.stdout + proc.stderr
    return output


def test_a_two_worker_dask_cluster_gives_the_same_ingest_and_text_outputs_as_threads(
        tmp_path, real_speech, prefect_server):
    outs = {}
    for runner in ["thread", "dask"]:
        root = tmp_path / runner
        ljspeech_subset(real_speech, root / "lj", 6)
        aishell_bv2_list(real_speech, root / "aishell", 4)
        write_params(root, [{"name": "lj", "language": "en", "path": "lj", "format": "ljspeech", "speaker": "lj"},
                            {"name": "aishell", "language": "zh", "path": "aishell", "format": "bv2_list"}],
                     ingest={"shard_mb": 1, "chunk_size": 2}, text={"shard_mb": 1, "chunk_size": 2},
                     runtime={"workers": 2, "task_runner": runner, "cache_dir": ".cache"})
        log = run_stages(root, prefect_server)
        assert ("distributed.scheduler" in log) == (runner == "dask")  # the Dask cluster did the work
        outs[runner] = {stage: stage_outputs(root / "data" / stage) for stage in ["ingest", "text"]}
    for stage in ["ingest", "text"]:
        assert outs["dask"][stage].keys() == outs["thread"][stage].keys() and outs["thread"][stage]
        differing = [k for k in outs["thread"][stage] if outs["dask"][stage][k] != outs["thread"][stage][k]]
        assert not differing, f"{stage}: {differing}"
