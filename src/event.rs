//! The Segment event model: parsing and validating one raw Kafka record into an [`Event`]
//! that borrows from the record's bytes.
//!
//! Parsing is total: any byte string gives either an [`Event`] or an [`InvalidEvent`] with a
//! stable reason code, never a panic. The reason code is what lands in the dead-letter header
//! `eventrelay.error.reason`, so codes are part of the operator-facing contract.
//!
//! Why borrowed: the map stage reads every event once and the destinations look at a dozen
//! fields. Parsing into a tree (`serde_json::Value` with an ordered map) allocated a `String`
//! per key and value and cost more than everything else the stage does. Here one pass reads
//! the fields the destinations use and keeps `properties`, `traits`, `context.traits` and
//! `context.page` as raw JSON slices ([`Raw`]) that the Seg body embeds as they came, so
//! numbers, escapes and key order reach the destination exactly as sent. The parts a mapper
//! needs from inside a raw slice are read on demand with [`raw::pick`] (one shallow pass).
//!
//! The pass is a hand-written walk (`walk`) that validates the record as JSON while it cuts
//! the slices; for anything it does not take on, serde_json's pass decides, so verdicts and
//! messages are serde_json's.
//!
//! Duplicate keys: the last occurrence wins, as it did with the ordered-map tree.

use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

mod walk;

/// One JSON value's text exactly as it came, borrowed from the record. Only the parser makes
/// one (from a slice it has validated as a whole JSON value), so the text is always valid JSON
/// and a destination can embed it as is.
///
/// Not `serde_json`'s `&RawValue` because the event pass cuts its slices out of the record
/// itself (the walk validates as it goes), and serde_json makes a `&RawValue` only by parsing
/// the text again.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Raw<'a>(&'a str);

impl<'a> Raw<'a> {
    /// The JSON text.
    pub fn get(self) -> &'a str {
        self.0
    }

    /// A slice the caller knows to be one whole JSON value (a constant, or text the parser
    /// has read).
    pub(crate) const fn trusted(text: &'a str) -> Self {
        Raw(text)
    }
}

impl fmt::Debug for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Raw<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'de RawValue>::deserialize(d).map(|v| Raw(v.get()))
    }
}

/// Segment rejects events over 32 KB; we treat larger records as invalid input the same way.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;

/// Segment limits `messageId` to 100 characters.
pub const MAX_MESSAGE_ID_CHARS: usize = 100;

/// Deepest nesting of objects and arrays accepted (`too_deep` beyond): the depth serde_json,
/// and so most receivers written in Rust, will parse; the event is embedded in Seg bodies and
/// re-read by `eventrelay map`, so accepting deeper input would only move the failure.
pub const MAX_DEPTH: usize = 128;

/// The six Segment call types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Who the user is.
    Identify,
    /// What the user did.
    Track,
    /// A web page view.
    Page,
    /// A mobile screen view.
    Screen,
    /// A user joining an account or organisation.
    Group,
    /// One identity merged into another.
    Alias,
}

impl EventType {
    /// The lowercase name used on the wire and in records.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Identify => "identify",
            EventType::Track => "track",
            EventType::Page => "page",
            EventType::Screen => "screen",
            EventType::Group => "group",
            EventType::Alias => "alias",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            EventType::Identify,
            EventType::Track,
            EventType::Page,
            EventType::Screen,
            EventType::Group,
            EventType::Alias,
        ]
        .into_iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }
}

/// The Segment e-commerce events the destinations care about, whatever spelling was used.
///
/// Segment's libraries accept the v1 and v2 names case-insensitively, in either word order and
/// with spaces, underscores or nothing between words; so do we.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ecommerce {
    /// `Order Completed` / `Completed Order`.
    OrderCompleted,
    /// `Product Viewed` / `Viewed Product`.
    ProductViewed,
    /// `Product Added` / `Added Product`.
    ProductAdded,
    /// `Product List Viewed` / `Viewed Product Category` / `Product Category Viewed`.
    ProductListViewed,
}

impl Ecommerce {
    /// Recognise an event name, or `None` for any other event.
    pub fn from_name(name: &str) -> Option<Self> {
        // Lowercase ASCII letters only, separators dropped, on the stack: this runs for every
        // track event and every destination.
        let mut buf = [0u8; 32];
        let mut n = 0;
        for b in name.bytes() {
            if matches!(b, b' ' | b'_' | b'-') {
                continue;
            }
            if !b.is_ascii_alphabetic() || n == buf.len() {
                return None;
            }
            buf[n] = b.to_ascii_lowercase();
            n += 1;
        }
        Some(match &buf[..n] {
            b"ordercompleted" | b"completedorder" => Ecommerce::OrderCompleted,
            b"productviewed" | b"viewedproduct" => Ecommerce::ProductViewed,
            b"productadded" | b"addedproduct" => Ecommerce::ProductAdded,
            b"productlistviewed"
            | b"viewedproductlist"
            | b"viewedproductcategory"
            | b"productcategoryviewed" => Ecommerce::ProductListViewed,
            _ => return None,
        })
    }
}

/// Why a record is not a valid Segment event. The code is stable; the message is for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEvent {
    /// Stable reason code (`invalid_json`, `too_large`, …), used in DLQ headers and metrics.
    pub reason: &'static str,
    /// Human-readable detail naming what is wrong.
    pub message: String,
}

impl InvalidEvent {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        InvalidEvent {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for InvalidEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for InvalidEvent {}

/// A validated Segment event, borrowing from the record's bytes.
///
/// Strings are `Cow`: borrowed unless the JSON text had escapes. Numbers used as ids keep
/// their JSON text (`18446744073709551617` stays that, distinct from `18446744073709551616`).
#[derive(Debug, Clone)]
pub struct Event<'a> {
    /// The call type.
    pub kind: EventType,
    /// `messageId` as sent, or a deterministic `er-<hash>` of the bytes when the sender gave none
    /// (absent, null, empty or only whitespace), so a replay of the same record gets the same
    /// idempotency key.
    pub message_id: Cow<'a, str>,
    /// `userId`, numbers as their JSON text; `None` when absent, null or blank.
    pub user_id: Option<Cow<'a, str>>,
    /// `anonymousId`, likewise.
    pub anonymous_id: Option<Cow<'a, str>>,
    /// `event` when it is a string (the track event name; validated non-blank for track).
    pub event: Option<Cow<'a, str>>,
    /// `name` (page, screen), any JSON value but null.
    pub name: Option<Raw<'a>>,
    /// `previousId` for alias calls (validated like `userId`); `None` for other calls.
    pub previous_id: Option<Cow<'a, str>>,
    /// The four Segment timestamps, as sent (each validated when present).
    pub times: Times<'a>,
    /// `properties`, a JSON object, as sent.
    pub properties: Option<Raw<'a>>,
    /// `traits`, a JSON object, as sent.
    pub traits: Option<Raw<'a>>,
    /// `context.traits` when it is an object, as sent.
    pub context_traits: Option<Raw<'a>>,
    /// `context.page` when it is an object, as sent.
    pub context_page: Option<Raw<'a>>,
    /// `integrations`, a JSON object, as sent.
    pub integrations: Option<Raw<'a>>,
    /// `context.traits.email`, else `traits.email`: a non-blank string.
    pub email: Option<Cow<'a, str>>,
    /// The e-commerce event a track's name is, read once for every destination.
    ecommerce: Option<Ecommerce>,
    /// An `Order Completed` track's `properties` as the event pass read them (see
    /// [`Event::order`]).
    order: Option<Box<Order<'a>>>,
}

/// The order fields of `properties` destinations read from an `Order Completed` track;
/// [`Order::pick`] takes them by name.
pub const ORDER_KEYS: [&str; 6] = ["orderId", "order_id", "id", "total", "revenue", "email"];

/// The fields of a `properties.products` element (Segment's e-commerce spec) destinations
/// read, in the order [`Order::products`] gives them.
pub const PRODUCT_KEYS: [&str; 7] = [
    "brand", "sku", "price", "category", "quantity", "name", "title",
];

/// The `properties` of an `Order Completed` track as the event pass read them: the
/// [`ORDER_KEYS`] members (the last occurrence of a key wins) and the object elements of
/// `products`, so no mapper parses them a second time. Only this call is read member by member
/// (a destination itemizes its products); any other `properties` is passed over as a slice.
#[derive(Debug, Clone, Default)]
pub struct Order<'a> {
    values: [Option<Raw<'a>>; ORDER_KEYS.len()],
    products: Vec<[Option<Raw<'a>>; PRODUCT_KEYS.len()]>,
}

impl<'a> Order<'a> {
    /// The values of `keys`, each one of [`ORDER_KEYS`] (another name reads as absent).
    pub fn pick<const N: usize>(&self, keys: [&str; N]) -> [Option<Raw<'a>>; N] {
        keys.map(|k| {
            ORDER_KEYS
                .iter()
                .position(|p| *p == k)
                .and_then(|i| self.values[i])
        })
    }

    /// The object elements of the last `products` member, in order, with their
    /// [`PRODUCT_KEYS`] values; other elements (and a `products` that is not an array) give
    /// none.
    pub fn products(&self) -> &[[Option<Raw<'a>>; PRODUCT_KEYS.len()]] {
        &self.products
    }
}

/// Two events are equal when every field is, raw slices compared by their text.
impl PartialEq for Event<'_> {
    fn eq(&self, o: &Self) -> bool {
        let raw_eq = |a: Option<Raw<'_>>, b: Option<Raw<'_>>| a.map(Raw::get) == b.map(Raw::get);
        self.kind == o.kind
            && self.message_id == o.message_id
            && self.user_id == o.user_id
            && self.anonymous_id == o.anonymous_id
            && self.event == o.event
            && raw_eq(self.name, o.name)
            && self.previous_id == o.previous_id
            && self.times == o.times
            && raw_eq(self.properties, o.properties)
            && raw_eq(self.traits, o.traits)
            && raw_eq(self.context_traits, o.context_traits)
            && raw_eq(self.context_page, o.context_page)
            && raw_eq(self.integrations, o.integrations)
            && self.email == o.email
            && self.ecommerce == o.ecommerce
    }
}

/// The event's own timestamps, as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Times<'a> {
    /// `timestamp`.
    pub timestamp: Option<Cow<'a, str>>,
    /// `originalTimestamp`.
    pub original_timestamp: Option<Cow<'a, str>>,
    /// `sentAt`.
    pub sent_at: Option<Cow<'a, str>>,
    /// `receivedAt`.
    pub received_at: Option<Cow<'a, str>>,
}

/// Helpers over raw JSON slices: the event model's way of reading inside `properties` and
/// friends without building a tree.
pub mod raw {
    use super::Raw;
    use serde::de::{
        self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
    };
    use std::borrow::Cow;
    use std::fmt;

    /// A JSON object key, borrowed unless it had escapes.
    pub(crate) struct Key<'a>(pub Cow<'a, str>);

    impl<'de> de::Deserialize<'de> for Key<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a string")
                }
                fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Borrowed(s)))
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(s.to_string())))
                }
                fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(s)))
                }
            }
            d.deserialize_str(V)
        }
    }

    /// An object's picked values, or `None` for any other JSON value.
    struct PickAny<'k, const N: usize>([&'k str; N]);

    impl<'de, const N: usize> DeserializeSeed<'de> for PickAny<'_, N> {
        type Value = Option<[Option<Raw<'de>>; N]>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de, const N: usize> Visitor<'de> for PickAny<'_, N> {
        type Value = Option<[Option<Raw<'de>>; N]>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = [None; N];
            while let Some(Key(k)) = map.next_key()? {
                match self.0.iter().position(|want| *want == k) {
                    Some(i) => out[i] = Some(map.next_value::<Raw<'de>>()?),
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(Some(out))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    /// Read the values of `keys` from a raw JSON object in one shallow pass (the last
    /// occurrence of a key wins). Not an object, or invalid JSON: all `None`.
    pub fn pick<'a, const N: usize>(obj: Raw<'a>, keys: [&str; N]) -> [Option<Raw<'a>>; N] {
        if !is_object(obj) {
            return [None; N];
        }
        let mut de = serde_json::Deserializer::from_str(obj.get());
        PickAny(keys)
            .deserialize(&mut de)
            .ok()
            .flatten()
            .unwrap_or([None; N])
    }

    /// Every `(key, value)` of a raw JSON object, in document order (duplicates included).
    pub fn entries(obj: Raw<'_>) -> Vec<(Cow<'_, str>, Raw<'_>)> {
        struct All;
        impl<'de> Visitor<'de> for All {
            type Value = Vec<(Cow<'de, str>, Raw<'de>)>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(Key(k)) = map.next_key()? {
                    out.push((k, map.next_value::<Raw<'de>>()?));
                }
                Ok(out)
            }
        }
        if !is_object(obj) {
            return Vec::new();
        }
        let mut de = serde_json::Deserializer::from_str(obj.get());
        de.deserialize_map(All).unwrap_or_default()
    }

    /// For each object element of a raw JSON array, in order, the values of `keys` as
    /// [`pick`] reads them; other elements are passed over. No element list is built.
    /// Not an array: no call.
    pub fn each_object<'a, const N: usize>(
        arr: Raw<'a>,
        keys: [&str; N],
        mut f: impl FnMut([Option<Raw<'a>>; N]),
    ) {
        struct Elems<'k, 'f, F, const N: usize>(&'f mut F, [&'k str; N]);
        impl<'de, F: FnMut([Option<Raw<'de>>; N]), const N: usize> Visitor<'de> for Elems<'_, '_, F, N> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                // Each element as a raw slice first: reading a non-object element as a value
                // would parse its numbers, and one out of `f64` range (`1e400`) would end the
                // walk early.
                while let Some(v) = seq.next_element::<Raw<'de>>()? {
                    if is_object(v) {
                        (self.0)(pick(v, self.1));
                    }
                }
                Ok(())
            }
        }
        if !arr.get().starts_with('[') {
            return;
        }
        let mut de = serde_json::Deserializer::from_str(arr.get());
        // The slice was validated when the event was parsed; an error cannot happen here.
        let _ = de.deserialize_seq(Elems(&mut f, keys));
    }

    /// Whether a raw value is a JSON object.
    pub fn is_object(v: Raw<'_>) -> bool {
        v.get().starts_with('{')
    }

    /// Whether a raw value is JSON `null`.
    pub fn is_null(v: Raw<'_>) -> bool {
        v.get() == "null"
    }

    /// `v` unless it is `null`.
    pub fn present(v: Option<Raw<'_>>) -> Option<Raw<'_>> {
        v.filter(|v| !is_null(*v))
    }

    /// A raw JSON string's value (unescaped only when it has escapes); `None` for other types.
    pub fn as_str(v: Raw<'_>) -> Option<Cow<'_, str>> {
        let t = v.get();
        let inner = t.strip_prefix('"')?.strip_suffix('"')?;
        if !inner.contains('\\') {
            return Some(Cow::Borrowed(inner));
        }
        serde_json::from_str::<String>(t).ok().map(Cow::Owned)
    }

    /// A value as destinations put it in text: strings unescaped, numbers and booleans as
    /// their JSON text (exactly as sent), arrays and objects as their JSON text with the
    /// whitespace outside strings removed; `None` for null.
    pub fn text(v: Raw<'_>) -> Option<Cow<'_, str>> {
        let t = v.get();
        match t.as_bytes().first() {
            None | Some(b'n') => None,
            Some(b'"') => as_str(v),
            Some(b'[' | b'{') => Some(minify(t)),
            Some(_) => Some(Cow::Borrowed(t)),
        }
    }

    /// Valid JSON text without the whitespace outside strings.
    pub fn minify(t: &str) -> Cow<'_, str> {
        if !t.bytes().any(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t')) {
            return Cow::Borrowed(t);
        }
        let mut out = String::with_capacity(t.len());
        let (mut in_str, mut esc) = (false, false);
        for c in t.chars() {
            if in_str {
                if esc {
                    esc = false;
                } else if c == '\\' {
                    esc = true;
                } else if c == '"' {
                    in_str = false;
                }
            } else if c == '"' {
                in_str = true;
            } else if matches!(c, ' ' | '\n' | '\r' | '\t') {
                continue;
            }
            out.push(c);
        }
        Cow::Owned(out)
    }

    /// What one pass over a record's bytes tells: whether they are all ASCII (so valid UTF-8
    /// with no further check) and how many `{` and `[` bytes they hold (an upper bound of the
    /// nesting depth).
    pub(crate) struct Scan {
        pub ascii: bool,
        pub openers: usize,
    }

    /// Ask for every cache line of the record at once, so their loads overlap instead of
    /// the scan waiting for each in turn.
    #[inline]
    pub(crate) fn prefetch(bytes: &[u8]) {
        #[cfg(target_arch = "x86_64")]
        for i in (0..bytes.len()).step_by(64) {
            // SAFETY: a prefetch is only a hint; the address is inside `bytes`.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    bytes.as_ptr().add(i).cast(),
                )
            };
        }
    }

    /// One pass for [`Scan`]. It is the record's first touch, so it costs about what reading
    /// the bytes from memory costs; counting `u8`s per 255-byte chunk lets the compiler use wide
    /// vector compares. `[` is 0x5B and `{` 0x7B: `b | 0x20 == b'{'` matches exactly those two.
    pub(crate) fn scan(bytes: &[u8]) -> Scan {
        let (mut openers, mut high) = (0usize, 0u8);
        for chunk in bytes.chunks(255) {
            let (mut n, mut h) = (0u8, 0u8);
            for &b in chunk {
                n = n.wrapping_add(u8::from(b | 0x20 == b'{'));
                h |= b;
            }
            openers += usize::from(n);
            high |= h;
        }
        Scan {
            ascii: high < 0x80,
            openers,
        }
    }

    /// Whether objects and arrays in JSON text nest deeper than `max`, strings skipped. Walked
    /// only for a record whose [`Scan::openers`] is above `max`, so ordinary events are not.
    pub(crate) fn nesting_exceeds(bytes: &[u8], max: usize) -> bool {
        let (mut depth, mut in_str, mut esc) = (0usize, false, false);
        for &b in bytes {
            if in_str {
                if esc {
                    esc = false;
                } else if b == b'\\' {
                    esc = true;
                } else if b == b'"' {
                    in_str = false;
                }
                continue;
            }
            match b {
                b'"' => in_str = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > max {
                        return true;
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        false
    }

    /// `context`: its `traits` and `page` when they are objects, read in the same pass as
    /// the event; `not_object` when `context` is neither an object nor null.
    #[derive(Default)]
    pub(crate) struct Context<'a> {
        pub not_object: bool,
        pub traits: Option<Raw<'a>>,
        pub page: Option<Raw<'a>>,
    }

    /// Reads `context` without a tree.
    pub(crate) struct ContextSeed;

    impl<'de> DeserializeSeed<'de> for ContextSeed {
        type Value = Context<'de>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Context<'de>, D::Error> {
            d.deserialize_any(ContextVisitor)
        }
    }

    struct ContextVisitor;

    impl ContextVisitor {
        fn other<E>(self) -> Result<Context<'static>, E> {
            Ok(Context {
                not_object: true,
                ..Context::default()
            })
        }
    }

    impl<'de> Visitor<'de> for ContextVisitor {
        type Value = Context<'de>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Context<'de>, A::Error> {
            let mut c = Context::default();
            while let Some(Key(k)) = map.next_key()? {
                match &*k {
                    "traits" => c.traits = Some(map.next_value::<Raw<'de>>()?),
                    "page" => c.page = Some(map.next_value::<Raw<'de>>()?),
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            c.traits = c.traits.filter(|v| is_object(*v));
            c.page = c.page.filter(|v| is_object(*v));
            Ok(c)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Context<'de>, E> {
            Ok(Context::default())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Context<'de>, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            self.other()
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Context<'de>, E> {
            self.other()
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Context<'de>, E> {
            self.other()
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Context<'de>, E> {
            self.other()
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Context<'de>, E> {
            self.other()
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Context<'de>, E> {
            self.other()
        }
    }
}

/// The top-level fields the destinations read, as raw slices, from one pass.
#[derive(Default)]
struct Fields<'a> {
    kind: Option<Raw<'a>>,
    message_id: Option<Raw<'a>>,
    user_id: Option<Raw<'a>>,
    anonymous_id: Option<Raw<'a>>,
    previous_id: Option<Raw<'a>>,
    event: Option<Raw<'a>>,
    name: Option<Raw<'a>>,
    times: [Option<Raw<'a>>; 4],
    properties: Option<Raw<'a>>,
    /// An `Order Completed`'s `properties` read member by member (the walk only).
    order: Option<Box<Order<'a>>>,
    traits: Option<Raw<'a>>,
    integrations: Option<Raw<'a>>,
    context: Option<raw::Context<'a>>,
}

impl<'a> Fields<'a> {
    /// Where a top-level key's value is kept as a slice; `None` for keys read another way
    /// (`context`) or not at all. Both passes place values through it.
    fn slot(&mut self, key: &str) -> Option<&mut Option<Raw<'a>>> {
        Some(match key {
            "type" => &mut self.kind,
            "messageId" => &mut self.message_id,
            "userId" => &mut self.user_id,
            "anonymousId" => &mut self.anonymous_id,
            "previousId" => &mut self.previous_id,
            "event" => &mut self.event,
            "name" => &mut self.name,
            "timestamp" => &mut self.times[0],
            "originalTimestamp" => &mut self.times[1],
            "sentAt" => &mut self.times[2],
            "receivedAt" => &mut self.times[3],
            "properties" => &mut self.properties,
            "traits" => &mut self.traits,
            "integrations" => &mut self.integrations,
            _ => return None,
        })
    }
}

/// Reads the top-level fields (the serde_json pass, when the walk gives up).
struct FieldsVisitor;

impl<'de> serde::de::Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut f = Fields::default();
        while let Some(raw::Key(k)) = map.next_key()? {
            if k == "context" {
                f.context = Some(map.next_value_seed(raw::ContextSeed)?);
            } else if let Some(slot) = f.slot(&k) {
                *slot = Some(map.next_value::<Raw<'de>>()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(f)
    }
}

/// An id field (`userId`, `anonymousId`, `previousId`): a string, or a number used as its JSON
/// text; `None` when absent, null or blank.
fn id_field<'a>(v: Option<Raw<'a>>, key: &str) -> Result<Option<Cow<'a, str>>, InvalidEvent> {
    let Some(v) = raw::present(v) else {
        return Ok(None);
    };
    match v.get().as_bytes().first() {
        Some(b'"') => Ok(raw::as_str(v).filter(|s| !s.trim().is_empty())),
        Some(b'-' | b'0'..=b'9') => Ok(Some(Cow::Borrowed(v.get()))),
        _ => Err(InvalidEvent::new(
            "invalid_field",
            format!("`{key}` must be a string"),
        )),
    }
}

/// Parse a date-time the way Segment's tracking API accepts it. Returns milliseconds since
/// the epoch.
///
/// Accepted: `YYYY-MM-DD`, optionally followed by `T`, `t` or a space and `HH:MM`, optional
/// `:SS`, optional fraction (`.` or `,`, any number of digits, read to the millisecond),
/// then an optional offset: `Z`, `z`, `±HH:MM`, `±HHMM` or `±HH`. No offset means UTC, and a
/// date alone means midnight UTC. Leap second `60` is read as the last millisecond of the
/// minute.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    use chrono::{NaiveDate, NaiveTime};
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let d = b.get(from..from + len)?;
        d.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(num(0, 4)? as i32, num(5, 2)?, num(8, 2)?)?;
    if b.len() == 10 {
        return Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis());
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) || b.get(13) != Some(&b':') {
        return None;
    }
    let (hour, minute) = (num(11, 2)?, num(14, 2)?);
    let mut i = 16;
    let mut second = 0;
    if b.get(i) == Some(&b':') {
        second = num(i + 1, 2)?;
        i += 3;
    }
    let mut milli = 0;
    if matches!(b.get(i), Some(b'.' | b',')) {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 3 {
                milli = milli * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..3 {
            milli *= 10;
        }
    }
    if second == 60 {
        (second, milli) = (59, 999);
    }
    let time = NaiveTime::from_hms_milli_opt(hour, minute, second, milli)?;
    let offset_secs: i64 = match &b[i..] {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (h, m) = match rest.len() {
                2 => (num(i + 1, 2)?, 0),
                4 => (num(i + 1, 2)?, num(i + 3, 2)?),
                5 if rest[2] == b':' => (num(i + 1, 2)?, num(i + 4, 2)?),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let secs = i64::from(h * 3600 + m * 60);
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    let local = date.and_time(time).and_utc().timestamp_millis();
    Some(local - offset_secs * 1000)
}

/// The timestamp fields Segment defines; each must be a parseable date-time when present.
pub const TIMESTAMP_FIELDS: [&str; 4] = ["timestamp", "originalTimestamp", "sentAt", "receivedAt"];

/// A control character anywhere in `messageId` would make an invalid HTTP header value
/// (`Idempotency-Key`): refuse it at parse time so `eventrelay map` and delivery agree.
fn valid_message_id(s: &str) -> Result<(), InvalidEvent> {
    if s.chars().count() > MAX_MESSAGE_ID_CHARS {
        return Err(InvalidEvent::new(
            "invalid_message_id",
            format!("`messageId` is longer than {MAX_MESSAGE_ID_CHARS} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(InvalidEvent::new(
            "invalid_message_id",
            "`messageId` contains control characters, which an HTTP header cannot carry",
        ));
    }
    Ok(())
}

impl<'a> Event<'a> {
    /// Parse and validate one raw record, borrowing from it.
    pub fn parse(bytes: &'a [u8]) -> Result<Event<'a>, InvalidEvent> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(InvalidEvent::new(
                "too_large",
                format!(
                    "event is {} bytes, the limit is {MAX_EVENT_BYTES}",
                    bytes.len()
                ),
            ));
        }
        // The record's cache lines are asked for at once, then the walk reads it once; it
        // accepts only valid JSON within MAX_DEPTH, so a record it takes gets the same verdict
        // from the passes below, which decide everything else.
        raw::prefetch(bytes);
        match walk::fields(bytes) {
            Some(fields) => Self::validate(fields, bytes),
            None => Self::parse_serde(bytes),
        }
    }

    /// The serde_json way, for what the walk gives up on; its verdicts are the reference.
    fn parse_serde(bytes: &'a [u8]) -> Result<Event<'a>, InvalidEvent> {
        // Too deep wins over every other verdict. One pass first reads whether the record is
        // ASCII and bounds its depth; the exact walk, only for a record with more than
        // MAX_DEPTH `{`/`[`, runs after the parse (which has no recursion: nested values are
        // skipped iteratively).
        let too_deep = || {
            InvalidEvent::new(
                "too_deep",
                format!("objects and arrays are nested deeper than {MAX_DEPTH} levels"),
            )
        };
        let scan = raw::scan(bytes);
        let deep = || scan.openers > MAX_DEPTH && raw::nesting_exceeds(bytes, MAX_DEPTH);
        let text = if scan.ascii {
            // SAFETY: every byte is below 0x80 (the scan above), and ASCII is valid UTF-8.
            Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
        } else {
            std::str::from_utf8(bytes).map_err(|e| {
                InvalidEvent::new("invalid_json", format!("not JSON: not UTF-8 ({e})"))
            })
        };
        let fields = match text.and_then(Self::parse_fields) {
            Ok(f) => f,
            Err(_) if deep() => return Err(too_deep()),
            Err(e) => return Err(e),
        };
        if deep() {
            return Err(too_deep());
        }
        Self::validate(fields, bytes)
    }

    /// The serde_json pass: the top-level fields as raw slices, or serde_json's verdict.
    fn parse_fields(text: &'a str) -> Result<Fields<'a>, InvalidEvent> {
        let not_json =
            |e: serde_json::Error| InvalidEvent::new("invalid_json", format!("not JSON: {e}"));
        let first = text
            .trim_start_matches([' ', '\n', '\r', '\t'])
            .as_bytes()
            .first();
        if first != Some(&b'{') {
            serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(not_json)?;
            return Err(InvalidEvent::new(
                "not_an_object",
                "an event must be a JSON object",
            ));
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let fields =
            serde::Deserializer::deserialize_map(&mut de, FieldsVisitor).map_err(not_json)?;
        de.end().map_err(not_json)?;
        Ok(fields)
    }

    fn validate(f: Fields<'a>, bytes: &[u8]) -> Result<Event<'a>, InvalidEvent> {
        let kind = match raw::present(f.kind) {
            None => return Err(InvalidEvent::new("missing_type", "`type` is missing")),
            Some(t) => match raw::as_str(t) {
                Some(t) => EventType::parse(&t).ok_or_else(|| {
                    InvalidEvent::new(
                        "unknown_type",
                        format!(
                            "`type` {:?} is not one of identify, track, page, screen, group, alias",
                            truncate(&t, 40)
                        ),
                    )
                })?,
                None => return Err(InvalidEvent::new("unknown_type", "`type` must be a string")),
            },
        };
        let user_id = id_field(f.user_id, "userId")?;
        let anonymous_id = id_field(f.anonymous_id, "anonymousId")?;
        if user_id.is_none() && anonymous_id.is_none() {
            return Err(InvalidEvent::new(
                "missing_identity",
                "either `userId` or `anonymousId` is required",
            ));
        }
        let context = f.context.unwrap_or_default();
        let object = |key: &str, v: Option<Raw<'a>>, not_object: bool| match raw::present(v) {
            _ if not_object => Err(InvalidEvent::new(
                "invalid_field",
                format!("`{key}` must be an object"),
            )),
            Some(v) if !raw::is_object(v) => Err(InvalidEvent::new(
                "invalid_field",
                format!("`{key}` must be an object"),
            )),
            v => Ok(v),
        };
        object("context", None, context.not_object)?;
        let traits = object("traits", f.traits, false)?;
        let properties = object("properties", f.properties, false)?;
        let integrations = object("integrations", f.integrations, false)?;
        let message_id = match raw::present(f.message_id) {
            None => Cow::Owned(synthetic_message_id(bytes)),
            Some(v) => match raw::as_str(v) {
                Some(s) if s.trim().is_empty() => Cow::Owned(synthetic_message_id(bytes)),
                Some(s) => {
                    valid_message_id(&s)?;
                    s
                }
                None => {
                    return Err(InvalidEvent::new(
                        "invalid_message_id",
                        "`messageId` must be a string",
                    ))
                }
            },
        };
        let event = f.event.and_then(raw::as_str);
        let mut previous_id = None;
        match kind {
            EventType::Track if event.as_deref().is_none_or(|s| s.trim().is_empty()) => {
                return Err(InvalidEvent::new(
                    "missing_event",
                    "a track call needs a non-empty `event` name",
                ));
            }
            EventType::Alias => {
                if user_id.is_none() {
                    return Err(InvalidEvent::new(
                        "missing_identity",
                        "an alias call needs `userId`",
                    ));
                }
                previous_id = id_field(f.previous_id, "previousId")?;
                if previous_id.is_none() {
                    return Err(InvalidEvent::new(
                        "missing_previous_id",
                        "an alias call needs `previousId`",
                    ));
                }
            }
            _ => {}
        }
        let mut times: [Option<Cow<'a, str>>; 4] = Default::default();
        for (i, key) in TIMESTAMP_FIELDS.into_iter().enumerate() {
            let Some(v) = raw::present(f.times[i]) else {
                continue;
            };
            match raw::as_str(v) {
                Some(s) if parse_timestamp(&s).is_some() => times[i] = Some(s),
                _ => {
                    return Err(InvalidEvent::new(
                        "invalid_timestamp",
                        format!(
                            "`{key}` is not an ISO-8601 date-time: {}",
                            truncate(v.get(), 60)
                        ),
                    ))
                }
            }
        }
        let ecommerce = match kind {
            EventType::Track => event.as_deref().and_then(Ecommerce::from_name),
            _ => None,
        };
        let [timestamp, original_timestamp, sent_at, received_at] = times;
        let email = email_in(context.traits).or_else(|| email_in(traits));
        Ok(Event {
            kind,
            message_id,
            user_id,
            anonymous_id,
            event,
            name: raw::present(f.name),
            previous_id,
            times: Times {
                timestamp,
                original_timestamp,
                sent_at,
                received_at,
            },
            properties,
            traits,
            context_traits: context.traits,
            context_page: context.page,
            integrations,
            email,
            ecommerce,
            // Read on the way when `event` came before `properties`, else here from the slice.
            order: match (f.order, ecommerce, properties) {
                (o @ Some(_), Some(Ecommerce::OrderCompleted), _) => o,
                (None, Some(Ecommerce::OrderCompleted), Some(p)) => walk::order(p),
                _ => None,
            },
        })
    }

    /// An `Order Completed` track's `properties` as the event pass read them; `None` for
    /// another call, or an order without `properties`.
    pub fn order(&self) -> Option<&Order<'a>> {
        self.order.as_deref()
    }

    /// The Kafka key for records of this event: `userId`, else `anonymousId`.
    pub fn user_key(&self) -> &str {
        self.user_id
            .as_deref()
            .or(self.anonymous_id.as_deref())
            .unwrap_or_default()
    }

    /// The track event name (validated present for track calls).
    pub fn event_name(&self) -> Option<&str> {
        self.event.as_deref()
    }

    /// The e-commerce event (Segment's spec) a track call's name is, in any of its spellings;
    /// `None` for other names and other calls.
    pub fn ecommerce(&self) -> Option<Ecommerce> {
        self.ecommerce
    }

    /// The event's time: `timestamp`, else `originalTimestamp`, else `receivedAt`, else `sentAt`.
    pub fn timestamp(&self) -> Option<&str> {
        let t = &self.times;
        t.timestamp
            .as_deref()
            .or(t.original_timestamp.as_deref())
            .or(t.received_at.as_deref())
            .or(t.sent_at.as_deref())
    }

    /// The user's email as Segment destinations read it: `context.traits.email`, else
    /// `traits.email` (a non-blank string).
    pub fn email(&self) -> Option<&str> {
        self.email.as_deref()
    }

    /// Whether the `integrations` object lets this event reach the destination whose
    /// integration key is `key` (matched case-insensitively).
    ///
    /// As in Segment's libraries: `All` defaults to true; an explicit boolean for the
    /// destination wins over `All`; an object value means enabled (with per-event options).
    pub fn enabled_for(&self, key: &str) -> bool {
        let Some(integrations) = self.integrations else {
            return true;
        };
        let mut all = true;
        let mut explicit = None;
        for (k, v) in raw::entries(integrations) {
            let v = v.get();
            if k.eq_ignore_ascii_case(key) {
                match v.as_bytes().first() {
                    Some(b't') => explicit = Some(true),
                    Some(b'f') => explicit = Some(false),
                    Some(b'{') => explicit = Some(true),
                    _ => {}
                }
            } else if k.eq_ignore_ascii_case("all") {
                match v {
                    "true" => all = true,
                    "false" => all = false,
                    _ => {}
                }
            }
        }
        explicit.unwrap_or(all)
    }
}

/// `email` in a traits object: a non-blank string.
fn email_in(traits: Option<Raw<'_>>) -> Option<Cow<'_, str>> {
    let [email] = raw::pick(traits?, ["email"]);
    raw::as_str(email?).filter(|s| !s.trim().is_empty())
}

fn synthetic_message_id(bytes: &[u8]) -> String {
    // FNV-1a 64 twice with different offsets: stable across processes and releases, unlike
    // std's randomly seeded hasher.
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x6c62_272e_07bb_0142;
    for &byte in bytes {
        a = (a ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
        b = (b ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("er-{a:016x}{b:016x}")
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// Milliseconds since the epoch, now.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(input: &str) -> &'static str {
        Event::parse(input.as_bytes()).unwrap_err().reason
    }

    #[test]
    fn invalid_inputs_name_the_problem() {
        assert_eq!(reason("nope"), "invalid_json");
        assert_eq!(reason("[1]"), "not_an_object");
        assert_eq!(reason(r#"{"userId":"u"}"#), "missing_type");
        assert_eq!(reason(r#"{"type":"boom","userId":"u"}"#), "unknown_type");
        assert_eq!(reason(r#"{"type":"page"}"#), "missing_identity");
        assert_eq!(reason(r#"{"type":"track","userId":"u"}"#), "missing_event");
        assert_eq!(
            reason(r#"{"type":"alias","userId":"u"}"#),
            "missing_previous_id"
        );
        assert_eq!(
            reason(r#"{"type":"alias","anonymousId":"a","previousId":"p"}"#),
            "missing_identity"
        );
        assert_eq!(
            reason(r#"{"type":"page","userId":"u","timestamp":"yesterday"}"#),
            "invalid_timestamp"
        );
        assert_eq!(
            reason(r#"{"type":"page","userId":"u","properties":[1]}"#),
            "invalid_field"
        );
        let long = format!(
            r#"{{"type":"page","userId":"u","messageId":"{}"}}"#,
            "x".repeat(101)
        );
        assert_eq!(reason(&long), "invalid_message_id");
        let big = format!(
            r#"{{"type":"page","userId":"u","properties":{{"p":"{}"}}}}"#,
            "x".repeat(MAX_EVENT_BYTES)
        );
        assert_eq!(reason(&big), "too_large");
    }

    #[test]
    fn integrations_follow_segment_rules() {
        let enabled = |i: &str, key: &str| {
            let bytes = format!(r#"{{"type":"page","userId":"u","integrations":{i}}}"#);
            Event::parse(bytes.as_bytes()).unwrap().enabled_for(key)
        };
        assert!(enabled("{}", "Seg"));
        assert!(!enabled(r#"{"seg":false}"#, "Seg"));
        assert!(!enabled(r#"{"All":false}"#, "Seg"));
        assert!(enabled(r#"{"all":false,"SEG":true}"#, "Seg"));
        assert!(enabled(r#"{"All":false,"Seg":{"opt":1}}"#, "Seg"));
        assert!(!enabled(r#"{"All":false,"Seg":{"opt":1}}"#, "OwnerIQ"));
        assert!(enabled(r#"{"All":true,"OwnerIQ":null}"#, "OwnerIQ"));
    }

    #[test]
    fn ecommerce_names_accept_v1_and_v2() {
        use Ecommerce::*;
        for (name, want) in [
            ("Order Completed", OrderCompleted),
            ("completed order", OrderCompleted),
            ("Completed_Order", OrderCompleted),
            ("Viewed Product", ProductViewed),
            ("Product Viewed", ProductViewed),
            ("added product", ProductAdded),
            ("Product List Viewed", ProductListViewed),
            ("Viewed Product Category", ProductListViewed),
            ("Product Category Viewed", ProductListViewed),
        ] {
            assert_eq!(Ecommerce::from_name(name), Some(want), "{name}");
        }
        assert_eq!(Ecommerce::from_name("Order Refunded"), None);
    }

    #[test]
    fn missing_message_id_is_deterministic() {
        let a = Event::parse(br#"{"type":"page","userId":"u"}"#).unwrap();
        let b = Event::parse(br#"{"type":"page","userId":"u"}"#).unwrap();
        assert_eq!(a.message_id, b.message_id);
        assert!(a.message_id.starts_with("er-"));
    }

    #[test]
    fn numeric_user_ids_are_strings() {
        let e = Event::parse(br#"{"type":"page","userId":42}"#).unwrap();
        assert_eq!(e.user_key(), "42");
    }

    #[test]
    fn an_orders_properties_are_read_once_and_cut_exactly() {
        let head = r#"{"type":"track","userId":"u","event":"Order Completed","properties""#;
        for (rest, props, read) in [
            // the next key shows the end; then the event's end does
            (
                r#":{ "orderId" : "o1" } , "x":1}"#,
                r#"{ "orderId" : "o1" }"#,
                true,
            ),
            (
                ":{\n\"orderId\":\"o1\"\n}\n}\n",
                "{\n\"orderId\":\"o1\"\n}",
                true,
            ),
            (r#":{ }}"#, "{ }", true),
            // a key with escapes next to it
            (
                r#":{"orderId":"o1"},"\u0078":1}"#,
                r#"{"orderId":"o1"}"#,
                true,
            ),
            // not an object: kept as is (and refused by validation below)
            (r#":[1],"x":1}"#, "", false),
        ] {
            let text = format!("{head}{rest}");
            match Event::parse(text.as_bytes()) {
                Ok(e) => {
                    assert_eq!(e.properties.map(Raw::get), Some(props), "{text}");
                    assert_eq!(e.order().is_some(), read, "{text}");
                }
                Err(err) => assert_eq!((err.reason, props), ("invalid_field", ""), "{text}"),
            }
        }
        // The last `properties` wins, whichever way each was read.
        let e = Event::parse(
            br#"{"type":"track","userId":"u","event":"Order Completed","properties":{"orderId":"a"},"properties":{"orderId":"b","products":[{"sku":"s"},7]}}"#,
        )
        .unwrap();
        let order = e.order().unwrap();
        assert_eq!(order.pick(["orderId"])[0].map(Raw::get), Some(r#""b""#));
        assert_eq!(order.products().len(), 1);
        assert_eq!(order.products()[0][1].map(Raw::get), Some(r#""s""#));
        assert_eq!(
            e.properties.map(Raw::get),
            Some(r#"{"orderId":"b","products":[{"sku":"s"},7]}"#)
        );
    }
}
