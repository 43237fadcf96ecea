"""A second clean clone of the pipeline, run beside test_dvc_pipeline.py's project (on the other
worker), gives the out hashes of that project's first run."""
import time

import pytest

from tests.helpers import run
# its fixtures, for a run without test_dvc_pipeline.py (then the first run happens here)
from tests.test_dvc_pipeline import (corpus, env, first_lock_files, first_repro, home, make_corpus,  # noqa: F401
                                     make_project, out_hashes, project)

pytestmark = pytest.mark.slow  # a whole `dvc repro`


def test_two_clean_clones_give_identical_out_hashes(tmp_path, tmp_path_factory, real_speech, env, request):
    """The clone has its own copy of the corpus, where the first project has its copy (the other
    worker edits that one), and runs on its own Prefect server."""
    (tmp_path / "corpora").mkdir()
    other = make_project(tmp_path / "project", make_corpus(tmp_path / "corpora", real_speech))
    run(["dvc", "repro"], other, env)
    started, lock = first_lock_files(tmp_path_factory)
    if started.exists():  # the first run is under way on the other worker (or done here): its lock
        deadline = time.time() + 1200
        while not lock.exists():
            assert started.read_text() != "failed", "the first dvc repro failed (test_dvc_pipeline.py)"
            assert time.time() < deadline, "the first dvc repro left no dvc.lock in 20 minutes"
            time.sleep(2)
        first = lock.read_text()
    else:  # test_dvc_pipeline.py is not in this run (or runs later here): its first run, here
        first = request.getfixturevalue("first_repro")[1]
    assert out_hashes((other / "dvc.lock").read_text()) == out_hashes(first)
