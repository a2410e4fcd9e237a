"""The task-transition log: one line per state change, in the same text or JSON format as the other log lines.

A task makes three or more lines (submit, dispatch, end), so these skip the logging module's per-record
machinery (≈20 µs a line, the largest single cost per task in the profile): lines are formatted directly and
written in bulk — a dispatcher commit's lines at once after it (before anyone it woke can answer), the submit
lines of a turn of the event loop at the end of that turn. Silence them like any logger: level WARNING for
"supervisor.dispatch" (and "supervisor.api" for submit lines).
"""
import asyncio
import json
import logging
import sys
import time


class TransitionLog:
    def __init__(self):
        self.json = False
        self.stream = sys.stderr
        self.buffer: list[str] = []
        self._second = -1
        self._flush_scheduled = False
        self._stamp = ""

    def configure(self, fmt: str, stream=None) -> None:
        self.json = fmt == "json"
        self.stream = stream or sys.stderr

    def _asctime(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        return f"{self._stamp},{int((now - second) * 1000):03d}"

    def line(self, logger: logging.Logger, message: str, fields: dict) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        now = time.time()
        if self.json:
            out = {"ts": round(now, 3), "level": "INFO", "logger": logger.name, "message": message}
            out.update((k, v) for k, v in fields.items() if v is not None)
            self.buffer.append(json.dumps(out))
        else:
            self.buffer.append(f"{self._asctime(now)} {logger.name} INFO {message}")

    def flush(self) -> None:
        """Write the buffered lines at the end of this turn of the event loop (at once outside a loop)."""
        if not self.buffer or self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.write()
            return
        self._flush_scheduled = True
        loop.call_soon(self.write)

    def write(self) -> None:
        self._flush_scheduled = False
        if self.buffer:
            text, self.buffer = "\n".join(self.buffer) + "\n", []
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):
                pass


transitions = TransitionLog()
