#!/usr/bin/env python3
"""Outside Kafka client for eventrelay's end-to-end tests.

Talks to the broker the way an operator would, with confluent-kafka (librdkafka);
works against both librdkafka's mock cluster and the tansu broker.
Python 3.11, stdlib + confluent_kafka only.

Subcommands (all take --bootstrap HOST:PORT, except selftest and generate):
  produce        NDJSON lines -> one record each (key = userId, else anonymousId)
  consume        read N records from the beginning, one JSON line per record
  count          read everything until idle, print counts per partition
  group-offsets  committed offsets of a consumer group for one topic
  create-topics  create topics (tansu does not auto-create them)
  list-topics    topics and their partition counts
  generate       print synthetic Segment events (what `produce --generate` sends)
  selftest       round-trip check of the protobuf decoder (no broker needed)

Exit codes: 0 ok, 1 error, 2 usage, 3 timeout (consume/count).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_TIMEOUT = 3


# --------------------------------------------------------------------------------------
# Protobuf wire format: a small self-contained decoder for eventrelay.v1.Record
# (proto/record.proto), plus a tiny encoder used only by `selftest`.
# --------------------------------------------------------------------------------------

class _Timeout(Exception):
    pass


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


# --- tiny encoder (selftest only) ---

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


def cmd_selftest(args) -> int:
    failures = []

    def check(name, got, want):
        if got != want:
            failures.append(name)
            print(json.dumps({"fail": name, "got": got, "want": want},
                             ensure_ascii=False, default=repr), file=sys.stderr)

    # varints
    check("varint -1 is 10 bytes", len(_enc_varint(-1)), 10)
    check("varint -1 bytes", _enc_varint(-1), b"\xff" * 9 + b"\x01")
    for v in (0, 1, 127, 128, 300, 2**31 - 1, 2**32, 2**63 - 1):
        check(f"varint {v}", _read_varint(_enc_varint(v), 0), (v, len(_enc_varint(v))))
    check("int32 -7", _to_int32(_read_varint(_enc_varint(-7), 0)[0]), -7)
    check("int64 min", _to_int64(_read_varint(_enc_varint(-(2**63)), 0)[0]), -(2**63))

    owneriq = {
        "message_id": "gen-42 ✓ ünïcødé 🚀",
        "user_key": "użytkownik-日本語",
        "destination": "owneriq",
        "event_type": "track",
        "event_name": "Order Completed",
        "source": {"topic": "segment.events", "partition": -3, "offset": 2**40 + 5},
        "times": {"timestamp": "2024-06-01T00:00:00.000Z", "original_timestamp": "",
                  "sent_at": "2024-06-01T00:00:01Z", "received_at": "2024-06-01T00:00:02Z"},
        "received_at_ms": 1717200002000,
        "owneriq": {"kind": "CONVERSION",
                    "pairs": [["s", "dct-1"], ["cnv", "true"], ["name", "Çafé & “quotes”"],
                              ["empty", ""], ["s", "dup-key-kept-in-order"]]},
        "seg": None,
    }
    enc = encode_record(owneriq)
    check("owneriq round-trip", decode_record(enc), owneriq)

    seg = {
        "message_id": "m-1", "user_key": "", "destination": "seg", "event_type": "identify",
        "event_name": "", "source": {"topic": "segment.events", "partition": 0, "offset": 0},
        "times": None, "received_at_ms": 0, "owneriq": None,
        "seg": {"body": {"type": "identify", "traits": {"email": "zoë@example.com"},
                         "n": [1, 2.5, None, True]}},
    }
    check("seg round-trip", decode_record(encode_record(seg)), seg)

    # defaults: empty message
    empty = decode_record(b"")
    check("empty record", empty, {
        "message_id": "", "user_key": "", "destination": "", "event_type": "",
        "event_name": "", "source": None, "times": None, "received_at_ms": 0,
        "owneriq": None, "seg": None})

    # unknown fields of every wire type are skipped
    unknown = (_enc_tag(99, 0) + _enc_varint(123) + _enc_tag(98, 1) + b"\0" * 8
               + _enc_tag(97, 2) + _enc_varint(3) + b"abc" + _enc_tag(96, 5) + b"\0" * 4)
    check("unknown fields skipped", decode_record(unknown + enc), owneriq)

    # singular sub-messages merge; last oneof member wins
    merged = decode_record(_enc_len(6, _enc_str(1, "a"), True)
                           + _enc_len(6, _enc_int(2, -1), True))
    check("sub-message merge", merged["source"], {"topic": "a", "partition": -1, "offset": 0})
    both = decode_record(encode_record(owneriq) + encode_record(seg))
    check("oneof last wins (seg)", (both["owneriq"], both["seg"]), (None, seg["seg"]))
    both2 = decode_record(encode_record(seg) + encode_record(owneriq))
    check("oneof last wins (owneriq)", (both2["seg"], both2["owneriq"]),
          (None, owneriq["owneriq"]))

    # negative partition really is a 10-byte varint on the wire
    src = _enc_int(2, -1)
    check("negative int32 wire length", len(src), 11)

    # truncated input is rejected
    try:
        decode_record(enc[:-1])
        failures.append("truncated accepted")
    except ProtoError:
        pass

    # key extraction used by `produce`
    check("key userId", event_key(b'{"userId":"u1","anonymousId":"a"}'), b"u1")
    check("key anonymousId", event_key(b'{"userId":null,"anonymousId":"a"}'), b"a")
    check("key number", event_key(b'{"userId":12345678901234567890}'), b"12345678901234567890")
    check("key float", event_key(b'{"anonymousId":1.50}'), b"1.50")
    check("key empty userId", event_key(b'{"userId":"","anonymousId":"a"}'), b"a")
    check("key none", event_key(b'{"type":"page"}'), None)
    check("key not object", event_key(b'[1,2]'), None)
    check("key invalid json", event_key(b'{"userId":'), None)
    check("key unicode", event_key('{"userId":"ü"}'.encode()), "ü".encode())

    # generator: per-user seq consecutive, invalid lines where asked
    lines = list(generate_events(200, invalid_every=7, seed=1))
    seqs: dict = {}
    bad = 0
    for i, line in enumerate(lines, 1):
        try:
            ev = json.loads(line)
        except ValueError:
            bad += 1
            check(f"invalid at multiple of 7 ({i})", i % 7, 0)
            continue
        exp = seqs.get(ev["userId"], 0) + 1
        check(f"seq {ev['messageId']}", ev["properties"]["seq"], exp)
        seqs[ev["userId"]] = exp
    check("invalid count", bad, 200 // 7)

    print(json.dumps({"selftest": "ok" if not failures else "failed",
                      "failures": failures}))
    return EXIT_OK if not failures else EXIT_ERROR


# --------------------------------------------------------------------------------------
# Keys and synthetic events
# --------------------------------------------------------------------------------------

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


def cmd_generate(args) -> int:
    out = sys.stdout.buffer
    for line in generate_events(args.count, args.invalid_every, args.seed):
        out.write(line + b"\n")
    out.flush()
    return EXIT_OK


# --------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------

def _ck():
    try:
        import confluent_kafka  # noqa: F401
        return confluent_kafka
    except ImportError:
        print("confluent-kafka is not installed (pip install confluent-kafka)", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def _base_conf(args) -> dict:
    return {"bootstrap.servers": args.bootstrap, "log_level": 4}


def _read_lines(args):
    if args.generate is not None:
        lines = list(generate_events(args.generate, args.invalid_every, args.seed))
    else:
        data = open(args.file, "rb").read() if args.file else sys.stdin.buffer.read()
        # A line ends at \n (a \r before it belongs to the terminator, as NDJSON allows);
        # blank lines are skipped; the rest is sent byte for byte.
        lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in data.split(b"\n")]
        lines = [ln for ln in lines if ln.strip()]
    for _ in range(args.repeat):
        yield from lines


def cmd_produce(args) -> int:
    ck = _ck()
    conf = _base_conf(args)
    conf.update({"enable.idempotence": True, "acks": "all", "linger.ms": 5,
                 "message.timeout.ms": int(args.timeout * 1000)})
    producer = ck.Producer(conf)
    state = {"ok": 0, "err": 0, "first_error": None}

    def on_delivery(err, msg):
        if err is not None:
            state["err"] += 1
            if state["first_error"] is None:
                state["first_error"] = str(err)
        else:
            state["ok"] += 1

    sent = 0
    for line in _read_lines(args):
        key = event_key(line)
        while True:
            try:
                producer.produce(args.topic, value=line, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        sent += 1
        producer.poll(0)
    remaining = producer.flush(args.timeout)
    if state["err"] or remaining:
        print(json.dumps({"produced": state["ok"], "failed": state["err"],
                          "undelivered": remaining, "error": state["first_error"]}))
        return EXIT_ERROR
    print(json.dumps({"produced": state["ok"]}))
    return EXIT_OK


def _consumer(args, group: str | None):
    ck = _ck()
    conf = _base_conf(args)
    conf.update({
        "group.id": group or f"kafka-client-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "topic.metadata.refresh.interval.ms": 1000,
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 1000,
    })
    return ck, ck.Consumer(conf)


def _attach(ck, consumer, args, deadline: float, on_start=None) -> bool:
    """Start reading args.topic from the beginning.

    With --group (or --subscribe): subscribe, as a group member (a given group resumes
    from its committed offsets; auto.offset.reset=earliest otherwise). Without: assign
    every partition at the beginning directly, skipping the group join (which costs
    ~3 s on the mock cluster); waits until every topic shows in the metadata.
    Returns False when the topics did not appear before the deadline."""
    if args.group or args.subscribe:
        consumer.subscribe(args.topic,
                           on_assign=lambda c, parts: on_start and on_start(parts))
        return True
    missing = list(args.topic)
    parts = []
    warned = False
    while missing:
        left = deadline - time.monotonic()
        if left <= 0:
            print(json.dumps({"missing_topics": missing}), file=sys.stderr)
            return False
        md = consumer.list_topics(timeout=max(0.1, min(5.0, left)))
        for t in list(missing):
            tm = md.topics.get(t)
            if tm is not None and tm.error is None and tm.partitions:
                parts += [ck.TopicPartition(t, p, ck.OFFSET_BEGINNING)
                          for p in sorted(tm.partitions)]
                missing.remove(t)
        if missing:
            if not warned:
                print(json.dumps({"waiting_for_topics": missing}), file=sys.stderr)
                warned = True
            time.sleep(0.5)
    consumer.assign(parts)
    if on_start:
        on_start(parts)
    return True


def _text(b: bytes | None) -> str | None:
    if b is None:
        return None
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _record_json(msg) -> dict:
    topic = msg.topic()
    value = msg.value()
    ts_type, ts = msg.timestamp()
    headers = {}
    for name, hv in msg.headers() or []:
        headers[name] = _text(hv)
    out = {
        "topic": topic,
        "partition": msg.partition(),
        "offset": msg.offset(),
        "timestamp": ts if ts_type != 0 else None,
        "key": _text(msg.key()),
        "headers": headers,
        "value_text": _text(value),
        "record": None,
    }
    if topic.startswith("dest.") and value is not None:
        try:
            out["record"] = decode_record(value)
        except ProtoError as e:
            out["record_error"] = str(e)
    return out


def _log_error(err, seen: set):
    key = (err.code(), err.str())
    if key not in seen:
        seen.add(key)
        print(json.dumps({"kafka_error": err.str(), "code": err.code(),
                          "fatal": err.fatal()}), file=sys.stderr)


def cmd_consume(args) -> int:
    ck, consumer = _consumer(args, args.group)
    out = sys.stdout
    read = 0
    seen_errors: set = set()
    deadline = time.monotonic() + args.timeout
    fatal = False
    try:
        if not _attach(ck, consumer, args, deadline):
            raise _Timeout
        while read < args.expect:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msgs = consumer.consume(num_messages=min(500, args.expect - read),
                                    timeout=min(0.5, left))
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == ck.KafkaError._PARTITION_EOF:
                        continue
                    _log_error(err, seen_errors)
                    if err.fatal():
                        fatal = True
                    continue
                out.write(json.dumps(_record_json(msg), ensure_ascii=False) + "\n")
                read += 1
                if read >= args.expect:
                    break
            out.flush()
            if fatal:
                break
    except _Timeout:
        pass
    finally:
        out.flush()
        consumer.close()
    print(json.dumps({"read": read}), file=sys.stderr)
    if fatal:
        return EXIT_ERROR
    return EXIT_OK if read >= args.expect else EXIT_TIMEOUT


def cmd_count(args) -> int:
    ck, consumer = _consumer(args, args.group)
    count = 0
    by_partition: dict[str, int] = {}
    seen_errors: set = set()
    start = time.monotonic()
    deadline = start + args.timeout
    state = {"assigned_at": None}

    def pkey(topic, partition):
        return str(partition) if len(args.topic) == 1 else f"{topic}:{partition}"

    def on_start(parts):
        if state["assigned_at"] is None:
            state["assigned_at"] = time.monotonic()
        for tp in parts:  # partitions with no records show as 0
            by_partition.setdefault(pkey(tp.topic, tp.partition), 0)

    last_progress = None
    timed_out = False
    try:
        if not _attach(ck, consumer, args, deadline, on_start):
            raise _Timeout
        while True:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            # Idle is measured from the last record, or from the first assignment
            # (a group join can take longer than the idle time on its own).
            ref = last_progress or state["assigned_at"]
            if ref is not None and now - ref >= args.idle:
                break
            msgs = consumer.consume(num_messages=1000, timeout=min(0.5, deadline - now))
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() != ck.KafkaError._PARTITION_EOF:
                        _log_error(err, seen_errors)
                    continue
                count += 1
                k = pkey(msg.topic(), msg.partition())
                by_partition[k] = by_partition.get(k, 0) + 1
                last_progress = time.monotonic()
    except _Timeout:
        timed_out = True
    finally:
        consumer.close()
    result = {"count": count,
              "by_partition": dict(sorted(by_partition.items(),
                                          key=lambda kv: (len(kv[0]), kv[0])))}
    if timed_out:
        result["timed_out"] = True
    print(json.dumps(result))
    return EXIT_TIMEOUT if timed_out else EXIT_OK


def _partitions(client, topic: str, timeout: float) -> list[int]:
    md = client.list_topics(topic=topic, timeout=timeout)
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        raise RuntimeError(f"topic {topic!r} not found: {t.error if t else 'no metadata'}")
    return sorted(t.partitions)


def cmd_group_offsets(args) -> int:
    ck = _ck()
    conf = _base_conf(args)
    conf.update({"group.id": args.group, "enable.auto.commit": False})
    consumer = ck.Consumer(conf)
    try:
        parts = _partitions(consumer, args.topic, args.timeout)
        tps = [ck.TopicPartition(args.topic, p) for p in parts]
        committed = consumer.committed(tps, timeout=args.timeout)
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"error": str(e)}), file=sys.stderr)
        return EXIT_ERROR
    finally:
        consumer.close()
    offsets = {}
    for tp in committed:
        if tp.error is not None:
            print(json.dumps({"partition": tp.partition, "error": str(tp.error)}),
                  file=sys.stderr)
        offsets[str(tp.partition)] = tp.offset if tp.offset >= 0 else None
    print(json.dumps({"group": args.group, "topic": args.topic, "offsets": offsets}))
    return EXIT_OK


def cmd_create_topics(args) -> int:
    ck = _ck()
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient(_base_conf(args))
    new = [NewTopic(t, num_partitions=args.partitions, replication_factor=args.replication)
           for t in args.topic]
    futures = admin.create_topics(new, operation_timeout=args.timeout,
                                  request_timeout=args.timeout)
    created, existing, failed = [], [], {}
    for topic, fut in futures.items():
        try:
            fut.result()
            created.append(topic)
        except ck.KafkaException as e:
            err = e.args[0]
            if err.code() == ck.KafkaError.TOPIC_ALREADY_EXISTS:
                existing.append(topic)
            else:
                failed[topic] = err.str()
    # Wait until the metadata shows every topic with its partitions.
    deadline = time.monotonic() + args.timeout
    pending = set(created)
    while pending and time.monotonic() < deadline:
        md = admin.list_topics(timeout=max(0.1, deadline - time.monotonic()))
        for t in list(pending):
            tm = md.topics.get(t)
            if tm is not None and tm.error is None and len(tm.partitions) == args.partitions:
                pending.discard(t)
        if pending:
            time.sleep(0.2)
    result = {"created": created, "existing": existing}
    if failed:
        result["failed"] = failed
    if pending:
        result["not_in_metadata"] = sorted(pending)
    print(json.dumps(result))
    return EXIT_ERROR if failed or pending else EXIT_OK


def cmd_list_topics(args) -> int:
    ck = _ck()
    from confluent_kafka.admin import AdminClient
    md = AdminClient(_base_conf(args)).list_topics(timeout=args.timeout)
    print(json.dumps({name: len(t.partitions) for name, t in sorted(md.topics.items())
                      if not name.startswith("__")}))
    return EXIT_OK


# --------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def kafka(name, help_):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--bootstrap", required=True, metavar="HOST:PORT")
        return p

    p = kafka("produce", "produce NDJSON lines (file, stdin or --generate)")
    p.add_argument("--topic", required=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--file", help="NDJSON file (default: stdin)")
    src.add_argument("--generate", type=int, metavar="N",
                     help="produce N synthetic Segment events instead")
    p.add_argument("--invalid-every", type=int, default=0, metavar="M",
                   help="with --generate: every M-th line is invalid JSON")
    p.add_argument("--seed", type=int, default=1, help="with --generate (default 1)")
    p.add_argument("--repeat", type=int, default=1, metavar="K")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="delivery timeout in seconds (default 60)")
    p.set_defaults(func=cmd_produce)

    p = kafka("consume", "read N records from the beginning")
    p.add_argument("--topic", required=True, action="append")
    p.add_argument("--expect", required=True, type=int)
    p.add_argument("--timeout", required=True, type=float)
    p.add_argument("--group")
    p.add_argument("--subscribe", action="store_true",
                   help="join a (fresh) consumer group instead of assigning partitions")
    p.set_defaults(func=cmd_consume)

    p = kafka("count", "count records from the beginning until idle")
    p.add_argument("--topic", required=True, action="append")
    p.add_argument("--timeout", required=True, type=float)
    p.add_argument("--idle", type=float, default=5.0)
    p.add_argument("--group")
    p.add_argument("--subscribe", action="store_true",
                   help="join a (fresh) consumer group instead of assigning partitions")
    p.set_defaults(func=cmd_count)

    p = kafka("group-offsets", "committed offsets of a group for a topic")
    p.add_argument("--group", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=cmd_group_offsets)

    p = kafka("create-topics", "create topics (existing ones are fine)")
    p.add_argument("--topic", required=True, action="append")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--replication", type=int, default=1)
    p.add_argument("--timeout", type=float, default=15.0)
    p.set_defaults(func=cmd_create_topics)

    p = kafka("list-topics", "topics and partition counts")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=cmd_list_topics)

    p = sub.add_parser("generate", help="print synthetic Segment events as NDJSON")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--invalid-every", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("selftest", help="check the protobuf decoder round-trips")
    p.set_defaults(func=cmd_selftest)

    args = ap.parse_args(argv)
    if getattr(args, "invalid_every", 0) and args.cmd == "produce" and args.generate is None:
        ap.error("--invalid-every needs --generate")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
