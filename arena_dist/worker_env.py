"""The driver's environment variables that every Ray worker and actor gets (one list for every stage), and how.

Ray starts workers and actors from its raylet, not from the driver, so on a cluster the driver's environment does
not reach them by itself. Plain settings (hub cache, offline flags, extension cache) travel in a runtime env or the
training payload, so they are set before the worker imports anything: `HF_HOME` is read once, when huggingface_hub
is imported. Secrets (the hub token) never travel that way: Ray's runtime-env agent writes every runtime env it sets
up into its log files, and Ray Train keeps its `train_loop_config` in its state API (the dashboard). They go as a
call argument instead, wrapped in `SecretEnv`, and the worker sets them itself before it loads anything from the hub
(huggingface_hub reads `HF_TOKEN` on every request). Nothing here prints a value or writes one to a file.
"""

from __future__ import annotations

import contextlib
import os
from typing import Mapping

FORWARDED_ENV = (
    "HF_TOKEN",  # secret: see SECRET_ENV
    "HF_HOME",
    "HF_ENDPOINT",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    "TORCH_EXTENSIONS_DIR",
    "DS_ACCELERATOR",
)
SECRET_ENV = ("HF_TOKEN",)  # forwarded only inside a SecretEnv, never in a runtime env, payload or file
SECRETS_KEY = "secret_env"  # where a Ray Train train_loop_config carries the SecretEnv


def plain_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The forwarded variables set here, secrets left out: safe for a runtime env or a payload."""
    environ = os.environ if environ is None else environ
    return {key: environ[key] for key in FORWARDED_ENV if key in environ and key not in SECRET_ENV}


class SecretEnv:
    """Secret variables handed to a worker as an argument; the worker calls `apply()` before touching the hub.

    Its repr and str name the variables, never their values (Ray Train shows `str()` of what it cannot serialise in
    its state API), and `json.dumps` refuses it, so a payload holding one cannot end up in a file by accident.
    Pickling (how Ray passes arguments) keeps the values."""

    def __init__(self, values: Mapping[str, str] | None = None):
        self._values = dict(values or {})

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "SecretEnv":
        environ = os.environ if environ is None else environ
        return cls({key: environ[key] for key in SECRET_ENV if environ.get(key)})

    def names(self) -> list[str]:
        return sorted(self._values)

    def apply(self) -> None:
        os.environ.update(self._values)

    def __repr__(self) -> str:
        return f"SecretEnv({', '.join(self.names()) or 'empty'})"

    __str__ = __repr__


def with_secrets(payload: dict) -> dict:
    """`payload` plus the driver's secrets under SECRETS_KEY: for Ray Train's train_loop_config only, never a file."""
    return {**payload, SECRETS_KEY: SecretEnv.from_environ()}


def apply_secrets(secrets: SecretEnv | None) -> None:
    """Set the secrets handed over (None or an empty SecretEnv: nothing to do)."""
    if secrets is not None:
        secrets.apply()


@contextlib.contextmanager
def patched_environment(changes: dict[str, str]):
    """`os.environ` with `changes` while inside (a spawned child copies the environment when it is started).

    Only the changed keys are set and restored. `unittest.mock.patch.dict(os.environ, ...)` restores by clearing the
    whole environment and setting it again, so another thread of the process (Ray's, a progress bar's) could read an
    empty environment for that instant; here no other key is ever unset."""
    saved = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
