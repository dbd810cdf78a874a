"""Fixtures of the end-to-end suite: a real broker server (tansu), the stand-in destinations
(`eventrelay stub`), eventrelay processes and their config files, and the soft checks.

Every process a test starts logs to its own file in the test's tmp dir; the last lines of each
are printed when the test fails, and every process is stopped at teardown (SIGTERM, then
SIGKILL), pass or fail. pytest keeps the tmp dirs of the last three runs
(/tmp/pytest-of-$USER/).

Environment:
  EVENTRELAY_BIN            the eventrelay binary (else $CARGO_TARGET_DIR or target/, release
                            then debug, relative to the repository)
  EVENTRELAY_REQUIRE_TANSU  1: a missing tansu or confluent-kafka fails instead of skipping
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support.checks import Checks  # noqa: E402
from support.expect import Expect, Metrics, dest_of_url, write_lines  # noqa: E402
from support.procs import (  # noqa: E402
    Proc, free_addr, get_json, http, http_ok, poll, port_open, tail,
)

ROOT = Path(__file__).resolve().parents[2]
LOGS = pytest.StashKey[list]()
CHECKS = pytest.StashKey[list]()
BIN_WAIT_SECS = 1200


def _missing(what: str):
    """A missing broker or client: skip, or fail under EVENTRELAY_REQUIRE_TANSU=1."""
    if os.environ.get("EVENTRELAY_REQUIRE_TANSU") == "1":
        pytest.fail(f"{what} (EVENTRELAY_REQUIRE_TANSU=1)", pytrace=False)
    pytest.skip(what)


# --- the eventrelay binary ---------------------------------------------------------------------

def _find_bin() -> Path | None:
    target = Path(os.environ.get("CARGO_TARGET_DIR") or "target")
    if not target.is_absolute():
        target = ROOT / target
    for p in (target / "release" / "eventrelay", target / "debug" / "eventrelay"):
        if os.access(p, os.X_OK):
            return p
    return None


@pytest.fixture(scope="session")
def tools():
    """The broker and the outside client every scenario needs: skip without them (fail under
    EVENTRELAY_REQUIRE_TANSU=1), before waiting for any binary."""
    if shutil.which("tansu") is None:
        _missing("tansu is not on PATH (scripts/setup.sh --tansu installs it)")
    try:
        importlib.import_module("confluent_kafka")
    except ImportError:
        _missing("python3 has no confluent_kafka (scripts/setup.sh installs it)")


@pytest.fixture(scope="session")
def eventrelay_bin(request, tools) -> Path:
    """$EVENTRELAY_BIN, else the built one (waits up to 20 minutes for a build in progress;
    never builds it)."""
    env = os.environ.get("EVENTRELAY_BIN")
    if env:
        if not os.access(env, os.X_OK):
            pytest.fail(f"EVENTRELAY_BIN={env} is not an executable file", pytrace=False)
        return Path(env)
    found = _find_bin()
    if found is None:
        capman = request.config.pluginmanager.getplugin("capturemanager")
        deadline = time.monotonic() + BIN_WAIT_SECS
        with capman.global_and_fixture_disabled():
            while found is None and time.monotonic() < deadline:
                print(f"waiting for target/{{release,debug}}/eventrelay to be built "
                      f"({BIN_WAIT_SECS - deadline + time.monotonic():.0f}s)", file=sys.stderr)
                time.sleep(30)
                found = _find_bin()
    if found is None:
        pytest.fail("no eventrelay binary in target/release or target/debug after 20 minutes "
                    "(cargo build --release, or set EVENTRELAY_BIN)", pytrace=False)
    return found


@pytest.fixture(scope="session")
def segment_libs(tools):
    """Segment's own libraries (support/segment_libs.py): segment-analytics-python and
    @segment/analytics-node in tests/clients/node_modules (scripts/setup.sh installs both).
    Missing: skip, or fail under EVENTRELAY_REQUIRE_TANSU=1 or EVENTRELAY_REQUIRE_CLIENTS=1."""
    libs = importlib.import_module("support.segment_libs")
    problem = libs.missing()
    if problem:
        if os.environ.get("EVENTRELAY_REQUIRE_CLIENTS") == "1":
            pytest.fail(f"{problem} (EVENTRELAY_REQUIRE_CLIENTS=1)", pytrace=False)
        _missing(problem)
    return libs


@pytest.fixture(scope="session")
def kafka(tools):
    """The outside client (support/kafka.py, confluent-kafka)."""
    return importlib.import_module("support.kafka")


# --- processes -----------------------------------------------------------------------------

class Procs:
    """Every process of one test; teardown stops them newest first (eventrelay before the stub
    and the broker it talks to)."""

    def __init__(self, node, work: Path):
        self.node, self.work, self.all = node, work, []

    def start(self, name: str, argv: list[str]) -> Proc:
        return self.adopt(Proc(name, [str(a) for a in argv], self.log_path(name)))

    def adopt(self, proc: Proc) -> Proc:
        self.all.append(proc)
        return proc

    def log_path(self, name: str) -> Path:
        path = self.work / f"{name}.log"
        self.node.stash[LOGS].append(path)
        return path

    def close(self) -> None:
        for p in reversed(self.all):
            p.close()


@pytest.fixture
def procs(request, tmp_path):
    request.node.stash[LOGS] = []
    procs = Procs(request.node, tmp_path)
    yield procs
    procs.close()


# --- tansu -----------------------------------------------------------------------------------

@dataclass
class Broker:
    bootstrap: str
    storage: str
    proc: Proc


@pytest.fixture
def tansu(procs, tmp_path, tools):
    """Start a tansu broker on a free loopback port: `tansu(storage="sqlite"|"memory")`.

    sqlite wherever a consumer fetches from an offset it did not just reach (a restart, a
    replay, a redrive, the retry topic's seek back): with memory storage tansu 0.6.0 serves a
    fetch from an offset inside a batch from the next batch on, skipping records (SPEC §8)."""

    def start(storage: str = "sqlite", name: str = "tansu") -> Broker:
        addr = free_addr()
        if storage == "sqlite":
            (tmp_path / name).mkdir()
            engine = f"sqlite:///{tmp_path / name / 'tansu.db'}"
        elif storage == "memory":
            engine = "memory://tansu/"
        else:
            raise ValueError(storage)
        proc = procs.start(name, ["tansu", "broker", "--listener-url", f"tcp://{addr}",
                                  "--advertised-listener-url", f"tcp://{addr}",
                                  "--storage-engine", engine])
        poll(lambda: port_open(addr) or not proc.alive(), 30)
        assert proc.alive() and port_open(addr), \
            f"tansu ({storage}) did not accept connections on {addr} within 30 s"
        print(f"tansu {name} on {addr} ({engine})")
        return Broker(addr, storage, proc)

    return start


# --- the stub destinations -------------------------------------------------------------------

class Stub:
    """`eventrelay stub`: both destination APIs, recording every request, faults on demand."""

    def __init__(self, addr: str, proc: Proc):
        self.addr, self.proc = addr, proc

    def requests(self) -> list[dict]:
        return get_json(f"http://{self.addr}/requests")

    def count(self) -> int:
        return get_json(f"http://{self.addr}/requests/count")["count"]

    def fault(self, **fault) -> None:
        """POST /faults: {"status","rate","retry_after","latency_ms","for_secs","path_prefix"}."""
        http("POST", f"http://{self.addr}/faults", fault)

    def clear_faults(self) -> None:
        http("DELETE", f"http://{self.addr}/faults")

    def successes(self) -> dict:
        """destination -> Counter of Idempotency-Keys answered 2xx."""
        succ = defaultdict(Counter)
        for r in self.requests():
            if 200 <= r["status"] < 300:
                succ[dest_of_url(r["url"])][r["headers"].get("idempotency-key")] += 1
        return succ

    def wait_successes(self, want: dict, timeout: float) -> dict:
        """Poll until every wanted Idempotency-Key (destination -> ids) got a 2xx, or the
        timeout; returns the last successes()."""
        deadline = time.monotonic() + timeout
        while True:
            succ = self.successes()
            if all(set(want[d]) <= set(succ[d]) for d in want) or time.monotonic() >= deadline:
                return succ
            time.sleep(0.5)


@pytest.fixture
def stub(procs, eventrelay_bin):
    """Start `eventrelay stub` on a free port: `stub(record=True)` also writes every request
    to <name>.ndjson in the test's tmp dir."""

    def start(name: str = "stub", record: bool = True) -> Stub:
        addr = free_addr()
        argv = [eventrelay_bin, "stub", "--listen", addr]
        if record:
            argv += ["--record", procs.work / f"{name}.ndjson"]
        proc = procs.start(name, argv)
        poll(lambda: port_open(addr) or not proc.alive(), 30)
        assert proc.alive() and port_open(addr), f"the stub did not listen on {addr} within 30 s"
        return Stub(addr, proc)

    return start


# --- eventrelay ------------------------------------------------------------------------------

@dataclass
class Config:
    path: Path
    bootstrap: str
    group: str
    metrics: str  # host:port of /metrics, /healthz, /readyz
    ingest: str | None = None  # host:port of Segment's HTTP Tracking API, when configured


class Service(Proc):
    """`eventrelay run` with its config."""

    def __init__(self, name: str, argv: list[str], log: Path, config: Config):
        super().__init__(name, argv, log)
        self.config = config

    def ready(self, timeout: float = 60.0) -> bool:
        """/readyz answered 200 within `timeout` (False at once if the process exited), and the
        ingest port, when configured, accepts connections."""
        def up():
            return (http_ok(f"http://{self.config.metrics}/readyz")
                    and (self.config.ingest is None or port_open(self.config.ingest)))
        poll(lambda: up() or not self.alive(), timeout)
        return self.alive() and up()

    def ingest_serving(self, timeout: float = 60.0) -> bool:
        """The ingest port accepts connections within `timeout` (for `--role ingest`, which
        has no consumer, so no partitions for /readyz to count)."""
        poll(lambda: port_open(self.config.ingest) or not self.alive(), timeout)
        return self.alive() and port_open(self.config.ingest)

    def metrics(self) -> Metrics:
        return Metrics(http("GET", f"http://{self.config.metrics}/metrics"))


@dataclass
class Result:
    rc: int
    output: str

    def error(self) -> str:
        """eventrelay's own error line, else the last lines of its output."""
        for ln in self.output.splitlines():
            if ln.startswith("eventrelay: error"):
                return ln[:400]
        return " ".join(self.output.splitlines()[-4:])[:400]


class Eventrelay:
    def __init__(self, bin: Path, procs: Procs, work: Path):
        self.bin, self.procs, self.work = bin, procs, work

    def config(self, broker: Broker, stub: Stub | None, group: str, name: str = "eventrelay",
               properties: dict | None = None, ingest: dict | None = None,
               group_lag_secs: float | None = None) -> Config:
        """Both destinations pointed at the stub (at a closed port without one), fast backoff
        (100 ms to 1 s), a fresh metrics port; `properties` go to [kafka.properties]
        (librdkafka, as is); `ingest` ({"write_keys": [...], ...}) adds an [ingest] table
        listening on a fresh port (`Config.ingest`); `group_lag_secs` sets
        metrics.group_lag_interval_secs (10 s by default)."""
        cfg = Config(self.work / f"{name}.toml", broker.bootstrap, group, free_addr(),
                     free_addr() if ingest is not None else None)
        endpoint = f"http://{stub.addr}" if stub is not None else "http://127.0.0.1:9"
        text = f"""[kafka]
bootstrap_servers = "{broker.bootstrap}"
group_id = "{group}"

[metrics]
listen = "{cfg.metrics}"
{f"group_lag_interval_secs = {group_lag_secs}" if group_lag_secs is not None else ""}

[destinations.owneriq]
endpoint = "{endpoint}"
data_group_id = "9nfdft"
analytics_tag_id = "gcb8"
dct_tag_id = "6qg2"
backoff_min_ms = 100
backoff_max_ms = 1000

[destinations.seg]
endpoint = "{endpoint}"
website_id = "abc8fb18-7559-4324-9921-a4b5015b4a1c"
backoff_min_ms = 100
backoff_max_ms = 1000
"""
        if ingest is not None:
            text += f'\n[ingest]\nlisten = "{cfg.ingest}"\n' + "".join(
                f"{k} = {json.dumps(v)}\n" for k, v in ingest.items())
        if properties:
            text += "\n[kafka.properties]\n" + "".join(
                f'"{k}" = "{v}"\n' for k, v in properties.items())
        cfg.path.write_text(text)
        return cfg

    def run(self, config: Config, role: str = "all", name: str = "eventrelay") -> Service:
        """`eventrelay run --config C --role R` in the background."""
        argv = [str(self.bin), "run", "--config", str(config.path), "--role", role]
        return self.procs.adopt(Service(name, argv, self.procs.log_path(name), config))

    def cmd(self, name: str, *args, timeout: float = 120.0) -> Result:
        """`eventrelay ARGS` to completion; output (stdout and stderr) in <name>.log."""
        log = self.procs.log_path(name)
        with open(log, "wb") as f:
            rc = subprocess.run([str(self.bin), *map(str, args)], stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                timeout=timeout).returncode
        return Result(rc, log.read_text(encoding="utf-8", errors="replace"))

    def map(self, config: Config, lines: list[bytes], name: str) -> Expect:
        """What `eventrelay map` (the Event Tester) says the service must do with `lines`."""
        events = write_lines(self.work / f"{name}.events.ndjson", lines)
        out = self.work / f"{name}.map.ndjson"
        log = self.procs.log_path(f"{name}.map")
        with open(out, "wb") as o, open(log, "wb") as e:
            rc = subprocess.run([str(self.bin), "map", "--config", str(config.path), str(events)],
                                stdout=o, stderr=e, stdin=subprocess.DEVNULL, timeout=120).returncode
        assert rc == 0, f"eventrelay map exited {rc}: {tail(log, 5)}"
        exp = Expect.load(out)
        print(f"expected from eventrelay map ({len(lines)} lines): {exp.summary()}")
        return exp


@pytest.fixture
def eventrelay(eventrelay_bin, procs, tmp_path) -> Eventrelay:
    return Eventrelay(eventrelay_bin, procs, tmp_path)


# --- Prometheus --------------------------------------------------------------------------------

@pytest.fixture
def prometheus(procs, tmp_path):
    """Start Debian's `prometheus` on a free loopback port: `prometheus([(role, service)...])`
    scrapes each eventrelay service's `metrics.listen` every second as job `eventrelay` with
    its `role` label (as deploy/prometheus/prometheus.yml does), evaluating every second a test
    copy of deploy/prometheus/alerts.yml whose `for:` durations are shortened to
    `support.prom.TEST_FOR` (the expressions are the shipped ones). Storage in the test's tmp
    dir; stopped at teardown with the other processes. Skipped without `prometheus` (failed
    under EVENTRELAY_REQUIRE_TANSU=1)."""
    from support import prom

    def start(targets: list, name: str = "prometheus") -> "prom.Prometheus":
        if shutil.which("prometheus") is None:
            _missing("prometheus is not on PATH (scripts/setup.sh installs Debian's prometheus)")
        pairs = [(role, t.config.metrics if hasattr(t, "config") else t) for role, t in targets]
        rules = tmp_path / "alerts.test.yml"
        rules.write_text(prom.test_rules(prom.ALERTS.read_text()))
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(prom.config(rules, pairs))
        addr = free_addr()
        proc = procs.start(name, ["prometheus", f"--config.file={cfg}",
                                  f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                                  f"--web.listen-address={addr}",
                                  "--storage.tsdb.retention.time=1h", "--log.level=warn"])
        poll(lambda: http_ok(f"http://{addr}/-/ready") or not proc.alive(), 30)
        assert proc.alive() and http_ok(f"http://{addr}/-/ready"), \
            f"prometheus did not become ready on {addr} within 30 s"
        print(f"prometheus on {addr} scraping {pairs}")
        return prom.Prometheus(addr, proc, pairs)

    return start


# --- soft checks and failure reports -------------------------------------------------------

@pytest.fixture
def check(request) -> Checks:
    checks = Checks()
    request.config.stash.setdefault(CHECKS, []).append(checks)
    return checks


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    checks = getattr(item, "funcargs", {}).get("check")
    if checks is not None and checks.failed:
        pytest.fail(f"{len(checks.failed)} of {len(checks)} checks failed:\n  "
                    + "\n  ".join(checks.failed), pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for log in item.stash.get(LOGS, []):
            report.sections.append((f"{log.name} (last 60 lines; {log})", tail(log)))
    return report


def pytest_terminal_summary(terminalreporter, config):
    all_checks = config.stash.get(CHECKS, [])
    if all_checks:
        passed = sum(len(c.passed) for c in all_checks)
        failed = sum(len(c.failed) for c in all_checks)
        terminalreporter.write_line(f"e2e checks: {passed} passed, {failed} failed")
