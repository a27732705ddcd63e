"""The fault harness itself, on the real stack without workers (the worker and scheduler are being
rewritten): /readyz follows each fault the harness can cause and recovers from it, moto's request
log counts writes, and the process controls do what they say."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from stack import free_port

pytestmark = pytest.mark.faults
RECOVERY_S = 20  # the API reconnects on its next check; this is only a ceiling


def checks(stack) -> dict:
    return stack.readyz()["checks"]


def wait_ready(stack) -> None:
    stack.wait_until(lambda: stack.readyz()["status"] == "ready", RECOVERY_S, what="/readyz ready")


def test_readyz_follows_database_broker_and_storage_faults(stack):
    assert stack.readyz() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok", "storage": "ok"},
    }

    stack.db_proxy.cut()
    down = checks(stack)
    assert down["database"] != "ok" and down["broker"] == down["storage"] == "ok", down
    assert stack.client.get("/readyz").status_code == 503
    stack.db_proxy.restore()
    wait_ready(stack)

    stack.redis_kill()
    stack.wait_until(lambda: checks(stack)["broker"] != "ok", RECOVERY_S, what="broker reported down")
    stack.redis_restart()
    wait_ready(stack)

    stack.s3_proxy.cut()
    down = checks(stack)
    assert down["storage"] != "ok" and down["database"] == "ok", down
    stack.s3_proxy.restore()
    wait_ready(stack)

    # the harness's own views: the database directly, the writes of a key
    assert stack.db("SELECT name FROM tenants") == [{"name": stack.tenant}]
    for body in (b"one", b"two"):
        stack.s3.put_object(Bucket=stack.bucket, Key="probe/x.bin", Body=body)
    assert stack.object_versions("probe/x.bin") == 2
    assert stack.object_versions("probe/x") == 0  # a prefix of another key is not that key
    assert stack.list_keys("probe/") == ["probe/x.bin"]


@pytest.mark.faults(api=False)
def test_process_controls(stack):
    stack.start_api()
    assert stack.client.get("/healthz").status_code == 200
    stack.term("api")  # SIGTERM to the main process: uvicorn shuts down cleanly
    assert stack.wait_exit("api", 30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    stack.restart("api")  # waits for /healthz again
    first = stack.proc("api").pid
    stack.restart("api")  # a running process is killed first
    assert stack.proc("api").pid != first and stack.proc("api").runs == 3
    assert stack.client.get("/healthz").status_code == 200
    assert "run 3: synctalk api" in stack.output("api") and "run 2" not in stack.output("api")

    port = free_port()  # uvicorn with 2 workers: a parent and its pool of children, like Celery prefork
    stack.start("multi", "api", "--port", str(port), "--workers", "2")
    children = stack.wait_until(
        lambda: len(stack.pool_children("multi")) >= 2 and stack.pool_children("multi"), 30
    )
    stack.kill_pid(children[0])
    stack.wait_until(lambda: children[0] not in stack.pool_children("multi"), 10)
    stack.kill("multi")  # the whole group: no child survives its parent
    assert stack.wait_exit("multi", 5) == -signal.SIGKILL
    time.sleep(0.2)
    assert not any(_alive(pid) for pid in children)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2, trust_env=False)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
