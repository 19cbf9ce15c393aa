//! RFC 8785 (JCS) canonical JSON, and SHA-256 over it: the one place the
//! kernel canonicalizes (idempotency keys, request and response hashes,
//! state hashes, the config hash).
//!
//! The canonical form is the maintained crate's (`serde_json_canonicalizer`),
//! never written by hand. That crate buffers and re-sorts every object
//! member and formats every number through `f64`, which made it most of a
//! replay's time (about nine times plain `serde_json` on a tool request).
//! Most of what the kernel hashes is already in canonical order, though:
//! `serde_json::Value` maps iterate their keys sorted, and the kernel's own
//! hashed structs declare their fields sorted. So each call first lets
//! `serde_json` write the value compactly through [`Checked`], a formatter
//! that writes exactly what `serde_json`'s compact formatter writes and
//! *refuses* (aborts the write) anything where that text could differ from
//! RFC 8785's:
//!
//! * an object key that is not strictly greater than the one before it in
//!   the same object (out of order, or a duplicate), or that contains a
//!   character at or above U+E000 (there UTF-8 byte order, which is how keys
//!   are compared here, and UTF-16 code-unit order, RFC 8785's, can differ;
//!   below U+E000 every character is one UTF-16 unit equal to its code
//!   point, so the two orders agree), or that needs an escape;
//! * any floating-point number (ECMAScript formats those differently from
//!   `serde_json`), and any integer beyond ±2^53 (RFC 8785 formats integers
//!   as IEEE 754 doubles, exact only up to 2^53);
//! * a number written as text or a raw fragment (`arbitrary_precision`,
//!   `RawValue`), and a non-string key.
//!
//! What it accepts, `serde_json` has written as RFC 8785 would: no
//! whitespace, keys in order, integers in plain decimal, and strings escaped
//! as RFC 8785 §3.2.2.2 says (`\"`, `\\`, `\b \f \n \r \t`, other controls as
//! lowercase `\u00xx`, everything else literal; `serde_json` never escapes
//! `/`, and the checker refuses it if it did). The kernel writes no JSON
//! here: `serde_json` writes it, the crate defines it, and this module only
//! checks a sufficient condition for the two to agree. What it refuses
//! goes to the crate, unchanged. Debug builds check
//! every accepted value against the crate's bytes, so the whole test suite
//! cross-checks it; `tests` below compare the two over generated values and
//! RFC 8785's own examples.

use std::cell::RefCell;
use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorCode, Result};

/// The largest integer magnitude an IEEE 754 double holds exactly.
const MAX_EXACT_INTEGER: u64 = 1 << 53;

/// SHA-256 (lowercase hex) of `value`'s RFC 8785 form.
pub fn sha256_hex<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    with_buffer(|buf| {
        write(value, buf)?;
        Ok(sha256_hex_of(buf.as_slice()))
    })
}

/// SHA-256 of `bytes` as 64 lowercase hex characters. The kernel's one
/// spelling of a digest (keys, request and response hashes, the chain).
/// Encoded into a stack buffer: `hex::encode` collects characters one at a
/// time, which a replay of 10,000 steps did ~40,000 times.
pub fn sha256_hex_of(bytes: &[u8]) -> String {
    let mut out = [0u8; 64];
    // 32 bytes always fit 64 characters.
    let _ = hex::encode_to_slice(Sha256::digest(bytes), &mut out);
    // Hex is ASCII, so this is never the empty default.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// `value`'s RFC 8785 form as bytes.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    write(value, &mut out)?;
    Ok(out)
}

/// `value`'s RFC 8785 form as text.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    let bytes = to_vec(value)?;
    // Both writers emit UTF-8 only (serde_json writes `str` fragments and
    // ASCII; the crate documents the same), so this cannot fail.
    String::from_utf8(bytes).map_err(|e| invalid(&e))
}

/// Append `value`'s RFC 8785 form to `out`.
fn write<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    if checked(value, out) {
        #[cfg(debug_assertions)]
        {
            let crate_form = serde_json_canonicalizer::to_vec(&Wrap(value)).map_err(|e| invalid(&e))?;
            debug_assert_eq!(
                String::from_utf8_lossy(&out[start..]),
                String::from_utf8_lossy(&crate_form),
                "the checked serde_json form differs from the crate's RFC 8785 form"
            );
        }
        return Ok(());
    }
    out.truncate(start);
    serde_json_canonicalizer::to_writer(&Wrap(value), out).map_err(|e| invalid(&e))
}

/// Serialize through [`Checked`]; `false` (and partial output) when it refused.
fn checked<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> bool {
    let mut ser = serde_json::Serializer::with_formatter(out, Checked::default());
    value.serialize(&mut ser).is_ok()
}

/// Whether `value` takes the checked `serde_json` path (tests: the kernel's
/// hashed types must, or every hash of them pays for the crate's re-sort).
#[cfg(test)]
pub(crate) fn takes_checked_path<T: Serialize + ?Sized>(value: &T) -> bool {
    checked(value, &mut Vec::new())
}

/// `T: ?Sized` for the crate, whose functions take `&S` with `S: Sized`.
struct Wrap<'a, T: ?Sized>(&'a T);

impl<T: Serialize + ?Sized> Serialize for Wrap<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

fn invalid(e: &dyn std::fmt::Display) -> Error {
    Error::new(ErrorCode::InvalidInput, format!("cannot canonicalize JSON (RFC 8785): {e}"))
}

thread_local! {
    /// One reusable buffer per thread for [`sha256_hex`]: a replay hashes
    /// tens of thousands of documents.
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn with_buffer<R>(f: impl FnOnce(&mut Vec<u8>) -> Result<R>) -> Result<R> {
    BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let r = f(&mut buf);
            if buf.capacity() > 1 << 20 {
                // Do not keep one huge state's buffer for the thread's life.
                *buf = Vec::new();
            }
            r
        }
        // Re-entered (a Serialize impl that hashes): use a fresh buffer.
        Err(_) => f(&mut Vec::new()),
    })
}

/// `serde_json`'s compact formatter, which writes every byte (each method
/// here checks, then calls [`CompactFormatter`]; those not written here are
/// the trait's defaults, which are that formatter), refusing what RFC 8785
/// would write differently; see the module docs. It writes nothing itself.
#[derive(Default)]
struct Checked {
    /// The keys being compared: for each open object, its previous key
    /// (from `open[i].0` to the next object's start, or to `key_start`).
    keys: Vec<u8>,
    /// Per open object: where its previous key starts in `keys`, and
    /// whether it has one yet.
    open: Vec<(usize, bool)>,
    /// Where the key being written starts in `keys`, while one is.
    key_start: Option<usize>,
}

fn refuse() -> io::Error {
    io::Error::other("not in serde_json's RFC 8785 subset")
}

impl Checked {
    /// A value (not a key fragment) is being written: keys must be strings.
    fn value(&self) -> io::Result<()> {
        if self.key_start.is_some() { Err(refuse()) } else { Ok(()) }
    }

    fn integer(&self, magnitude: u128) -> io::Result<()> {
        self.value()?;
        if magnitude > u128::from(MAX_EXACT_INTEGER) { Err(refuse()) } else { Ok(()) }
    }
}

/// Formatter methods that check, then let [`CompactFormatter`] write.
macro_rules! checked {
    ($($name:ident($t:ty) => $check:expr;)*) => {$(
        fn $name<W: ?Sized + Write>(&mut self, writer: &mut W, value: $t) -> io::Result<()> {
            let check: fn(&Checked, $t) -> io::Result<()> = $check;
            check(self, value)?;
            CompactFormatter.$name(writer, value)
        }
    )*};
}

/// Formatter methods for what is never in the subset.
macro_rules! refused {
    ($($name:ident($t:ty);)*) => {$(
        fn $name<W: ?Sized + Write>(&mut self, _: &mut W, _: $t) -> io::Result<()> {
            Err(refuse())
        }
    )*};
}

impl Formatter for Checked {
    fn write_null<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.value()?;
        CompactFormatter.write_null(writer)
    }

    checked! {
        write_bool(bool) => |c, _| c.value();
        write_i8(i8) => |c, _| c.value();
        write_i16(i16) => |c, _| c.value();
        write_i32(i32) => |c, _| c.value();
        write_u8(u8) => |c, _| c.value();
        write_u16(u16) => |c, _| c.value();
        write_u32(u32) => |c, _| c.value();
        write_i64(i64) => |c, v| c.integer(u128::from(v.unsigned_abs()));
        write_i128(i128) => |c, v| c.integer(v.unsigned_abs());
        write_u64(u64) => |c, v| c.integer(u128::from(v));
        write_u128(u128) => |c, v| c.integer(v);
    }

    refused! {
        write_f32(f32);
        write_f64(f64);
        write_number_str(&str);
        write_raw_fragment(&str);
        write_byte_array(&[u8]);
    }

    fn write_string_fragment<W: ?Sized + Write>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()> {
        if self.key_start.is_some() {
            self.keys.extend_from_slice(fragment.as_bytes());
        }
        CompactFormatter.write_string_fragment(writer, fragment)
    }

    fn write_char_escape<W: ?Sized + Write>(&mut self, writer: &mut W, escape: CharEscape) -> io::Result<()> {
        // An escaped key would need its unescaped form to be compared; and
        // '/' is the one escape whose text differs (serde_json never emits
        // it, RFC 8785 writes '/' literally).
        self.value()?;
        if matches!(escape, CharEscape::Solidus) {
            return Err(refuse());
        }
        CompactFormatter.write_char_escape(writer, escape)
    }

    fn begin_array<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.value()?;
        CompactFormatter.begin_array(writer)
    }

    fn begin_object<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.value()?;
        self.open.push((self.keys.len(), false));
        CompactFormatter.begin_object(writer)
    }

    fn end_object<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        let (start, _) = self.open.pop().ok_or_else(refuse)?;
        self.keys.truncate(start);
        CompactFormatter.end_object(writer)
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        self.key_start = Some(self.keys.len());
        CompactFormatter.begin_object_key(writer, first)
    }

    fn end_object_key<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        let key_start = self.key_start.take().ok_or_else(refuse)?;
        let (prev_start, has_prev) = *self.open.last().ok_or_else(refuse)?;
        let (prev, key) = self.keys[prev_start..].split_at(key_start - prev_start);
        // Bytes >= 0xEE lead characters >= U+E000 (see the module docs).
        if (has_prev && key <= prev) || key.iter().any(|&b| b >= 0xEE) {
            return Err(refuse());
        }
        // This key is the next one's predecessor.
        self.keys.copy_within(key_start.., prev_start);
        self.keys.truncate(prev_start + (self.keys.len() - key_start));
        if let Some(top) = self.open.last_mut() {
            top.1 = true;
        }
        CompactFormatter.end_object_key(writer)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn crate_form(v: &Value) -> String {
        serde_json_canonicalizer::to_string(v).unwrap()
    }

    fn accepted(v: &Value) -> bool {
        checked(v, &mut Vec::new())
    }

    #[test]
    fn inv05_a_digest_is_spelled_as_64_lowercase_hex_characters() {
        // FIPS 180-2's "abc" example.
        assert_eq!(sha256_hex_of(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        for bytes in [&b""[..], b"{}", &[0xff; 1000]] {
            assert_eq!(sha256_hex_of(bytes), hex::encode(Sha256::digest(bytes)));
        }
    }

    #[test]
    fn inv05_checked_form_equals_the_crate_on_what_it_accepts() {
        let cases = [
            json!({"b": 1, "a": [true, null, "x"], "c": {"z": -9007199254740992_i64, "y": 9007199254740992_u64}}),
            json!({"": "", "\u{7f}": "\u{1}\u{1f}\"\\/\u{8}\u{c}\n\r\t", "é": "€𝄞", "\u{d7ff}": 0}),
            json!([[], {}, [{}], {"a": {}}, 0, -1, 1]),
            json!("top-level string"),
            json!(42),
        ];
        for v in &cases {
            assert!(accepted(v), "{v} should take the checked path");
            assert_eq!(to_string(v).unwrap(), crate_form(v), "{v}");
        }
    }

    #[test]
    fn inv05_refuses_what_rfc_8785_writes_differently_and_the_crate_decides() {
        let refused = [
            json!({"price": 19.99}),
            json!(120.0),
            json!(1e21),
            json!(9007199254740993_u64),
            json!(-9007199254740993_i64),
            json!({"\u{e000}": 1, "\u{10000}": 2}),
            json!({"a\"b": 1}),
            json!({"a\nb": 1}),
        ];
        for v in &refused {
            assert!(!accepted(v), "{v} must not take the checked path");
            assert_eq!(to_string(v).unwrap(), crate_form(v), "{v}");
        }
        // U+10000 is the surrogate pair D800 DC00 in UTF-16, which sorts
        // before E000 (U+E000); in UTF-8 (F0.. against EE..) it sorts after.
        assert_eq!(to_string(&json!({"\u{e000}": 1, "\u{10000}": 2})).unwrap(), "{\"\u{10000}\":2,\"\u{e000}\":1}");
    }

    #[derive(Serialize)]
    struct Unsorted {
        b: u32,
        a: u32,
    }

    #[derive(Serialize)]
    struct Duplicate {
        a: u32,
        #[serde(rename = "a")]
        again: u32,
    }

    #[test]
    fn inv05_struct_fields_out_of_order_or_duplicated_go_to_the_crate() {
        assert!(!checked(&Unsorted { b: 2, a: 1 }, &mut Vec::new()));
        assert_eq!(to_string(&Unsorted { b: 2, a: 1 }).unwrap(), r#"{"a":1,"b":2}"#);
        assert!(!checked(&Duplicate { a: 1, again: 2 }, &mut Vec::new()));
        let map: std::collections::BTreeMap<u32, &str> = [(2, "b"), (10, "a")].into();
        assert!(!checked(&map, &mut Vec::new()), "non-string keys are refused");
        assert_eq!(to_string(&map).unwrap(), serde_json_canonicalizer::to_string(&map).unwrap());
    }

    /// RFC 8785 §3.2.4's sorting example and its number examples (Appendix
    /// B's rows that `serde_json` can hold), through the module's entry point.
    #[test]
    fn inv05_rfc_8785_examples_through_the_module() {
        let sorting: Value = serde_json::from_str(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        assert_eq!(
            to_string(&sorting).unwrap(),
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
        let numbers: Value = serde_json::from_str(
            r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],"literals":[null,true,false]}"#,
        )
        .unwrap();
        assert_eq!(
            to_string(&numbers).unwrap(),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27]}"#
        );
    }

    /// A small deterministic generator (no dependency): values of every
    /// shape, keys from a pool that includes escapes and characters on both
    /// sides of U+E000, integers across ±2^53, and floats.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }

        fn value(&mut self, depth: u32) -> Value {
            const STRINGS: &[&str] =
                &["", "a", "B", "order_id", "é", "\u{e000}", "😀", "a\"b", "tab\t", "\u{1}", "/", "~1"];
            match self.next() % if depth > 3 { 5 } else { 7 } {
                0 => Value::Null,
                1 => Value::Bool(self.next().is_multiple_of(2)),
                2 => {
                    let n = self.next();
                    match n % 4 {
                        0 => json!((n >> 8) % 1000),
                        1 => json!(-((n >> 8) as i64 % (1 << 54))),
                        2 => json!(n >> 8),
                        _ => json!(((n >> 8) % 100_000) as f64 / 100.0),
                    }
                }
                3 | 4 => Value::String(self.pick(STRINGS).to_owned()),
                5 => Value::Array((0..self.next() % 4).map(|_| self.value(depth + 1)).collect()),
                _ => Value::Object(
                    (0..self.next() % 5).map(|_| (self.pick(STRINGS).to_owned(), self.value(depth + 1))).collect(),
                ),
            }
        }
    }

    #[test]
    fn inv05_generated_values_canonicalize_as_the_crate_does() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let (mut fast, mut slow) = (0, 0);
        for _ in 0..20_000 {
            let v = g.value(0);
            let mut out = Vec::new();
            if checked(&v, &mut out) {
                fast += 1;
                assert_eq!(String::from_utf8(out).unwrap(), crate_form(&v), "{v}");
            } else {
                slow += 1;
            }
            assert_eq!(to_string(&v).unwrap(), crate_form(&v), "{v}");
            assert_eq!(sha256_hex(&v).unwrap(), hex::encode(Sha256::digest(crate_form(&v).as_bytes())));
        }
        assert!(fast > 5_000 && slow > 1_000, "both paths exercised: {fast} checked, {slow} by the crate");
    }
}
