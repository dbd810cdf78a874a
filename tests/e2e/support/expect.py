"""What the scenarios compare against: `eventrelay map`'s output for the same input (the Event
Tester is the oracle for what the service must send), the stub's recorded requests, and
Prometheus metrics."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path


def load_jsonl(path: Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(ln + b"\n" for ln in lines))
    return path


@dataclass
class Expect:
    """`eventrelay map`'s verdict on each input line."""
    requests: dict = field(default_factory=lambda: defaultdict(list))  # destination -> lines
    skipped: Counter = field(default_factory=Counter)  # (destination, reason) -> n
    rejected: list = field(default_factory=list)
    invalid: list = field(default_factory=list)

    @classmethod
    def load(cls, map_out: Path) -> "Expect":
        exp = cls()
        for d in load_jsonl(map_out):
            if "invalid" in d:
                exp.invalid.append(d)
            elif "request" in d:
                exp.requests[d["destination"]].append(d)
            elif "skipped" in d:
                exp.skipped[(d["destination"], d["skipped"])] += 1
            elif "rejected" in d:
                exp.rejected.append(d)
            else:
                raise ValueError(f"unexpected `eventrelay map` line {d}")
        return exp

    def n_requests(self, dest: str | None = None) -> int:
        if dest is None:
            return sum(len(v) for v in self.requests.values())
        return len(self.requests.get(dest, []))

    def message_ids(self, dest: str) -> Counter:
        return Counter(d["messageId"] for d in self.requests.get(dest, []))

    def all_requests(self) -> list:
        return [d for v in self.requests.values() for d in v]

    def summary(self) -> dict:
        return {"requests": {d: len(v) for d, v in sorted(self.requests.items())},
                "skipped": sum(self.skipped.values()), "rejected": len(self.rejected),
                "invalid": len(self.invalid)}


def compact(body) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def norm(v):
    """JSON value with integral floats as ints, so 39.0 == 39 as in JSON."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, dict):
        return {k: norm(x) for k, x in v.items()}
    if isinstance(v, list):
        return [norm(x) for x in v]
    return v


def canon(body) -> str:
    return json.dumps(norm(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dest_of_url(url: str) -> str:
    """Which destination a request went to, from its path (OwnerIQ GET /j/, Seg POST /v1/)."""
    path = re.sub(r"^https?://[^/]+", "", url)
    if path.startswith("/j/"):
        return "owneriq"
    if path.startswith("/v1/"):
        return "seg"
    return "?"


# --- Prometheus text ---------------------------------------------------------------------------

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Metrics:
    def __init__(self, text: str):
        self.samples = []
        for ln in text.splitlines():
            if not ln or ln.startswith("#"):
                continue
            m = _LINE.match(ln)
            if m:
                self.samples.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")),
                                     float(m.group(3))))

    def sum(self, name: str, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        return sum(v for n, lab, v in self.samples if n == name
                   and all(lab.get(k) == str(x) for k, x in labels.items()))
