//! Protobuf encoding of destination records straight from a borrowed [`Event`], into a
//! caller's reused buffer.
//!
//! Why: building a [`Record`](crate::record::Record) (owned `String`s for every envelope
//! field, one `Pair` with two `String`s per OwnerIQ pair, a copy of the Seg body) and then
//! encoding it cost as much as parsing the event. The map stage only needs the bytes, so the
//! envelope and the payloads are written here with the same field numbers, order and
//! default-omission rules prost's derived code uses: the bytes equal
//! `Record::encode_to_vec()` of the same record (checked by `tests/differential.rs`), and
//! records already in topics decode as before.

use crate::event::Event;
use crate::record::Source;

/// Wire type of length-delimited fields (strings, bytes, messages).
const LEN: u32 = 2;
/// Wire type of varint fields.
const VARINT: u32 = 0;

/// Longest varint of a length (any length under 2^35).
const MAX_LEN_BYTES: usize = 5;

/// Append `v` as a protobuf varint.
#[inline]
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Bytes `v` takes as a varint.
#[inline]
pub(crate) fn varint_len(v: u64) -> usize {
    prost::encoding::encoded_len_varint(v)
}

/// Append a field key.
#[inline]
pub(crate) fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    put_varint(out, u64::from(field << 3 | wire_type));
}

/// Bytes a non-empty string field takes (0 for an empty one, which proto3 omits).
#[inline]
pub(crate) fn str_field_len(field: u32, s: &[u8]) -> usize {
    if s.is_empty() {
        0
    } else {
        varint_len(u64::from(field << 3)) + varint_len(s.len() as u64) + s.len()
    }
}

/// Append a string or bytes field; an empty one is omitted, as prost does.
#[inline]
pub(crate) fn put_str(out: &mut Vec<u8>, field: u32, s: &[u8]) {
    if !s.is_empty() {
        put_key(out, field, LEN);
        put_varint(out, s.len() as u64);
        out.extend_from_slice(s);
    }
}

/// Append a length-delimited field whose length is known: key and length only.
#[inline]
pub(crate) fn put_len_header(out: &mut Vec<u8>, field: u32, len: usize) {
    put_key(out, field, LEN);
    put_varint(out, len as u64);
}

/// A length-delimited field opened before its length is known ([`open`]); [`close`] writes
/// the length and moves the content next to it.
#[must_use]
pub(crate) struct Open {
    at: usize,
    reserved: usize,
}

/// Open length-delimited field `field`: key written, room reserved for the length of a
/// content of about `expect` bytes. [`close`] writes the real length; when its varint has
/// another size than `expect`'s, the content moves (correct either way, a copy slower).
pub(crate) fn open(out: &mut Vec<u8>, field: u32, expect: usize) -> Open {
    put_key(out, field, LEN);
    let at = out.len();
    let reserved = varint_len(expect as u64);
    out.resize(at + reserved, 0);
    Open { at, reserved }
}

/// Open field `outer` holding one bytes field `inner` (a message wrapping a single bytes
/// field, like `SegEvent { body }`) whose content is about `expect` bytes: both lengths are
/// written at [`close_wrapped`], moving the content only when a guess was off.
pub(crate) fn open_wrapped(out: &mut Vec<u8>, outer: u32, expect: usize) -> Open {
    put_key(out, outer, LEN);
    let at = out.len();
    let inner_len = 1 + varint_len(expect as u64) + expect;
    let reserved = varint_len(inner_len as u64) + 1 + varint_len(expect as u64);
    out.resize(at + reserved, 0);
    Open { at, reserved }
}

/// Put `header` in the reserved room, moving the content written since when the room was
/// not exactly the header's size.
fn settle(out: &mut Vec<u8>, o: &Open, header: &[u8]) {
    let content = o.at + o.reserved;
    let end = out.len();
    if header.len() < o.reserved {
        out.copy_within(content..end, o.at + header.len());
        out.truncate(end - (o.reserved - header.len()));
    } else if header.len() > o.reserved {
        let more = header.len() - o.reserved;
        out.resize(end + more, 0);
        out.copy_within(content..end, content + more);
    }
    out[o.at..o.at + header.len()].copy_from_slice(header);
}

/// Close a field opened with [`open`].
pub(crate) fn close(out: &mut Vec<u8>, o: Open) {
    let len = out.len() - o.at - o.reserved;
    let mut buf = [0u8; MAX_LEN_BYTES];
    let n = varint_into(&mut buf, len as u64);
    settle(out, &o, &buf[..n]);
}

/// Close a field opened with [`open_wrapped`]; `inner` is the wrapped bytes field's number
/// (1–15). An empty content is omitted inside the wrapper, as prost does.
pub(crate) fn close_wrapped(out: &mut Vec<u8>, o: Open, inner: u32) {
    debug_assert!((1..16).contains(&inner));
    let body = out.len() - o.at - o.reserved;
    let mut buf = [0u8; 2 * MAX_LEN_BYTES + 1];
    let n = if body == 0 {
        varint_into(&mut buf, 0)
    } else {
        let inner_len = 1 + varint_len(body as u64) + body;
        let mut n = varint_into(&mut buf, inner_len as u64);
        buf[n] = (inner << 3 | LEN) as u8;
        n += 1;
        n += varint_into(&mut buf[n..], body as u64);
        n
    };
    settle(out, &o, &buf[..n]);
}

fn varint_into(buf: &mut [u8], mut v: u64) -> usize {
    let mut i = 0;
    while v >= 0x80 {
        buf[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    buf[i] = v as u8;
    i + 1
}

/// Append the envelope of a record for `event` at destination `dest`: every `Record` field
/// before the payload (1–8), as prost writes them. The payload field goes right after.
pub(crate) fn put_envelope(
    out: &mut Vec<u8>,
    dest: &str,
    event: &Event<'_>,
    source: Option<&Source>,
    received_at_ms: i64,
) {
    put_str(out, 1, event.message_id.as_bytes());
    put_str(out, 2, event.user_key().as_bytes());
    put_str(out, 3, dest.as_bytes());
    put_str(out, 4, event.kind.as_str().as_bytes());
    put_str(out, 5, event.event_name().unwrap_or_default().as_bytes());
    if let Some(s) = source {
        // int32 and int64 are varints of the two's complement (negative: ten bytes).
        let partition = i64::from(s.partition) as u64;
        let offset = s.offset as u64;
        let len = str_field_len(1, s.topic.as_bytes())
            + if partition != 0 {
                1 + varint_len(partition)
            } else {
                0
            }
            + if offset != 0 {
                1 + varint_len(offset)
            } else {
                0
            };
        put_len_header(out, 6, len);
        put_str(out, 1, s.topic.as_bytes());
        if partition != 0 {
            put_key(out, 2, VARINT);
            put_varint(out, partition);
        }
        if offset != 0 {
            put_key(out, 3, VARINT);
            put_varint(out, offset);
        }
    }
    let t = &event.times;
    let times = [
        &t.timestamp,
        &t.original_timestamp,
        &t.sent_at,
        &t.received_at,
    ]
    .map(|v| v.as_deref().unwrap_or_default().as_bytes());
    let len: usize = (1..).zip(times).map(|(f, s)| str_field_len(f, s)).sum();
    put_len_header(out, 7, len);
    for (f, s) in (1..).zip(times) {
        put_str(out, f, s);
    }
    if received_at_ms != 0 {
        put_key(out, 8, VARINT);
        put_varint(out, received_at_ms as u64);
    }
}
