"""A real Prometheus server for the scenarios (Debian's `prometheus`): its config (the
`eventrelay` job with a `role` label per target, as deploy/prometheus/prometheus.yml has it),
a test copy of deploy/prometheus/alerts.yml with only the `for:` durations shortened, the
queries of the Grafana dashboard with its variables substituted, and the HTTP API client the
checks go through (`/api/v1/query`, `/api/v1/alerts`)."""

from __future__ import annotations

import json
import math
import re
import time
import urllib.parse
from pathlib import Path

from .procs import get_json

ROOT = Path(__file__).resolve().parents[3]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "eventrelay.json"
SCRAPE_INTERVAL = "1s"
# Every `for:` of the shipped rules becomes this in the test copy (pending -> firing still
# takes two evaluations, so a rule that only flickers does not fire).
TEST_FOR = "3s"
# Grafana's $__rate_interval is max(4 x the data source's scrape interval, $__interval +
# scrape interval): 1m with Grafana's default 15 s scrape interval, the one
# deploy/prometheus/prometheus.yml uses.
RATE_INTERVAL = "1m"

_FOR_LINE = re.compile(r"^(\s+for:\s*)(\S+)(\s*(#.*)?)$")


def test_rules(text: str, for_: str = TEST_FOR) -> str:
    """alerts.yml with every `for:` line's duration replaced, nothing else touched."""
    out = []
    for line in text.splitlines(keepends=True):
        m = _FOR_LINE.match(line.rstrip("\n"))
        if m:
            line = f"{m.group(1)}{for_}{m.group(3)}\n"
        out.append(line)
    return "".join(out)


def config(rules: Path, targets: list[tuple[str, str]]) -> str:
    """prometheus.yml: the `eventrelay` job scraping each (role, host:port) every second."""
    statics = "".join(f"""      - targets: ["{addr}"]
        labels:
          role: {role}
""" for role, addr in targets)
    return f"""global:
  scrape_interval: {SCRAPE_INTERVAL}
  scrape_timeout: {SCRAPE_INTERVAL}
  evaluation_interval: {SCRAPE_INTERVAL}

rule_files:
  - {rules}

scrape_configs:
  - job_name: eventrelay
    metrics_path: /metrics
    static_configs:
{statics}"""


class Prometheus:
    def __init__(self, addr: str, proc, targets: list[tuple[str, str]]):
        self.addr, self.proc, self.targets = addr, proc, targets
        self.url = f"http://{addr}"

    def _api(self, path: str, **params) -> dict:
        q = urllib.parse.urlencode(params)
        body = get_json(f"{self.url}/api/v1/{path}" + (f"?{q}" if q else ""))
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> dict:
        """/api/v1/query: {"resultType", "result"}; raises on a query error (the error text)."""
        import urllib.error
        try:
            return self._api("query", query=expr)
        except urllib.error.HTTPError as e:
            raise QueryError(f"{e.code}: {e.read().decode(errors='replace')[:300]}") from None

    def value(self, expr: str) -> float | None:
        """A scalar or single-series query's value (None without a series)."""
        data = self.query(expr)
        res = data["result"]
        if data["resultType"] == "scalar":
            return float(res[1])
        return float(res[0]["value"][1]) if res else None

    def series(self, expr: str) -> list[dict]:
        return self.query(expr)["result"]

    def alerts(self, name: str | None = None) -> list[dict]:
        """/api/v1/alerts: the pending and firing alerts (name=... keeps one rule's)."""
        return [a for a in self._api("alerts")["alerts"]
                if name is None or a["labels"].get("alertname") == name]

    def firing(self, name: str, **labels) -> list[dict]:
        return [a for a in self.alerts(name) if a["state"] == "firing"
                and all(a["labels"].get(k) == v for k, v in labels.items())]

    def targets_up(self) -> dict:
        """scrape URL -> health ("up", "down", "unknown")."""
        return {t["scrapeUrl"]: t["health"] for t in self._api("targets")["activeTargets"]}

    def wait(self, predicate, timeout: float, interval: float = 0.5):
        """Poll `predicate` (its truthy value, or the last falsy one after `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            v = predicate()
            if v or time.monotonic() >= deadline:
                return v
            time.sleep(interval)

    def wait_firing(self, name: str, timeout: float, **labels) -> tuple[list[dict], float]:
        """Poll until `name` fires with `labels`: (the firing alerts, seconds waited)."""
        t0 = time.monotonic()
        got = self.wait(lambda: self.firing(name, **labels), timeout)
        return got, time.monotonic() - t0

    def wait_resolved(self, name: str, timeout: float, **labels) -> tuple[bool, float]:
        """Poll until no alert `name` with `labels` is pending or firing."""
        t0 = time.monotonic()
        def gone():
            return not [a for a in self.alerts(name)
                        if all(a["labels"].get(k) == v for k, v in labels.items())]
        return bool(self.wait(gone, timeout)), time.monotonic() - t0

    def describe_alerts(self) -> str:
        """One line per pending/firing alert, for failure messages."""
        out = []
        for a in self.alerts():
            lab = {k: v for k, v in a["labels"].items() if k not in ("alertname", "severity")}
            out.append(f'{a["labels"]["alertname"]}{lab} {a["state"]}')
        return "; ".join(sorted(out)) or "(no alerts)"


class QueryError(RuntimeError):
    pass


# --- the dashboard ---------------------------------------------------------------------------

def dashboard_panels(path: Path = DASHBOARD) -> list[dict]:
    """Every panel with targets (rows' nested panels too)."""
    dash = json.loads(path.read_text())
    out = []
    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            if p.get("targets"):
                out.append(p)
    walk(dash.get("panels", []))
    return out


def dashboard_variables(path: Path = DASHBOARD) -> list[dict]:
    return json.loads(path.read_text()).get("templating", {}).get("list", [])


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's variable syntaxes ($v, ${v}, [[v]], ${v:fmt}) and its built-in intervals."""
    builtins = {"__rate_interval": RATE_INTERVAL, "__interval": "15s", "__range": "5m",
                "__interval_ms": "15000", "__range_s": "300"}
    allvars = {**builtins, **variables}
    def rep(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in allvars:
            raise KeyError(f"dashboard variable ${name} is not defined")
        return allvars[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", rep, expr)


def legend_labels(legend: str | None) -> set[str]:
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend or ""))


def has_value(series: list[dict]) -> bool:
    """Some series has a finite value (histogram_quantile of nothing is NaN: an empty panel)."""
    for s in series:
        try:
            if math.isfinite(float(s["value"][1])):
                return True
        except (KeyError, ValueError, TypeError):
            pass
    return False
