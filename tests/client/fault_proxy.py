"""A real HTTP proxy that misbehaves on purpose, in front of a real server: per rule, the first N requests
matching a method and path prefix get a 500, a 405 (a route the server lacks), a 429 with Retry-After,
a problem answer of the test's choosing, a closed connection (before or after the request reached the
server), or a response cut after some bytes of its body. Everything else is relayed as it is. One request per connection (``Connection: close`` is sent upstream)."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus


@dataclass
class Rule:
    method: str
    path: str  # a prefix of the path (query string excluded)
    # "500" | "405" | "429" | "drop" | "drop_after" | "hang_after" | "cut:<bytes>"
    # | "problem:<status>:<code>:<detail>" (an answer the API could give, e.g. one item of a call refused)
    action: str
    times: int = 1
    retry_after: int = 1


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    action: str
    at: float = field(default_factory=time.monotonic)


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return b"", b""
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


class FaultProxy:
    def __init__(self, upstream: str, rules: list[Rule] | None = None) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port.rstrip("/")))
        self.rules = list(rules or [])
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # lets "hang_after" connections go
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def count(self, method: str, path: str, action: str | None = None) -> int:
        with self.lock:
            return sum(1 for s in self.seen if s.method == method and s.path.startswith(path)
                       and (action is None or s.action == action))  # fmt: skip

    def _pick(self, method: str, path: str) -> str:
        with self.lock:
            for rule in self.rules:
                if rule.method == method and path.startswith(rule.path) and rule.times > 0:
                    rule.times -= 1
                    return rule.action if rule.action != "429" else f"429:{rule.retry_after}"
        return "pass"

    def _handle(self, client: socket.socket) -> None:
        head, body = _read_head(client)
        if not head:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        path = target.split("?", 1)[0]
        size = int(headers.get("content-length", "0") or 0)
        while len(body) < size:
            chunk = client.recv(min(1 << 20, size - len(body)))
            if not chunk:
                return
            body += chunk
        action = self._pick(method, path)
        with self.lock:
            self.seen.append(Seen(method, path, headers, action))
        if action == "drop":
            return  # closed without an answer; the server never saw it
        if action in ("500", "405") or action.startswith(("429", "problem:")):
            code, detail = "injected", "injected by the test proxy"
            if action.startswith("problem:"):  # "problem:<status>:<code>:<detail>", as the API words one
                _, number, code, detail = action.split(":", 3)
                status = f"{number} {HTTPStatus(int(number)).phrase}"
            else:
                status = {"500": "500 Internal Server Error", "405": "405 Method Not Allowed"}.get(
                    action, "429 Too Many Requests"
                )
            extra = f"Retry-After: {action.split(':')[1]}\r\n" if action.startswith("429") else ""
            payload = json.dumps({"type": "urn:synctalk:problem:injected", "title": "injected",
                                  "status": int(status[:3]), "detail": detail, "code": code}).encode()  # fmt: skip
            client.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/problem+json\r\n{extra}"
                           f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)  # fmt: skip
            return
        kept = [
            ln for ln in lines[1:] if ln.split(":", 1)[0].strip().lower() not in ("connection", "keep-alive")
        ]
        upstream = socket.create_connection(self.upstream)
        try:
            upstream.sendall(
                "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1") + body
            )
            if action in ("drop_after", "hang_after"):
                while upstream.recv(65536):  # the server did the work; the client never hears of it
                    pass
                if action == "hang_after":
                    self.release.wait(120)
                return
            limit = int(action.split(":")[1]) if action.startswith("cut:") else None
            sent_body, in_body, pending = 0, False, b""
            while chunk := upstream.recv(65536):
                if limit is None:
                    client.sendall(chunk)
                    continue
                if not in_body:  # pass the head whole, then count body bytes
                    pending += chunk
                    if b"\r\n\r\n" not in pending:
                        continue
                    h, _, chunk = pending.partition(b"\r\n\r\n")
                    client.sendall(h + b"\r\n\r\n")
                    in_body = True
                take = chunk[: max(0, limit - sent_body)]
                client.sendall(take)
                sent_body += len(take)
                if sent_body >= limit:
                    return  # cut: the client has part of the body
        finally:
            upstream.close()
