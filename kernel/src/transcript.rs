//! Transcripts: the versioned JSON Lines history of one run (INV-06).
//!
//! A transcript holds what a run cannot recompute: the config hash and the
//! model and prompt pins it ran under, the triggering event, every tool
//! request and the response it got, every clock reading, every state patch,
//! every human decision, and at the end the state hash and the receipts.
//! [`crate::replay`] re-executes the workflow against it and must arrive at
//! the same state hash and receipts.
//!
//! Every line carries the format version, its sequence number and `prev`,
//! the SHA-256 of the previous line's bytes, then one key naming the entry
//! with the entry's fields as its value:
//! `{"v":2,"seq":3,"prev":"…","tool_request":{"step":"charge",…}}`.
//!
//! Format v2 (this build) is v1 made lean for replay (see
//! `docs/benchmarks.md`): the entry is keyed by its kind instead of a
//! `kind` field beside the others (so it is parsed in one pass, without
//! buffering the line), a tool request carries its clock reading (`at`)
//! instead of a `clock` line before it, and a tool response carries the
//! state change it made (`version`, `patch`) instead of a `state_patch`
//! line after it, leaving out the `add /outputs/STEP` operation that
//! repeats the response's output. Two lines per step instead of four. A v1
//! transcript is refused (`TRANSCRIPT_VERSION_UNSUPPORTED`, naming the
//! version): replay it with the autobiz that wrote it, or record it again.
//!
//! The chain The chain makes an edited,
//! reordered or dropped line an error at read time ([`TRANSCRIPT_CORRUPT`]),
//! before any replay; a file that stops before `run_end` is
//! `TRANSCRIPT_TRUNCATED`; a newer format is `TRANSCRIPT_VERSION_UNSUPPORTED`.
//! Reading never panics on bad bytes.
//!
//! Transcripts hold tool payloads as the tools saw them (customer data, the
//! same class as the store's rows); credentials never appear in them because
//! tools read those from the secrets provider, not from their input.
//!
//! [`TRANSCRIPT_CORRUPT`]: crate::ErrorCode::TranscriptCorrupt

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::canonical::sha256_hex_of;

use crate::bounds::Termination;
use crate::error::{Error, ErrorCode, Result};
use crate::run::{Patch, RunStatus, StepOutcome};

/// The format version this build writes and the newest it reads.
pub const TRANSCRIPT_VERSION: u32 = 2;

/// One event of a run's history. On a line, the variant's name (snake
/// case) is the key whose value holds its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry {
    RunStart {
        run_id: String,
        tenant: String,
        principal: String,
        workflow: String,
        config_hash: String,
        /// Model, prompt-template hashes and anything else the run pins.
        pins: Value,
        event: Value,
    },
    /// A reading of the injected clock not tied to a request (a request
    /// carries its own, `at`).
    Clock {
        at: DateTime<Utc>,
    },
    ToolRequest {
        step: String,
        visit: u32,
        tool: String,
        version: String,
        input: Value,
        /// The external idempotency key sent to the provider, for side effects.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        /// The injected clock's reading as the call began.
        at: DateTime<Utc>,
    },
    ToolResponse {
        step: String,
        visit: u32,
        outcome: StepOutcome,
        /// When the response was taken (for a stored result: when it was
        /// first completed). An activity result, like the output.
        at: DateTime<Utc>,
        /// The stored result of an earlier execution (an idempotency hit).
        #[serde(default)]
        replayed: bool,
        /// This response is a side effect of this run (a fresh execution, or
        /// this run's own execution finished before a crash), so it has a
        /// receipt here.
        #[serde(default)]
        effect: bool,
        /// Set when the call ended the run (a bound ran out during it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ended: Option<Termination>,
        /// The state version this response's transition made.
        version: i64,
        /// What the transition changed, without the `add /outputs/STEP`
        /// operation of a successful call (its value is `outcome.ok.output`;
        /// [`Patch::with_output`] puts it back).
        patch: Patch,
    },
    /// One model turn of an agent step, written before it is acted on: a
    /// resumed run and a replay take the reply from here instead of asking
    /// the model again.
    ModelTurn {
        step: String,
        visit: u32,
        /// 1 for the step's first turn.
        turn: u32,
        /// SHA-256 of the messages sent (replay checks it is what the
        /// recorded history asks).
        request_sha256: String,
        /// The pin the call ran under.
        model: String,
        prompt_template_sha256: String,
        /// The model's reply, as received.
        content: String,
        prompt_tokens: u64,
        completion_tokens: u64,
        cost_micro_usd: u64,
        at: DateTime<Utc>,
    },
    /// The executor is about to run the tool an agent's turn proposed.
    AgentCall {
        step: String,
        visit: u32,
        turn: u32,
        tool: String,
        version: String,
        input: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        at: DateTime<Utc>,
    },
    /// What the executor answered to a proposal, as fed back to the model
    /// (an error's message as traced).
    AgentResult {
        step: String,
        visit: u32,
        turn: u32,
        outcome: StepOutcome,
        at: DateTime<Utc>,
        #[serde(default)]
        replayed: bool,
        /// A side effect of this run: it has a receipt.
        #[serde(default)]
        effect: bool,
    },
    /// What a transition other than a tool response changed in the run's state, and the version it made.
    StatePatch {
        version: i64,
        patch: Patch,
    },
    /// The run paused at `step` for a human decision.
    HitlRequested {
        request_id: String,
        step: String,
        visit: u32,
    },
    /// `decision`: `approved`, `denied` or `expired`.
    HitlDecision {
        request_id: String,
        step: String,
        decision: String,
        approver: Option<String>,
    },
    /// The run stopped before a call: a bound ran out at the step's start,
    /// or its input did not resolve.
    RunStopped {
        termination: Termination,
        error: String,
        /// The step whose input failed to resolve; none when a bound ran out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<String>,
    },
    /// A process picked the run up again after a crash or a restart; a
    /// request without a response before this line was cut off.
    Resumed {
        state_version: i64,
    },
    RunEnd {
        status: RunStatus,
        termination: Termination,
        state_sha256: String,
        receipts: Vec<ReceiptDigest>,
    },
}

impl Entry {
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::RunStart { .. } => "run_start",
            Entry::Clock { .. } => "clock",
            Entry::ToolRequest { .. } => "tool_request",
            Entry::ToolResponse { .. } => "tool_response",
            Entry::StatePatch { .. } => "state_patch",
            Entry::ModelTurn { .. } => "model_turn",
            Entry::AgentCall { .. } => "agent_call",
            Entry::AgentResult { .. } => "agent_result",
            Entry::HitlRequested { .. } => "hitl_requested",
            Entry::HitlDecision { .. } => "hitl_decision",
            Entry::RunStopped { .. } => "run_stopped",
            Entry::Resumed { .. } => "resumed",
            Entry::RunEnd { .. } => "run_end",
        }
    }
}

/// What a receipt proves, as both a live run and its replay compute it:
/// every field follows from the call and its outcome (the receipt's
/// timestamps are in the store and in the response line's `at`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptDigest {
    pub step: String,
    pub visit: u32,
    pub tool: String,
    pub version: String,
    pub external_key: String,
    pub request_sha256: String,
    pub response_sha256: String,
}

/// One line as written: `v`, `seq`, `prev`, then the entry's kind as the
/// key of its fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub v: u32,
    pub seq: u64,
    /// SHA-256 (hex) of the previous line's bytes; empty on the first line.
    pub prev: String,
    #[serde(flatten)]
    pub entry: Entry,
}

/// `line` as JSON: byte for byte what its derived `Serialize` writes
/// (`serde_json::to_string(line)`), without serde's `flatten` path, which
/// buffers every field of the entry (its inputs and outputs included) as
/// untyped content and then serializes that copy. The entry is written as
/// it is alone, `{"kind":{...}}`, right after the envelope, and its opening
/// brace becomes the comma that joins its one key to the envelope's.
/// Every entry is a struct variant, so its JSON is an object.
fn encode_line(line: &Line) -> serde_json::Result<String> {
    use serde::ser::Error as _;
    let mut out = Vec::with_capacity(512);
    write!(out, r#"{{"v":{},"seq":{},"prev":"#, line.v, line.seq).map_err(serde_json::Error::io)?;
    serde_json::to_writer(&mut out, &line.prev)?;
    let joint = out.len();
    serde_json::to_writer(&mut out, &line.entry)?;
    if out.get(joint) != Some(&b'{') {
        return Err(serde_json::Error::custom("a transcript entry is not a JSON object"));
    }
    out[joint] = b',';
    String::from_utf8(out).map_err(serde_json::Error::custom)
}

/// Read in one pass: the envelope's fields, and the one other key names the
/// entry, whose fields are parsed straight into their variant (serde's
/// `flatten` would buffer the whole line as untyped content first).
impl<'de> Deserialize<'de> for Line {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Line, D::Error> {
        deserializer.deserialize_map(LineVisitor)
    }
}

struct LineVisitor;

impl<'de> serde::de::Visitor<'de> for LineVisitor {
    type Value = Line;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a transcript line: v, seq, prev and one entry")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Line, A::Error> {
        use serde::de::Error as _;
        let (mut v, mut seq, mut prev, mut entry) = (None, None, None, None);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "v" => v = Some(map.next_value::<u32>()?),
                "seq" => seq = Some(map.next_value::<u64>()?),
                "prev" => prev = Some(map.next_value::<String>()?),
                kind => {
                    if entry.is_some() {
                        return Err(A::Error::custom(format!("a second entry `{kind}` on one line")));
                    }
                    entry = Some(map.next_value_seed(EntrySeed(kind))?);
                }
            }
        }
        Ok(Line {
            v: v.ok_or_else(|| A::Error::missing_field("v"))?,
            seq: seq.ok_or_else(|| A::Error::missing_field("seq"))?,
            prev: prev.ok_or_else(|| A::Error::missing_field("prev"))?,
            entry: entry.ok_or_else(|| A::Error::custom("no entry on the line"))?,
        })
    }
}

/// [`Entry`] from a value whose variant name was the key before it.
struct EntrySeed<'k>(&'k str);

impl<'de> serde::de::DeserializeSeed<'de> for EntrySeed<'_> {
    type Value = Entry;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> std::result::Result<Entry, D::Error> {
        Entry::deserialize(Variant { name: self.0, de })
    }
}

/// A deserializer presenting `de` as the fields of enum variant `name`.
struct Variant<'k, D> {
    name: &'k str,
    de: D,
}

impl<'de, D: serde::Deserializer<'de>> serde::Deserializer<'de> for Variant<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, D::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, D: serde::Deserializer<'de>> serde::de::EnumAccess<'de> for Variant<'_, D> {
    type Error = D::Error;
    type Variant = Self;

    fn variant_seed<S: serde::de::DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> std::result::Result<(S::Value, Self), D::Error> {
        let name = seed.deserialize(serde::de::value::StrDeserializer::<D::Error>::new(self.name))?;
        Ok((name, self))
    }
}

impl<'de, D: serde::Deserializer<'de>> serde::de::VariantAccess<'de> for Variant<'_, D> {
    type Error = D::Error;

    fn unit_variant(self) -> std::result::Result<(), D::Error> {
        serde::de::IgnoredAny::deserialize(self.de).map(|_| ())
    }

    fn newtype_variant_seed<S: serde::de::DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> std::result::Result<S::Value, D::Error> {
        seed.deserialize(self.de)
    }

    fn tuple_variant<V: serde::de::Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> std::result::Result<V::Value, D::Error> {
        self.de.deserialize_tuple(len, visitor)
    }

    fn struct_variant<V: serde::de::Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> std::result::Result<V::Value, D::Error> {
        self.de.deserialize_struct("entry", fields, visitor)
    }
}

/// Appends lines to a transcript, keeping the chain.
pub struct TranscriptWriter {
    out: Box<dyn Write + Send>,
    seq: u64,
    prev: String,
    /// Every line written, kept when the writer records to memory.
    lines: Vec<String>,
    keep: bool,
}

impl std::fmt::Debug for TranscriptWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranscriptWriter").field("seq", &self.seq).finish_non_exhaustive()
    }
}

impl TranscriptWriter {
    /// Write to `path` (created or truncated).
    pub fn create(path: &Path) -> Result<TranscriptWriter> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io(path, e))?;
        }
        let file = std::fs::File::create(path).map_err(|e| io(path, e))?;
        Ok(TranscriptWriter::to(Box::new(std::io::BufWriter::new(file))))
    }

    /// Continue the transcript at `path` for a resumed run: the chain goes
    /// on from its last complete line, and a line cut off by a crash
    /// (no final newline) is removed first. Returns the writer and the
    /// entries so far.
    pub fn resume(path: &Path) -> Result<(TranscriptWriter, Vec<Entry>)> {
        if !path.exists() {
            // The process died before it wrote its first line.
            return Ok((TranscriptWriter::create(path)?, Vec::new()));
        }
        let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
        let complete = bytes.iter().rposition(|b| *b == b'\n').map(|i| i + 1).unwrap_or(0);
        if complete < bytes.len() {
            let file = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| io(path, e))?;
            file.set_len(complete as u64).map_err(|e| io(path, e))?;
            file.sync_all().map_err(|e| io(path, e))?;
        }
        let (lines, last) = read_lines(path)?;
        let seq = lines.last().map_or(0, |l| l.seq + 1);
        let file = std::fs::OpenOptions::new().append(true).open(path).map_err(|e| io(path, e))?;
        let mut w = TranscriptWriter::to(Box::new(std::io::BufWriter::new(file)));
        w.seq = seq;
        w.prev = last;
        Ok((w, lines.into_iter().map(|l| l.entry).collect()))
    }

    /// Write to any sink.
    pub fn to(out: Box<dyn Write + Send>) -> TranscriptWriter {
        TranscriptWriter { out, seq: 0, prev: String::new(), lines: Vec::new(), keep: false }
    }

    /// Keep the lines in memory only ([`TranscriptWriter::lines`]).
    pub fn memory() -> TranscriptWriter {
        let mut w = TranscriptWriter::to(Box::new(std::io::sink()));
        w.keep = true;
        w
    }

    /// Append one entry and flush it, so a crash loses at most the line in
    /// flight (which the reader then reports as truncated or corrupt).
    pub fn write(&mut self, entry: Entry) -> Result<()> {
        let line = Line { v: TRANSCRIPT_VERSION, seq: self.seq, prev: std::mem::take(&mut self.prev), entry };
        let raw = encode_line(&line)
            .map_err(|e| Error::new(ErrorCode::TranscriptIo, format!("cannot encode a transcript line: {e}")))?;
        self.out
            .write_all(raw.as_bytes())
            .and_then(|()| self.out.write_all(b"\n"))
            .and_then(|()| self.out.flush())
            .map_err(|e| Error::new(ErrorCode::TranscriptIo, format!("cannot write the transcript: {e}")))?;
        self.prev = sha256_hex_of(raw.as_bytes());
        self.seq += 1;
        if self.keep {
            self.lines.push(raw);
        }
        Ok(())
    }

    /// The lines written so far (memory writers only).
    pub fn lines(&self) -> &[String] {
        &self.lines
    }
}

/// A transcript read back and checked: every line parsed, the version
/// known, the chain intact.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub lines: Vec<Line>,
}

impl Transcript {
    /// Read and check `path`.
    pub fn read(path: &Path) -> Result<Transcript> {
        Ok(Transcript { lines: read_lines(path)?.0 })
    }

    /// Read and check transcript text.
    pub fn parse(text: &str) -> Result<Transcript> {
        Ok(Transcript { lines: parse_lines(text, "transcript")?.0 })
    }

    /// The entries in order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.lines.iter().map(|l| &l.entry)
    }

    /// Check that the run's history is complete: it starts with `run_start`
    /// and ends with `run_end`.
    pub fn require_complete(&self) -> Result<()> {
        match self.lines.first().map(|l| &l.entry) {
            Some(Entry::RunStart { .. }) => {}
            Some(other) => {
                return Err(Error::new(
                    ErrorCode::TranscriptCorrupt,
                    format!("the transcript starts with {} instead of run_start", other.kind()),
                ));
            }
            None => return Err(Error::new(ErrorCode::TranscriptTruncated, "the transcript is empty")),
        }
        match self.lines.last() {
            Some(Line { entry: Entry::RunEnd { .. }, .. }) => Ok(()),
            Some(last) => Err(Error::new(
                ErrorCode::TranscriptTruncated,
                format!(
                    "the transcript stops at line {} ({}) before run_end: the run did not finish or the file was cut",
                    last.seq + 1,
                    last.entry.kind()
                ),
            )),
            None => Err(Error::new(ErrorCode::TranscriptTruncated, "the transcript is empty")),
        }
    }
}

/// The lines of `path`, checked, and the hash the next line's `prev` is.
fn read_lines(path: &Path) -> Result<(Vec<Line>, String)> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    let name = path.display().to_string();
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::new(ErrorCode::TranscriptCorrupt, format!("{name}: not UTF-8 text")))?;
    parse_lines(text, &name)
}

/// Below this size a transcript is read on one thread.
const PARALLEL_READ_MIN_BYTES: usize = 256 * 1024;

fn parse_lines(text: &str, name: &str) -> Result<(Vec<Line>, String)> {
    let hex = |digest: Option<[u8; 32]>| digest.map(hex::encode).unwrap_or_default();
    // A long transcript is read in two halves, split after a line, on two
    // threads; the link between them (the second half's first `prev`) is
    // checked once both are read, before any error of the second half, so
    // the first bad line is the one reported, as when read in one pass.
    let mid = text.len() / 2;
    let split = text[mid..].find('\n').map(|i| mid + i + 1).filter(|at| *at < text.len());
    let Some(at) = split.filter(|_| text.len() >= PARALLEL_READ_MIN_BYTES) else {
        let (lines, last, read) = parse_part(text, 0, name, true);
        read?;
        return Ok((lines, hex(last)));
    };
    let (head, tail) = text.split_at(at);
    // Every line of the head ends with a newline.
    let first = head.bytes().filter(|b| *b == b'\n').count();
    let (a, b) = std::thread::scope(|scope| {
        let b = scope.spawn(|| parse_part(tail, first, name, false));
        let a = parse_part(head, 0, name, true);
        (a, b.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    let (mut lines, head_last, read) = a;
    read?;
    let (tail_lines, tail_last, read) = b;
    if let Some(line) = tail_lines.first() {
        check_link(line, head_last.as_ref(), name, first + 1)?;
    }
    read?;
    lines.extend(tail_lines);
    Ok((lines, hex(tail_last.or(head_last))))
}

/// The lines of `text`, the part of a transcript that starts at line index
/// `first`, each parsed and checked, up to the first bad one (whose error
/// comes third), and the digest of the last line read. Each line's `prev`
/// is checked against the line before it; the part's first line's only when
/// `start` (it is then the transcript's first line), else by the caller.
fn parse_part(text: &str, first: usize, name: &str, start: bool) -> (Vec<Line>, Option<[u8; 32]>, Result<()>) {
    let mut out: Vec<Line> = Vec::with_capacity(text.len() / 256);
    // The previous line's digest (none before the first line), compared
    // with each line's `prev` without building a hex string per line.
    let mut prev: Option<[u8; 32]> = None;
    for (i, raw) in text.lines().enumerate().map(|(i, raw)| (first + i, raw)) {
        let n = i + 1;
        let line = match parse_line(raw, name, i) {
            Ok(line) => line,
            Err(e) => return (out, prev, Err(e)),
        };
        if (i > first || start)
            && let Err(e) = check_link(&line, prev.as_ref(), name, n)
        {
            return (out, prev, Err(e));
        }
        prev = Some(Sha256::digest(raw.as_bytes()).into());
        out.push(line);
    }
    (out, prev, Ok(()))
}

/// Line index `i` (`raw`) parsed, its version known, its sequence number
/// checked.
fn parse_line(raw: &str, name: &str, i: usize) -> Result<Line> {
    let n = i + 1;
    if raw.trim().is_empty() {
        return Err(Error::new(ErrorCode::TranscriptCorrupt, format!("{name} line {n}: empty line")));
    }
    // The common case in one pass; on any error, look at the version
    // before the shape, so another format is named as such rather than
    // as garbage.
    let line = match serde_json::from_str::<Line>(raw) {
        Ok(line) if line.v == TRANSCRIPT_VERSION => line,
        _ => diagnose(raw, name, n)?,
    };
    if line.seq != i as u64 {
        return Err(Error::new(
            ErrorCode::TranscriptCorrupt,
            format!("{name} line {n}: sequence number {} where {} was due (a line was dropped or moved)", line.seq, i),
        ));
    }
    Ok(line)
}

/// Line `n`'s `prev` is the digest of the line before it (`None`: it is
/// the first line, whose `prev` is empty).
fn check_link(line: &Line, before: Option<&[u8; 32]>, name: &str, n: usize) -> Result<()> {
    let chained = match before {
        None => line.prev.is_empty(),
        Some(digest) => {
            // Compared as the lowercase hex that was written (one spelling
            // per chain): encoding 32 bytes is cheaper than decoding and
            // validating 64 characters, on every line.
            let mut ours = [0u8; 64];
            hex::encode_to_slice(digest, &mut ours).is_ok() && line.prev.as_bytes() == ours
        }
    };
    if chained {
        return Ok(());
    }
    Err(Error::new(
        ErrorCode::TranscriptCorrupt,
        format!("{name} line {n}: the chain is broken (the previous line was changed)"),
    ))
}

/// Why a line does not parse: truncated, a newer format, or garbage.
fn diagnose(raw: &str, name: &str, n: usize) -> Result<Line> {
    let value: Value = serde_json::from_str(raw).map_err(|e| {
        let code = if e.is_eof() { ErrorCode::TranscriptTruncated } else { ErrorCode::TranscriptCorrupt };
        Error::new(code, format!("{name} line {n}: not a JSON line ({e})"))
    })?;
    match value.get("v").and_then(Value::as_u64) {
        Some(v) if v > u64::from(TRANSCRIPT_VERSION) => {
            return Err(Error::new(
                ErrorCode::TranscriptVersionUnsupported,
                format!(
                    "{name} line {n}: transcript format v{v} is newer than this autobiz reads (v{TRANSCRIPT_VERSION}); upgrade autobiz"
                ),
            ));
        }
        Some(v) if v < u64::from(TRANSCRIPT_VERSION) => {
            return Err(Error::new(
                ErrorCode::TranscriptVersionUnsupported,
                format!(
                    "{name} line {n}: transcript format v{v} is older than this autobiz reads (v{TRANSCRIPT_VERSION}); replay it with the autobiz that wrote it, or record the run again"
                ),
            ));
        }
        Some(_) => {}
        None => {
            return Err(Error::new(ErrorCode::TranscriptCorrupt, format!("{name} line {n}: no format version `v`")));
        }
    }
    serde_json::from_str::<Line>(raw)
        .map_err(|e| Error::new(ErrorCode::TranscriptCorrupt, format!("{name} line {n}: {e}")))
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::new(ErrorCode::TranscriptIo, format!("{}: {e}", path.display())).with_source(e)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> Vec<String> {
        with_clocks(|w| w.lines().len() < 2)
    }

    /// run_start, `clock` lines while `more`, run_end.
    fn with_clocks(more: impl Fn(&TranscriptWriter) -> bool) -> Vec<String> {
        let mut w = TranscriptWriter::memory();
        w.write(Entry::RunStart {
            run_id: "r1".into(),
            tenant: "acme".into(),
            principal: "agent".into(),
            workflow: "WF01".into(),
            config_hash: "abc".into(),
            pins: json!({}),
            event: json!({"order": "1"}),
        })
        .unwrap();
        while more(&w) {
            w.write(Entry::Clock { at: DateTime::from_timestamp(1_700_000_000, 0).unwrap() }).unwrap();
        }
        w.write(Entry::RunEnd {
            status: RunStatus::Completed,
            termination: Termination::Completed,
            state_sha256: "00".into(),
            receipts: vec![],
        })
        .unwrap();
        w.lines().to_vec()
    }

    #[test]
    fn inv06_a_written_transcript_reads_back() {
        let text = sample().join("\n");
        let t = Transcript::parse(&text).unwrap();
        assert_eq!(t.lines.len(), 3);
        t.require_complete().unwrap();
    }

    #[test]
    fn inv06_an_edited_line_breaks_the_chain() {
        let mut lines = sample();
        lines[1] = lines[1].replace("2023", "2024");
        let e = Transcript::parse(&lines.join("\n")).unwrap_err();
        assert_eq!(e.code(), ErrorCode::TranscriptCorrupt, "{e}");
        assert!(e.message().contains("line 3"), "{e}");
    }

    /// A transcript long enough to be read on two threads.
    fn long() -> Vec<String> {
        with_clocks(|w| w.lines().iter().map(String::len).sum::<usize>() < 2 * PARALLEL_READ_MIN_BYTES)
    }

    #[test]
    fn inv06_a_long_transcript_read_in_two_halves_reports_the_first_bad_line() {
        let lines = long();
        let t = Transcript::parse(&lines.join("\n")).unwrap();
        assert_eq!(t.lines.len(), lines.len());
        assert!(t.lines.iter().enumerate().all(|(i, l)| l.seq == i as u64));
        // An edited line breaks the link of the next, wherever the halves
        // meet; of two edits, the first is reported.
        let middle = lines.len() / 2;
        for i in middle - 3..middle + 3 {
            let mut edited = lines.clone();
            edited[i] = edited[i].replace("22:13:20", "22:13:21");
            let e = Transcript::parse(&edited.join("\n")).unwrap_err();
            assert!(e.message().contains(&format!("line {}: the chain", i + 2)), "{i}: {e}");
            edited[lines.len() - 5] = edited[lines.len() - 5].replace("22:13:20", "22:13:21");
            let e = Transcript::parse(&edited.join("\n")).unwrap_err();
            assert!(e.message().contains(&format!("line {}: the chain", i + 2)), "{i}: {e}");
            // A dropped line is named where it is missing.
            let mut dropped = lines.clone();
            dropped.remove(i);
            let e = Transcript::parse(&dropped.join("\n")).unwrap_err();
            assert!(e.message().contains(&format!("line {}: sequence number", i + 1)), "{i}: {e}");
        }
        // The digest a resumed writer chains on is the last line's.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let (_, last) = read_lines(&path).unwrap();
        assert_eq!(last, sha256_hex_of(lines.last().unwrap().as_bytes()));
    }

    #[test]
    fn inv06_a_dropped_line_is_named() {
        let lines = sample();
        let e = Transcript::parse(&[lines[0].clone(), lines[2].clone()].join("\n")).unwrap_err();
        assert_eq!(e.code(), ErrorCode::TranscriptCorrupt);
        assert!(e.message().contains("dropped"), "{e}");
    }

    #[test]
    fn inv06_a_cut_file_is_truncated_not_a_panic() {
        let text = sample().join("\n");
        for cut in 0..text.len() {
            match Transcript::parse(&text[..cut]) {
                Ok(t) => assert!(cut == 0 || t.require_complete().is_err() || cut == text.len()),
                Err(e) => assert!(
                    matches!(e.code(), ErrorCode::TranscriptTruncated | ErrorCode::TranscriptCorrupt),
                    "{cut}: {e}"
                ),
            }
        }
        let two = sample()[..2].join("\n");
        assert_eq!(
            Transcript::parse(&two).unwrap().require_complete().unwrap_err().code(),
            ErrorCode::TranscriptTruncated
        );
    }

    #[test]
    fn inv06_a_newer_format_is_refused_by_version() {
        let mut lines = sample();
        lines[0] = lines[0].replacen("\"v\":2", "\"v\":3", 1);
        let e = Transcript::parse(&lines.join("\n")).unwrap_err();
        assert_eq!(e.code(), ErrorCode::TranscriptVersionUnsupported);
        assert!(e.message().contains("v3 is newer"), "{e}");
    }

    #[test]
    fn inv06_a_v1_transcript_is_refused_by_version_not_as_garbage() {
        let v1 = r#"{"v":1,"seq":0,"prev":"","kind":"run_start","run_id":"r1","tenant":"acme","principal":"agent","workflow":"WF01","config_hash":"abc","pins":{},"event":{}}"#;
        let e = Transcript::parse(v1).unwrap_err();
        assert_eq!(e.code(), ErrorCode::TranscriptVersionUnsupported, "{e}");
        assert!(e.message().contains("v1 is older") && e.message().contains("record the run again"), "{e}");
    }

    #[test]
    fn inv06_a_line_is_its_envelope_and_one_entry_keyed_by_kind() {
        let lines = sample();
        assert!(lines[0].starts_with(r#"{"v":2,"seq":0,"prev":"","run_start":{"run_id":"r1""#), "{}", lines[0]);
        // Two entries on one line, or none, are refused.
        let two = lines[0].replacen(r#""run_start":"#, r#""clock":{"at":"2023-11-14T22:13:20Z"},"run_start":"#, 1);
        assert_eq!(Transcript::parse(&two).unwrap_err().code(), ErrorCode::TranscriptCorrupt);
        let none = r#"{"v":2,"seq":0,"prev":""}"#;
        assert_eq!(Transcript::parse(none).unwrap_err().code(), ErrorCode::TranscriptCorrupt);
        let unknown = r#"{"v":2,"seq":0,"prev":"","teleport":{}}"#;
        assert_eq!(Transcript::parse(unknown).unwrap_err().code(), ErrorCode::TranscriptCorrupt);
    }

    /// One entry of every kind, with the awkward values: escapes and
    /// non-ASCII text, absent and present options, large and negative
    /// numbers, a float, nested objects.
    fn every_kind() -> Vec<Entry> {
        let at = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        let value = json!({"b": [1, -2, 1.5, u64::MAX, null, true], "a": {"q": "say \"hi\"\n\u{7}", "é": "ü€😀"}});
        let patch = Patch(vec![crate::run::PatchOp {
            op: crate::run::PatchOpKind::Add,
            path: "/outputs/fetch".into(),
            value: value.clone(),
        }]);
        vec![
            Entry::RunStart {
                run_id: "r\"1".into(),
                tenant: "acme".into(),
                principal: "agent:ü".into(),
                workflow: "WF01".into(),
                config_hash: "abc".into(),
                pins: json!({}),
                event: value.clone(),
            },
            Entry::Clock { at },
            Entry::ToolRequest {
                step: "fetch".into(),
                visit: 2,
                tool: "shopify.order.get".into(),
                version: "1".into(),
                input: value.clone(),
                idempotency_key: Some("k1".into()),
                at,
            },
            Entry::ToolRequest {
                step: "fetch".into(),
                visit: 1,
                tool: "t".into(),
                version: "1".into(),
                input: json!(null),
                idempotency_key: None,
                at,
            },
            Entry::ToolResponse {
                step: "fetch".into(),
                visit: 1,
                outcome: StepOutcome::Ok { output: value.clone() },
                at,
                replayed: true,
                effect: false,
                ended: Some(Termination::MaxSteps),
                version: i64::MAX,
                patch: patch.clone(),
            },
            Entry::ToolResponse {
                step: "fetch".into(),
                visit: 1,
                outcome: StepOutcome::Err { code: "TOOL_FAILED".into(), message: "no \"way\"".into() },
                at,
                replayed: false,
                effect: true,
                ended: None,
                version: -1,
                patch: Patch(vec![]),
            },
            Entry::StatePatch { version: 3, patch },
            Entry::ModelTurn {
                step: "classify".into(),
                visit: 1,
                turn: 1,
                request_sha256: "00".into(),
                model: "gpt-4o-mini".into(),
                prompt_template_sha256: "11".into(),
                content: "{\"intent\": \"wismo\"}\n".into(),
                prompt_tokens: 12,
                completion_tokens: u64::MAX,
                cost_micro_usd: 0,
                at,
            },
            Entry::AgentCall {
                step: "classify".into(),
                visit: 1,
                turn: 2,
                tool: "printful.order.get".into(),
                version: "1".into(),
                input: value.clone(),
                idempotency_key: None,
                at,
            },
            Entry::AgentResult {
                step: "classify".into(),
                visit: 1,
                turn: 2,
                outcome: StepOutcome::Ok { output: value },
                at,
                replayed: false,
                effect: true,
            },
            Entry::HitlRequested { request_id: "hitl_1".into(), step: "refund".into(), visit: 1 },
            Entry::HitlDecision {
                request_id: "hitl_1".into(),
                step: "refund".into(),
                decision: "denied".into(),
                approver: None,
            },
            Entry::HitlDecision {
                request_id: "hitl_1".into(),
                step: "refund".into(),
                decision: "approved".into(),
                approver: Some("ops-lead".into()),
            },
            Entry::RunStopped { termination: Termination::MaxWallTime, error: "late".into(), step: None },
            Entry::RunStopped { termination: Termination::Completed, error: "".into(), step: Some("s".into()) },
            Entry::Resumed { state_version: 0 },
            Entry::RunEnd {
                status: RunStatus::Completed,
                termination: Termination::Completed,
                state_sha256: "00".into(),
                receipts: vec![ReceiptDigest {
                    step: "s".into(),
                    visit: 1,
                    tool: "t".into(),
                    version: "1".into(),
                    external_key: "e".into(),
                    request_sha256: "r".into(),
                    response_sha256: "q".into(),
                }],
            },
        ]
    }

    #[test]
    fn inv06_a_line_is_written_byte_for_byte_as_its_derived_serialization() {
        let entries = every_kind();
        let kinds: std::collections::BTreeSet<_> = entries.iter().map(Entry::kind).collect();
        assert_eq!(kinds.len(), 13, "every kind of entry: {kinds:?}");
        let mut w = TranscriptWriter::memory();
        for (n, entry) in entries.into_iter().enumerate() {
            let expected = Line { v: TRANSCRIPT_VERSION, seq: n as u64, prev: w.prev.clone(), entry: entry.clone() };
            w.write(entry).unwrap();
            assert_eq!(w.lines()[n], serde_json::to_string(&expected).unwrap(), "line {n}");
        }
        // And it reads back as what was written.
        let t = Transcript::parse(&w.lines().join("\n")).unwrap();
        assert_eq!(t.lines.len(), w.lines().len());
    }

    #[test]
    fn inv06_the_recorded_transcripts_encode_to_their_own_bytes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../golden/transcripts");
        let mut checked = 0;
        for file in std::fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "jsonl") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (raw, line) in text.lines().zip(Transcript::parse(&text).unwrap().lines) {
                    assert_eq!(encode_line(&line).unwrap(), raw, "{}", path.display());
                    checked += 1;
                }
            }
        }
        assert!(checked > 30, "only {checked} recorded lines under {}", dir.display());
    }

    #[test]
    fn inv06_garbage_is_corrupt() {
        for junk in ["not json", "{}", "{\"v\":2}", "[1,2]", "\u{0}", "{\"v\":2,\"seq\":0,\"prev\":\"\",\"clock\":7}"] {
            let e = Transcript::parse(junk).unwrap_err();
            assert!(matches!(e.code(), ErrorCode::TranscriptCorrupt | ErrorCode::TranscriptTruncated), "{junk}: {e}");
        }
    }
}
