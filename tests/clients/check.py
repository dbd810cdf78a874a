"""Reads the input topic with confluent-kafka (an outside client) and checks that every call the
two Segment libraries made is there exactly once, keyed by userId, with its fields and the
fields ingest fills (messageId, receivedAt, timestamp, originalTimestamp, sentAt).

Usage: check.py BOOTSTRAP TOPIC RUN_ID   (prints PASS/FAIL lines; exit 1 on any failure)
"""
import json
import sys
import time

from confluent_kafka import Consumer, TopicPartition

bootstrap, topic, run = sys.argv[1:4]
LIBS = {"py": "analytics-python", "node": "@segment/analytics-node"}
TYPES = ["identify", "track", "page", "screen", "group", "alias"]


def fields_ok(lib, e):
    user = f"{lib}-{run}-user"
    t = e.get("type")
    checks = {
        "identify": lambda: e["traits"]["email"] == f"{user}@example.com",
        "track": lambda: e["event"] == "Order Completed"
        and e["properties"]["orderId"] == f"{lib}-{run}-order"
        and e["properties"]["total"] == 27.5
        and e["properties"]["products"][0]["sku"] == "sku-1",
        "page": lambda: e["name"] == "Ingest" and e["properties"]["url"] == "https://shop.example.com/docs",
        "screen": lambda: e["name"] == "Home" and e["properties"]["variant"] == ("py" if lib == "py" else "node"),
        "group": lambda: e["groupId"] == "acme" and e["traits"]["name"] == "Acme",
        "alias": lambda: e["previousId"] == f"{lib}-{run}-anon",
    }
    try:
        return (
            checks[t]()
            and e["userId"] == user
            and isinstance(e.get("messageId"), str) and e["messageId"]
            and all(isinstance(e.get(k), str) for k in ("receivedAt", "timestamp", "originalTimestamp", "sentAt"))
            and "writeKey" not in e
            and LIBS[lib] in json.dumps(e.get("context", {}).get("library", {}))
        )
    except (KeyError, TypeError, IndexError):
        return False


c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"clients-check-{run}", "enable.auto.commit": False})
md = c.list_topics(topic, timeout=10)
c.assign([TopicPartition(topic, p, 0) for p in md.topics[topic].partitions])
found = {}  # (lib, type) -> [event]
keys_ok = True
deadline = time.time() + 30
want = {(lib, t) for lib in LIBS for t in TYPES}
while time.time() < deadline:
    m = c.poll(0.5)
    if m is None:
        if want <= set(found):
            break
        continue
    if m.error():
        continue
    e = json.loads(m.value())
    uid = str(e.get("userId", ""))
    for lib in LIBS:
        if uid == f"{lib}-{run}-user":
            found.setdefault((lib, e.get("type")), []).append(e)
            keys_ok &= (m.key() or b"").decode() == uid
# Let duplicates, if any, arrive.
end = time.time() + 2
while time.time() < end:
    m = c.poll(0.2)
    if m is not None and not m.error():
        e = json.loads(m.value())
        for lib in LIBS:
            if str(e.get("userId", "")) == f"{lib}-{run}-user":
                found.setdefault((lib, e.get("type")), []).append(e)
c.close()

failed = 0
for lib in LIBS:
    for t in TYPES:
        evs = found.get((lib, t), [])
        if len(evs) == 1 and fields_ok(lib, evs[0]):
            print(f"PASS {LIBS[lib]} {t}: once, fields as sent and filled")
        else:
            failed += 1
            print(f"FAIL {LIBS[lib]} {t}: seen {len(evs)} times: {json.dumps(evs)[:600]}")
if not keys_ok:
    failed += 1
    print("FAIL some record is not keyed by its userId")
sys.exit(1 if failed else 0)
