"""Helpers of the chaos scenarios (tests/e2e/chaos/), on top of the e2e fixtures
(tests/e2e/conftest.py): a config with per-destination stubs and chaos settings, a steady
producer thread (input keeps arriving while processes die), the stub's request file read
incrementally (100 k events make more requests than `GET /requests` keeps), an RSS sampler,
and a broker restarted on the same sqlite storage and address.

Every scenario is parameterised `short` (run by `python3 -m pytest tests/e2e`) and `long`
(marked `long`, deselected by default; `scripts/chaos.sh` runs them with `-m long`)."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.expect import Metrics
from support.procs import Proc, free_addr, http, poll, port_open
from support.records import event_key

# --- config ------------------------------------------------------------------------------------


def chaos_config(eventrelay, broker, stubs: dict, group: str, name: str,
                 instance_id: str | None = None, dest: dict | None = None,
                 properties: dict | None = None):
    """Like `eventrelay.config`, with `stubs` = {"owneriq": Stub, "seg": Stub} (a destination
    may have its own stub), `dest` settings added to both destinations, short retry tiers
    (1 s, 5 s, 30 s) so a record handed to the retry topic before the circuit opened is due
    soon after the destination is back, and `kafka.instance_id` (static membership)."""
    cfg = eventrelay.config(broker, stubs["owneriq"], group=group, name=name)
    extra = {"retry_tier_ms": "[1000, 5000, 30000]", **(dest or {})}
    text = cfg.path.read_text()
    text = text.replace(f'[destinations.seg]\nendpoint = "http://{stubs["owneriq"].addr}"',
                        f'[destinations.seg]\nendpoint = "http://{stubs["seg"].addr}"')
    lines = "".join(f"{k} = {v}\n" for k, v in extra.items())
    text = text.replace("backoff_max_ms = 1000\n", "backoff_max_ms = 1000\n" + lines)
    if instance_id:
        text = text.replace(f'group_id = "{group}"\n',
                            f'group_id = "{group}"\ninstance_id = "{instance_id}"\n')
    props = {"session.timeout.ms": 10000, **(properties or {})}
    text += "\n[kafka.properties]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in props.items())
    cfg.path.write_text(text)
    return cfg


# --- steady input ------------------------------------------------------------------------------


class Feeder(threading.Thread):
    """Produce `lines` to segment.events at `rate` per second from a background thread
    (idempotent, acks=all, 10 minutes of message timeout so a broker restart is ridden out).
    `done` is set when every line was acknowledged (or failed: see `failed`)."""

    def __init__(self, kafka_mod, bootstrap: str, lines: list[bytes], rate: float):
        super().__init__(daemon=True)
        import confluent_kafka as ck
        self.lines, self.rate = lines, rate
        self.producer = ck.Producer({"log_level": 4, "bootstrap.servers": bootstrap,
                                     "enable.idempotence": True, "acks": "all",
                                     "linger.ms": 5, "message.timeout.ms": 600_000})
        self.acked = 0
        self.failed = 0
        self.first_error = None
        self.sent = 0
        self.done = threading.Event()
        self.t0 = self.t_end = None

    def _on_delivery(self, err, _msg):
        if err is None:
            self.acked += 1
        else:
            self.failed += 1
            self.first_error = self.first_error or str(err)

    def run(self):
        self.t0 = time.monotonic()
        for i, line in enumerate(self.lines):
            due = self.t0 + i / self.rate
            while (now := time.monotonic()) < due:
                self.producer.poll(min(0.05, due - now))
            while True:
                try:
                    self.producer.produce("segment.events", value=line, key=event_key(line),
                                          on_delivery=self._on_delivery)
                    break
                except BufferError:
                    self.producer.poll(0.1)
            self.sent += 1
            self.producer.poll(0)
        self.producer.flush(600)
        self.t_end = time.monotonic()
        self.done.set()

    def summary(self) -> str:
        return f"{self.acked} of {len(self.lines)} input events acknowledged, {self.failed} failed" + (
            f" ({self.first_error})" if self.first_error else "")


# --- what the stub received --------------------------------------------------------------------

_KEY = re.compile(rb'"idempotency-key":"([^"]*)"')
_TAIL = re.compile(rb'"status":(\d+),"at_ms":(\d+)\}\s*$')
_URL = re.compile(rb'^\{"method":"[A-Z]+","url":"http://[^/"]+(/[jv])')


class StubFile:
    """The stub's `--record` file (one JSON line per request, written as it answers), read
    incrementally: successes per destination and Idempotency-Key, and every request's status
    and arrival time."""

    def __init__(self, path: Path):
        self.path, self.pos = path, 0
        self.succ: dict = defaultdict(Counter)
        self.arrivals: list[tuple[int, int]] = []  # (at_ms, status)
        self.first_ok: dict = defaultdict(dict)  # destination -> key -> at_ms of its first 2xx
        self._partial = b""

    def update(self) -> "StubFile":
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return self
        self.pos += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for ln in lines:
            t, u, k = _TAIL.search(ln), _URL.match(ln), _KEY.search(ln)
            if not t:
                continue
            status, at = int(t.group(1)), int(t.group(2))
            self.arrivals.append((at, status))
            if 200 <= status < 300 and u and k:
                d = "owneriq" if u.group(1) == b"/j" else "seg"
                key = k.group(1).decode()
                self.succ[d][key] += 1
                self.first_ok[d].setdefault(key, at)
        return self

    def missing(self, want: dict) -> dict:
        return {d: want[d] - set(self.succ[d]) for d in want}

    def all_delivered(self, want: dict) -> bool:
        return not any(self.update().missing(want).values())

    def wait_all(self, want: dict, timeout: float) -> bool:
        return bool(poll(lambda: self.all_delivered(want), timeout, interval=0.5))

    def last_first_ok_ms(self, want: dict) -> int:
        """When the last of the wanted keys got its first 2xx (ms since the epoch)."""
        return max((self.first_ok[d][k] for d in want for k in want[d] if k in self.first_ok[d]),
                   default=0)

    def duplicates(self, want: dict) -> dict:
        return {d: sum(n - 1 for k, n in self.succ[d].items() if k in want[d] and n > 1)
                for d in want}

    def between(self, t0_ms: int, t1_ms: int) -> Counter:
        """Statuses of the requests that arrived in [t0_ms, t1_ms)."""
        return Counter(s for at, s in self.arrivals if t0_ms <= at < t1_ms)


def want_of(exp) -> dict:
    """destination -> the Idempotency-Keys (messageIds) `eventrelay map` says it must get."""
    return {d: {x["messageId"] for x in v} for d, v in exp.requests.items()}


def report_delivery(check, stubfile: StubFile, want: dict, label: str, secs: float) -> dict:
    """One check per destination: everything delivered at least once; duplicates reported."""
    stubfile.update()
    dups = stubfile.duplicates(want)
    for d in sorted(want):
        missing = sorted(want[d] - set(stubfile.succ[d]))
        check(not missing,
              f"{label}: {d}: {len(want[d]) - len(missing)} of {len(want[d])} expected requests "
              f"delivered at least once (missing {len(missing)} {missing[:5]}); "
              f"{dups[d]} duplicate deliveries ({secs:.1f}s)")
    return dups


# --- process figures ---------------------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    try:
        for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """VmRSS of a process once a second: (monotonic time, MB)."""

    def __init__(self, pid: int, every: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            mb = rss_mb(self.pid)
            if mb is not None:
                self.samples.append((time.monotonic(), mb))
            self.stop.wait(self.every)

    def max_between(self, t0: float, t1: float) -> float:
        return max((mb for t, mb in self.samples if t0 <= t < t1), default=0.0)


def metric(service, name: str, **labels) -> float | None:
    """A metric of a running service, None when /metrics does not answer."""
    try:
        return Metrics(http("GET", f"http://{service.config.metrics}/metrics", timeout=2)) \
            .sum(name, **labels)
    except OSError:
        return None


# --- the broker, restarted ---------------------------------------------------------------------


def restart_broker(procs, broker, down_secs: float, name: str) -> float:
    """Stop tansu (SIGTERM, as an orchestrator would), keep it down `down_secs`, then start it
    again with the same arguments: the same address and sqlite file. Returns the seconds from
    the restart until it accepted connections."""
    rc, secs = broker.proc.stop(30)
    print(f"tansu stopped (exit {rc}, {secs:.1f}s after SIGTERM); down for {down_secs:.0f}s")
    time.sleep(down_secs)  # the outage itself: nothing to poll for
    t0 = time.monotonic()
    broker.proc = procs.start(name, broker.proc.argv)
    poll(lambda: port_open(broker.bootstrap) or not broker.proc.alive(), 30)
    assert broker.proc.alive() and port_open(broker.bootstrap), \
        f"tansu did not come back on {broker.bootstrap} within 30 s"
    return time.monotonic() - t0


@dataclass
class Scale:
    """The size of one run of a scenario (short in the test command, long in scripts/chaos.sh)."""
    name: str
    params: dict

    def __getattr__(self, k):
        try:
            return self.params[k]
        except KeyError as e:
            raise AttributeError(k) from e


def scales(short: dict, long: dict):
    """`@pytest.mark.parametrize("scale", scales(...))`: a short and a long (marked) run."""
    return [pytest.param(Scale("short", short), id="short"),
            pytest.param(Scale("long", long), id="long", marks=pytest.mark.long)]
