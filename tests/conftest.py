"""Session-wide test settings: offline hub, CPU DeepSpeed, no Ray telemetry, one thread per process."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray >= 2.5x: a local `ray.init()` turns token auth on and writes ~/.ray/auth_token; that host-wide file then puts
# every later `ray start` on the host into token mode while clients without the token fail ("InvalidAuthToken").
# Test clusters are private and short-lived: keep auth off explicitly so no test writes or depends on that file.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".venv" / "torch_extensions"))
