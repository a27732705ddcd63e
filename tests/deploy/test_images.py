"""The images (deploy/Dockerfile), read as text: no Docker engine here, so what can be checked without
building is checked: pinned bases, the targets the chart and compose name, a fixed non-root user, the
locked installs, the model files and kernels built in, and what .dockerignore keeps out."""

from __future__ import annotations

import re

import yaml
from deploy_helpers import CHART, REPO

DOCKERFILE = REPO / "deploy" / "Dockerfile"


def _lines() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current += " " + line.rstrip("\\").strip() if current else line.rstrip("\\").strip()
        if not line.endswith("\\"):
            joined.append(current)
            current = ""
    return joined


def _stages() -> dict[str, dict]:
    """name -> {"base": FROM's argument, "lines": its instructions}."""
    stages, current = {}, None
    for line in _lines():
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.I)
        if m:
            current = stages[m[2]] = {"base": m[1], "lines": []}
        elif current is not None:
            current["lines"].append(line)
    return stages


def _global_args() -> dict[str, str]:
    args = {}
    for line in _lines():
        if line.upper().startswith("FROM"):
            break
        m = re.match(r"ARG\s+(\w+)=(\S+)", line)
        if m:
            args[m[1]] = m[2]
    return args


def _chain(stage: str) -> list[str]:
    """The stage, its base stage, and so on, down to an image."""
    stages, chain = _stages(), [stage]
    while stages[chain[-1]]["base"] in stages:
        chain.append(stages[chain[-1]]["base"])
    return chain


def _base_image(stage: str) -> str:
    base = _stages()[_chain(stage)[-1]]["base"]
    m = re.fullmatch(r"\$\{(\w+)\}", base)
    return _global_args()[m[1]] if m else base


def _all_lines(stage: str) -> list[str]:
    return [line for s in _chain(stage) for line in _stages()[s]["lines"]]


def test_targets_exist_with_pinned_bases():
    stages = _stages()
    assert {"api", "worker-cpu", "worker-gpu", "worker"} <= set(stages)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", _base_image("api"))
    assert _base_image("worker-cpu") == _base_image("api")
    assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-(cudnn-)?runtime-ubuntu24\.04", _base_image("worker-gpu"))
    devel = _global_args()["CUDA_DEVEL_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-(cudnn-)?devel-ubuntu24\.04", devel)
    assert devel.split(":")[1].split("-")[0] == _base_image("worker-gpu").split(":")[1].split("-")[0]
    for image in _global_args().values():
        assert "latest" not in image


def test_the_api_image_has_no_cuda():
    assert not any("cuda" in s for s in _chain("api"))
    text = "\n".join(_all_lines("api")) + "\n".join(_stages()["cpu-build"]["lines"])
    assert "BUILD_NO_CUDA=1" in text and "nvcc" not in text


def test_every_image_runs_as_a_fixed_non_root_user_under_tini():
    for target in ("api", "worker-cpu", "worker-gpu"):
        lines = _all_lines(target)
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users and users[-1] == "10001:10001", target
        assert any("useradd --uid 10001 --gid 10001" in line for line in lines)
        assert any(line.startswith("ENTRYPOINT") and "tini" in line for line in lines)
        env = " ".join(line for line in lines if line.startswith("ENV "))
        # the only writable places under a read-only root: /tmp (HOME, caches) and /data
        settings = (
            "HOME=/tmp",
            "SYNCTALK_DATA_DIR=/data",
            "SYNCTALK_MODEL_DIR=/models",
            "SYNCTALK_KERNELS_JIT=0",
        )
        for setting in settings:
            assert setting in env, (target, setting)


def test_installs_are_locked_and_the_project_has_no_deps():
    for build in ("cpu-build", "gpu-build"):
        lines = _stages()[build]["lines"]
        text = "\n".join(lines)
        assert "pip install -c requirements.lock -r requirements.lock" in text
        assert re.search(r"pip install --no-deps --no-build-isolation -e \.", text)
        assert "synctalk models fetch" in text  # checksum-verified against the manifest
        assert "cuda_ext/setup_ext.py build_ext --inplace" in text  # kernels prebuilt: nothing compiles later
    gpu = "\n".join(_stages()["gpu-build"]["lines"])
    assert 'ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"' in gpu and "_C_cuda" in gpu
    # tiny-cuda-nn is best effort: a failed build only warns
    assert re.search(r"tiny-cuda-nn@\$\{TINYCUDANN_REF\}.*\|\| echo \"WARNING", gpu)


def test_runtime_images_have_ffmpeg_and_espeak_and_the_built_files():
    for target in ("api", "worker-gpu"):
        lines = _all_lines(target)
        apt = " ".join(line for line in lines if "apt-get install" in line)
        assert "ffmpeg" in apt and "espeak-ng" in apt
        copies = [line for line in lines if line.startswith("COPY --from=")]
        assert {c.split()[-1] for c in copies} == {"/venv", "/app", "/models"}


def test_dockerignore_keeps_local_state_out():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    local = {".git", ".venv", "demo-output", "**/__pycache__", "**/*.so", ".pytest_cache", ".ruff_cache"}
    assert local <= ignored
    assert not ignored & {"requirements.lock", "pyproject.toml", "README.md", "shared", "cuda_ext"}


def test_compose_and_the_chart_use_these_targets():
    stages = set(_stages())
    for path in (REPO / "docker-compose.yml", REPO / "deploy" / "compose.gpu.yml"):
        for service in yaml.safe_load(path.read_text())["services"].values():
            build = service.get("build")
            if isinstance(build, dict):
                assert build["dockerfile"] == "deploy/Dockerfile" and build["target"] in stages
    values = yaml.safe_load((CHART / "values.yaml").read_text())["image"]
    for key, target in (("api", "api"), ("workerCpu", "worker-cpu"), ("workerGpu", "worker-gpu")):
        assert values[key]["repository"].endswith("/" + target) and target in stages
