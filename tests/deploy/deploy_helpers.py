"""What the deploy tests share: where things are, the tools (helm, promtool, kubernetes-validate) and
the chart rendered into Kubernetes objects. The fixtures are in conftest.py."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "synctalk"
PRODUCTION = REPO / "deploy" / "helm" / "examples" / "production.yaml"
KUBE_VERSION = "1.30.0"
NAMESPACE = "synctalk"


def tool_missing(why: str) -> None:
    """Skip, or under CI=true (where .ci/run provides every tool) fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must have this tool: {why}")
    pytest.skip(why)


def helm_module():
    """deploy/tools/helm_binary.py (not a package: loaded from its path)."""
    spec = importlib.util.spec_from_file_location("helm_binary", REPO / "deploy" / "tools" / "helm_binary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Helm:
    path: Path
    env: dict = field(default_factory=dict)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [str(self.path), *args], capture_output=True, text=True, env=self.env, cwd=REPO, timeout=120
        )
        if check and out.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{out.stderr}")
        return out

    def template(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(
            "template", "synctalk", str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION,
            *args, check=check,
        )  # fmt: skip


@dataclass
class Rendered:
    text: str
    docs: list[dict]

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str) -> dict:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        names = [d["metadata"]["name"] for d in self.of_kind(kind)]
        assert len(found) == 1, f"{kind}/{name}: found {len(found)} among {names}"
        return found[0]

    def workloads(self) -> list[dict]:
        return [d for d in self.docs if d["kind"] in ("Deployment", "Job")]


def parse(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(helm: Helm, *args: str) -> Rendered:
    text = helm.template(*args).stdout
    return Rendered(text, parse(text))


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]
