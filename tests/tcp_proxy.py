"""A real TCP proxy for fault tests: it sits on a free loopback port in front of one upstream
``host:port`` (PostgreSQL, moto's S3, anything that speaks TCP) and relays bytes both ways until a test
breaks the link on purpose.

Why a TCP proxy and not mocks: the platform's resilience lives in code we do not own (psycopg2 and
SQLAlchemy's pool, botocore's retries, kombu's reconnects). Only a real socket that dies, or goes silent,
shows how those layers actually behave.

The faults it can play:

* ``cut()`` closes every open connection at once (RST by default, or FIN, or ``existing="freeze"``:
  they stay open but no byte passes, the way a network partition looks to a connection already open),
  and until ``restore()`` treats new connections by ``refuse_mode``:
  ``"reset"`` accepts and resets them at once (a crashed server: the client fails fast), or
  ``"blackhole"`` accepts and never answers, holding the socket until ``restore()`` (a partition: the
  client waits for its own timeout).
* ``outage(seconds)``: ``cut()``, then ``restore()`` after the delay; blocking, or ``wait=False`` to
  return at once (the restore is timed on the proxy's own event loop, no extra thread).
* ``bandwidth`` (bytes per second, each direction, shared by every connection): slows transfers so a
  test can land a fault in the middle of one.
* byte counters per direction (``bytes_to_client``, ``bytes_to_upstream``, ``reset_counters()``): a
  test can assert e.g. that a resumed download read at most N bytes.

Everything runs on one asyncio loop in one background thread, so hundreds of pooled connections cost
no threads, and ``stop()`` leaves none behind. The public methods are thread-safe: they hand their work
to the loop and wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

RefuseMode = Literal["reset", "blackhole"]
Existing = Literal["reset", "fin", "freeze"]
TO_CLIENT, TO_UPSTREAM = "to_client", "to_upstream"
CHUNK = 64 * 1024
CALL_TIMEOUT_S = 10.0


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0): the peer sees ``ECONNRESET``, the harshest failure there is."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    """One client connection and, once connected, its upstream twin, with the two pumps between them."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    closed: bool = False

    def close(self, how: Existing = "reset") -> None:
        """Close both sides now (``reset``: RST, ``fin``: an orderly close) and stop the pumps."""
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            if how == "reset":
                _reset(writer)
            else:
                writer.close()
        for task in self.tasks:
            task.cancel()  # a pump waiting on a frozen link would not notice the sockets closing


class TcpProxy:
    """A TCP relay from ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``, with faults on demand.

    Use as a context manager or ``start()`` / ``stop()``. ``port`` is known after ``start()``.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        name: str = "proxy",
        refuse_mode: RefuseMode = "reset",
        bandwidth: float | None = None,
        listen_host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout: float = 5.0,
    ) -> None:
        if refuse_mode not in ("reset", "blackhole"):
            raise ValueError(f"refuse_mode is 'reset' or 'blackhole', not {refuse_mode!r}")
        self.upstream = (upstream_host, int(upstream_port))
        self.name = name
        self.refuse_mode: RefuseMode = refuse_mode
        self.bandwidth = bandwidth  # bytes/s in each direction, shared by all connections; None: no limit
        self.listen_host = listen_host
        self.port = port
        self.connect_timeout = connect_timeout
        self.accepted = 0  # connections accepted and relayed since start
        self.refused = 0  # connections reset or black-holed because the proxy was cut
        self._bytes = {TO_CLIENT: 0, TO_UPSTREAM: 0}
        self._cut = False
        self._links: set[_Link] = set()
        self._held: set[asyncio.StreamWriter] = set()
        self._next_slot = {TO_CLIENT: 0.0, TO_UPSTREAM: 0.0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None  # cleared while existing connections are frozen
        self._pending_restore: asyncio.TimerHandle | None = None

    # --- life -----------------------------------------------------------------------------------------
    def start(self) -> TcpProxy:
        """Listen (on a free port unless one was given) and relay in a background thread."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name=f"tcp-proxy-{self.name}", daemon=True
        )
        self._thread.start()
        ready.wait(CALL_TIMEOUT_S)
        if failure:
            self._thread.join(CALL_TIMEOUT_S)
            self._thread = None
            raise failure[0]
        return self

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            self._flowing = asyncio.Event()
            self._flowing.set()
            self._server = loop.run_until_complete(
                asyncio.start_server(self._on_client, self.listen_host, self.port, backlog=512)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.close()

    def stop(self) -> None:
        """Close everything (connections with an RST) and end the thread; safe to call twice."""
        if self._thread is None:
            return
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT_S)
        self._thread = None

    async def _shutdown(self) -> None:
        if self._pending_restore is not None:
            self._pending_restore.cancel()
        self._server.close()
        self._close_all("reset")
        self._release_held()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://HOST:PORT``: the proxy as an HTTP client's endpoint."""
        return f"http://{self.listen_host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect: ``(host, port)``."""
        return self.listen_host, self.port

    # --- faults -----------------------------------------------------------------------------------------
    def cut(self, *, existing: Existing = "reset", refuse_mode: RefuseMode | None = None) -> None:
        """Break the link until ``restore()``.

        ``existing``: what happens to open connections: ``"reset"`` (RST both sides), ``"fin"`` (an orderly
        close both sides) or ``"freeze"`` (left open, nothing relayed; they resume on ``restore()``).
        ``refuse_mode`` (default: the proxy's): how new connections are treated meanwhile.
        """
        if existing not in ("reset", "fin", "freeze"):
            raise ValueError(f"existing is 'reset', 'fin' or 'freeze', not {existing!r}")
        if refuse_mode is not None and refuse_mode not in ("reset", "blackhole"):
            raise ValueError(f"refuse_mode is 'reset' or 'blackhole', not {refuse_mode!r}")
        self._call(self._do_cut(existing, refuse_mode))

    async def _do_cut(self, existing: Existing, refuse_mode: RefuseMode | None) -> None:
        self._cancel_pending_restore()
        self._cut = True
        if refuse_mode is not None:
            self.refuse_mode = refuse_mode
        if existing == "freeze":
            self._flowing.clear()
        else:
            self._close_all(existing)

    def restore(self) -> None:
        """Relay again: frozen connections resume, black-holed ones are reset (their clients gave up or
        will), new connections go through."""
        self._call(self._do_restore())

    async def _do_restore(self) -> None:
        self._cancel_pending_restore()
        self._cut = False
        self._flowing.set()
        self._release_held()

    def outage(
        self,
        seconds: float,
        *,
        wait: bool = True,
        existing: Existing = "reset",
        refuse_mode: RefuseMode | None = None,
    ) -> None:
        """``cut()`` now and ``restore()`` after ``seconds``. ``wait=False`` returns at once; a later
        ``cut()`` or ``restore()`` cancels the pending restore, ``wait_restored()`` waits for it."""
        self.cut(existing=existing, refuse_mode=refuse_mode)
        if wait:
            time.sleep(seconds)
            self.restore()
            return
        self._call(self._schedule_restore(seconds))

    async def _schedule_restore(self, seconds: float) -> None:
        def _restore() -> None:
            self._pending_restore = None
            self._loop.create_task(self._do_restore())

        self._pending_restore = self._loop.call_later(seconds, _restore)

    def _cancel_pending_restore(self) -> None:
        if self._pending_restore is not None:
            self._pending_restore.cancel()
            self._pending_restore = None

    @property
    def is_cut(self) -> bool:
        return self._cut

    def wait_restored(self, timeout: float) -> bool:
        """Wait until the proxy relays again (after ``outage(..., wait=False)``); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._cut:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    # --- counters -----------------------------------------------------------------------------------------
    @property
    def bytes_to_client(self) -> int:
        """Bytes relayed upstream -> client since start or ``reset_counters()``."""
        return self._bytes[TO_CLIENT]

    @property
    def bytes_to_upstream(self) -> int:
        """Bytes relayed client -> upstream since start or ``reset_counters()``."""
        return self._bytes[TO_UPSTREAM]

    def reset_counters(self) -> None:
        self._call(self._do_reset_counters())

    async def _do_reset_counters(self) -> None:
        self._bytes[TO_CLIENT] = self._bytes[TO_UPSTREAM] = 0

    @property
    def open_connections(self) -> int:
        """Connections relayed right now (black-holed ones not included)."""
        return len(self._links)

    def __repr__(self) -> str:
        state = f"cut/{self.refuse_mode}" if self._cut else "open"
        return f"TcpProxy({self.name} :{self.port} -> {self.upstream[0]}:{self.upstream[1]}, {state})"

    # --- the loop's side ----------------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self._thread is None or self._loop is None:
            coro.close()
            raise RuntimeError(f"{self.name} is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT_S)

    def _close_all(self, how: Existing) -> None:
        for link in list(self._links):
            link.close(how)
        self._links.clear()

    def _release_held(self) -> None:
        for writer in self._held:
            _reset(writer)
        self._held.clear()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """asyncio's per-connection task. It must not end cancelled: Python 3.11's streams log a
        cancelled client task as an error, so ``stop()``'s cancellation ends here, quietly."""
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            _reset(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused += 1
            if self.refuse_mode == "reset":
                _reset(writer)
            else:
                self._held.add(writer)  # accepted, never answered: the client waits for its own timeout
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), self.connect_timeout
            )
        except (OSError, TimeoutError):
            self._links.discard(link)
            link.close("reset")  # upstream down: the client sees what it would see without the proxy
            return
        if link.closed:  # cut while connecting
            _reset(up_writer)
            return
        link.upstream = up_writer
        self.accepted += 1
        link.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, TO_UPSTREAM, link)),
            asyncio.create_task(self._pump(up_reader, writer, TO_CLIENT, link)),
        ]
        try:
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self._links.discard(link)
            link.close("fin")

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, direction: str, link: _Link
    ) -> None:
        """Relay one direction until EOF; pass the EOF on (half-close); an error closes the whole link."""
        try:
            while True:
                data = await src.read(self._chunk())
                if not data:
                    break
                await self._flowing.wait()  # a frozen partition: hold the bytes
                if link.closed:
                    return
                await self._pace(direction, len(data))
                dst.write(data)
                self._bytes[direction] += len(data)
                await dst.drain()
            if dst.can_write_eof() and not dst.is_closing():
                dst.write_eof()
        except OSError:  # reset by a peer, or written to after it went away
            link.close("reset")

    def _chunk(self) -> int:
        """Small reads when throttled, so the pacing is smooth rather than one burst per 64 KiB."""
        bandwidth = self.bandwidth
        return CHUNK if not bandwidth else max(512, min(CHUNK, int(bandwidth / 20)))

    async def _pace(self, direction: str, size: int) -> None:
        """A shared token bucket per direction: each chunk books the link for ``size / bandwidth``
        seconds after the previous booking and waits until its slot has passed."""
        bandwidth = self.bandwidth
        if not bandwidth:
            return
        now = self._loop.time()
        done = max(now, self._next_slot[direction]) + size / bandwidth
        self._next_slot[direction] = done
        await asyncio.sleep(done - now)
