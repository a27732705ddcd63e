"""Server-Sent Events read line by line (the subset ``GET /v1/events`` sends: id, event, data, retry)."""

from __future__ import annotations

import json

from services.client.types import Event


class SseParser:
    """``feed(line)`` for each line of the stream; returns an event at each blank line ending one."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.event = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> Event | None:
        if line == "":
            if not self.data:
                self.event = "message"
                return None
            raw = "\n".join(self.data)
            try:
                data = json.loads(raw)
            except ValueError:
                data = raw
            ev: Event = {"id": self.id, "event": self.event, "data": data}
            self.event, self.data = "message", []
            return ev
        if line.startswith(":"):
            return None  # a comment: the keep-alive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event = value
        elif name == "id":
            self.id = value
        return None
