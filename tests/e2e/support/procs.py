"""Processes the scenarios run (tansu, the stub, eventrelay), each logging to its own file, and
bounded waits that poll for a condition and say what they waited for when it never came."""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def free_addr() -> str:
    return f"127.0.0.1:{free_port()}"


def poll(predicate, timeout: float, interval: float = 0.2):
    """Call `predicate` until it returns something truthy or `timeout` seconds pass; returns
    the last value (falsy on timeout). Exceptions count as falsy (a server not up yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (OSError, ValueError):
            value = None
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def quiet_period(seconds: float) -> None:
    """Wait a fixed time after the expected work is done, so that anything *beyond* it (a
    duplicate, an extra request) would show. A negative check cannot poll for a condition."""
    time.sleep(seconds)


def http(method: str, url: str, body: dict | None = None, timeout: float = 10.0) -> str:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode("utf-8")


def get_json(url: str):
    return json.loads(http("GET", url))


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def http_status(url: str) -> int | str:
    """A GET's status code, or the error when there was no answer."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return str(e)


def port_open(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


def tail(path: Path, lines: int = 60, width: int = 400) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        return f"({e})"
    return "\n".join(ln[:width] for ln in text.splitlines()[-lines:])


_LIVE: set = set()


@atexit.register
def _kill_leftovers() -> None:
    """Should pytest itself be interrupted before teardown: no process outlives the run."""
    for proc in list(_LIVE):
        proc.kill()


class Proc:
    """A child process, in a process group of its own (so signals reach anything it starts),
    with stdout and stderr in `log`."""

    def __init__(self, name: str, argv: list[str], log: Path):
        self.name, self.argv, self.log = name, argv, log
        self._log_file = open(log, "wb")
        self.popen = subprocess.Popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.popen.pid
        _LIVE.add(self)

    def _signal(self, sig) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 60.0) -> tuple[int | None, float]:
        """SIGTERM, then wait up to `timeout` s: (exit code, seconds); (None, timeout) when it
        was still running (it is SIGKILLed then)."""
        t0 = time.monotonic()
        if self.alive():
            self._signal(signal.SIGTERM)
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None, timeout
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL: no chance to commit, flush or say goodbye."""
        self._signal(signal.SIGKILL)  # the group: also whatever it started
        self.popen.wait()
        _LIVE.discard(self)

    def close(self, grace: float = 10.0) -> None:
        """Teardown: SIGTERM, SIGKILL after `grace` seconds."""
        if self.alive():
            self.stop(grace)
        self._signal(signal.SIGKILL)  # leftovers in its group
        _LIVE.discard(self)
        self._log_file.close()

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"<{self.name} pid {self.pid} log {self.log}>"
