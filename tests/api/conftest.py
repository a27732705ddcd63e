"""Fixtures of the API tests; the helpers themselves live in api_helpers.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from api_helpers import Api, Receiver, make_api


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The app on a migrated SQLite file, a storage folder and the embedded broker; one tenant + key."""
    made = make_api(tmp_path)
    yield made
    made.close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """``receivers(answers)``: webhook endpoints on free ports, closed after the test."""
    made: list[Receiver] = []

    def make(answers: list[int] | None = None) -> Receiver:
        made.append(Receiver(answers))
        return made[-1]

    yield make
    for r in made:
        r.close()
