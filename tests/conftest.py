import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_policy_dir(tmp_path_factory) -> Path:
    """The demo policy, built once per session (reused across sessions via PREFLOOP_TEST_CACHE)."""
    from training.demo_policy import build_demo_policy

    cache = os.environ.get("PREFLOOP_TEST_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("cache")
    out_dir = root / "demo-policy"
    build_demo_policy(out_dir, progress=False)
    return out_dir
