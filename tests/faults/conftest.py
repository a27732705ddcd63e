"""Fixtures of the fault-injection suite: a real platform per test (``stack`` / ``make_stack``), torn down
whatever happens, and its logs attached to the report of a test that fails.

Writing a scenario::

    pytestmark = pytest.mark.faults          # every test module here: it is what the marker selects

    @pytest.mark.faults(job_stale_after_s=4)  # keyword arguments: SYNCTALK_ settings of this test's stack
    def test_something(stack):
        stack.start_worker("cpu"); stack.wait_log("cpu", "ready.")
        ...
        stack.db_proxy.outage(5)

``make_stack(api=True, **settings)`` builds more than one, or builds one later in the test.
``api=False`` (as a keyword of the marker too) leaves the API unstarted.
"""

from __future__ import annotations

import os

import pytest
from stack import ServiceMissing, Stack, postgres_server_url, redis_server_binary


def _need(check) -> str:
    """A service the suite needs: skipped where it is missing, except on CI (a missing service fails)."""
    try:
        return check()
    except ServiceMissing as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must provide it: {exc}")
        pytest.skip(str(exc))


@pytest.fixture
def postgres_url() -> str:
    return _need(postgres_server_url)


@pytest.fixture
def make_stack(request, tmp_path, postgres_url):
    """A factory of started stacks (``make_stack(api=True, **settings)``); all of them are stopped and
    their databases dropped when the test ends."""
    _need(redis_server_binary)
    stacks: list[Stack] = []
    request.node.fault_stacks = stacks  # read by pytest_runtest_makereport below

    def make(*, api: bool = True, **settings) -> Stack:
        stack = Stack(tmp_path / f"stack{len(stacks)}", postgres_url=postgres_url, **settings)
        stacks.append(stack)  # before up(): a half-started stack is cleaned up too
        stack.up()
        if api:
            stack.start_api()
        return stack

    yield make
    errors = []
    for stack in stacks:
        try:
            stack.stop_all()
        except Exception as exc:  # noqa: BLE001 -- stop the others first
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def stack(request, make_stack) -> Stack:
    """One started stack with its API; settings from the ``faults`` markers (the closest wins) and from
    indirect parametrization (``@pytest.mark.parametrize("stack", [{...}], indirect=True)``)."""
    settings: dict = {}
    for marker in reversed(list(request.node.iter_markers("faults"))):
        settings.update(marker.kwargs)
    settings.update(getattr(request, "param", None) or {})
    return make_stack(**settings)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test (or set-up) gets the end of each of its stacks' logs in its report: those made by
    ``make_stack`` and any ``Stack`` a fixture of the test returned (a module-scoped one too)."""
    report = yield
    if report.failed and report.when in ("setup", "call"):
        stacks = [*getattr(item, "fault_stacks", []), *getattr(item, "funcargs", {}).values()]
        seen: set[int] = set()
        for stack in stacks:
            if isinstance(stack, Stack) and id(stack) not in seen:
                seen.add(id(stack))
                report.sections.append((f"stack logs ({stack.root})", stack.tail_logs()))
    return report
