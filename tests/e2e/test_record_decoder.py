"""The outside client's own decoder and helpers (support/records.py), checked without a broker:
the e2e scenarios trust what it decodes, so it must read eventrelay.v1.Record the way protobuf
does (defaults, unknown fields, merging, oneof, negative varints, truncation)."""

import json

import pytest

from support.records import (
    ProtoError,
    _enc_int,
    _enc_len,
    _enc_str,
    _enc_tag,
    _enc_varint,
    _read_varint,
    _to_int32,
    _to_int64,
    decode_record,
    encode_record,
    event_key,
    generate_events,
)

OWNERIQ = {
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

SEG = {
    "message_id": "m-1", "user_key": "", "destination": "seg", "event_type": "identify",
    "event_name": "", "source": {"topic": "segment.events", "partition": 0, "offset": 0},
    "times": None, "received_at_ms": 0, "owneriq": None,
    "seg": {"body": {"type": "identify", "traits": {"email": "zoë@example.com"},
                     "n": [1, 2.5, None, True]}},
}


def test_varints():
    assert len(_enc_varint(-1)) == 10
    assert _enc_varint(-1) == b"\xff" * 9 + b"\x01"
    for v in (0, 1, 127, 128, 300, 2**31 - 1, 2**32, 2**63 - 1):
        assert _read_varint(_enc_varint(v), 0) == (v, len(_enc_varint(v))), v
    assert _to_int32(_read_varint(_enc_varint(-7), 0)[0]) == -7
    assert _to_int64(_read_varint(_enc_varint(-(2**63)), 0)[0]) == -(2**63)
    # a negative int32 is a 10-byte varint on the wire (tag + 10)
    assert len(_enc_int(2, -1)) == 11


@pytest.mark.parametrize("record", [OWNERIQ, SEG], ids=["owneriq", "seg"])
def test_round_trip(record):
    assert decode_record(encode_record(record)) == record


def test_empty_record_takes_proto3_defaults():
    assert decode_record(b"") == {
        "message_id": "", "user_key": "", "destination": "", "event_type": "",
        "event_name": "", "source": None, "times": None, "received_at_ms": 0,
        "owneriq": None, "seg": None}


def test_unknown_fields_of_every_wire_type_are_skipped():
    unknown = (_enc_tag(99, 0) + _enc_varint(123) + _enc_tag(98, 1) + b"\0" * 8
               + _enc_tag(97, 2) + _enc_varint(3) + b"abc" + _enc_tag(96, 5) + b"\0" * 4)
    assert decode_record(unknown + encode_record(OWNERIQ)) == OWNERIQ


def test_singular_sub_messages_merge_and_the_last_oneof_member_wins():
    merged = decode_record(_enc_len(6, _enc_str(1, "a"), True) + _enc_len(6, _enc_int(2, -1), True))
    assert merged["source"] == {"topic": "a", "partition": -1, "offset": 0}
    both = decode_record(encode_record(OWNERIQ) + encode_record(SEG))
    assert (both["owneriq"], both["seg"]) == (None, SEG["seg"])
    both = decode_record(encode_record(SEG) + encode_record(OWNERIQ))
    assert (both["seg"], both["owneriq"]) == (None, OWNERIQ["owneriq"])


def test_truncated_input_is_rejected():
    with pytest.raises(ProtoError):
        decode_record(encode_record(OWNERIQ)[:-1])


@pytest.mark.parametrize("line,key", [
    (b'{"userId":"u1","anonymousId":"a"}', b"u1"),
    (b'{"userId":null,"anonymousId":"a"}', b"a"),
    (b'{"userId":12345678901234567890}', b"12345678901234567890"),
    (b'{"anonymousId":1.50}', b"1.50"),
    (b'{"userId":"","anonymousId":"a"}', b"a"),
    (b'{"type":"page"}', None),
    (b'[1,2]', None),
    (b'{"userId":', None),
    ('{"userId":"ü"}'.encode(), "ü".encode()),
], ids=["userId", "anonymousId", "number", "float", "empty userId", "none", "not an object",
        "invalid json", "unicode"])
def test_event_key(line, key):
    assert event_key(line) == key


def test_generator_numbers_seq_per_user_and_breaks_every_nth_line():
    seqs: dict = {}
    bad = 0
    for i, line in enumerate(generate_events(200, invalid_every=7, seed=1), 1):
        try:
            ev = json.loads(line)
        except ValueError:
            bad += 1
            assert i % 7 == 0, f"line {i} is invalid but not a multiple of 7"
            continue
        want = seqs.get(ev["userId"], 0) + 1
        assert ev["properties"]["seq"] == want, ev["messageId"]
        seqs[ev["userId"]] = want
    assert bad == 200 // 7
