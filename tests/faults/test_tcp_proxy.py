"""The fault proxy against real servers: a local echo server (threads, real sockets) and the test
PostgreSQL through psycopg2. Each test takes well under a second or two."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from tcp_proxy import TcpProxy

pytestmark = pytest.mark.faults


class EchoServer:
    """A threaded TCP echo server that knows how many connections it holds open right now."""

    def __init__(self) -> None:
        self.open = 0
        self.lock = threading.Lock()
        echo = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with echo.lock:
                    echo.open += 1
                try:
                    while data := self.request.recv(65536):
                        self.request.sendall(data)
                except OSError:
                    pass
                finally:
                    with echo.lock:
                        echo.open -= 1

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo):
    with TcpProxy("127.0.0.1", echo.port, name="echo") as p:
        yield p


def connect(proxy: TcpProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=timeout)


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def is_dead(sock: socket.socket) -> bool:
    """True when the peer closed or reset the connection (a read gives EOF or an error, not a timeout)."""
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def reset_at_once(proxy: TcpProxy) -> bool:
    """A new connection is reset or closed before it can be used (at connect time or at the first read:
    on loopback the RST may beat the end of ``connect()``)."""
    try:
        with connect(proxy) as sock:
            return is_dead(sock)
    except ConnectionResetError:
        return True


def wait_until(predicate, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_relays_both_ways_and_counts_bytes(proxy):
    with connect(proxy) as sock:
        assert roundtrip(sock, b"hello" * 1000) == b"hello" * 1000
    assert wait_until(lambda: proxy.bytes_to_client == 5000)
    assert proxy.bytes_to_upstream == 5000
    proxy.reset_counters()
    assert (proxy.bytes_to_client, proxy.bytes_to_upstream) == (0, 0)
    with connect(proxy) as sock:
        assert roundtrip(sock, b"x" * 10) == b"x" * 10
    assert wait_until(lambda: proxy.bytes_to_client == 10)


def test_cut_closes_open_connections_on_both_sides_and_resets_new_ones(proxy, echo):
    socks = [connect(proxy) for _ in range(5)]
    for sock in socks:
        assert roundtrip(sock, b"ping") == b"ping"
    assert echo.open == 5
    proxy.cut()
    assert all(is_dead(s) for s in socks)  # the clients' side
    assert wait_until(lambda: echo.open == 0)  # the server's side
    assert proxy.open_connections == 0
    assert reset_at_once(proxy)  # accepted, then reset at once: the client fails fast
    assert proxy.refused == 1 and echo.open == 0
    proxy.restore()
    with connect(proxy) as sock:
        assert roundtrip(sock, b"back") == b"back"
    for sock in socks:
        sock.close()


def test_cut_with_fin_closes_in_order(proxy):
    with connect(proxy) as sock:
        assert roundtrip(sock, b"a") == b"a"
        proxy.cut(existing="fin")
        assert sock.recv(1) == b""  # an orderly end of stream, not an error


def test_blackhole_accepts_and_never_answers_until_restore(proxy, echo):
    proxy.cut(refuse_mode="blackhole")
    held = connect(proxy, timeout=0.3)  # the handshake succeeds: it is the silence that hurts
    held.sendall(b"anyone?")
    with pytest.raises(TimeoutError):
        held.recv(1)
    assert echo.open == 0 and proxy.refused == 1
    proxy.restore()
    held.settimeout(2)
    assert is_dead(held)  # released with a reset once the partition heals
    held.close()
    with connect(proxy) as sock:
        assert roundtrip(sock, b"ok") == b"ok"


def test_freeze_keeps_connections_open_and_relays_after_restore(proxy):
    with connect(proxy, timeout=0.3) as sock:
        assert roundtrip(sock, b"1") == b"1"
        proxy.cut(existing="freeze")
        sock.sendall(b"2")
        with pytest.raises(TimeoutError):
            sock.recv(1)
        proxy.restore()
        sock.settimeout(2)
        assert sock.recv(1) == b"2"


def test_outage_without_waiting_restores_itself(proxy):
    started = time.monotonic()
    proxy.outage(0.3, wait=False)
    assert time.monotonic() - started < 0.2 and proxy.is_cut
    assert reset_at_once(proxy)
    assert proxy.wait_restored(2)
    assert 0.25 < time.monotonic() - started < 1.5
    with connect(proxy) as sock:
        assert roundtrip(sock, b"up") == b"up"


def test_blocking_outage_and_an_early_restore(proxy):
    started = time.monotonic()
    proxy.outage(0.2)
    assert not proxy.is_cut and time.monotonic() - started >= 0.2
    proxy.outage(30, wait=False)
    proxy.restore()  # cancels the pending restore: a later cut is not undone by it
    proxy.cut()
    time.sleep(0.1)
    assert proxy.is_cut
    proxy.restore()


def test_bandwidth_throttle_slows_a_transfer(proxy):
    payload = os.urandom(60_000)
    with connect(proxy, timeout=10) as sock:
        started = time.monotonic()
        assert roundtrip(sock, payload) == payload
        fast = time.monotonic() - started
        proxy.bandwidth = 100_000  # bytes/s each way: 60 kB takes about 0.6 s
        started = time.monotonic()
        assert roundtrip(sock, payload) == payload
        slow = time.monotonic() - started
    assert fast < 0.3 and 0.5 < slow < 3, (fast, slow)


def test_many_concurrent_connections(proxy, echo):
    def client(i: int) -> bool:
        with connect(proxy, timeout=10) as sock:
            return all(
                roundtrip(sock, f"{i}:{n}|".encode() * 50) == f"{i}:{n}|".encode() * 50 for n in range(20)
            )

    with ThreadPoolExecutor(64) as pool:
        assert all(pool.map(client, range(200)))
    assert wait_until(lambda: proxy.open_connections == 0 and echo.open == 0)
    assert proxy.accepted == 200


def test_upstream_down_resets_the_client():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # nothing listens there once closed
    with TcpProxy("127.0.0.1", dead_port) as proxy:
        assert reset_at_once(proxy)


def test_stop_leaves_no_thread_and_frees_the_port(echo):
    before = set(threading.enumerate())
    proxy = TcpProxy("127.0.0.1", echo.port).start()
    socks = [connect(proxy) for _ in range(20)]
    for sock in socks:
        assert roundtrip(sock, b"z") == b"z"
    proxy.cut(existing="freeze", refuse_mode="blackhole")
    held = connect(proxy)
    proxy.stop()
    proxy.stop()  # twice is fine
    new = {t for t in set(threading.enumerate()) - before if "process_request_thread" not in t.name}
    assert new == set()  # (the echo server's own handler threads end on their own time)
    assert all(is_dead(s) for s in [*socks, held])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=1)
    for sock in [*socks, held]:
        sock.close()


# --- through the proxy to the test PostgreSQL -----------------------------------------------------------
@pytest.fixture
def pg_proxy(postgres_url):
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432, name="postgres") as proxy:
        yield proxy, {"user": url.username, "dbname": url.database, "password": url.password or ""}


def pg_connect(proxy: TcpProxy, creds: dict, timeout: int = 2):
    import psycopg2

    return psycopg2.connect(host=proxy.listen_host, port=proxy.port, connect_timeout=timeout, **creds)


def test_postgres_cut_fails_the_next_query_and_restore_lets_a_new_connection_work(pg_proxy):
    import psycopg2

    proxy, creds = pg_proxy
    conn = pg_connect(proxy, creds)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    assert proxy.bytes_to_client > 0 and proxy.open_connections == 1
    proxy.cut()
    with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
        cur.execute("SELECT 1")
    with pytest.raises(psycopg2.OperationalError):
        pg_connect(proxy, creds)  # reset at once, no waiting
    proxy.restore()
    conn = pg_connect(proxy, creds)
    with conn.cursor() as cur:
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
    conn.close()


def test_postgres_blackhole_makes_a_new_connection_time_out(pg_proxy):
    import psycopg2

    proxy, creds = pg_proxy
    proxy.cut(refuse_mode="blackhole")
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError):
        pg_connect(proxy, creds, timeout=1)
    assert time.monotonic() - started >= 0.9  # it waited for its own timeout: a partition, not a refusal
    proxy.restore()
    pg_connect(proxy, creds).close()
