"""The real stack's compose files: valid for docker compose (`config`), every platform service on the
production settings, the GPU overlay giving the GPU worker its device, commands the CLI really has."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services.cli.main import COMMANDS

REPO = Path(__file__).resolve().parents[1]
FILES = ["-f", str(REPO / "docker-compose.yml"), "-f", str(REPO / "deploy" / "compose.gpu.yml")]


def _compose() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    if os.environ.get("CI") == "true":
        pytest.fail("CI must have docker compose (.ci/run installs Debian's docker-compose)")
    pytest.skip("no docker compose here")


def _config(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*_compose(), "--project-directory", str(REPO), *FILES, "config"], capture_output=True, text=True,
        env={**os.environ, **env}, cwd=REPO, timeout=60,
    )  # fmt: skip


def test_compose_config_is_valid_and_complete():
    out = _config({"SYNCTALK_SECRET_KEY": "a-long-random-secret"})
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    services = config["services"]
    assert {
        "postgres", "redis", "minio", "migrate", "api", "scheduler", "worker-cpu", "worker-gpu", "flower"
    } <= set(services)  # fmt: skip
    for name in ("migrate", "api", "scheduler", "worker-cpu", "worker-gpu"):
        env = services[name]["environment"]
        assert (
            env["SYNCTALK_ENVIRONMENT"] == "production"
            and env["SYNCTALK_SECRET_KEY"] == "a-long-random-secret"
        )
        assert env["SYNCTALK_DATABASE_URL"].startswith("postgresql") and env[
            "SYNCTALK_BROKER_URL"
        ].startswith("redis")
        assert env["SYNCTALK_STORAGE_URL"].startswith("s3://")
        command = services[name]["command"]
        assert command[0] == "synctalk" and command[1] in COMMANDS  # a command the CLI really has
    assert services["worker-cpu"]["command"][3] == "cpu" and services["worker-gpu"]["command"][3] == "gpu"
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["worker-gpu"]["build"]["args"]["VARIANT"] == "cuda"
    # the images the Helm chart runs (deploy/Dockerfile's targets; tests/deploy/test_images.py reads it)
    for name in ("migrate", "api", "scheduler"):
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        assert services[name]["build"]["target"] == "api"
        assert services[name]["image"].startswith("synctalk-api:")
    assert services["worker-cpu"]["build"]["target"] == "worker"
    assert services["worker-cpu"]["build"]["args"]["VARIANT"] == "cpu"
    assert services["worker-gpu"]["build"]["target"] == "worker"
    assert services["worker-gpu"]["image"].startswith("synctalk-worker-gpu:")
    assert services["worker-gpu"]["stop_grace_period"] in ("5m", "5m0s", 300)  # a checkpoint is written first
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_compose_refuses_to_start_without_a_secret():
    env = {k: v for k, v in os.environ.items() if k != "SYNCTALK_SECRET_KEY"}
    out = subprocess.run(
        [*_compose(), "--project-directory", str(REPO), *FILES, "config", "-q"], capture_output=True, text=True,
        env=env, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0 and "SYNCTALK_SECRET_KEY" in out.stderr
