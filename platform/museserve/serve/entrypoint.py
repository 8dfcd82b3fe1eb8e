"""The Serve application builder that Serve config files import: `serve run`, `serve deploy`
and KubeRay's `serveConfigV2` (helm/museserve) all name `museserve.serve.entrypoint:app_builder`.

The config file comes from the application's `args.config`, else `MUSESERVE_CONFIG`; the
Redis URL and API key hashes may come from the environment (`read_environment`), which is
how Kubernetes Secrets reach it.

In Kubernetes the file is a mounted ConfigMap, which the kubelet refreshes some time after
`helm upgrade` changes it, while KubeRay applies the new `serveConfigV2` at once. The chart
therefore puts the file's SHA-256 into `args.config_sha256`, and the builder waits until the
mounted file has that digest: a rebuild never reads the previous version of the file.

No `from __future__ import annotations` here: Serve reads the builder's annotation to
validate `args` into `BuilderArgs`, so it must be a real class.
"""

import hashlib
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from museserve.config import ConfigError, load_config, read_environment
from museserve.logs import setup_logging
from museserve.serve.app import build_app


class BuilderArgs(BaseModel):
    """`args` of the application in a Serve config file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: str | None = Field(None, description="museserve config file; unset: $MUSESERVE_CONFIG, else the default.")
    config_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Expected SHA-256 of the file; the builder waits for it."
    )
    config_wait_s: float = Field(300.0, gt=0, description="How long to wait for the file to have config_sha256.")


def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def wait_for_digest(path: Path, expected: str, timeout_s: float, poll_s: float = 2.0) -> None:
    """Returns once `path` hashes to `expected`; ConfigError naming both digests after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (found := file_sha256(path)) != expected:
        if time.monotonic() >= deadline:
            raise ConfigError(
                f"{path} has sha256 {found or '(unreadable)'} after {timeout_s:.0f} s, but the Serve config expects "
                f"{expected}: the mounted ConfigMap was not updated (is it the one this release renders?)"
            )
        time.sleep(poll_s)


def app_builder(args: BuilderArgs) -> Application:
    env = read_environment()
    path = args.config or env.config_path
    if args.config_sha256 is not None:
        if path is None:
            raise ConfigError("args.config_sha256 is set but no config file is named (args.config or MUSESERVE_CONFIG)")
        wait_for_digest(Path(path), args.config_sha256, args.config_wait_s)
    setup_logging(env.log_level)
    return build_app(load_config(path, env), env.log_level)
