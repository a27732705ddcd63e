"""The alert rules (deploy/helm/synctalk/files/alerts.yaml): promtool checks them and runs their unit
tests (deploy/helm/synctalk/tests/alerts_test.yaml); they read only the figures the platform exports."""

from __future__ import annotations

import copy
import re
import subprocess

import yaml
from deploy_helpers import CHART, PRODUCTION, REPO

ALERTS_FILE = CHART / "files" / "alerts.yaml"
ALERTS_TEST = CHART / "tests" / "alerts_test.yaml"
# What `synctalk scheduler` exports on its metrics port (shared/jobs/metrics.py); the API's /metrics has
# synctalk_queue_depth too. The rules must use no other name.
EXPORTED = {
    "synctalk_queue_depth", "synctalk_queue_oldest_waiting_seconds", "synctalk_stages", "synctalk_stages_stuck",
    "synctalk_jobs_finished_last_hour", "synctalk_workers", "synctalk_workers_busy", "synctalk_scheduler_leader",
    "synctalk_scheduler_last_pass_timestamp_seconds",
}  # fmt: skip


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS_FILE.read_text())["groups"] for r in g["rules"]]


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_rules(promtool):
    out = _promtool(promtool, "check", "rules", str(ALERTS_FILE))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in out.stdout


def test_promtool_unit_tests_fire_and_stay_quiet(promtool):
    out = _promtool(promtool, "test", "rules", str(ALERTS_TEST))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_rendered_prometheus_rule_passes_promtool(promtool, production_render, tmp_path):
    (rule,) = copy.deepcopy(production_render.of_kind("PrometheusRule"))  # the render is shared: no edits
    rules = tmp_path / "rendered-rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    out = _promtool(promtool, "check", "rules", str(rules))
    assert out.returncode == 0, out.stdout + out.stderr
    # and the unit tests pass against the rendered rules too (less the alertLabels the example adds)
    added = yaml.safe_load(PRODUCTION.read_text())["metrics"]["prometheusRule"]["alertLabels"]
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            r["labels"] = {k: v for k, v in r["labels"].items() if k not in added}
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "alerts.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "alerts_test.yaml").write_text(ALERTS_TEST.read_text())
    out = _promtool(promtool, "test", "rules", str(tmp_path / "tests" / "alerts_test.yaml"))
    assert out.returncode == 0, out.stdout + out.stderr


def _enclosing_functions(expr: str, at: int) -> list[str]:
    """The functions whose parentheses enclose position ``at``, innermost first (``max by (q) (x)``: max)."""
    opened: list[int] = []
    for i, ch in enumerate(expr[:at]):
        if ch == "(":
            opened.append(i)
        elif ch == ")":
            opened.pop()
    names = []
    for i in reversed(opened):
        m = re.search(r"(\w+)\s*(?:(?:by|without)\s*\([^)]*\)\s*)?$", expr[:i])
        names.append(m[1] if m else "")
    return names


def test_rules_read_only_exported_figures_counted_once():
    for rule in _rules():
        names = set(re.findall(r"\bsynctalk_[a-z_]+\b", rule["expr"]))
        assert names and names <= EXPORTED, (rule["alert"], names - EXPORTED)
        # every API replica reports synctalk_queue_depth too: each figure is taken through max by (...)
        # (or absent()), so a deployment is one series whatever the number of processes reporting it
        for use in re.finditer(r"\bsynctalk_[a-z_]+\b", rule["expr"]):
            functions = [f for f in _enclosing_functions(rule["expr"], use.start()) if f not in ("delta", "")]
            where = f"{rule['alert']}: {use[0]} in {functions}"
            assert functions and functions[0] in ("max", "absent"), where


def test_the_aggregation_check_sees_a_bare_figure():
    assert _enclosing_functions("max by (a) (delta(x[5m]))", 22) == ["delta", "max"]
    assert _enclosing_functions("sum(x) > 0", 4) == ["sum"]


def test_every_alert_is_labelled_and_explained():
    names = [r["alert"] for r in _rules()]
    assert len(names) == len(set(names)) == 8
    for rule in _rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"])
        assert "docs/KUBERNETES.md" in rule["annotations"]["description"]
        assert re.fullmatch(r"\d+m", rule["for"])


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    fired, quiet = set(), set()
    for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {r["alert"] for r in _rules()}
    assert fired == names and quiet == names


def test_the_docs_explain_each_alert():
    docs = (REPO / "docs" / "KUBERNETES.md").read_text()
    for rule in _rules():
        assert f"`{rule['alert']}`" in docs, rule["alert"]
