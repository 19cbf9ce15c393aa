//! Trace redaction: what of a tool call's inputs and outputs may reach a
//! persisted trace.
//!
//! Traces are kept for months and read by people debugging, so nothing secret
//! or personal may be written to one. Three layers, each catching what the
//! one before it missed:
//!
//! 1. **Allowlist.** A [`RedactionPolicy`] names the field paths whose values
//!    may be persisted (ids, statuses, amounts, SKUs, ...). Every other leaf
//!    keeps its key and its place in the structure, but its value becomes
//!    `"[FILTERED]"`: the trace still shows *what* a call carried, not the
//!    values. Deny by default, because a new field in a provider's response
//!    is far more likely to be an address than a SKU.
//! 2. **Sensitive field names.** Keys such as `password`, `api_key`,
//!    `authorization` or `cvc` are masked as `"[REDACTED]"` even when a
//!    pattern allows them, so a careless `items[*]` or `**` cannot let a card
//!    code through.
//! 3. **Scanners.** Every string that survives (and every object key, which
//!    is always kept) is scanned for API keys, bearer tokens, JWTs, card
//!    numbers (Luhn-checked), e-mail addresses and phone numbers; each match
//!    is replaced in place with `[REDACTED:<kind>]`. A scanner hit means the
//!    allowlist let something through that it should not have, so scanner
//!    detections are returned separately by [`Redacted::alerts`] for an alert
//!    record and a review of the policy.
//!
//! The result ([`Redacted`]) holds only the redacted value and, for each
//! detection, its kind and its path (built from the *redacted* keys), so no
//! returned type can print an original secret through `Debug` or `Display`.
//!
//! Limits, on purpose: strings are not parsed as JSON, URLs or headers (an
//! allowlisted string holding `{"password": ...}` is only scanned), and the
//! scanners know formats, not meaning (a password in an allowlisted free-text
//! field is not caught). Keep free text off the allowlist.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

use crate::error::{Error, ErrorCode, Result};

/// What a leaf that is not on the allowlist becomes.
pub const FILTERED: &str = "[FILTERED]";
/// What the value of a sensitive field becomes.
pub const REDACTED: &str = "[REDACTED]";

/// The default allowlist: business fields that identify, count or price
/// things, or say what happened and when, without saying who. Each pattern
/// starts with `**.`, so the field is allowed at any depth.
///
/// Deliberately absent: names, addresses, e-mail, phone, free text
/// (`note`, `message`, `description`), URLs (they carry tokens in query
/// strings) and bare `code` (one-time codes and OAuth codes are called that).
pub const DEFAULT_ALLOWLIST: &[&str] = &[
    // ids
    "**.id",
    "**.order_id",
    "**.order_number",
    "**.customer_id",
    "**.payment_id",
    "**.payment_intent_id",
    "**.charge_id",
    "**.refund_id",
    "**.invoice_id",
    "**.product_id",
    "**.variant_id",
    "**.line_item_id",
    "**.item_id",
    "**.fulfillment_id",
    "**.shipment_id",
    "**.transaction_id",
    "**.request_id",
    "**.correlation_id",
    "**.idempotency_key",
    "**.run_id",
    "**.step_id",
    // what happened
    "**.status",
    "**.financial_status",
    "**.fulfillment_status",
    "**.object",
    "**.type",
    "**.livemode",
    "**.reason",
    "**.reason_code",
    "**.error_code",
    "**.decline_code",
    "**.tool",
    "**.tool_name",
    // money and quantities
    "**.amount",
    "**.amount_refunded",
    "**.amount_captured",
    "**.total",
    "**.subtotal",
    "**.total_price",
    "**.subtotal_price",
    "**.price",
    "**.unit_price",
    "**.tax",
    "**.discount",
    "**.currency",
    "**.quantity",
    "**.count",
    "**.sku",
    // when
    "**.timestamp",
    "**.created_at",
    "**.updated_at",
    "**.processed_at",
    "**.cancelled_at",
    "**.shipped_at",
    "**.delivered_at",
    "**.created",
    // shipping
    "**.tracking_number",
    "**.tracking_numbers",
    "**.carrier",
    "**.tracking_company",
];

/// A key compared the way people write the same name in different APIs:
/// `orderId`, `order_id` and `Order-ID` are one field.
fn normalize(key: &str) -> String {
    if key.is_ascii() {
        // The common case, without per-char Unicode case mapping.
        return key.bytes().filter(|b| *b != b'_' && *b != b'-').map(|b| char::from(b.to_ascii_lowercase())).collect();
    }
    key.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect()
}

// ---------------------------------------------------------------------------
// Patterns
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternSegment {
    /// A key, normalized.
    Key(String),
    /// `*`: any one key.
    AnyKey,
    /// `[*]`: any one array index.
    AnyIndex,
    /// `**`: any number (zero or more) of keys and indices.
    AnyDepth,
}

/// One allowlist entry: a pattern over JSON paths.
///
/// Syntax: segments separated by `.`; a segment is a key (`order_id`), `*`
/// (any one key) or `**` (any number of keys and array indices, including
/// none); a segment may be followed by `[*]` (any one array index), several
/// times for nested arrays. Examples: `status`, `items[*].sku`,
/// `*.currency`, `**.tracking_number`, `[*].id` (top-level array).
///
/// Keys compare case-, `-`- and `_`-insensitively (`orderId` matches
/// `order_id`). A key containing `.`, `[`, `]` or `*` cannot be named.
///
/// A pattern that matches an object or array allows everything beneath it
/// (`shipping` allows `shipping.carrier` and `shipping.address.line1`);
/// sensitive names and the scanners still apply there. `**` alone allows
/// everything and leaves only those two layers: use it for tests, not
/// production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPattern {
    text: String,
    segments: Vec<PatternSegment>,
}

impl FieldPattern {
    /// Parse a pattern; `INVALID_INPUT` for empty segments, `*` inside a key,
    /// or brackets other than `[*]`.
    pub fn parse(text: &str) -> Result<FieldPattern> {
        let invalid = |why: &str| {
            Error::new(ErrorCode::InvalidInput, format!("invalid redaction allowlist pattern {text:?}: {why}"))
        };
        if text.trim().is_empty() {
            return Err(invalid("it is empty"));
        }
        let mut segments = Vec::new();
        for part in text.split('.') {
            let (name, mut brackets) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            match name {
                "" if brackets.is_empty() => return Err(invalid("a segment is empty (two dots, or a dot at an end)")),
                "" => {}
                "**" => segments.push(PatternSegment::AnyDepth),
                "*" => segments.push(PatternSegment::AnyKey),
                _ if name.contains(['*', ']']) => {
                    return Err(invalid("`*` and `]` may only stand alone (`*`, `**`) or in `[*]`"));
                }
                _ => {
                    let key = normalize(name);
                    if key.is_empty() {
                        return Err(invalid("a key is only dashes or underscores"));
                    }
                    segments.push(PatternSegment::Key(key));
                }
            }
            while !brackets.is_empty() {
                let Some(rest) = brackets.strip_prefix("[*]") else {
                    return Err(invalid("the only index pattern is `[*]`"));
                };
                segments.push(PatternSegment::AnyIndex);
                brackets = rest;
            }
        }
        Ok(FieldPattern { text: text.to_owned(), segments })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The key of a `**.key` pattern, which matches wherever that key is.
    fn anywhere_key(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [PatternSegment::AnyDepth, PatternSegment::Key(key)] => Some(key),
            _ => None,
        }
    }

    /// Does the pattern match `path` or one of its ancestors?
    fn allows(&self, path: &[PathSegment]) -> bool {
        fn matches(pattern: &[PatternSegment], path: &[PathSegment]) -> bool {
            match pattern.split_first() {
                None => true,
                Some((PatternSegment::AnyDepth, rest)) => (0..=path.len()).any(|skip| matches(rest, &path[skip..])),
                Some((segment, rest)) => match path.split_first() {
                    None => false,
                    Some((step, path_rest)) => {
                        let hit = match (segment, step) {
                            (PatternSegment::Key(key), PathSegment::Key { normalized, .. }) => key == normalized,
                            (PatternSegment::AnyKey, PathSegment::Key { .. }) => true,
                            (PatternSegment::AnyIndex, PathSegment::Index(_)) => true,
                            _ => false,
                        };
                        hit && matches(rest, path_rest)
                    }
                },
            }
        }
        matches(&self.segments, path)
    }
}

impl fmt::Display for FieldPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for FieldPattern {
    type Err = Error;

    fn from_str(text: &str) -> Result<FieldPattern> {
        FieldPattern::parse(text)
    }
}

// ---------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------

/// Which field paths may be persisted in a trace. Everything else is
/// filtered; see the module documentation for the layers that follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactionPolicy {
    allow: Vec<FieldPattern>,
    /// Keys allowed at any depth (patterns `**.key`), looked up in one hash
    /// probe per path segment instead of matched pattern by pattern: most of
    /// the default allowlist has this shape, and the walk asks at every node.
    anywhere: std::collections::HashSet<String>,
}

impl Default for RedactionPolicy {
    /// The [`DEFAULT_ALLOWLIST`].
    fn default() -> Self {
        RedactionPolicy::new(DEFAULT_ALLOWLIST).expect("the default allowlist parses")
    }
}

impl RedactionPolicy {
    /// A policy that allows nothing: every leaf is filtered.
    pub fn deny_all() -> RedactionPolicy {
        RedactionPolicy { allow: Vec::new(), anywhere: Default::default() }
    }

    /// A policy allowing exactly `patterns` (not the defaults).
    pub fn new<I, S>(patterns: I) -> Result<RedactionPolicy>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        patterns.into_iter().try_fold(RedactionPolicy::deny_all(), |policy, p| policy.allow(p.as_ref()))
    }

    /// This policy plus one more allowed pattern.
    pub fn allow(mut self, pattern: &str) -> Result<RedactionPolicy> {
        let pattern = FieldPattern::parse(pattern)?;
        if let Some(key) = pattern.anywhere_key() {
            self.anywhere.insert(key.to_owned());
        }
        self.allow.push(pattern);
        Ok(self)
    }

    /// The allowed patterns.
    pub fn patterns(&self) -> &[FieldPattern] {
        &self.allow
    }

    /// Redact `value` for a persisted trace.
    pub fn redact(&self, value: &Value) -> Redacted {
        let mut walker = Walker { policy: self, path: Vec::new(), detections: Vec::new(), filtered: 0 };
        let allowed = self.allows(&[]);
        let value = walker.walk(value, allowed, None);
        Redacted { value, detections: walker.detections, filtered: walker.filtered }
    }

    fn allows(&self, path: &[PathSegment]) -> bool {
        path.iter().any(|s| matches!(s, PathSegment::Key { normalized, .. } if self.anywhere.contains(normalized)))
            || self.allow.iter().filter(|p| p.anywhere_key().is_none()).any(|p| p.allows(path))
    }
}

// ---------------------------------------------------------------------------
// Sensitive field names
// ---------------------------------------------------------------------------

/// Normalized names that are sensitive wherever they appear in a key.
const SENSITIVE_SUBSTRINGS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "apikey",
    "privatekey",
    "authorization",
    "cookie",
    "credential",
    "cardnumber",
    "accountnumber",
    "iban",
];

/// Normalized names that are sensitive only as the whole key (as substrings
/// they would hit ordinary words: `ssn` in `classname`, `pin` in `shipping`).
const SENSITIVE_EXACT: &[&str] =
    &["ssn", "socialsecuritynumber", "cvc", "cvv", "cvc2", "cvv2", "csc", "pin", "auth", "pan", "sessionid", "otp"];

/// Is a field with this name (under a parent with this name, if any) always
/// masked? Names compare case-, `-`- and `_`-insensitively.
///
/// Besides the lists above: any name ending in `token` (`access_token`,
/// `csrf-token`; not `max_tokens`, which counts LLM usage), and `number`
/// under a parent whose name ends in `card` or `cards` (`card.number`,
/// `payment_card.number`, `cards[0].number`).
pub fn is_sensitive_field(parent: Option<&str>, name: &str) -> bool {
    is_sensitive_normalized(parent, &normalize(name))
}

/// [`is_sensitive_field`] for a name already normalized.
fn is_sensitive_normalized(parent: Option<&str>, name: &str) -> bool {
    /// One pass over the name for all the substrings, instead of one search each.
    static SUBSTRINGS: LazyLock<aho_corasick::AhoCorasick> = LazyLock::new(|| {
        aho_corasick::AhoCorasick::new(SENSITIVE_SUBSTRINGS).expect("sensitive-name substrings build")
    });
    if SENSITIVE_EXACT.contains(&name) || SUBSTRINGS.is_match(name) || name.ends_with("token") {
        return true;
    }
    name == "number" && parent.map(normalize).is_some_and(|p| p.ends_with("card") || p.ends_with("cards"))
}

// ---------------------------------------------------------------------------
// Detections
// ---------------------------------------------------------------------------

/// What was found. Serialized (and printed) in `snake_case`, e.g.
/// `stripe_key`; these strings label `scanner_detection_total` and never
/// change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DetectionKind {
    /// A field with a sensitive name (not a scanner detection).
    SensitiveField,
    /// Stripe secret, restricted or live publishable key.
    StripeKey,
    /// Stripe webhook signing secret (`whsec_`).
    WebhookSecret,
    /// AWS access key id (`AKIA`/`ASIA`).
    AwsKey,
    /// Shopify access token or shared secret (`shpat_`, `shpss_`, ...).
    ShopifyToken,
    /// SendGrid API key (`SG.x.y`).
    SendgridKey,
    /// `Bearer <token>`.
    Bearer,
    /// A JSON Web Token.
    Jwt,
    /// A Luhn-valid card number.
    Card,
    /// An e-mail address.
    Email,
    /// A phone number.
    Phone,
}

impl DetectionKind {
    /// Every kind, in order.
    pub const ALL: [DetectionKind; 11] = [
        DetectionKind::SensitiveField,
        DetectionKind::StripeKey,
        DetectionKind::WebhookSecret,
        DetectionKind::AwsKey,
        DetectionKind::ShopifyToken,
        DetectionKind::SendgridKey,
        DetectionKind::Bearer,
        DetectionKind::Jwt,
        DetectionKind::Card,
        DetectionKind::Email,
        DetectionKind::Phone,
    ];

    /// The stable label, e.g. `aws_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            DetectionKind::SensitiveField => "sensitive_field",
            DetectionKind::StripeKey => "stripe_key",
            DetectionKind::WebhookSecret => "webhook_secret",
            DetectionKind::AwsKey => "aws_key",
            DetectionKind::ShopifyToken => "shopify_token",
            DetectionKind::SendgridKey => "sendgrid_key",
            DetectionKind::Bearer => "bearer",
            DetectionKind::Jwt => "jwt",
            DetectionKind::Card => "card",
            DetectionKind::Email => "email",
            DetectionKind::Phone => "phone",
        }
    }

    /// Was this found by a scanner (and so means the allowlist let it
    /// through)? Everything but [`DetectionKind::SensitiveField`].
    pub fn is_scanner(self) -> bool {
        self != DetectionKind::SensitiveField
    }

    /// The text a scanner match is replaced with, e.g. `[REDACTED:email]`.
    pub fn placeholder(self) -> String {
        format!("[REDACTED:{}]", self.as_str())
    }
}

impl fmt::Display for DetectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One masked value: what it was and where. The path is written with the
/// redacted keys (`customers["[REDACTED:email]"].id`), so it never holds the
/// secret; the root is `$`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Detection {
    pub kind: DetectionKind,
    pub path: String,
}

impl fmt::Display for Detection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.kind, self.path)
    }
}

/// A value ready for a persisted trace, and what was masked in it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Redacted {
    /// The value to persist.
    pub value: Value,
    /// Sensitive fields masked and scanner matches replaced, in document
    /// order. Allowlist filtering is not listed (it is the normal case), only
    /// counted in `filtered`.
    pub detections: Vec<Detection>,
    /// How many leaves became `[FILTERED]`.
    pub filtered: u64,
}

impl Redacted {
    /// The scanner detections only: each means the allowlist let a secret or
    /// personal value through, so raise an alert record for review (of the
    /// allowlist, and of whatever produced the value).
    pub fn alerts(&self) -> Vec<&Detection> {
        self.detections.iter().filter(|d| d.kind.is_scanner()).collect()
    }

    /// The counts of this redaction, to merge into a run's or a process's.
    pub fn stats(&self) -> RedactionStats {
        let mut stats = RedactionStats::default();
        stats.record(self);
        stats
    }
}

/// Detection counts by kind (the `scanner_detection_total{type}` metric and
/// redaction hit counts), mergeable across calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RedactionStats {
    pub by_kind: BTreeMap<DetectionKind, u64>,
    /// Leaves filtered by the allowlist.
    pub filtered: u64,
}

impl RedactionStats {
    /// Add one redaction's detections.
    pub fn record(&mut self, redacted: &Redacted) {
        for d in &redacted.detections {
            *self.by_kind.entry(d.kind).or_default() += 1;
        }
        self.filtered += redacted.filtered;
    }

    /// Add another set of counts.
    pub fn merge(&mut self, other: &RedactionStats) {
        for (kind, n) in &other.by_kind {
            *self.by_kind.entry(*kind).or_default() += n;
        }
        self.filtered += other.filtered;
    }

    /// How many detections of `kind`.
    pub fn count(&self, kind: DetectionKind) -> u64 {
        self.by_kind.get(&kind).copied().unwrap_or(0)
    }

    /// How many scanner detections (alerts) of any kind.
    pub fn scanner_total(&self) -> u64 {
        self.by_kind.iter().filter(|(k, _)| k.is_scanner()).map(|(_, n)| n).sum()
    }
}

// ---------------------------------------------------------------------------
// Scanners
// ---------------------------------------------------------------------------

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("redaction scanner regexes are valid")
}

// No leading `\b` on key formats: `_` is a word character, so `\b` would
// miss `STRIPE_sk_live_...`; masking a few extra characters costs nothing.
static BEARER: LazyLock<Regex> = LazyLock::new(|| regex(r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{12,}=*"));
static JWT: LazyLock<Regex> = LazyLock::new(|| regex(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"));
static STRIPE: LazyLock<Regex> = LazyLock::new(|| regex(r"(?:(?:sk|rk)_(?:live|test)|pk_live)_[A-Za-z0-9]+"));
static WEBHOOK_SECRET: LazyLock<Regex> = LazyLock::new(|| regex(r"whsec_[A-Za-z0-9+/=]+"));
static SHOPIFY: LazyLock<Regex> = LazyLock::new(|| regex(r"shp(?:at|ss|ca|pa)_[A-Fa-f0-9]+"));
static SENDGRID: LazyLock<Regex> = LazyLock::new(|| regex(r"SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"));
static AWS: LazyLock<Regex> = LazyLock::new(|| regex(r"(?:AKIA|ASIA)[0-9A-Z]{16}"));
static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| regex(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"));
/// Runs of ASCII digit groups joined by single spaces or dashes: the
/// candidates for card numbers, checked group-aligned with Luhn.
static DIGIT_RUN: LazyLock<Regex> = LazyLock::new(|| regex(r"[0-9]+(?:[ \-][0-9]+)*"));
/// E.164 (`+14155552671`, also written with single spaces, dots, dashes or
/// a parenthesized area code: two blanks end a number) and North American formats (`(415) 555-2671`,
/// `415-555-2671`, `415.555.2671`, `415 555 2671`).
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"\+[1-9](?:(?:[ .\-]|\) ?|[ .\-]?\()?[0-9]){7,14}|\([0-9]{3}\)[ .\-]?[0-9]{3}[ .\-][0-9]{4}\b|\b[0-9]{3}[ .\-][0-9]{3}[ .\-][0-9]{4}\b",
    )
});

/// The scanners in the order they run. Container formats first (a bearer
/// token may hold a JWT or a Stripe key, a SendGrid key any short prefix;
/// report the outer one, once),
/// then e-mail before cards and phones (digits in an address), cards before
/// phones (a phone pattern inside a card number would leave the rest of its
/// digits behind).
static SCANNERS: LazyLock<[(DetectionKind, &'static Regex); 8]> = LazyLock::new(|| {
    [
        (DetectionKind::Bearer, &*BEARER),
        (DetectionKind::Jwt, &*JWT),
        (DetectionKind::SendgridKey, &*SENDGRID),
        (DetectionKind::StripeKey, &*STRIPE),
        (DetectionKind::WebhookSecret, &*WEBHOOK_SECRET),
        (DetectionKind::ShopifyToken, &*SHOPIFY),
        (DetectionKind::AwsKey, &*AWS),
        (DetectionKind::Email, &*EMAIL),
    ]
});

/// Literals of which every key-format scanner needs at least one (compared
/// ASCII-case-insensitively). Most keys and values contain none and few
/// digits, so `scrub` answers them with one SIMD literal search instead of
/// ten regex scans (docs/benchmarks.md). Keep in step with the scanners: the
/// scanner tests fail for any format whose literal is missing here.
const SCANNER_LITERALS: &[&str] = &[
    "bearer", "eyj", "sg.", "sk_", "rk_", "pk_live", "whsec_", "shpat_", "shpss_", "shpca_", "shppa_", "akia", "asia",
    "@",
];

static ANY_KEY_FORMAT: LazyLock<aho_corasick::AhoCorasick> = LazyLock::new(|| {
    aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(SCANNER_LITERALS)
        .expect("redaction scanner literals build")
});

/// Fewer ASCII digits than this and neither a card (13+) nor a phone number
/// (8+ with a country code, 10 in North American formats) can be present.
const MIN_DIGITS_FOR_NUMBERS: usize = 7;

/// Run every scanner over `text`: the text with each match replaced by its
/// placeholder, and the kind of each match in order. Also usable on text that
/// is not JSON (error messages, log lines) before it is persisted.
pub fn scrub(text: &str) -> (String, Vec<DetectionKind>) {
    let (text, found) = scrub_cow(text);
    (text.into_owned(), found)
}

/// [`scrub`] without a copy when nothing is found (the common case).
fn scrub_cow(text: &str) -> (Cow<'_, str>, Vec<DetectionKind>) {
    let digits = text.bytes().filter(u8::is_ascii_digit).count();
    if digits < MIN_DIGITS_FOR_NUMBERS && !ANY_KEY_FORMAT.is_match(text) {
        return (Cow::Borrowed(text), Vec::new());
    }
    let mut found = Vec::new();
    let mut current = Cow::Borrowed(text);
    for (kind, re) in SCANNERS.iter() {
        replace(&mut current, re, *kind, &mut found);
    }
    let card_spans = card_spans(&current);
    if !card_spans.is_empty() {
        let mut out = String::with_capacity(current.len());
        let mut last = 0;
        for (start, end) in card_spans {
            out.push_str(&current[last..start]);
            out.push_str(&DetectionKind::Card.placeholder());
            found.push(DetectionKind::Card);
            last = end;
        }
        out.push_str(&current[last..]);
        current = Cow::Owned(out);
    }
    replace(&mut current, &PHONE, DetectionKind::Phone, &mut found);
    (current, found)
}

fn replace(text: &mut Cow<'_, str>, re: &Regex, kind: DetectionKind, found: &mut Vec<DetectionKind>) {
    if !re.is_match(text) {
        return;
    }
    let replaced = re
        .replace_all(text, |_: &regex::Captures<'_>| {
            found.push(kind);
            kind.placeholder()
        })
        .into_owned();
    *text = Cow::Owned(replaced);
}

/// Byte spans of card numbers in `text`: 13 to 19 digits, whole digit groups
/// (single spaces or dashes between them), passing Luhn, also when glued to
/// a word (`4242424242424242a`, `ORD4242424242424242`): masking an id that
/// happens to look like a card costs a less readable trace, missing a card
/// costs a PCI incident. A run with more groups than the card (`Order 12
/// 4242 4242 4242 4242`) is searched group-aligned for the longest valid card.
fn card_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    for run in DIGIT_RUN.find_iter(text) {
        let mut groups: Vec<(usize, usize)> = Vec::new();
        let mut start = run.start();
        for (i, b) in run.as_str().bytes().enumerate() {
            if b == b' ' || b == b'-' {
                groups.push((start, run.start() + i));
                start = run.start() + i + 1;
            }
        }
        groups.push((start, run.end()));
        let mut i = 0;
        while i < groups.len() {
            let mut digits = String::new();
            let mut best = None;
            for (j, &(s, e)) in groups.iter().enumerate().skip(i) {
                digits.push_str(&text[s..e]);
                if digits.len() > 19 {
                    break;
                }
                if digits.len() >= 13 && luhn(&digits) {
                    best = Some(j);
                }
            }
            match best {
                Some(j) => {
                    spans.push((groups[i].0, groups[j].1));
                    i = j + 1;
                }
                None => i += 1,
            }
        }
    }
    spans
}

/// The Luhn check (all-zero runs excepted: they pass, but are padding).
fn luhn(digits: &str) -> bool {
    let mut sum = 0;
    let mut nonzero = false;
    for (i, b) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        nonzero |= d != 0;
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    nonzero && sum % 10 == 0
}

// ---------------------------------------------------------------------------
// The walk
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum PathSegment {
    /// `shown` is the redacted key (what the trace and paths show);
    /// `normalized` the original, normalized, for the allowlist.
    Key {
        shown: String,
        normalized: String,
    },
    Index(usize),
}

fn render_path(path: &[PathSegment]) -> String {
    if path.is_empty() {
        return "$".to_owned();
    }
    let mut out = String::new();
    for segment in path {
        match segment {
            PathSegment::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
            PathSegment::Key { shown, .. } => {
                let plain = !shown.is_empty()
                    && !shown.contains(|c: char| matches!(c, '.' | '[' | ']' | '"' | '\\') || c.is_whitespace());
                if plain {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(shown);
                } else {
                    out.push('[');
                    out.push_str(&Value::String(shown.clone()).to_string());
                    out.push(']');
                }
            }
        }
    }
    out
}

struct Walker<'a> {
    policy: &'a RedactionPolicy,
    path: Vec<PathSegment>,
    detections: Vec<Detection>,
    filtered: u64,
}

impl Walker<'_> {
    fn detect(&mut self, kinds: impl IntoIterator<Item = DetectionKind>) {
        let mut rendered = None;
        for kind in kinds {
            let path = rendered.get_or_insert_with(|| render_path(&self.path)).clone();
            self.detections.push(Detection { kind, path });
        }
    }

    /// `allowed`: an ancestor (or this node) matched the allowlist.
    /// `parent`: the nearest key above, looking through arrays.
    fn walk(&mut self, value: &Value, allowed: bool, parent: Option<&str>) -> Value {
        match value {
            Value::Object(map) => {
                let mut out = Map::new();
                for (key, child) in map {
                    let (shown, key_kinds) = scrub_cow(key);
                    let mut shown = shown.into_owned();
                    // Keys of one map are unique unless masking made two alike.
                    if !key_kinds.is_empty() && out.contains_key(&shown) {
                        // Two keys redacted to the same text: keep both.
                        let base = shown;
                        shown = (2..).map(|n| format!("{base}#{n}")).find(|k| !out.contains_key(k)).expect("unbounded");
                    }
                    let normalized = normalize(key);
                    let sensitive = is_sensitive_normalized(parent, &normalized);
                    self.path.push(PathSegment::Key { shown: shown.clone(), normalized });
                    self.detect(key_kinds);
                    let redacted = if sensitive {
                        if child.is_null() {
                            Value::Null
                        } else {
                            self.detect([DetectionKind::SensitiveField]);
                            Value::String(REDACTED.to_owned())
                        }
                    } else {
                        let allowed = allowed || self.policy.allows(&self.path);
                        self.walk(child, allowed, Some(key))
                    };
                    self.path.pop();
                    out.insert(shown, redacted);
                }
                Value::Object(out)
            }
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    self.path.push(PathSegment::Index(i));
                    let allowed = allowed || self.policy.allows(&self.path);
                    out.push(self.walk(item, allowed, parent));
                    self.path.pop();
                }
                Value::Array(out)
            }
            // Null says nothing, and keeps the trace honest about absence.
            Value::Null => Value::Null,
            _ if !allowed => {
                self.filtered += 1;
                Value::String(FILTERED.to_owned())
            }
            Value::String(text) => {
                let (text, kinds) = scrub(text);
                self.detect(kinds);
                Value::String(text)
            }
            Value::Number(n) => {
                // A card number sent as a JSON integer in an allowlisted id.
                let (text, kinds) = scrub(&n.to_string());
                if kinds.is_empty() {
                    value.clone()
                } else {
                    self.detect(kinds);
                    Value::String(text)
                }
            }
            Value::Bool(_) => value.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn policy(patterns: &[&str]) -> RedactionPolicy {
        RedactionPolicy::new(patterns).unwrap()
    }

    fn scanned(text: &str) -> String {
        scrub(text).0
    }

    // -- allowlist and structure ------------------------------------------

    #[test]
    fn p1_t35_only_allowlisted_leaves_keep_their_values() {
        let input = json!({
            "order_id": "ord_123",
            "status": "paid",
            "amount": 4200,
            "currency": "eur",
            "livemode": false,
            "customer": {"name": "Ada Lovelace", "address": {"line1": "12 Analytical St", "zip": "10115"}},
            "items": [{"sku": "MUG-01", "quantity": 2, "title": "Mug"}, {"sku": "TEE-L", "quantity": 1}],
            "note": null,
            "tags": []
        });
        let out = RedactionPolicy::default().redact(&input);
        assert_eq!(
            out.value,
            json!({
                "order_id": "ord_123",
                "status": "paid",
                "amount": 4200,
                "currency": "eur",
                "livemode": false,
                "customer": {"name": FILTERED, "address": {"line1": FILTERED, "zip": FILTERED}},
                "items": [{"sku": "MUG-01", "quantity": 2, "title": FILTERED}, {"sku": "TEE-L", "quantity": 1}],
                "note": null,
                "tags": []
            })
        );
        assert_eq!(out.filtered, 4);
        assert!(out.detections.is_empty());
    }

    #[test]
    fn p1_t35_patterns_follow_the_documented_syntax() {
        let input = json!({
            "order_id": "A1",
            "items": [{"sku": "S1", "price": 5}, {"sku": "S2", "price": 6}],
            "shipping": {"carrier": "ups", "address": {"city": "Berlin"}},
            "refunds": {"r1": {"currency": "usd", "memo": "x"}},
            "top": [[{"id": 1}]]
        });
        let out = policy(&["orderId", "items[*].sku", "shipping", "refunds.*.currency", "top[*][*].id"]).redact(&input);
        assert_eq!(
            out.value,
            json!({
                "order_id": "A1",
                "items": [{"sku": "S1", "price": FILTERED}, {"sku": "S2", "price": FILTERED}],
                "shipping": {"carrier": "ups", "address": {"city": "Berlin"}},
                "refunds": {"r1": {"currency": "usd", "memo": FILTERED}},
                "top": [[{"id": 1}]]
            })
        );
        // `items.sku` does not look through the array; `[*]` must be written.
        let out = policy(&["items.sku"]).redact(&input);
        assert_eq!(out.value["items"][0]["sku"], FILTERED);
        // A top-level array and a scalar root.
        assert_eq!(policy(&["[*].id"]).redact(&json!([{"id": 7, "x": 1}])).value, json!([{"id": 7, "x": FILTERED}]));
        assert_eq!(RedactionPolicy::deny_all().redact(&json!("hello")).value, json!(FILTERED));
        assert_eq!(policy(&["**"]).redact(&json!("hello")).value, json!("hello"));
    }

    #[test]
    fn p1_t35_bad_patterns_are_refused() {
        for bad in ["", " ", "a..b", ".a", "a.", "items[0]", "items[", "ord*er", "a]", "_-_"] {
            let err = FieldPattern::parse(bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidInput, "{bad:?}");
        }
        for good in ["a", "*", "**", "[*]", "a[*][*].b", "**.x", "*.y[*]"] {
            assert_eq!(FieldPattern::parse(good).unwrap().to_string(), good);
        }
        assert!(RedactionPolicy::default().allow("a..b").is_err());
    }

    #[test]
    fn p1_t35_default_allowlist_keeps_business_fields() {
        let input = json!({
            "tool": "shopify.refund",
            "order": {"id": 1001, "orderNumber": "#1001", "financial_status": "refunded", "total_price": "19.90",
                      "created_at": "2025-01-02T03:04:05Z"},
            "fulfillments": [{"tracking_number": "1Z999AA10123456784", "carrier": "UPS", "status": "in_transit"}],
            "refund": {"reason_code": "damaged", "amount": 1990, "currency": "USD", "quantity": 1}
        });
        let out = RedactionPolicy::default().redact(&input);
        assert_eq!(out.value, input, "{:?}", out.detections);
        assert_eq!(out.filtered, 0);
    }

    // -- sensitive names ---------------------------------------------------

    #[test]
    fn p1_t35_sensitive_fields_are_masked_even_when_allowlisted() {
        let input = json!({
            "password": "hunter2",
            "Client-Secret": "cs_abc",
            "access_token": "opaque-value-1",
            "X-Api-Key": "opaque-value-2",
            "apikey": "opaque-value-3",
            "headers": {"Authorization": "Basic dXNlcjpwYXNz", "Cookie": "sid=abc"},
            "card": {"number": "4242424242424242", "cvc": "123", "exp_month": 12, "last4": "4242"},
            "payment": {"card_number": "4000056655665556", "CVV": "999"},
            "bank": {"IBAN": "DE89370400440532013000"},
            "ssn": "078-05-1120",
            "private_key": {"pem": "-----BEGIN"},
            "refresh_token": null,
            "max_tokens": 512
        });
        // Everything allowlisted: only the names protect these values.
        let out = policy(&["**"]).redact(&input);
        let v = &out.value;
        for pointer in [
            "/password",
            "/Client-Secret",
            "/access_token",
            "/X-Api-Key",
            "/apikey",
            "/headers/Authorization",
            "/headers/Cookie",
            "/card/number",
            "/card/cvc",
            "/payment/card_number",
            "/payment/CVV",
            "/bank/IBAN",
            "/ssn",
            "/private_key",
        ] {
            assert_eq!(v.pointer(pointer), Some(&json!(REDACTED)), "{pointer}");
        }
        assert_eq!(v["card"]["exp_month"], 12);
        assert_eq!(v["card"]["last4"], "4242");
        assert_eq!(v["refresh_token"], Value::Null);
        assert_eq!(v["max_tokens"], 512);
        assert_eq!(out.detections.iter().filter(|d| d.kind == DetectionKind::SensitiveField).count(), 14);
        assert!(out.alerts().is_empty(), "sensitive names are expected, not alerts: {:?}", out.alerts());
        assert!(
            out.detections
                .contains(&Detection { kind: DetectionKind::SensitiveField, path: "headers.Authorization".into() })
        );
        for secret in ["hunter2", "cs_abc", "opaque-value", "dXNlcjpwYXNz", "4242424242424242", "DE89", "078-05"] {
            assert!(!v.to_string().contains(secret), "{secret}");
        }
    }

    #[test]
    fn p1_t35_sensitive_names_compare_loosely_but_not_as_loose_substrings() {
        for name in ["password", "DB_PASSWORD", "stripeSecretKey", "api-key", "csrfToken", "id_token", "set-cookie"] {
            assert!(is_sensitive_field(None, name), "{name}");
        }
        for name in ["classname", "shipping", "spinner", "max_tokens", "number", "tracking_number", "status"] {
            assert!(!is_sensitive_field(None, name), "{name}");
        }
        assert!(is_sensitive_field(Some("card"), "number"));
        assert!(is_sensitive_field(Some("credit_card"), "number"));
        assert!(is_sensitive_field(Some("cards"), "Number"));
        assert!(!is_sensitive_field(Some("order"), "number"));
        // `number` inside an array of cards.
        let out = policy(&["**"]).redact(&json!({"cards": [{"number": "4111111111111111", "brand": "visa"}]}));
        assert_eq!(out.value, json!({"cards": [{"number": REDACTED, "brand": "visa"}]}));
    }

    // -- scanners ------------------------------------------------------------

    #[test]
    fn p1_t35_scanners_mask_api_keys_bearer_and_jwt() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLXZhbHVl";
        let bearer_jwt = format!("Bearer {jwt}");
        let bare_jwt = format!("t={jwt}");
        let cases = [
            ("key sk_live_51HqLyjWDarjtT1zdp7dc here", "key [REDACTED:stripe_key] here"),
            ("rk_test_abcDEF123 and pk_live_XYZ789", "[REDACTED:stripe_key] and [REDACTED:stripe_key]"),
            ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "[REDACTED:webhook_secret]"),
            ("id=AKIAIOSFODNN7EXAMPLE;", "id=[REDACTED:aws_key];"),
            ("shpat_0123456789abcdef0123456789abcdef", "[REDACTED:shopify_token]"),
            ("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", "[REDACTED:shopify_token]"),
            ("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", "[REDACTED:sendgrid_key]"),
            ("auth: Bearer abc.DEF-123_xyz~+/token==, ok", "auth: [REDACTED:bearer], ok"),
            (bearer_jwt.as_str(), "[REDACTED:bearer]"),
            (bare_jwt.as_str(), "t=[REDACTED:jwt]"),
        ];
        for (input, expected) in cases {
            assert_eq!(scanned(input), expected, "{input}");
        }
        let (_, kinds) = scrub(&bearer_jwt);
        assert_eq!(kinds, [DetectionKind::Bearer], "reported once, as the outer token");
    }

    #[test]
    fn p1_t_rk08a_cards_emails_and_phones_are_masked() {
        let cases = [
            ("card 4242424242424242.", "card [REDACTED:card]."),
            ("card 4242 4242 4242 4242 exp", "card [REDACTED:card] exp"),
            ("card 4000-0566-5566-5556", "card [REDACTED:card]"),
            ("amex 378282246310005", "amex [REDACTED:card]"),
            ("order 12 4242 4242 4242 4242", "order 12 [REDACTED:card]"),
            ("glued 4242424242424242a", "glued [REDACTED:card]a"),
            ("ORD4242424242424242", "ORD[REDACTED:card]"),
            ("mail ada.lovelace+shop@example.co.uk now", "mail [REDACTED:email] now"),
            ("call +14155552671.", "call [REDACTED:phone]."),
            ("call +1 (415) 555-2671", "call [REDACTED:phone]"),
            ("call +44 20 7946 0958", "call [REDACTED:phone]"),
            (
                "call (415) 555-2671 or 415-555-2671 or 415.555.2671",
                "call [REDACTED:phone] or [REDACTED:phone] or [REDACTED:phone]",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(scanned(input), expected, "{input}");
        }
    }

    #[test]
    fn p1_t_rk08a_luhn_invalid_runs_and_order_numbers_are_kept() {
        for text in [
            "4242424242424241",
            "4242 4242 4242 4241",
            "order 1000000000001",
            "ORD-10023",
            "#100234",
            "invoice 2025-000123",
            "0000000000000000",
            "550e8400-e29b-41d4-a716-446655440000",
            "tracking 1Z999AA10123456784",
            "2025-01-02T03:04:05Z",
            "qty 3 of 12",
        ] {
            assert_eq!(scrub(text), (text.to_owned(), vec![]), "{text}");
        }
        // A Luhn-invalid number as a JSON integer in an allowlisted id.
        let out = policy(&["id"]).redact(&json!({"id": 4242424242424241_u64}));
        assert_eq!(out.value, json!({"id": 4242424242424241_u64}));
    }

    #[test]
    fn p1_t_rk08b_scanner_hits_in_allowlisted_fields_are_alerts() {
        let input = json!({
            "status": "refunded, customer ada@example.com notified",
            "id": 4242424242424242_u64,
            "items": [{"sku": "call 415-555-2671"}],
            "note": "ada@example.com",
            "password": "x"
        });
        let out = RedactionPolicy::default().redact(&input);
        assert_eq!(out.value["status"], "refunded, customer [REDACTED:email] notified");
        assert_eq!(out.value["id"], "[REDACTED:card]");
        assert_eq!(out.value["items"][0]["sku"], "call [REDACTED:phone]");
        assert_eq!(out.value["note"], FILTERED, "filtered, so not scanned and no alert");
        let mut alerts: Vec<String> = out.alerts().iter().map(|d| d.to_string()).collect();
        alerts.sort();
        assert_eq!(alerts, ["card at id", "email at status", "phone at items[0].sku"]);
        let stats = out.stats();
        assert_eq!(stats.count(DetectionKind::Email), 1);
        assert_eq!(stats.count(DetectionKind::SensitiveField), 1);
        assert_eq!(stats.scanner_total(), 3);
        assert_eq!(stats.filtered, 1);
    }

    #[test]
    fn p1_t_rk08b_secrets_in_keys_are_masked_and_paths_never_hold_them() {
        let input = json!({
            "customers": {"ada@example.com": {"id": 1}, "bob@example.com": {"id": 2}},
            "we.ird key": {"id": 3}
        });
        let out = RedactionPolicy::default().redact(&input);
        assert_eq!(
            out.value,
            json!({
                "customers": {"[REDACTED:email]": {"id": 1}, "[REDACTED:email]#2": {"id": 2}},
                "we.ird key": {"id": 3}
            })
        );
        let paths: Vec<&str> = out.alerts().iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, [r#"customers["[REDACTED:email]"]"#, r#"customers["[REDACTED:email]#2"]"#]);
        let printed = format!("{out:?} {}", serde_json::to_string(&out).unwrap());
        assert!(!printed.contains("example.com"), "{printed}");
    }

    #[test]
    fn p1_t_rk08b_stats_merge_and_serialize_by_kind() {
        let policy = RedactionPolicy::default();
        let a = policy.redact(&json!({"status": "ada@example.com", "x": 1}));
        let b = policy.redact(&json!({"status": "AKIAIOSFODNN7EXAMPLE b@example.com", "token": "t"}));
        let mut total = a.stats();
        total.merge(&b.stats());
        assert_eq!(total.count(DetectionKind::Email), 2);
        assert_eq!(total.count(DetectionKind::AwsKey), 1);
        assert_eq!(total.count(DetectionKind::SensitiveField), 1);
        assert_eq!(total.count(DetectionKind::Card), 0);
        assert_eq!(total.scanner_total(), 3);
        assert_eq!(total.filtered, 1);
        assert_eq!(
            serde_json::to_value(&total).unwrap(),
            json!({"by_kind": {"sensitive_field": 1, "aws_key": 1, "email": 2}, "filtered": 1})
        );
        for kind in DetectionKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), json!(kind.as_str()));
            assert_eq!(kind.is_scanner(), kind != DetectionKind::SensitiveField);
        }
    }

    // -- generated inputs --------------------------------------------------

    /// A secret or personal value to plant, its kind, and every form of it
    /// that must not appear in the output.
    #[derive(Debug, Clone)]
    struct Planted {
        kind: DetectionKind,
        text: String,
        forbidden: Vec<String>,
    }

    fn plant(kind: DetectionKind, text: String) -> Planted {
        let mut forbidden = vec![text.clone()];
        if matches!(kind, DetectionKind::Card | DetectionKind::Phone) {
            forbidden.push(text.chars().filter(char::is_ascii_digit).collect());
        }
        Planted { kind, text, forbidden }
    }

    /// A Luhn-valid card: an issuer prefix, random digits, the check digit.
    fn card_number() -> impl Strategy<Value = String> {
        let issuer = prop_oneof![
            (Just("4"), prop_oneof![Just(13usize), Just(16), Just(19)]),
            (prop_oneof![Just("51"), Just("52"), Just("55"), Just("2221")], Just(16)),
            (prop_oneof![Just("34"), Just("37")], Just(15)),
            (Just("6011"), Just(16)),
        ];
        (issuer, prop::collection::vec(0u8..10, 18), 0..3usize).prop_map(|((prefix, len), random, format)| {
            let mut digits: Vec<u8> = prefix.bytes().map(|b| b - b'0').collect();
            digits.extend(random.into_iter().take(len - 1 - prefix.len()));
            // The check digit: double every second digit from the right,
            // counting the check digit itself as the first.
            let sum: u32 = digits
                .iter()
                .rev()
                .enumerate()
                .map(|(i, &d)| {
                    let d = u32::from(d);
                    if i % 2 == 0 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d }
                })
                .sum();
            digits.push(((10 - sum % 10) % 10) as u8);
            let plain: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
            assert!(luhn(&plain));
            match format {
                0 => plain,
                sep => {
                    let sep = if sep == 1 { " " } else { "-" };
                    plain.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(sep)
                }
            }
        })
    }

    fn jwt() -> impl Strategy<Value = String> {
        ("[a-z0-9]{4,12}", 0u32..2_000_000_000, "[A-Za-z0-9_-]{20,43}").prop_map(|(sub, iat, sig)| {
            let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
            let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"{sub}","iat":{iat}}}"#));
            format!("{header}.{payload}.{sig}")
        })
    }

    fn planted() -> impl Strategy<Value = Planted> {
        use DetectionKind as K;
        prop_oneof![
            ("(sk|rk)_(live|test)_[A-Za-z0-9]{24,40}|pk_live_[A-Za-z0-9]{24,40}").prop_map(|s| plant(K::StripeKey, s)),
            "whsec_[A-Za-z0-9]{32}".prop_map(|s| plant(K::WebhookSecret, s)),
            "AKIA[0-9A-Z]{16}".prop_map(|s| plant(K::AwsKey, s)),
            "shp(at|ss)_[0-9a-f]{32}".prop_map(|s| plant(K::ShopifyToken, s)),
            "SG\\.[A-Za-z0-9_-]{22}\\.[A-Za-z0-9_-]{43}".prop_map(|s| plant(K::SendgridKey, s)),
            "[A-Za-z0-9._~+/-]{20,40}".prop_map(|token| {
                let mut p = plant(K::Bearer, format!("Bearer {token}"));
                p.forbidden.push(token);
                p
            }),
            jwt().prop_map(|s| plant(K::Jwt, s)),
            card_number().prop_map(|s| plant(K::Card, s)),
            "[a-z]{1,8}[0-9]{0,3}(\\.[a-z]{1,6})?@[a-z]{2,10}\\.(com|io|de|co\\.uk)".prop_map(|s| plant(K::Email, s)),
            "\\+1[2-9][0-9]{9}|\\([2-9][0-9]{2}\\) [0-9]{3}-[0-9]{4}|[2-9][0-9]{2}-[0-9]{3}-[0-9]{4}"
                .prop_map(|s| plant(K::Phone, s)),
        ]
    }

    /// Random nested JSON. Keys are random text with awkward characters,
    /// ending in two digits so that no key is a sensitive name or on the
    /// allowlist by accident (the planted fields test those).
    fn json_tree() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-1_000_000i64..1_000_000).prop_map(Value::from),
            "[a-zA-Z ,.]{0,16}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z .\\[\\]\"-]{0,5}[0-9]{2}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// JSON pointers of every object in `value`.
    fn objects(value: &Value, pointer: String, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    objects(v, format!("{pointer}/{}", k.replace('~', "~0").replace('/', "~1")), out);
                }
                out.push(pointer);
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    objects(v, format!("{pointer}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    /// A field holding 1 to 3 planted values at random places in filler text.
    #[derive(Debug, Clone)]
    struct Field {
        planted: Vec<Planted>,
        text: String,
        /// Index into `ALLOWED_KEYS`, or `None` for a field off the allowlist.
        allowed_key: Option<usize>,
        slot: usize,
    }

    const ALLOWED_KEYS: [&str; 3] = ["memo", "status", "reason"];

    fn field() -> impl Strategy<Value = Field> {
        (
            prop::collection::vec(("[a-zA-Z ,]{0,12}", planted()), 1..4),
            "[a-zA-Z ,]{0,12}",
            prop::option::of(0..ALLOWED_KEYS.len()),
            any::<usize>(),
        )
            .prop_map(|(parts, tail, allowed_key, slot)| {
                // Spaces around each value keep the planted texts apart, so
                // each is found whole; glued cards are tested alone.
                let mut text = String::new();
                let mut planted = Vec::new();
                for (filler, p) in parts {
                    text.push_str(&filler);
                    text.push(' ');
                    text.push_str(&p.text);
                    text.push(' ');
                    planted.push(p);
                }
                text.push_str(&tail);
                Field { planted, text, allowed_key, slot }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn p1_t35_generated_secrets_never_reach_the_trace(
            tree in json_tree(),
            fields in prop::collection::vec(field(), 1..6),
        ) {
            let mut doc = json!({"input": tree});
            let mut targets = Vec::new();
            objects(&doc, String::new(), &mut targets);
            let mut placed = Vec::new();
            for (i, f) in fields.iter().enumerate() {
                let target = &targets[f.slot % targets.len()];
                let key = f.allowed_key.map_or("remark", |k| ALLOWED_KEYS[k]);
                let holder = format!("p{i}");
                doc.pointer_mut(target).unwrap().as_object_mut().unwrap()
                    .insert(holder.clone(), json!({key: f.text.clone()}));
                placed.push((format!("{target}/{holder}/{key}"), f));
            }

            let out = RedactionPolicy::default().allow("**.memo").unwrap().redact(&doc);
            let serialized = serde_json::to_string(&out.value).unwrap();
            let printed = format!("{out:?} {} {:?}", serde_json::to_string(&out).unwrap(), out.stats());
            let shown: String = out.detections.iter().map(|d| format!("{d} ")).collect();

            let mut expected = RedactionStats::default();
            for (pointer, f) in &placed {
                for p in &f.planted {
                    for form in &p.forbidden {
                        prop_assert!(!serialized.contains(form.as_str()), "{form:?} leaked: {serialized}");
                        prop_assert!(!printed.contains(form.as_str()), "{form:?} leaked through Debug");
                        prop_assert!(!shown.contains(form.as_str()), "{form:?} leaked through Display");
                    }
                }
                let kept = out.value.pointer(pointer).and_then(Value::as_str).unwrap();
                if f.allowed_key.is_some() {
                    for p in &f.planted {
                        prop_assert!(kept.contains(&p.kind.placeholder()), "{:?} not found in {kept:?}", p.kind);
                        *expected.by_kind.entry(p.kind).or_default() += 1;
                    }
                } else {
                    prop_assert_eq!(kept, FILTERED);
                }
            }
            // Every planted value in an allowlisted field was counted and
            // alerted, and nothing else was (random keys are never
            // sensitive and random filler holds no secrets).
            prop_assert_eq!(&out.stats().by_kind, &expected.by_kind);
            prop_assert_eq!(out.alerts().len() as u64, expected.scanner_total());
            prop_assert!(out.alerts().iter().all(|d| d.path.ends_with(".memo")
                || d.path.ends_with(".status") || d.path.ends_with(".reason")));
        }

        #[test]
        fn p1_t_rk08a_generated_pii_in_any_string_is_masked(
            parts in prop::collection::vec(("[a-z ]{0,10}", planted()), 1..5),
        ) {
            let text: String = parts.iter().map(|(filler, p)| format!("{filler} {} ", p.text)).collect();
            let (clean, kinds) = scrub(&text);
            for (_, p) in &parts {
                for form in &p.forbidden {
                    prop_assert!(!clean.contains(form.as_str()), "{form:?} leaked: {clean}");
                }
            }
            let mut want: Vec<DetectionKind> = parts.iter().map(|(_, p)| p.kind).collect();
            let mut got = kinds;
            want.sort();
            got.sort();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn p1_t_rk08a_luhn_invalid_digit_runs_are_never_masked(
            digits in "[1-9][0-9]{12,18}",
            sep in 0..3usize,
        ) {
            prop_assume!(!luhn(&digits));
            let text = match sep {
                0 => digits.clone(),
                n => digits.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap())
                    .collect::<Vec<_>>().join(if n == 1 { " " } else { "-" }),
            };
            // Groups of four can hold a shorter Luhn-valid run of whole
            // groups; only the full run is under test here.
            prop_assume!(card_spans(&text).is_empty());
            let out = policy(&["order_number"]).redact(&json!({"order_number": text.clone()}));
            prop_assert_eq!(&out.value["order_number"], &json!(text));
            prop_assert!(out.detections.is_empty());
        }
    }
}
