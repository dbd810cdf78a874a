//! The event pass's fast path: one hand-written walk over the record that validates it as JSON
//! and cuts the top-level fields' slices, instead of serde_json's visitor.
//!
//! Why hand-written: the event pass skips most of every record (`properties`, `context`…) and
//! only cuts slices out of it; serde_json's skipping was about 40 % of the map stage's
//! per-event work and none of the parsers measured skips faster (README "Benchmarks"). Here the
//! skip is a small state machine that checks 16 string bytes per step, tracks the nesting
//! depth on the way, and reads the record once (no separate UTF-8 or depth scan).
//!
//! It is only a fast path. It answers `None` for anything it does not take on (invalid JSON,
//! a key with escapes in an object it reads member by member, nesting over
//! [`MAX_DEPTH`](super::MAX_DEPTH), a `context` that is neither an object nor null), and the
//! caller then runs the serde_json pass, whose verdicts and messages stand. So the walk must
//! only ever accept valid JSON, and give the fields serde_json's pass would: tests compare the
//! two over generated and mutated records.

use super::{raw::Context, Ecommerce, Fields, Order, Raw, MAX_DEPTH, ORDER_KEYS, PRODUCT_KEYS};
use std::borrow::Cow;

/// The top-level fields of a record, or `None` to leave the record to the serde_json pass.
pub(super) fn fields(bytes: &[u8]) -> Option<Fields<'_>> {
    let mut w = Walker::new(bytes, false);
    w.ws();
    if w.peek() != Some(b'{') {
        return None;
    }
    let mut f = Fields::default();
    w.members(1, |w, key| {
        match key {
            "properties" => {
                // An order's members are read on the way when its `event` came first;
                // otherwise validation reads them from the slice.
                let start = w.i;
                f.order = match w.peek() {
                    Some(b'{') if is_order(f.event) => Some(Box::new(w.order(2)?)),
                    _ => {
                        w.skip(1)?;
                        None
                    }
                };
                f.properties = Some(w.raw_from(start));
                return Some(());
            }
            "context" => {
                f.context = Some(w.context()?);
                return Some(());
            }
            _ => {}
        }
        match f.slot(key) {
            Some(slot) => *slot = Some(w.raw(1)?),
            None => w.skip(1)?,
        }
        Some(())
    })?;
    w.ws();
    if w.i != bytes.len() {
        return None;
    }
    Some(f)
}

/// An order's `properties` object (a slice of a record already checked), read as [`Order`]
/// holds them; `None` only if it is not valid JSON.
pub(super) fn order(properties: Raw<'_>) -> Option<Box<Order<'_>>> {
    Walker::new(properties.get().as_bytes(), true)
        .order(2)
        .map(Box::new)
}

/// Whether `event` names an `Order Completed`, in any spelling Segment accepts.
fn is_order(event: Option<Raw<'_>>) -> bool {
    event
        .and_then(super::raw::as_str)
        .and_then(|e| Ecommerce::from_name(&e))
        == Some(Ecommerce::OrderCompleted)
}

/// A position in the record and what has been checked so far.
struct Walker<'a> {
    b: &'a [u8],
    i: usize,
    /// The whole record is known to be UTF-8. Until then every byte walked was ASCII (a byte
    /// above 0x7F inside a string checks the whole record once; anywhere else it is invalid
    /// JSON), which is what makes [`Walker::raw_from`]'s slices valid `str`s.
    utf8: bool,
}

impl<'a> Walker<'a> {
    fn new(b: &'a [u8], utf8: bool) -> Walker<'a> {
        Walker { b, i: 0, utf8 }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.peek() == Some(want)).then(|| self.i += 1)
    }

    /// The text walked since `start`.
    fn raw_from(&self, start: usize) -> Raw<'a> {
        let bytes = &self.b[start..self.i];
        // SAFETY: either the whole record was checked as UTF-8, or every byte walked so far is
        // ASCII (see `utf8`); `start` and `self.i` are at ASCII bytes, so on char boundaries.
        Raw::trusted(unsafe { std::str::from_utf8_unchecked(bytes) })
    }

    /// One value, skipped, as its slice; `depth` is the number of arrays and objects around it.
    fn raw(&mut self, depth: usize) -> Option<Raw<'a>> {
        let start = self.i;
        self.skip(depth)?;
        Some(self.raw_from(start))
    }

    /// The members of the object at the cursor, which is the `level`th array or object from
    /// the top: `each` gets each key (unescaped) with the cursor at its value, and must walk
    /// past the value.
    fn members(
        &mut self,
        level: usize,
        mut each: impl FnMut(&mut Self, &str) -> Option<()>,
    ) -> Option<()> {
        debug_assert!(level <= MAX_DEPTH);
        self.eat(b'{')?;
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let start = self.i;
            if self.peek() != Some(b'"') {
                return None;
            }
            let escaped = self.string()?;
            let text = self.raw_from(start).get();
            let key = match escaped {
                false => Cow::Borrowed(&text[1..text.len() - 1]),
                // Rare; serde_json reads it (and refuses a lone surrogate, as its pass does).
                true => Cow::Owned(serde_json::from_str::<String>(text).ok()?),
            };
            self.ws();
            self.eat(b':')?;
            self.ws();
            each(self, &key)?;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// `context`: `traits` and `page` when they are objects; null reads as no context, and
    /// anything else as not an object.
    fn context(&mut self) -> Option<Context<'a>> {
        let mut c = Context::default();
        match self.peek()? {
            b'{' => self.members(2, |w, key| {
                match key {
                    "traits" => c.traits = Some(w.raw(2)?),
                    "page" => c.page = Some(w.raw(2)?),
                    _ => w.skip(2)?,
                }
                Some(())
            })?,
            b'n' => self.literal(b"null")?,
            b'[' | b't' | b'f' => {
                self.skip(1)?;
                c.not_object = true;
            }
            // serde_json's pass reads a string or number here as a value, so it refuses some
            // (a lone surrogate escape, `1e400`): its verdict, unless there is nothing to read.
            b'"' if !self.string()? => c.not_object = true,
            _ => return None,
        }
        c.traits = c.traits.filter(|v| super::raw::is_object(*v));
        c.page = c.page.filter(|v| super::raw::is_object(*v));
        Some(c)
    }

    /// An order's `properties`, the `level`th object from the top, as [`Order`] holds them.
    fn order(&mut self, level: usize) -> Option<Order<'a>> {
        let mut o = Order::default();
        self.members(level, |w, key| {
            if key == "products" {
                o.products.clear();
                if w.peek() != Some(b'[') {
                    return w.skip(level);
                }
                return w.elements(level + 1, |w| {
                    if w.peek() != Some(b'{') {
                        return w.skip(level + 1);
                    }
                    let mut p = [None; PRODUCT_KEYS.len()];
                    w.members(level + 2, |w, key| {
                        match PRODUCT_KEYS.iter().position(|k| *k == key) {
                            Some(i) => p[i] = Some(w.raw(level + 2)?),
                            None => w.skip(level + 2)?,
                        }
                        Some(())
                    })?;
                    o.products.push(p);
                    Some(())
                });
            }
            match ORDER_KEYS.iter().position(|k| *k == key) {
                Some(i) => o.values[i] = Some(w.raw(level)?),
                None => w.skip(level)?,
            }
            Some(())
        })?;
        Some(o)
    }

    /// The elements of the array at the cursor, the `level`th array or object from the top:
    /// `each` is called with the cursor at each element and must walk past it.
    fn elements(
        &mut self,
        level: usize,
        mut each: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        debug_assert!(level <= MAX_DEPTH);
        self.eat(b'[')?;
        self.ws();
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            each(self)?;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Past one JSON value, validating it; `depth` arrays and objects are around it. No
    /// recursion: the open arrays and objects are bits of a `u128` (1 for an object), as
    /// `MAX_DEPTH` is 128.
    fn skip(&mut self, depth: usize) -> Option<()> {
        const _: () = assert!(MAX_DEPTH <= 128);
        let (mut open, mut n) = (0u128, 0usize);
        loop {
            // A value starts at the cursor.
            match self.peek()? {
                c @ (b'{' | b'[') => {
                    if depth + n + 1 > MAX_DEPTH {
                        return None;
                    }
                    let object = c == b'{';
                    open = open << 1 | u128::from(object);
                    n += 1;
                    self.i += 1;
                    self.ws();
                    let close = if object { b'}' } else { b']' };
                    if self.eat(close).is_none() {
                        if object {
                            self.member_key()?;
                        }
                        continue;
                    }
                    open >>= 1;
                    n -= 1;
                }
                b'"' => {
                    self.string()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => self.number()?,
            }
            // A value ended: close what it ends, or go on to the next one.
            loop {
                if n == 0 {
                    return Some(());
                }
                self.ws();
                let object = open & 1 == 1;
                match self.peek()? {
                    b',' => {
                        self.i += 1;
                        self.ws();
                        if object {
                            self.member_key()?;
                        }
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                self.i += 1;
                open >>= 1;
                n -= 1;
            }
        }
    }

    /// A member's key in an object being skipped, and the `:` after it.
    fn member_key(&mut self) -> Option<()> {
        if self.peek() != Some(b'"') {
            return None;
        }
        self.string()?;
        self.ws();
        self.eat(b':')?;
        self.ws();
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }

    /// A number as JSON writes them: `-`, then `0` or digits without a leading zero, then an
    /// optional fraction and exponent, each with at least one digit.
    fn number(&mut self) -> Option<()> {
        let b = self.b;
        let mut i = self.i;
        let digits = |i: &mut usize| {
            let start = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            (*i > start).then_some(())
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => digits(&mut i)?,
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i)?;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            digits(&mut i)?;
        }
        self.i = i;
        Some(())
    }

    /// Past the string at the cursor (its `"`); whether it had escapes. Control characters
    /// are refused, escapes checked as serde_json checks them when it skips a string (`\u`
    /// with four hex digits, a lone surrogate allowed).
    fn string(&mut self) -> Option<bool> {
        self.i += 1;
        let mut escaped = false;
        loop {
            self.i = special(self.b, self.i);
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    match self.b.get(self.i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                        b'u' => {
                            let hex = self.b.get(self.i + 2..self.i + 6)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.i += 6;
                        }
                        _ => return None,
                    }
                }
                c if c >= 0x80 => {
                    if !self.utf8 {
                        std::str::from_utf8(self.b).ok()?;
                        self.utf8 = true;
                    }
                    while self.peek().is_some_and(|c| c >= 0x80) {
                        self.i += 1;
                    }
                }
                _ => return None,
            }
        }
    }
}

/// From `i`, inside a string, the position of the first `"`, `\`, control character or byte
/// above 0x7F (or the end): 16 bytes per step with SSE2 (every x86-64 has it), one at a time
/// elsewhere and for the last 15.
#[inline]
fn special(b: &[u8], mut i: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi8,
        };
        while i + 16 <= b.len() {
            // SAFETY: SSE2 is part of x86-64; the 16 bytes read are inside `b` (checked above).
            let mask = unsafe {
                let v = _mm_loadu_si128(b.as_ptr().add(i).cast());
                let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
                let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
                // Signed: bytes above 0x7F are negative, so below 0x20 too.
                let low_or_high = _mm_cmplt_epi8(v, _mm_set1_epi8(0x20));
                _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), low_or_high))
            };
            if mask != 0 {
                return i + mask.trailing_zeros() as usize;
            }
            i += 16;
        }
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c) {
            break;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::super::{raw, Event, ORDER_KEYS, PRODUCT_KEYS};
    use proptest::prelude::*;

    /// What a record gives: the walk's verdict when it takes the record, and serde_json's.
    fn both(text: &[u8]) -> (Option<String>, String) {
        let walked = super::fields(text).map(|f| verdict(Event::validate(f, text)));
        (walked, verdict(Event::parse_serde(text)))
    }

    /// A verdict as text, an order's members checked against what serde_json reads from
    /// its slice.
    fn verdict(mut e: Result<Event<'_>, super::super::InvalidEvent>) -> String {
        if let Ok(e) = &mut e {
            if let Some(o) = e.order.take() {
                let p = e.properties.expect("an order has properties");
                assert_eq!(o.values, raw::pick(p, ORDER_KEYS));
                let mut products = Vec::new();
                if let [Some(list)] = raw::pick(p, ["products"]) {
                    raw::each_object(list, PRODUCT_KEYS, |v| products.push(v));
                }
                assert_eq!(o.products, products);
            }
        }
        format!("{e:?}")
    }

    /// The walk takes `text` and agrees with serde_json's pass.
    fn taken(text: &str) {
        let (walked, serde) = both(text.as_bytes());
        assert_eq!(walked.as_deref(), Some(serde.as_str()), "{text}");
    }

    /// The walk leaves `text` to serde_json's pass.
    fn left(text: &str) {
        assert!(super::fields(text.as_bytes()).is_none(), "{text}");
    }

    #[test]
    fn takes_valid_json_and_cuts_what_serde_json_cuts() {
        for t in [
            r#"{"type":"page","userId":"u"}"#,
            " \n{ \"type\" : \"page\" , \"userId\" : 7 , \"x\" : [ ] , \"y\" : { } }\t\r\n",
            r#"{"type":"track","userId":"u","event":"Order Completed","properties":{"orderId":"o","products":[{"sku":1,"x":[{}]},[],null,{"sku":"\u00e9"}]}}"#,
            r#"{"properties":{"products":{"sku":1}},"type":"track","userId":"u","event":"completed order"}"#,
            r#"{"type":"page","userId":"u","properties":{"a":[-0,0.5e-3,1E+2,-12.25E9,18446744073709551617,1e400]}}"#,
            r#"{"type":"page","userId":"u","properties":{"s":"\"\\\/\b\f\n\r\t\ud800 é 中 😀","\u0078":true,"":false}}"#,
            r#"{"type":"page","userId":"u","context":null}"#,
            r#"{"type":"page","userId":"u","context":"c"}"#,
            r#"{"type":"page","userId":"u","context":[1e400,{"traits":{}}]}"#,
            r#"{"type":"page","userId":"u","context":false}"#,
            r#"{"\u0074ype":"page","userId":"u","context":{"tr\u0061its":{"email":"e"}}}"#,
            r#"{"type":"track","userId":"u","event":"Order Completed","properties":{"\u006frderId":1,"products":[{"\u0073ku":2}]}}"#,
            r#"{"type":"page","userId":"u","context":{"traits":{"email":"a@b.co"},"page":[1],"x":{}}}"#,
            r#"{"type":"page","userId":"é","userId":"u","type":"track","event":"e"}"#,
            r#"{"type":"identify","userId":"u","traits":"x"}"#,
            r#"{"type":"page","userId":"u","properties":{"deep":[[[[{"a":[[1]]}]]]]}}"#,
        ] {
            taken(t);
        }
    }

    #[test]
    fn leaves_invalid_json_and_odd_shapes_to_serde_json() {
        for t in [
            "",
            "[]",
            "\u{feff}{}",
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.1}"#,
            r#"{"a":1e}"#,
            r#"{"a":1e+}"#,
            r#"{"a":-}"#,
            r#"{"a":+1}"#,
            r#"{"a":NaN}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":"\u12g4"}"#,
            "{\"a\":\"\u{1}\"}",
            "{\"a\u{1f}\":1}",
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[1 2]}"#,
            r#"{"a":{"b":1,}}"#,
            r#"{"a":{"b" 1}}"#,
            r#"{"a":{1:1}}"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":1}x"#,
            r#"{"a":1}{}"#,
            r#"{"a":[}"#,
            r#"{"a":{]}"#,
            r#"{"a":[1}"#,
            r#"{,}"#,
            r#"{"a":1 "b":2}"#,
            r#"{'a':1}"#,
            r#"{"a":"unterminated}"#,
            r#"{"a":[1,2"#,
            // not for the walk: a key serde_json cannot read, a context it cannot judge
            r#"{"type":"page","userId":"u","context":{"\ud800":{}}}"#,
            r#"{"type":"page","userId":"u","context":1e400}"#,
            r#"{"type":"page","userId":"u","context":"\ud800"}"#,
        ] {
            left(t);
        }
        // Bytes that are not UTF-8, inside a string and outside.
        assert!(super::fields(b"{\"a\":\"\xff\"}").is_none());
        assert!(super::fields(b"{\"a\":\"\xc3\xa9\",\"b\":\"\xc3\"}").is_none());
        assert!(super::fields(b"{\"a\":1\xc3\xa9}").is_none());
    }

    #[test]
    fn nesting_is_bounded_like_the_serde_pass() {
        let nested = |n: usize| {
            format!(
                r#"{{"type":"page","userId":"u","properties":{{"p":{}1{}}}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        // The event, `properties` and 126 arrays: 128 levels.
        taken(&nested(super::super::MAX_DEPTH - 2));
        left(&nested(super::super::MAX_DEPTH - 1));
        let too = nested(super::super::MAX_DEPTH - 1);
        assert_eq!(Event::parse(too.as_bytes()).unwrap_err().reason, "too_deep");
    }

    /// JSON text with what the skip must handle: every escape, numbers serde_json reads only
    /// as text, non-ASCII, whitespace anywhere.
    fn json_text() -> impl Strategy<Value = String> {
        let ws = prop::sample::select(vec!["", "", " ", "\n  ", "\t", "\r\n"]);
        // `\u` escapes below the surrogates: a lone one is refused where serde_json reads a
        // string (keys), tested on its own.
        let string = r#"([a-z0-9 é中😀\x7f]|\\[nrtbf"/\\]|\\u[0-7][0-9a-fA-F]{3}){0,20}"#
            .prop_map(|s| format!("\"{s}\""));
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            "-?(0|[1-9][0-9]{0,22})(\\.[0-9]{1,4})?([eE][+-]?[0-9]{1,3})?",
            string.clone(),
        ];
        leaf.prop_recursive(5, 64, 6, move |inner| {
            let ws = ws.clone();
            prop_oneof![
                (prop::collection::vec(inner.clone(), 0..5), ws.clone())
                    .prop_map(|(v, w)| format!("[{w}{}{w}]", v.join(&format!("{w},{w}")))),
                (
                    prop::collection::vec((string.clone(), inner), 0..5),
                    ws.clone()
                )
                    .prop_map(|(m, w)| {
                        let m: Vec<_> = m.iter().map(|(k, v)| format!("{k}{w}:{w}{v}")).collect();
                        format!("{{{w}{}{w}}}", m.join(","))
                    }),
            ]
        })
    }

    /// A Segment-shaped record: the keys the walk reads, with any values.
    fn record() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "type",
            "messageId",
            "userId",
            "anonymousId",
            "previousId",
            "event",
            "name",
            "timestamp",
            "sentAt",
            "properties",
            "traits",
            "integrations",
            "context",
            "other",
        ]);
        let value = prop_oneof![
            json_text(),
            prop::sample::select(vec![
                r#""track""#,
                r#""page""#,
                r#""alias""#,
                r#""Order Completed""#,
                r#""u-1""#,
                r#""2024-05-01T10:00:00Z""#,
                "null",
            ])
            .prop_map(String::from),
            (json_text(), json_text()).prop_map(|(a, b)| format!(
                r#"{{"traits":{a},"page":{b},"orderId":1,"products":[{{"sku":{a}}},{b}]}}"#
            )),
        ];
        // `context` as the walk takes it (not a number, nor a string with escapes).
        let context = prop_oneof![
            json_text().prop_filter("an object or array", |t| t.starts_with(['{', '['])),
            prop::sample::select(vec!["null", "true", r#""c""#]).prop_map(String::from),
        ];
        prop::collection::vec((key, value, context), 0..10).prop_map(|m| {
            let m: Vec<_> = m
                .iter()
                .map(|(k, v, c)| format!("\"{k}\":{}", if *k == "context" { c } else { v }))
                .collect();
            format!("{{{}}}", m.join(","))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Every valid record is taken, with serde_json's verdict.
        #[test]
        fn valid_records_are_taken_with_serde_jsons_verdict(text in record()) {
            let (walked, serde) = both(text.as_bytes());
            prop_assert_eq!(walked.as_deref(), Some(serde.as_str()), "{}", text);
        }

        /// A damaged record is either left to serde_json or valid JSON with serde_json's
        /// verdict: the walk never accepts what serde_json refuses.
        #[test]
        fn damaged_records_get_serde_jsons_verdict(
            text in record(),
            at in any::<prop::sample::Index>(),
            edit in 0..4u8,
            byte in prop::sample::select(b"{}[]\",:\\ 0-.eE+atfnu\x01\x7f\xc3\xa9\xff".to_vec()),
        ) {
            let mut b = text.into_bytes();
            let i = at.index(b.len().max(1)).min(b.len());
            match edit {
                0 if i < b.len() => { b.remove(i); }
                1 => b.insert(i, byte),
                2 if i < b.len() => b[i] = byte,
                _ => b.truncate(i),
            }
            let (walked, serde) = both(&b);
            if let Some(walked) = walked {
                prop_assert!(serde_json::from_slice::<serde::de::IgnoredAny>(&b).is_ok());
                prop_assert_eq!(walked, serde, "{}", String::from_utf8_lossy(&b));
            }
            prop_assert_eq!(
                format!("{:?}", Event::parse(&b)),
                format!("{:?}", Event::parse_serde(&b))
            );
        }
    }
}
