"""The outside Kafka client: produce input and read topics back the way an operator would, with
confluent-kafka (librdkafka, from PyPI), in the test process.

Records read back are dicts: topic, partition, offset, timestamp, key (text), headers
(name -> text), value_text, and `record` (the decoded eventrelay.v1.Record for `dest.*`
topics, else None; `record_error` when it does not decode).

tansu's high watermarks can lag what is readable (SPEC §8), so counts come from reading records,
never from watermarks."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import confluent_kafka as ck

from .records import ProtoError, decode_record, event_key

BASE = {"log_level": 4}


def _log(what: dict) -> None:
    print(json.dumps(what), file=sys.stderr)


def produce(bootstrap: str, topic: str, lines: list[bytes], timeout: float = 60.0) -> int:
    """One record per line, keyed by userId, else anonymousId (null when neither); idempotent,
    acks=all. Returns how many were acknowledged; raises when any was not."""
    producer = ck.Producer({**BASE, "bootstrap.servers": bootstrap, "enable.idempotence": True,
                            "acks": "all", "linger.ms": 5,
                            "message.timeout.ms": int(timeout * 1000)})
    state = {"ok": 0, "err": 0, "first_error": None}

    def on_delivery(err, _msg):
        if err is None:
            state["ok"] += 1
        else:
            state["err"] += 1
            state["first_error"] = state["first_error"] or str(err)

    for line in lines:
        while True:
            try:
                producer.produce(topic, value=line, key=event_key(line), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    undelivered = producer.flush(timeout)
    if state["err"] or undelivered:
        raise AssertionError(f"producing {len(lines)} records to {topic} on {bootstrap}: "
                             f"{state['ok']} acknowledged, {state['err']} failed "
                             f"({state['first_error']}), {undelivered} undelivered")
    return state["ok"]


def _text(b: bytes | None) -> str | None:
    if b is None:
        return None
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _record(msg) -> dict:
    ts_type, ts = msg.timestamp()
    out = {
        "topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "timestamp": ts if ts_type != 0 else None,
        "key": _text(msg.key()),
        "headers": {name: _text(v) for name, v in msg.headers() or []},
        "value_text": _text(msg.value()),
        "record": None,
    }
    if msg.topic().startswith("dest.") and msg.value() is not None:
        try:
            out["record"] = decode_record(msg.value())
        except ProtoError as e:
            out["record_error"] = str(e)
    return out


@dataclass
class Read:
    """What one read of topics from the beginning returned."""
    records: list[dict]
    timed_out: bool
    # partitions seen (records or not): "P" for one topic, "topic:P" for several
    by_partition: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.records)


def read(bootstrap: str, topics: list[str] | str, *, expect: int | None = None,
         idle: float | None = None, timeout: float) -> Read:
    """Read `topics` from the beginning (every partition assigned directly, no group join) until
    - `expect` records were read (idle=None), or
    - at least `expect` (or 0) were read and nothing new arrived for `idle` seconds (so records
      beyond the expected ones show), or
    - `timeout` seconds passed (then `timed_out`).
    Waits for the topics to appear (tansu does not auto-create them)."""
    topics = [topics] if isinstance(topics, str) else list(topics)
    consumer = ck.Consumer({
        **BASE, "bootstrap.servers": bootstrap,
        "group.id": f"e2e-reader-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "topic.metadata.refresh.interval.ms": 1000,
    })
    t0 = time.monotonic()
    deadline = t0 + timeout
    records: list[dict] = []
    by_partition: dict[str, int] = {}
    seen_errors: set = set()

    def pkey(topic, partition):
        return str(partition) if len(topics) == 1 else f"{topic}:{partition}"

    def done(timed_out):
        return Read(records, timed_out,
                    dict(sorted(by_partition.items(), key=lambda kv: (len(kv[0]), kv[0]))),
                    time.monotonic() - t0)

    try:
        # assign every partition at the beginning once the metadata shows the topics
        missing, parts = list(topics), []
        while missing:
            if time.monotonic() >= deadline:
                _log({"missing_topics": missing, "bootstrap": bootstrap})
                return done(True)
            md = consumer.list_topics(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            for t in list(missing):
                tm = md.topics.get(t)
                if tm is not None and tm.error is None and tm.partitions:
                    parts += [ck.TopicPartition(t, p, ck.OFFSET_BEGINNING)
                              for p in sorted(tm.partitions)]
                    missing.remove(t)
            if missing:
                time.sleep(0.5)
        consumer.assign(parts)
        for tp in parts:
            by_partition.setdefault(pkey(tp.topic, tp.partition), 0)
        last_progress = time.monotonic()
        while True:
            now = time.monotonic()
            enough = len(records) >= (expect or 0)
            if idle is None and expect is not None and enough:
                return done(False)
            if idle is not None and enough and now - last_progress >= idle:
                return done(False)
            if now >= deadline:
                return done(True)
            want = 1000 if idle is not None or expect is None else min(500, expect - len(records))
            for msg in consumer.consume(num_messages=max(1, want), timeout=min(0.5, deadline - now)):
                err = msg.error()
                if err is not None:
                    if err.code() != ck.KafkaError._PARTITION_EOF:
                        key = (err.code(), err.str())
                        if key not in seen_errors:
                            seen_errors.add(key)
                            _log({"kafka_error": err.str(), "fatal": err.fatal()})
                        if err.fatal():
                            raise AssertionError(f"fatal Kafka error reading {topics}: {err.str()}")
                    continue
                records.append(_record(msg))
                k = pkey(msg.topic(), msg.partition())
                by_partition[k] = by_partition.get(k, 0) + 1
                last_progress = time.monotonic()
                if idle is None and expect is not None and len(records) >= expect:
                    break
    finally:
        consumer.close()


def group_offsets(bootstrap: str, group: str, topic: str, timeout: float = 10.0) -> dict | None:
    """Committed offsets of `group` on every partition of `topic`: {"0": 12, "1": None, ...}
    (None: nothing committed); None (and the error on stderr) when the broker did not say."""
    consumer = ck.Consumer({**BASE, "bootstrap.servers": bootstrap, "group.id": group,
                            "enable.auto.commit": False})
    try:
        md = consumer.list_topics(topic=topic, timeout=timeout)
        t = md.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            raise RuntimeError(f"topic {topic!r} not found: {t.error if t else 'no metadata'}")
        tps = [ck.TopicPartition(topic, p) for p in sorted(t.partitions)]
        committed = consumer.committed(tps, timeout=timeout)
    except (ck.KafkaException, RuntimeError) as e:
        _log({"group_offsets": group, "topic": topic, "error": str(e)})
        return None
    finally:
        consumer.close()
    for tp in committed:
        if tp.error is not None:
            _log({"partition": tp.partition, "error": str(tp.error)})
    return {str(tp.partition): tp.offset if tp.offset >= 0 else None for tp in committed}


def message_ids(records: list[dict]) -> Counter:
    """messageId -> how many decoded records carry it."""
    return Counter((r["record"] or {}).get("message_id") for r in records)
