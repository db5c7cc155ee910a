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
