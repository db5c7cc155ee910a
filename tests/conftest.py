"""Test-wide settings: nothing may reach a model hub; Ray stays small and quiet."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Property tests assert behaviour, not speed: a loaded CI machine must not turn into a failure.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("mmcurate", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mmcurate")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`make demo` once per test session, on a local Ray, from a fresh copy of the sample corpus:
    (output folder, RunResult, planted cases). Shared by tests/test_demo.py (the run as a user reads
    it) and tests/test_equivalence.py (the model on every demo pack), so the suite runs the demo once."""
    from pathlib import Path
    from demo_data import sample as sample_data
    from pipelines.recipe import load
    from pipelines.runner import run
    root = Path(__file__).resolve().parents[1]
    work = tmp_path_factory.mktemp("demo")
    expected = sample_data.build(work / "data" / "sample")
    recipe = load(root / "recipes" / "demo.yaml")
    cwd = os.getcwd()
    os.chdir(work)  # the recipe's source paths are relative, as they are for `make demo`
    try:
        result = run(recipe, out=work / "out", executor="ray", progress=False)
    finally:
        os.chdir(cwd)
    return work / "out", result, expected


@pytest.fixture(scope="module")
def tok():
    """The shipped Qwen tokenizer (pack.tokens), loaded once per test module that asks for it."""
    from pack import tokens as T
    return T.load_tokenizer()


@pytest.fixture(scope="module")
def hf_tok():
    """The same tokenizer through transformers, to compare our counts with its own."""
    from transformers import AutoTokenizer
    from pack import tokens as T
    return AutoTokenizer.from_pretrained(str(T.shipped_tokenizer_dir()), local_files_only=True)
