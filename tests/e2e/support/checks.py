"""Soft checks: a scenario takes minutes to set up, so it makes every check it can and reports
all of them (PASS/FAIL lines in its output) instead of stopping at the first. conftest.py
fails the test at its end when any check failed. Plain `assert` stays for preconditions
without which the rest makes no sense (a broker that did not start, a produce that failed)."""

from __future__ import annotations


class Checks:
    def __init__(self) -> None:
        self.passed: list[str] = []
        self.failed: list[str] = []

    def __call__(self, ok, msg: str) -> bool:
        ok = bool(ok)
        print(f"{'PASS' if ok else 'FAIL'} {msg}", flush=True)
        (self.passed if ok else self.failed).append(msg)
        return ok

    def exits_cleanly(self, proc, label: str, timeout: float = 60.0) -> bool:
        """SIGTERM `proc`; it must exit 0 within `timeout` seconds."""
        rc, secs = proc.stop(timeout)
        if rc is None:
            return self(False, f"{label}: still running {timeout:.0f} s after SIGTERM")
        return self(rc == 0, f"{label}: exit code {rc} {secs:.1f}s after SIGTERM")

    def __len__(self) -> int:
        return len(self.passed) + len(self.failed)
