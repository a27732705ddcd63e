"""Fixtures of the telemetry tests: spans of this process captured in memory, the API helpers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.telemetry import capture_spans

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))  # api_helpers: apps, keys, jobs


@pytest.fixture
def spans() -> Iterator:
    """Every span this process makes during the test, in memory (``spans.get_finished_spans()``)."""
    with capture_spans() as exporter:
        yield exporter
