"""The API trusts a key it verified for ``api_key_cache_s`` seconds (a busy client's requests skip the
database): a revoked key stops working once that time is over, a refusal is never remembered, and the
table stays bounded."""

from __future__ import annotations

from api_helpers import make_api
from fastapi.testclient import TestClient
from sqlalchemy import update

from services.api.keycache import VerifiedKeys
from shared.db.models import ApiKey, utcnow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_revoked_key_stops_working_when_its_cache_entry_expires(tmp_path):
    api = make_api(tmp_path)
    clock = Clock()
    platform = api.app.state.platform
    platform.verified_keys = VerifiedKeys(ttl_s=5.0, clock=clock)
    try:
        client = TestClient(api.app, headers={"Authorization": f"Bearer {api.key}"})
        assert client.get("/v1/subjects").status_code == 200
        with platform.sessions() as s:
            s.execute(update(ApiKey).where(ApiKey.tenant_id == api.tenant_id).values(revoked_at=utcnow()))
            s.commit()
        clock.now += 4.0  # within the cache time: still trusted (the documented delay)
        assert client.get("/v1/subjects").status_code == 200
        clock.now += 1.5  # past it: the database says revoked
        r = client.get("/v1/subjects")
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        clock.now += 100.0  # and a refusal is not cached as a success later either
        assert client.get("/v1/subjects").status_code == 401
    finally:
        api.close()


def test_a_refusal_is_never_cached_and_a_new_key_works_at_once(tmp_path):
    api = make_api(tmp_path)
    try:
        client = TestClient(api.app)
        bad = {"Authorization": f"Bearer {api.key[:-4]}abcd"}
        assert client.get("/v1/subjects", headers=bad).status_code == 401
        assert len(api.app.state.platform.verified_keys._entries) == 0
        good = {"Authorization": f"Bearer {api.key}"}
        assert client.get("/v1/subjects", headers=good).status_code == 200
        assert len(api.app.state.platform.verified_keys._entries) == 1
        assert api.key not in repr(api.app.state.platform.verified_keys._entries)  # only its keyed hash
    finally:
        api.close()


def test_the_table_is_bounded_and_zero_turns_it_off():
    clock = Clock()
    keys = VerifiedKeys(ttl_s=5.0, max_entries=3, clock=clock)
    for i in range(5):
        keys.put(f"h{i}", f"t{i}", f"p{i}")
    assert keys.get("h0") is None and keys.get("h1") is None and keys.get("h4") == ("t4", "p4")
    off = VerifiedKeys(ttl_s=0)
    off.put("h", "t", "p")
    assert off.get("h") is None
