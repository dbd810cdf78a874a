"""What flows through the topics, as an outside client sees it: a self-contained decoder for
eventrelay.v1.Record (proto/record.proto, protobuf wire format, no generated code), the input
key rule (userId, else anonymousId), and the synthetic Segment events the scenarios produce.
Python 3.11, stdlib only."""

from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, timedelta, timezone

class ProtoError(ValueError):
    pass


_U64 = (1 << 64) - 1


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ProtoError("truncated varint")
        if shift >= 70:
            raise ProtoError("varint too long")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result & _U64, pos


def _to_int64(v: int) -> int:
    v &= _U64
    return v - (1 << 64) if v >= (1 << 63) else v


def _to_int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def _iter_fields(buf: bytes):
    """Yield (field_number, wire_type, value); value is an int (varint/fixed) or bytes."""
    pos = 0
    n = len(buf)
    while pos < n:
        tag, pos = _read_varint(buf, pos)
        field, wt = tag >> 3, tag & 7
        if field == 0:
            raise ProtoError("field number 0")
        if wt == 0:
            val, pos = _read_varint(buf, pos)
        elif wt == 1:
            if pos + 8 > n:
                raise ProtoError("truncated fixed64")
            val = int.from_bytes(buf[pos:pos + 8], "little")
            pos += 8
        elif wt == 2:
            ln, pos = _read_varint(buf, pos)
            if pos + ln > n:
                raise ProtoError(f"truncated length-delimited field {field}")
            val = bytes(buf[pos:pos + ln])
            pos += ln
        elif wt == 5:
            if pos + 4 > n:
                raise ProtoError("truncated fixed32")
            val = int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        else:
            raise ProtoError(f"unsupported wire type {wt} (field {field})")
        yield field, wt, val


def _decode_message(buf: bytes, schema: dict) -> dict:
    """Decode `buf` with `schema` = {number: (name, kind, sub)}; proto3 semantics:
    absent scalars take their defaults, absent sub-messages are None, a repeated
    sub-message field collects a list, a repeated singular message field merges
    (concatenated bytes), unknown fields are skipped, the last oneof member wins."""
    out: dict = {}
    msg_bytes: dict[str, bytes] = {}
    repeated: dict[str, list] = {}
    oneof_last: dict[str, str] = {}
    for number, (name, kind, sub) in schema.items():
        if kind == "string":
            out[name] = ""
        elif kind == "bytes":
            out[name] = b""
        elif kind in ("int32", "int64", "enum"):
            out[name] = 0
        elif kind == "repeated":
            repeated[name] = []
        else:  # message / oneof message
            out[name] = None
    for field, wt, val in _iter_fields(buf):
        spec = schema.get(field)
        if spec is None:
            continue  # unknown field
        name, kind, sub = spec
        expected_wt = 0 if kind in ("int32", "int64", "enum") else 2
        if wt != expected_wt:
            raise ProtoError(f"field {name} ({field}): wire type {wt}, expected {expected_wt}")
        if kind == "string":
            try:
                out[name] = val.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ProtoError(f"field {name}: invalid utf-8") from e
        elif kind == "bytes":
            out[name] = val
        elif kind == "int32":
            out[name] = _to_int32(val)
        elif kind == "int64":
            out[name] = _to_int64(val)
        elif kind == "enum":
            out[name] = _to_int32(val)
        elif kind == "repeated":
            repeated[name].append(_decode_message(val, sub))
        elif kind == "message":
            msg_bytes[name] = msg_bytes.get(name, b"") + val
        elif kind.startswith("oneof:"):
            group = kind.split(":", 1)[1]
            prev = oneof_last.get(group)
            if prev is not None and prev != name:
                msg_bytes.pop(prev, None)
            oneof_last[group] = name
            msg_bytes[name] = msg_bytes.get(name, b"") + val
        else:
            raise AssertionError(kind)
    for name, data in msg_bytes.items():
        sub = next(s for (n, _k, s) in schema.values() if n == name)
        out[name] = _decode_message(data, sub)
    out.update(repeated)
    return out


_SOURCE = {1: ("topic", "string", None), 2: ("partition", "int32", None),
           3: ("offset", "int64", None)}
_TIMES = {1: ("timestamp", "string", None), 2: ("original_timestamp", "string", None),
          3: ("sent_at", "string", None), 4: ("received_at", "string", None)}
_PAIR = {1: ("key", "string", None), 2: ("value", "string", None)}
_OWNERIQ = {1: ("kind", "enum", None), 2: ("pairs", "repeated", _PAIR)}
_SEG = {1: ("body", "bytes", None)}
_RECORD = {
    1: ("message_id", "string", None),
    2: ("user_key", "string", None),
    3: ("destination", "string", None),
    4: ("event_type", "string", None),
    5: ("event_name", "string", None),
    6: ("source", "message", _SOURCE),
    7: ("times", "message", _TIMES),
    8: ("received_at_ms", "int64", None),
    20: ("owneriq", "oneof:payload", _OWNERIQ),
    21: ("seg", "oneof:payload", _SEG),
}
OWNERIQ_KINDS = {0: "KIND_UNSPECIFIED", 1: "PAGE", 2: "CONVERSION"}


def decode_record(buf: bytes) -> dict:
    """Decode an eventrelay.v1.Record into a JSON-ready dict (proto field names).

    `owneriq` becomes {"kind": "PAGE"|"CONVERSION"|..., "pairs": [[k, v], ...]},
    `seg` becomes {"body": <parsed JSON>} (with "body_text" instead when the body is
    not JSON), absent sub-messages are null."""
    rec = _decode_message(buf, _RECORD)
    oiq = rec.get("owneriq")
    if oiq is not None:
        rec["owneriq"] = {
            "kind": OWNERIQ_KINDS.get(oiq["kind"], oiq["kind"]),
            "pairs": [[p["key"], p["value"]] for p in oiq["pairs"]],
        }
    seg = rec.get("seg")
    if seg is not None:
        body = seg["body"]
        try:
            rec["seg"] = {"body": json.loads(body.decode("utf-8"))}
        except (UnicodeDecodeError, ValueError):
            rec["seg"] = {"body": None,
                          "body_text": body.decode("utf-8", errors="replace")}
    return rec



# --- a tiny encoder, used by test_record_decoder.py only ---


def _enc_varint(v: int) -> bytes:
    v &= _U64  # negative numbers: two's complement, 10 bytes
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_tag(field: int, wt: int) -> bytes:
    return _enc_varint((field << 3) | wt)


def _enc_int(field: int, v: int) -> bytes:
    return _enc_tag(field, 0) + _enc_varint(v) if v else b""


def _enc_len(field: int, data: bytes, always: bool = False) -> bytes:
    if not data and not always:
        return b""
    return _enc_tag(field, 2) + _enc_varint(len(data)) + data


def _enc_str(field: int, s: str) -> bytes:
    return _enc_len(field, s.encode("utf-8"))


def encode_record(r: dict) -> bytes:
    out = bytearray()
    out += _enc_str(1, r.get("message_id", ""))
    out += _enc_str(2, r.get("user_key", ""))
    out += _enc_str(3, r.get("destination", ""))
    out += _enc_str(4, r.get("event_type", ""))
    out += _enc_str(5, r.get("event_name", ""))
    if r.get("source") is not None:
        s = r["source"]
        out += _enc_len(6, _enc_str(1, s["topic"]) + _enc_int(2, s["partition"])
                        + _enc_int(3, s["offset"]), always=True)
    if r.get("times") is not None:
        t = r["times"]
        out += _enc_len(7, _enc_str(1, t["timestamp"]) + _enc_str(2, t["original_timestamp"])
                        + _enc_str(3, t["sent_at"]) + _enc_str(4, t["received_at"]),
                        always=True)
    out += _enc_int(8, r.get("received_at_ms", 0))
    if r.get("owneriq") is not None:
        o = r["owneriq"]
        kind = {v: k for k, v in OWNERIQ_KINDS.items()}[o["kind"]]
        body = _enc_int(1, kind)
        for k, v in o["pairs"]:
            body += _enc_len(2, _enc_str(1, k) + _enc_str(2, v), always=True)
        out += _enc_len(20, body, always=True)
    if r.get("seg") is not None:
        body = json.dumps(r["seg"]["body"], ensure_ascii=False).encode("utf-8")
        out += _enc_len(21, _enc_len(1, body), always=True)
    return bytes(out)



# --- keys and synthetic events ---

class _RawNumber(str):
    """A JSON number kept as its source text (so keys are stringified exactly)."""


def event_key(line: bytes) -> bytes | None:
    """userId, else anonymousId, as UTF-8 bytes; None when the line is not a JSON
    object or has neither (null or "" counts as absent; numbers keep their text)."""
    try:
        ev = json.loads(line, parse_int=_RawNumber, parse_float=_RawNumber)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(ev, dict):
        return None
    for field in ("userId", "anonymousId"):
        v = ev.get(field)
        if isinstance(v, str) and v != "":
            return v.encode("utf-8")
    return None


_FIRST = ["Ana", "Ben", "Chloé", "Dmitri", "Eve", "Farah", "Günther", "Hana", "Ivan", "Jo"]
_LAST = ["Smith", "Nguyen", "García", "Müller", "Kowalski", "O'Brien", "Tanaka", "Rossi"]
_PRODUCTS = [
    ("p-100", "SKU-TSHIRT-BLK", "Black T-Shirt", 19.99, "Apparel"),
    ("p-101", "SKU-MUG-WHT", "White Mug", 8.5, "Kitchen"),
    ("p-102", "SKU-HEADPH", "Wireless Headphones", 129.0, "Electronics"),
    ("p-103", "SKU-BOOK-RUST", "Programming Rust", 49.95, "Books"),
    ("p-104", "SKU-SOCKS-3", "Socks (3 pack) – wool", 14.0, "Apparel"),
    ("p-105", "SKU-LAMP", "Desk Lamp", 39.0, "Home"),
]
_PAGES = [("/", "Home"), ("/products", "All products"), ("/products/p-102", "Headphones"),
          ("/cart", "Cart"), ("/blog/launch", "We launched 🚀"), ("/pricing", "Pricing")]
_UAS = ["Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) Safari/605.1.15",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Mobile/15E148"]


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def generate_events(n: int, invalid_every: int = 0, seed: int = 1, users: int = 50):
    """Yield n NDJSON lines (bytes): realistic Segment events from `users` users;
    messageId `gen-<i>` (i = 1-based line number), properties.seq = per-user sequence
    (1, 2, ... over the valid events of that user). Every `invalid_every`-th line is
    invalid JSON instead."""
    rng = random.Random(seed)
    base = datetime(2024, 6, 1, tzinfo=timezone.utc)
    user_ids = [f"user-{u:03d}" for u in range(1, users + 1)]
    anon = {u: str(uuid.UUID(int=rng.getrandbits(128), version=4)) for u in user_ids}
    seq: dict[str, int] = {}
    for i in range(1, n + 1):
        ts = base + timedelta(milliseconds=250 * i)
        if invalid_every and i % invalid_every == 0:
            yield (f'{{"type":"track","messageId":"gen-{i}","event":"Broken",'
                   f'"userId":"user-bad","properties":{{"seq":').encode()
            continue
        user = rng.choice(user_ids)
        seq[user] = seq.get(user, 0) + 1
        path, title = rng.choice(_PAGES)
        url = "https://shop.example.com" + path
        ev: dict = {
            "messageId": f"gen-{i}",
            "userId": user,
            "anonymousId": anon[user],
            "timestamp": _iso(ts),
            "originalTimestamp": _iso(ts - timedelta(milliseconds=40)),
            "sentAt": _iso(ts + timedelta(milliseconds=15)),
            "receivedAt": _iso(ts + timedelta(milliseconds=80)),
            "context": {
                "ip": f"203.0.113.{rng.randint(1, 254)}",
                "userAgent": rng.choice(_UAS),
                "library": {"name": "analytics.js", "version": "4.1.0"},
                "locale": rng.choice(["en-US", "de-DE", "fr-FR", "ja-JP"]),
                "page": {"path": path, "url": url, "title": title,
                         "referrer": rng.choice(["", "https://www.google.com/"])},
            },
        }
        kind = rng.choices(["page", "identify", "order", "viewed", "signup"],
                           weights=[40, 15, 15, 25, 5])[0]
        props: dict = {"seq": seq[user]}
        if kind == "page":
            ev["type"] = "page"
            ev["name"] = title
            props.update({"path": path, "url": url, "title": title,
                          "referrer": ev["context"]["page"]["referrer"]})
        elif kind == "identify":
            ev["type"] = "identify"
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            ev["traits"] = {"email": f"{user}@example.com", "firstName": first,
                            "lastName": last, "plan": rng.choice(["free", "pro"])}
        elif kind == "order":
            ev["type"] = "track"
            ev["event"] = "Order Completed"
            items = []
            for p in rng.sample(_PRODUCTS, rng.randint(1, 3)):
                q = rng.randint(1, 3)
                items.append({"product_id": p[0], "sku": p[1], "name": p[2],
                              "price": p[3], "quantity": q, "category": p[4]})
            total = round(sum(x["price"] * x["quantity"] for x in items), 2)
            props.update({"order_id": f"ord-{i}", "total": total, "revenue": total,
                          "shipping": 4.99, "tax": round(total * 0.08, 2),
                          "currency": "USD", "products": items})
        elif kind == "viewed":
            ev["type"] = "track"
            ev["event"] = "Viewed Product"
            p = rng.choice(_PRODUCTS)
            props.update({"product_id": p[0], "sku": p[1], "name": p[2], "price": p[3],
                          "category": p[4], "currency": "USD"})
        else:
            ev["type"] = "track"
            ev["event"] = "Signed Up"
            props.update({"plan": rng.choice(["free", "pro", "team"]),
                          "method": rng.choice(["email", "google", "github"])})
        ev["properties"] = props
        yield json.dumps(ev, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
