"""A bare HTTP client for eventrelay's ingest (Segment's HTTP Tracking API), for the requests
no library would send: wrong keys, oversized or broken bodies, load."""

from __future__ import annotations

import base64
import gzip as gz
import http.client
import json


def post(addr: str, path: str, body, key: str | None = None, gzip: bool = False,
         timeout: float = 30.0, conn: http.client.HTTPConnection | None = None):
    """POST `body` (a dict, or bytes/str sent as is) to http://addr/path, the write key as the
    Basic user name when given: (status, parsed JSON answer or None, headers with lower-case
    names). `conn` reuses a connection."""
    data = body if isinstance(body, bytes) else (
        body.encode() if isinstance(body, str) else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    if gzip:
        data = gz.compress(data)
        headers["Content-Encoding"] = "gzip"
    own = conn is None
    c = conn or http.client.HTTPConnection(addr, timeout=timeout)
    try:
        c.request("POST", path, body=data, headers=headers)
        r = c.getresponse()
        raw = r.read()
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        return r.status, answer, {k.lower(): v for k, v in r.getheaders()}
    finally:
        if own:
            c.close()
