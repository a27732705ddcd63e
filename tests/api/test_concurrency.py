"""Many requests at once, on PostgreSQL and on the embedded SQLite: every one is answered, none waits for a pooled connection that
a finished request still holds. (Before the session slots, 120 concurrent GETs deadlocked: 40 finished
routes held all 40 connections while waiting for a thread to serialize their answer, and the 40
threads waited for a connection.)"""

from __future__ import annotations

import asyncio
import time
from contextlib import nullcontext

import httpx
import pytest
from api_helpers import make_api, new_render, new_subject, postgres_url


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_hundreds_of_concurrent_reads_are_all_answered_with_a_pool_of_40(tmp_path, database):
    with postgres_url() if database == "postgres" else nullcontext(None) as url:
        api = make_api(tmp_path, url)
        try:
            platform = api.app.state.platform
            render_id = new_render(platform, api.tenant_id, new_subject(platform, api.tenant_id, "ann"))

            async def burst() -> list[int]:
                transport = httpx.ASGITransport(app=api.app)
                headers = {"Authorization": f"Bearer {api.key}"}
                async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as c:
                    gets = [c.get(f"/v1/renders/{render_id}") for _ in range(300)]
                    lists = [c.get("/v1/renders?limit=5") for _ in range(50)]
                    answers = await asyncio.wait_for(asyncio.gather(*gets, *lists), timeout=60)
                return [r.status_code for r in answers]

            started = time.monotonic()
            statuses = asyncio.run(burst())
            assert statuses == [200] * 350
            assert time.monotonic() - started < 60  # (a deadlock ends only at the pool's 30 s timeouts)
            assert platform.engine.pool.checkedout() == 0  # every connection went back
        finally:
            api.close()
