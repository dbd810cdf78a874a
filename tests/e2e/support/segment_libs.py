"""Segment's own client libraries, unmodified from the registries, as users run them: the
scripts in tests/clients/ (`python_client.py` with segment-analytics-python from PyPI,
`node_client.mjs` with @segment/analytics-node from npm, pinned by package-lock.json) each in
a process of its own, pointed at eventrelay's ingest with the library's `host` option; and what
each call must look like once ingest has written it to `segment.events`."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
LIBS = {"py": "analytics-python", "node": "@segment/analytics-node"}
# (type, track event name): the seven calls each library makes (tests/clients/*_client.*)
CALLS = [("identify", None), ("track", "Order Completed"), ("track", "Viewed Product"),
         ("page", None), ("screen", None), ("group", None), ("alias", None)]


def missing() -> str | None:
    """Why the libraries cannot run here, or None."""
    if importlib.util.find_spec("segment") is None or \
            importlib.util.find_spec("segment.analytics") is None:
        return "python3 has no segment-analytics-python (scripts/setup.sh installs it)"
    if shutil.which("node") is None:
        return "node is not installed (scripts/setup.sh installs it)"
    if not (CLIENTS / "node_modules" / "@segment" / "analytics-node").is_dir():
        return "tests/clients/node_modules lacks @segment/analytics-node (scripts/setup.sh)"
    return None


def send(lib: str, host: str, write_key: str, run: str, log: Path, timeout: float = 60) -> int:
    """Run one library's client script to completion (exit code; its output in `log`)."""
    argv = {"py": [sys.executable, "python_client.py"],
            "node": ["node", "node_client.mjs"]}[lib] + [host, write_key, run]
    with open(log, "wb") as f:
        return subprocess.run(argv, cwd=CLIENTS, stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=timeout).returncode


def user_of(lib: str, run: str) -> str:
    return f"{lib}-{run}-user"


def call_of(event: dict) -> tuple:
    t = event.get("type")
    return (t, event.get("event") if t == "track" else None)


def problems(lib: str, run: str, e: dict) -> list[str]:
    """What is wrong with one call as read from `segment.events`: the fields the script sent,
    and the ones ingest fills (messageId, receivedAt, timestamp, originalTimestamp, sentAt), no
    writeKey, and the library's own `context.library`."""
    user = user_of(lib, run)
    want = {
        ("identify", None): lambda: e["traits"]["email"] == f"{user}@example.com",
        ("track", "Order Completed"): lambda: (
            e["properties"]["orderId"] == f"{lib}-{run}-order"
            and e["properties"]["total"] == 27.5
            and e["properties"]["products"][0]["sku"] == "sku-1"),
        ("track", "Viewed Product"): lambda: (
            e["properties"]["sku"] == "sku-2" and e["properties"]["price"] == 9.5),
        ("page", None): lambda: (
            e["name"] == "Ingest" and e["properties"]["url"] == "https://shop.example.com/docs"),
        ("screen", None): lambda: e["name"] == "Home" and e["properties"]["variant"] == lib,
        ("group", None): lambda: e["groupId"] == "acme" and e["traits"]["name"] == "Acme",
        ("alias", None): lambda: e["previousId"] == f"{lib}-{run}-anon",
    }[call_of(e)]
    out = []
    try:
        if not want():
            out.append("fields as sent")
    except (KeyError, TypeError, IndexError) as x:
        out.append(f"fields as sent (no {x})")
    if e.get("userId") != user:
        out.append(f"userId {e.get('userId')!r}")
    if not (isinstance(e.get("messageId"), str) and e["messageId"]):
        out.append("messageId")
    out += [k for k in ("receivedAt", "timestamp", "originalTimestamp", "sentAt")
            if not isinstance(e.get(k), str)]
    if "writeKey" in e:
        out.append("writeKey kept")
    if LIBS[lib] not in json.dumps((e.get("context") or {}).get("library", {})):
        out.append(f"context.library {(e.get('context') or {}).get('library')!r}")
    return out
