//! The HITL condition language: the `when` of a `[[hitl]]` rule, e.g.
//! `amount > 5000 && currency == "usd"`.
//!
//! A tiny expression language over the tool's input, parsed by hand
//! (recursive descent), type-checked against the tool's input JSON Schema at
//! `autobiz check` time ([`Condition::check`]) and evaluated per call
//! ([`Condition::evaluate`]).
//!
//! ```text
//! expr       := or
//! or         := and ( "||" and )*
//! and        := unary ( "&&" unary )*
//! unary      := "!" unary | comparison
//! comparison := operand ( ("==" | "!=" | "<" | "<=" | ">" | ">=") operand )?
//! operand    := number | string | "true" | "false" | "null" | path | "(" expr ")"
//! path       := ident ( "." ident )*          ident := [A-Za-z_][A-Za-z0-9_]*
//! number     := "-"? digits ( "." digits )? ( ("e" | "E") ("+" | "-")? digits )?
//! string     := '"' ( char | "\"" | "\\" | "\/" | "\n" | "\r" | "\t" | "\uXXXX" )* '"'
//! ```
//!
//! Types: number, string, boolean, null. `==` / `!=` compare values of one
//! type (or anything with `null`); `<` `<=` `>` `>=` compare two numbers or two
//! strings; `&&`, `||` and `!` take booleans; the whole condition is boolean.
//! A path names a property of the input (`customer.country` descends through
//! `properties`); its type comes from the schema's `type`, or from its `enum`
//! or `const` values. An unknown field is an error.
//!
//! **Fail closed.** A condition that cannot be evaluated on an input (a field
//! missing, or of another type than the schema said) is an error, and the
//! caller must then require approval ([`Condition::requires_approval`]).
//! `&&` and `||` use three-valued logic: `false && ?` is false and
//! `true || ?` is true, because the unknown side cannot change the result;
//! every other unknown stays unknown. A missing field equals `null` and
//! nothing else: `x == null` is true when `x` is absent, `x == 5` cannot be
//! evaluated.
//!
//! Parsing never panics (a property test feeds it random strings); nesting
//! is limited to [`MAX_DEPTH`] and the text to [`MAX_LEN`] bytes.

use std::fmt;

use serde_json::Value;

use crate::error::{Error, ErrorCode, Result};

/// Deepest nesting of parentheses and `!` accepted.
pub const MAX_DEPTH: usize = 64;
/// Longest condition text accepted, in bytes.
pub const MAX_LEN: usize = 4096;

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    source: String,
    root: Expr,
}

/// Why a condition does not parse or does not type-check: where (1-based
/// character column in the expression) and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionError {
    pub column: usize,
    pub expected: String,
}

impl fmt::Display for ConditionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at column {}: expected {}", self.column, self.expected)
    }
}

impl From<ConditionError> for Error {
    fn from(e: ConditionError) -> Self {
        Error::new(ErrorCode::HitlConditionInvalid, format!("invalid HITL condition {e}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Literal(Value),
    /// Dotted path segments, and the byte offset where the path starts.
    Path(Vec<String>, usize),
    Not(Box<Expr>, usize),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>, usize),
}

// --- Lexer ---------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(serde_json::Number),
    Str(String),
    Ident(String),
    True,
    False,
    Null,
    Dot,
    LParen,
    RParen,
    Not,
    And,
    Or,
    Cmp(CmpOp),
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Num(n) => format!("number {n}"),
            Tok::Str(_) => "a string".to_owned(),
            Tok::Ident(i) => format!("field {i:?}"),
            Tok::True => "true".to_owned(),
            Tok::False => "false".to_owned(),
            Tok::Null => "null".to_owned(),
            Tok::Dot => "\".\"".to_owned(),
            Tok::LParen => "\"(\"".to_owned(),
            Tok::RParen => "\")\"".to_owned(),
            Tok::Not => "\"!\"".to_owned(),
            Tok::And => "\"&&\"".to_owned(),
            Tok::Or => "\"||\"".to_owned(),
            Tok::Cmp(op) => format!("\"{}\"", op.as_str()),
            Tok::End => "the end of the condition".to_owned(),
        }
    }
}

/// Tokens with their byte offsets.
fn lex(src: &str) -> std::result::Result<Vec<(Tok, usize)>, (usize, String)> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let two = |s: &str| src.get(i..i + 2) == Some(s);
        let tok = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => {
                i += 1;
                Tok::LParen
            }
            b')' => {
                i += 1;
                Tok::RParen
            }
            b'.' => {
                i += 1;
                Tok::Dot
            }
            _ if two("&&") => {
                i += 2;
                Tok::And
            }
            _ if two("||") => {
                i += 2;
                Tok::Or
            }
            _ if two("==") => {
                i += 2;
                Tok::Cmp(CmpOp::Eq)
            }
            _ if two("!=") => {
                i += 2;
                Tok::Cmp(CmpOp::Ne)
            }
            _ if two("<=") => {
                i += 2;
                Tok::Cmp(CmpOp::Le)
            }
            _ if two(">=") => {
                i += 2;
                Tok::Cmp(CmpOp::Ge)
            }
            b'<' => {
                i += 1;
                Tok::Cmp(CmpOp::Lt)
            }
            b'>' => {
                i += 1;
                Tok::Cmp(CmpOp::Gt)
            }
            b'!' => {
                i += 1;
                Tok::Not
            }
            b'=' => return Err((start, "\"==\" (a single \"=\" is not an operator)".to_owned())),
            b'&' => return Err((start, "\"&&\"".to_owned())),
            b'|' => return Err((start, "\"||\"".to_owned())),
            b'"' => {
                let (s, end) = lex_string(src, i)?;
                i = end;
                Tok::Str(s)
            }
            b'-' | b'0'..=b'9' => {
                let (n, end) = lex_number(src, i)?;
                i = end;
                Tok::Num(n)
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'_' => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                match &src[start..i] {
                    "true" => Tok::True,
                    "false" => Tok::False,
                    "null" => Tok::Null,
                    word => Tok::Ident(word.to_owned()),
                }
            }
            _ => {
                let ch = src[start..].chars().next().unwrap_or('?');
                return Err((start, format!("a field, a literal or an operator, not {ch:?}")));
            }
        };
        out.push((tok, start));
    }
    out.push((Tok::End, src.len()));
    Ok(out)
}

fn lex_string(src: &str, open: usize) -> std::result::Result<(String, usize), (usize, String)> {
    let mut out = String::new();
    let mut chars = src[open + 1..].char_indices();
    while let Some((k, ch)) = chars.next() {
        let at = open + 1 + k;
        match ch {
            '"' => return Ok((out, at + 1)),
            '\\' => {
                let Some((_, esc)) = chars.next() else { break };
                match esc {
                    '"' => out.push('"'),
                    '\\' => out.push('\\'),
                    '/' => out.push('/'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'u' => {
                        let mut code = 0u32;
                        for _ in 0..4 {
                            let digit = chars.next().and_then(|(_, h)| h.to_digit(16));
                            let Some(d) = digit else {
                                return Err((at, "four hex digits after \\u".to_owned()));
                            };
                            code = code * 16 + d;
                        }
                        let Some(c) = char::from_u32(code) else {
                            return Err((at, "a \\u escape that is a character (not a lone surrogate)".to_owned()));
                        };
                        out.push(c);
                    }
                    _ => return Err((at, "an escape: \\\" \\\\ \\/ \\n \\r \\t or \\uXXXX".to_owned())),
                }
            }
            c => out.push(c),
        }
    }
    Err((open, "a closing '\"' for this string".to_owned()))
}

fn lex_number(src: &str, start: usize) -> std::result::Result<(serde_json::Number, usize), (usize, String)> {
    let bytes = src.as_bytes();
    let mut i = start;
    let digits = |i: &mut usize| {
        let from = *i;
        while *i < bytes.len() && bytes[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > from
    };
    if bytes[i] == b'-' {
        i += 1;
    }
    if !digits(&mut i) {
        return Err((start, "a digit after \"-\"".to_owned()));
    }
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        if !digits(&mut i) {
            return Err((i, "a digit after the decimal point".to_owned()));
        }
    }
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        i += 1;
        if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
            i += 1;
        }
        if !digits(&mut i) {
            return Err((i, "a digit in the exponent".to_owned()));
        }
    }
    if i < bytes.len() && (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_') {
        return Err((i, "an operator or the end after a number".to_owned()));
    }
    let text = &src[start..i];
    match serde_json::from_str::<serde_json::Number>(text) {
        Ok(n) if n.as_f64().is_some_and(f64::is_finite) => Ok((n, i)),
        _ => Err((start, "a number that fits a 64-bit float".to_owned())),
    }
}

// --- Parser ----------------------------------------------------------------------

struct Parser<'a> {
    src: &'a str,
    toks: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
}

type PResult<T> = std::result::Result<T, (usize, String)>;

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        self.toks.get(self.pos).map_or(&Tok::End, |(t, _)| t)
    }

    fn offset(&self) -> usize {
        self.toks.get(self.pos).map_or(self.src.len(), |(_, o)| *o)
    }

    fn bump(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.pos < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn fail<T>(&self, expected: &str) -> PResult<T> {
        Err((self.offset(), format!("{expected}, found {}", self.peek().describe())))
    }

    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err((self.offset(), format!("at most {MAX_DEPTH} levels of nesting")));
        }
        Ok(())
    }

    fn or(&mut self) -> PResult<Expr> {
        let mut left = self.and()?;
        while *self.peek() == Tok::Or {
            self.bump();
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> PResult<Expr> {
        let mut left = self.unary()?;
        while *self.peek() == Tok::And {
            self.bump();
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> PResult<Expr> {
        if *self.peek() == Tok::Not {
            let at = self.offset();
            self.bump();
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner), at));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> PResult<Expr> {
        let left = self.operand()?;
        if let Tok::Cmp(op) = *self.peek() {
            let at = self.offset();
            self.bump();
            let right = self.operand()?;
            if let Tok::Cmp(_) = self.peek() {
                return self.fail("\"&&\", \"||\" or \")\" (comparisons do not chain; use &&)");
            }
            return Ok(Expr::Cmp(op, Box::new(left), Box::new(right), at));
        }
        Ok(left)
    }

    fn operand(&mut self) -> PResult<Expr> {
        let at = self.offset();
        match self.peek().clone() {
            Tok::Num(n) => {
                self.bump();
                Ok(Expr::Literal(Value::Number(n)))
            }
            Tok::Str(s) => {
                self.bump();
                Ok(Expr::Literal(Value::String(s)))
            }
            Tok::True => {
                self.bump();
                Ok(Expr::Literal(Value::Bool(true)))
            }
            Tok::False => {
                self.bump();
                Ok(Expr::Literal(Value::Bool(false)))
            }
            Tok::Null => {
                self.bump();
                Ok(Expr::Literal(Value::Null))
            }
            Tok::Ident(first) => {
                self.bump();
                let mut path = vec![first];
                while *self.peek() == Tok::Dot {
                    self.bump();
                    match self.bump() {
                        Tok::Ident(seg) => path.push(seg),
                        _ => {
                            self.pos -= 1;
                            return self.fail("a field name after \".\"");
                        }
                    }
                }
                Ok(Expr::Path(path, at))
            }
            Tok::LParen => {
                self.bump();
                self.enter()?;
                let inner = self.or()?;
                self.depth -= 1;
                if *self.peek() != Tok::RParen {
                    return self.fail("\")\"");
                }
                self.bump();
                Ok(inner)
            }
            _ => self.fail("a field, a literal, \"!\" or \"(\""),
        }
    }
}

/// 1-based character column of a byte offset.
fn column(src: &str, offset: usize) -> usize {
    let offset = offset.min(src.len());
    src.char_indices().take_while(|(i, _)| *i < offset).count() + 1
}

// --- Types -------------------------------------------------------------------------

/// The type of an operand, as far as the schema tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Number,
    String,
    Bool,
    Null,
    /// The schema does not say (no `type`, `enum` or `const`), or allows
    /// several types.
    Any,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Number => "number",
            Ty::String => "string",
            Ty::Bool => "boolean",
            Ty::Null => "null",
            Ty::Any => "any",
        }
    }

    fn of_value(v: &Value) -> Ty {
        match v {
            Value::Number(_) => Ty::Number,
            Value::String(_) => Ty::String,
            Value::Bool(_) => Ty::Bool,
            Value::Null => Ty::Null,
            Value::Array(_) | Value::Object(_) => Ty::Any,
        }
    }

    fn of_json_type(t: &str) -> Option<Ty> {
        match t {
            "integer" | "number" => Some(Ty::Number),
            "string" => Some(Ty::String),
            "boolean" => Some(Ty::Bool),
            "null" => Some(Ty::Null),
            _ => None,
        }
    }
}

/// The type a property schema gives its values (nullability ignored: `null`
/// is comparable with anything).
fn schema_type(schema: &Value) -> Ty {
    let mut found: Vec<Ty> = Vec::new();
    match schema.get("type") {
        Some(Value::String(t)) => found.extend(Ty::of_json_type(t).or(Some(Ty::Any))),
        Some(Value::Array(ts)) => {
            found.extend(ts.iter().map(|t| t.as_str().and_then(Ty::of_json_type).unwrap_or(Ty::Any)))
        }
        _ => {
            if let Some(Value::Array(values)) = schema.get("enum") {
                found.extend(values.iter().map(Ty::of_value));
            } else if let Some(c) = schema.get("const") {
                found.push(Ty::of_value(c));
            }
        }
    }
    found.retain(|t| *t != Ty::Null);
    found.dedup();
    match found.as_slice() {
        [one] => *one,
        _ => Ty::Any,
    }
}

impl Condition {
    /// Parse `source`. Errors name the column and what was expected there.
    pub fn parse(source: &str) -> std::result::Result<Condition, ConditionError> {
        let err = |offset: usize, expected: String| ConditionError { column: column(source, offset), expected };
        if source.len() > MAX_LEN {
            return Err(err(MAX_LEN, format!("a condition of at most {MAX_LEN} bytes")));
        }
        let toks = lex(source).map_err(|(o, e)| err(o, e))?;
        let mut p = Parser { src: source, toks, pos: 0, depth: 0 };
        if *p.peek() == Tok::End {
            return Err(err(0, "a condition, found nothing (leave `when` out to always require approval)".into()));
        }
        let root = p.or().map_err(|(o, e)| err(o, e))?;
        if *p.peek() != Tok::End {
            let found = p.peek().describe();
            return Err(err(p.offset(), format!("\"&&\", \"||\" or the end, found {found}")));
        }
        Ok(Condition { source: source.to_owned(), root })
    }

    /// The text the condition was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Type-check against a tool's input JSON Schema: every field must be a
    /// declared property, comparisons must compare like with like, and the
    /// whole must be boolean.
    pub fn check(&self, input_schema: &Value) -> std::result::Result<(), ConditionError> {
        let ty = self.type_of(&self.root, input_schema)?;
        if !matches!(ty, Ty::Bool | Ty::Any) {
            return Err(ConditionError {
                column: 1,
                expected: format!("a boolean condition, found a {} value", ty.name()),
            });
        }
        Ok(())
    }

    fn err(&self, offset: usize, expected: String) -> ConditionError {
        ConditionError { column: column(&self.source, offset), expected }
    }

    fn type_of(&self, e: &Expr, schema: &Value) -> std::result::Result<Ty, ConditionError> {
        match e {
            Expr::Literal(v) => Ok(Ty::of_value(v)),
            Expr::Path(path, at) => {
                let mut node = schema;
                for (k, seg) in path.iter().enumerate() {
                    match node.get("properties").and_then(|p| p.get(seg)) {
                        Some(next) => node = next,
                        None => {
                            let mut known: Vec<&str> = node
                                .get("properties")
                                .and_then(Value::as_object)
                                .map(|m| m.keys().map(String::as_str).collect())
                                .unwrap_or_default();
                            known.sort_unstable();
                            let field = path[..=k].join(".");
                            let choice = if known.is_empty() {
                                "(the schema declares no properties here)".to_owned()
                            } else {
                                format!("one of: {}", known.join(", "))
                            };
                            return Err(
                                self.err(*at, format!("a field of the tool input; {field:?} is unknown, {choice}"))
                            );
                        }
                    }
                }
                Ok(schema_type(node))
            }
            Expr::Not(inner, at) => {
                let t = self.type_of(inner, schema)?;
                if !matches!(t, Ty::Bool | Ty::Any) {
                    return Err(self.err(*at, format!("a boolean after \"!\", found a {}", t.name())));
                }
                Ok(Ty::Bool)
            }
            Expr::And(a, b) | Expr::Or(a, b) => {
                for side in [a, b] {
                    let t = self.type_of(side, schema)?;
                    if !matches!(t, Ty::Bool | Ty::Any) {
                        return Err(self.err(
                            self.offset_of(side),
                            format!("a boolean on each side of && and ||, found a {}", t.name()),
                        ));
                    }
                }
                Ok(Ty::Bool)
            }
            Expr::Cmp(op, a, b, at) => {
                let (ta, tb) = (self.type_of(a, schema)?, self.type_of(b, schema)?);
                let ordered = matches!(op, CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge);
                let ok = if ordered {
                    matches!((ta, tb), (Ty::Number | Ty::Any, Ty::Number | Ty::Any))
                        || matches!((ta, tb), (Ty::String | Ty::Any, Ty::String | Ty::Any))
                } else {
                    ta == tb || ta == Ty::Any || tb == Ty::Any || ta == Ty::Null || tb == Ty::Null
                };
                if !ok {
                    let expected = if ordered {
                        format!(
                            "two numbers or two strings around \"{}\", found {} and {}",
                            op.as_str(),
                            ta.name(),
                            tb.name()
                        )
                    } else {
                        format!("values of one type around \"{}\", found {} and {}", op.as_str(), ta.name(), tb.name())
                    };
                    return Err(self.err(*at, expected));
                }
                Ok(Ty::Bool)
            }
        }
    }

    fn offset_of(&self, e: &Expr) -> usize {
        match e {
            Expr::Path(_, at) | Expr::Not(_, at) => *at,
            Expr::Cmp(_, a, _, _) | Expr::And(a, _) | Expr::Or(a, _) => self.offset_of(a),
            Expr::Literal(_) => 0,
        }
    }

    /// Evaluate on a tool input. An error means the condition cannot be
    /// decided on this input (a missing field, a value of another type);
    /// callers must treat it as "approval required" (fail closed).
    pub fn evaluate(&self, input: &Value) -> Result<bool> {
        match eval(&self.root, input) {
            Ok(v) => match v.as_bool() {
                Some(b) => Ok(b),
                None => Err(self.undecidable(&format!("the condition gave a {} value, not a boolean", v.name()))),
            },
            Err(why) => Err(self.undecidable(&why)),
        }
    }

    /// Whether a call with `input` needs a human: the condition's value, and
    /// `true` whenever it cannot be evaluated (fail closed).
    pub fn requires_approval(&self, input: &Value) -> bool {
        self.evaluate(input).unwrap_or(true)
    }

    fn undecidable(&self, why: &str) -> Error {
        Error::new(
            ErrorCode::HitlConditionInvalid,
            format!("HITL condition `{}` cannot be evaluated on this input ({why}): approval is required", self.source),
        )
    }
}

/// A runtime value; `Missing` is a field the input does not have.
#[derive(Debug, Clone, PartialEq)]
enum Val<'a> {
    Bool(bool),
    Json(&'a Value),
    Owned(Value),
    Missing,
}

impl Val<'_> {
    fn json(&self) -> Option<&Value> {
        match self {
            Val::Json(v) => Some(v),
            Val::Owned(v) => Some(v),
            _ => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Val::Bool(_) => "boolean",
            Val::Missing => "missing",
            Val::Json(v) => json_name(v),
            Val::Owned(v) => json_name(v),
        }
    }

    fn as_bool(&self) -> Option<bool> {
        match self {
            Val::Bool(b) => Some(*b),
            _ => self.json().and_then(Value::as_bool),
        }
    }
}

fn json_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn eval<'a>(e: &Expr, input: &'a Value) -> std::result::Result<Val<'a>, String> {
    match e {
        Expr::Literal(v) => Ok(Val::Owned(v.clone())),
        Expr::Path(path, _) => {
            let mut node = input;
            for seg in path {
                match node.get(seg.as_str()) {
                    Some(next) => node = next,
                    None => return Ok(Val::Missing),
                }
            }
            Ok(Val::Json(node))
        }
        Expr::Not(inner, _) => {
            let v = eval(inner, input)?;
            v.as_bool().map(|b| Val::Bool(!b)).ok_or_else(|| format!("\"!\" of a {} value", v.name()))
        }
        Expr::And(a, b) | Expr::Or(a, b) => {
            let is_and = matches!(e, Expr::And(..));
            // Three-valued: a decided side that fixes the result wins over an
            // undecidable other side; otherwise the unknown propagates.
            let side = |x: &Expr| {
                eval(x, input).and_then(|v| v.as_bool().ok_or_else(|| format!("&& / || on a {} value", v.name())))
            };
            let (l, r) = (side(a), side(b));
            let dominant = !is_and; // false for &&, true for ||
            match (l, r) {
                (Ok(x), _) if x == dominant => Ok(Val::Bool(dominant)),
                (_, Ok(y)) if y == dominant => Ok(Val::Bool(dominant)),
                (Ok(_), Ok(_)) => Ok(Val::Bool(!dominant)),
                (Err(why), _) | (_, Err(why)) => Err(why),
            }
        }
        Expr::Cmp(op, a, b, _) => {
            let (l, r) = (eval(a, input)?, eval(b, input)?);
            compare(*op, &l, &r).map(Val::Bool)
        }
    }
}

fn compare(op: CmpOp, l: &Val<'_>, r: &Val<'_>) -> std::result::Result<bool, String> {
    use std::cmp::Ordering;
    let null_like = |v: &Val<'_>| matches!(v, Val::Missing) || v.json().is_some_and(Value::is_null);
    // Equality with null (or a missing field) is decided; any other use of a
    // missing field is not.
    if matches!(op, CmpOp::Eq | CmpOp::Ne) && (null_like(l) && null_like(r)) {
        return Ok(op == CmpOp::Eq);
    }
    let explicit_null = |v: &Val<'_>| v.json().is_some_and(Value::is_null);
    if matches!(op, CmpOp::Eq | CmpOp::Ne) && (explicit_null(l) || explicit_null(r)) {
        if matches!(l, Val::Missing) || matches!(r, Val::Missing) {
            return Ok(op == CmpOp::Eq);
        }
        // One side null, the other a present non-null value.
        return Ok(op == CmpOp::Ne);
    }
    if matches!(l, Val::Missing) || matches!(r, Val::Missing) {
        return Err("a field it compares is missing".to_owned());
    }
    let ordering = match (l.json(), r.json()) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => cmp_numbers(x, y),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        _ => match (l.as_bool(), r.as_bool()) {
            (Some(x), Some(y)) if matches!(op, CmpOp::Eq | CmpOp::Ne) => return Ok((x == y) == (op == CmpOp::Eq)),
            (Some(_), Some(_)) => return Err("ordering of booleans".to_owned()),
            _ => return Err(format!("comparing a {} with a {}", l.name(), r.name())),
        },
    };
    let o = ordering;
    Ok(match op {
        CmpOp::Eq => o == Ordering::Equal,
        CmpOp::Ne => o != Ordering::Equal,
        CmpOp::Lt => o == Ordering::Less,
        CmpOp::Le => o != Ordering::Greater,
        CmpOp::Gt => o == Ordering::Greater,
        CmpOp::Ge => o != Ordering::Less,
    })
}

/// Exact for integers (i64/u64), IEEE for the rest.
fn cmp_numbers(x: &serde_json::Number, y: &serde_json::Number) -> std::cmp::Ordering {
    let int = |n: &serde_json::Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
    match (int(x), int(y)) {
        (Some(a), Some(b)) => a.cmp(&b),
        _ => {
            let (a, b) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            a.total_cmp(&b)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn eval_on(src: &str, input: Value) -> Result<bool> {
        Condition::parse(src).unwrap().evaluate(&input)
    }

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "amount": {"type": "integer"},
                "currency": {"type": "string"},
                "vip": {"type": "boolean"},
                "reason": {"enum": ["fraud", "customer"]},
                "note": {"type": ["string", "null"]},
                "customer": {"type": "object", "properties": {"country": {"type": "string"}}}
            }
        })
    }

    #[test]
    fn p1_t_cc04_condition_the_examples_parse_and_evaluate() {
        assert!(eval_on("amount > 100 && currency == \"USD\"", json!({"amount": 101, "currency": "USD"})).unwrap());
        assert!(!eval_on("amount > 100 && currency == \"USD\"", json!({"amount": 100, "currency": "USD"})).unwrap());
        assert!(!eval_on("amount > 100 && currency == \"USD\"", json!({"amount": 500, "currency": "EUR"})).unwrap());
        assert!(eval_on("reason == \"fraud\"", json!({"reason": "fraud"})).unwrap());
        assert!(
            eval_on("customer.country != \"US\" || vip", json!({"customer": {"country": "FR"}, "vip": false})).unwrap()
        );
        assert!(eval_on("!(amount <= 5) && (amount >= 6)", json!({"amount": 6})).unwrap());
        assert!(eval_on("amount < 1.5e3", json!({"amount": 1499})).unwrap());
        assert!(eval_on("amount == -3", json!({"amount": -3})).unwrap());
        assert!(eval_on("note == \"a\\\"b\\u00e9\"", json!({"note": "a\"bé"})).unwrap());
        assert!(eval_on("true", json!({})).unwrap());
        assert!(!eval_on("false || null == 1", json!({})).unwrap());
    }

    #[test]
    fn p1_t_cc04_condition_precedence_is_not_then_and_then_or() {
        // a || b && c parses as a || (b && c).
        assert!(eval_on("true || false && false", json!({})).unwrap());
        assert!(!eval_on("(true || false) && false", json!({})).unwrap());
        assert!(!eval_on("!true || false", json!({})).unwrap());
    }

    #[test]
    fn p1_t_cc04_condition_integers_compare_exactly() {
        let big = json!({"amount": 9_007_199_254_740_993_i64});
        assert!(eval_on("amount > 9007199254740992", big.clone()).unwrap());
        assert!(!eval_on("amount == 9007199254740992", big).unwrap());
    }

    #[test]
    fn inv07_a_condition_that_cannot_be_evaluated_requires_approval() {
        let c = Condition::parse("amount > 5000").unwrap();
        assert!(!c.requires_approval(&json!({"amount": 10})));
        assert!(c.requires_approval(&json!({"amount": 6000})));
        // Missing field, wrong type: fail closed.
        let e = c.evaluate(&json!({})).unwrap_err();
        assert_eq!(e.code(), ErrorCode::HitlConditionInvalid);
        assert!(c.requires_approval(&json!({})));
        assert!(c.requires_approval(&json!({"amount": "6000"})));
        // Equality with a missing field is undecidable too (never "false").
        assert!(Condition::parse("amount == 5").unwrap().requires_approval(&json!({})));
        assert!(Condition::parse("amount != 5").unwrap().requires_approval(&json!({})));
        // Three-valued logic: a side that decides the result wins.
        assert!(!eval_on("currency == \"usd\" && amount > 5", json!({"currency": "eur"})).unwrap());
        assert!(eval_on("currency == \"usd\" || amount > 5", json!({"currency": "usd"})).unwrap());
        assert!(eval_on("currency == \"usd\" && amount > 5", json!({"currency": "usd"})).is_err());
        assert!(eval_on("!(amount > 5)", json!({})).is_err());
        // null equality is decided.
        assert!(eval_on("note == null", json!({})).unwrap());
        assert!(eval_on("note == null", json!({"note": null})).unwrap());
        assert!(!eval_on("note == null", json!({"note": "x"})).unwrap());
        assert!(eval_on("note != null", json!({"note": "x"})).unwrap());
    }

    #[test]
    fn p1_t_cc04_condition_parse_errors_name_the_column_and_what_was_expected() {
        let cases: &[(&str, usize, &str)] = &[
            ("amount >", 9, "a field, a literal"),
            ("amount = 5", 8, "\"==\""),
            ("amount > 5 &", 12, "\"&&\""),
            ("(amount > 5", 12, "\")\""),
            ("amount > 5)", 11, "the end"),
            ("\"open", 1, "closing"),
            ("a.", 3, "a field name after"),
            ("1 < 2 < 3", 7, "do not chain"),
            ("amount > 5 amount", 12, "\"&&\", \"||\" or the end"),
            ("", 1, "a condition"),
            ("amount # 5", 8, "not '#'"),
            ("\"\\q\"", 2, "an escape"),
            ("5x", 2, "after a number"),
            ("é > 1", 1, "not 'é'"),
        ];
        for (src, col, expected) in cases {
            let e = Condition::parse(src).unwrap_err();
            assert_eq!(e.column, *col, "{src:?}: {e}");
            assert!(e.expected.contains(expected), "{src:?}: {e}");
        }
        let deep = format!("{}true{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
        assert!(Condition::parse(&deep).unwrap_err().expected.contains("nesting"));
        let shallow = format!("{}true{}", "(".repeat(10), ")".repeat(10));
        assert!(Condition::parse(&shallow).is_ok());
        assert!(Condition::parse(&"x".repeat(MAX_LEN + 1)).is_err());
    }

    #[test]
    fn p1_t_cc04_type_check_against_the_input_schema() {
        let s = schema();
        for ok in [
            "amount > 100 && currency == \"usd\"",
            "reason == \"fraud\"",
            "vip || !vip",
            "customer.country == \"FR\"",
            "note == null || note == \"x\"",
            "amount == null",
        ] {
            assert!(
                Condition::parse(ok).unwrap().check(&s).is_ok(),
                "{ok}: {:?}",
                Condition::parse(ok).unwrap().check(&s)
            );
        }
        let bad: &[(&str, usize, &str)] = &[
            ("amount > \"100\"", 8, "two numbers or two strings"),
            ("currency == 5", 10, "values of one type"),
            ("amont > 5", 1, "\"amont\" is unknown, one of: amount, currency"),
            ("customer.city == \"x\"", 1, "\"customer.city\" is unknown, one of: country"),
            ("amount", 1, "a boolean condition"),
            ("amount && vip", 1, "a boolean on each side"),
            ("!amount", 1, "a boolean after"),
            ("vip > true", 5, "two numbers or two strings"),
            ("reason == 1", 8, "values of one type"),
        ];
        for (src, col, expected) in bad {
            let e = Condition::parse(src).unwrap().check(&s).unwrap_err();
            assert_eq!(e.column, *col, "{src:?}: {e}");
            assert!(e.expected.contains(expected), "{src:?}: {e}");
        }
        // A schema without properties knows no fields at all.
        let e = Condition::parse("amount > 1").unwrap().check(&json!({"type": "object"})).unwrap_err();
        assert!(e.expected.contains("declares no properties"), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn p1_t_cc04_condition_random_text_never_panics(s in "\\PC{0,64}") {
            if let Ok(c) = Condition::parse(&s) {
                let _ = c.check(&schema());
                let _ = c.evaluate(&json!({"amount": 5, "currency": "usd", "vip": true}));
            }
        }

        #[test]
        fn p1_t_cc04_condition_random_token_soup_never_panics(
            parts in proptest::collection::vec(
                proptest::sample::select(vec!["amount", "vip", "customer.country", "(", ")", "!", "&&", "||", "==",
                    "!=", "<", "<=", ">", ">=", "1", "-2.5e3", "\"s\"", "true", "null", ".", "\"\\u00", "=", "&"]),
                0..24)
        ) {
            let s = parts.join(" ");
            if let Ok(c) = Condition::parse(&s) {
                let _ = c.check(&schema());
                let _ = c.evaluate(&json!({"amount": 5, "customer": {"country": "FR"}, "vip": true}));
            }
        }
    }
}
