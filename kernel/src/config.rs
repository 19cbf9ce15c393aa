//! The business config (`autobiz.toml`): loading, validation against its JSON
//! Schema, and the config hash.
//!
//! The hash is SHA-256 over the RFC 8785 canonical JSON of the parsed config,
//! so comments, whitespace and key order do not change it, and any change of
//! meaning does. Runs, transcripts and gate evidence record it.
//!
//! [`BusinessConfig::check`] validates against the schema and, when that
//! passed, reads the typed [`model::Model`] and runs the compile checks
//! ([`compile`]: CC-01..CC-04, tool schemas, duplicates).
//!
//! Diagnostics are deterministic: the same file always yields the same
//! diagnostics in the same order (by line, then code, then path, then
//! message), each with the TOML line it points at.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;
use toml::de::{DeTable, DeValue};

use crate::error::{Error, ErrorCode, Result};

pub mod compile;
pub mod model;

pub use model::Model;

/// The JSON Schema of `autobiz.toml`, shipped for editors too.
pub const SCHEMA: &str = include_str!("../schemas/autobiz.schema.json");

/// A parsed business config, not yet judged.
#[derive(Debug, Clone)]
pub struct BusinessConfig {
    path: PathBuf,
    source: String,
    value: Value,
}

/// One problem found by [`BusinessConfig::check`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// Stable code, e.g. `CONFIG_INVALID`.
    pub code: String,
    /// JSON pointer to the offending value (`/tools/2/side_effect`).
    pub path: String,
    /// 1-based line in the TOML file, when it can be located.
    pub line: Option<usize>,
    pub message: String,
    /// A one-line suggestion, when there is an obvious one.
    pub fix: Option<String>,
}

/// The verdict on a config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    pub path: String,
    /// `sha256:` + 64 hex characters.
    pub config_hash: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.diagnostics.is_empty()
    }
}

impl BusinessConfig {
    /// Read and parse `path`. `CONFIG_IO` when it cannot be read,
    /// `CONFIG_PARSE` (with the line) when it is not TOML.
    pub fn load(path: &Path) -> Result<BusinessConfig> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| Error::new(ErrorCode::ConfigIo, format!("cannot read the config {}: {e}", path.display())))?;
        Self::parse(path, source)
    }

    /// Parse TOML text that came from `path`.
    pub fn parse(path: &Path, source: String) -> Result<BusinessConfig> {
        let table: toml::Table = toml::from_str(&source).map_err(|e| {
            let line = e.span().map(|s| line_of(&source, s.start));
            let at = line.map(|l| format!(":{l}")).unwrap_or_default();
            Error::new(ErrorCode::ConfigParse, format!("{}{at}: not valid TOML: {}", path.display(), e.message()))
        })?;
        let value = serde_json::to_value(&table).map_err(|e| {
            Error::new(ErrorCode::ConfigParse, format!("{}: cannot represent as JSON: {e}", path.display()))
        })?;
        Ok(BusinessConfig { path: path.to_owned(), source, value })
    }

    /// The config as JSON.
    pub fn value(&self) -> &Value {
        &self.value
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `sha256:` + hex of SHA-256 over the RFC 8785 canonical form.
    pub fn hash(&self) -> String {
        let canonical = crate::canonical::to_vec(&self.value).expect("a TOML-derived value is canonicalizable");
        format!("sha256:{}", crate::canonical::sha256_hex_of(canonical.as_ref()))
    }

    /// The typed config. Meaningful once the schema check passed; before
    /// that, `CONFIG_INVALID` with serde's reason when the value does not fit.
    pub fn model(&self) -> Result<Model> {
        Model::deserialize(&self.value).map_err(|e| {
            Error::new(ErrorCode::ConfigInvalid, format!("{}: does not fit the config model: {e}", self.path.display()))
        })
    }

    /// Validate against the schema, then (only if that passed) run the
    /// compile checks. Never fails: problems are diagnostics.
    pub fn check(&self) -> CheckReport {
        let mut diagnostics: Vec<Diagnostic> = schema()
            .iter_errors(&self.value)
            .map(|e| Diagnostic {
                code: ErrorCode::ConfigInvalid.as_str().to_owned(),
                path: e.instance_path().as_str().to_owned(),
                line: None,
                message: e.to_string(),
                fix: None,
            })
            .collect();
        if diagnostics.is_empty() {
            match self.model() {
                Ok(model) => diagnostics = compile::compile(&model),
                Err(e) => diagnostics.push(Diagnostic {
                    code: ErrorCode::ConfigInvalid.as_str().to_owned(),
                    path: String::new(),
                    line: None,
                    message: e.message().to_owned(),
                    fix: None,
                }),
            }
        }
        let lines = Lines::new(&self.source);
        for d in &mut diagnostics {
            d.line = lines.of_pointer(&d.path);
        }
        diagnostics.sort_by(|a, b| {
            (a.line, &a.code, &a.path, &a.message, &a.fix).cmp(&(b.line, &b.code, &b.path, &b.message, &b.fix))
        });
        diagnostics.dedup();
        CheckReport { path: self.path.display().to_string(), config_hash: self.hash(), diagnostics }
    }
}

/// Finds the TOML line of a JSON pointer; the file is parsed once.
struct Lines<'a> {
    source: &'a str,
    root: Option<toml::Spanned<DeTable<'a>>>,
}

impl<'a> Lines<'a> {
    fn new(source: &'a str) -> Self {
        Lines { source, root: DeTable::parse(source).ok() }
    }

    /// The line of the value a JSON pointer names, or of its nearest
    /// enclosing value that has a place in the file.
    fn of_pointer(&self, pointer: &str) -> Option<usize> {
        let root = self.root.as_ref()?;
        let mut span = root.span();
        let mut current: Option<&DeValue<'_>> = None;
        let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
        for raw in pointer.split('/').skip(1) {
            let seg = raw.replace("~1", "/").replace("~0", "~");
            let next = match (table, current) {
                (Some(t), _) => t.iter().find(|(k, _)| k.get_ref().as_ref() == seg).map(|(_, v)| v),
                (None, Some(DeValue::Array(a))) => seg.parse::<usize>().ok().and_then(|i| a.as_ref().get(i)),
                _ => None,
            };
            let Some(next) = next else { break };
            if !next.span().is_empty() {
                span = next.span();
            }
            current = Some(next.get_ref());
            table = match next.get_ref() {
                DeValue::Table(t) => Some(t),
                _ => None,
            };
        }
        Some(line_of(self.source, span.start))
    }
}

fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

fn schema() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema: Value = serde_json::from_str(SCHEMA).expect("the shipped config schema is JSON");
        jsonschema::validator_for(&schema).expect("the shipped config schema is a valid JSON Schema")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[business]
name = "t"

[bounds]
max_steps = 10
max_wall_time_ms = 1000
max_tokens = 100
max_tool_calls = 5

[[tools]]
name = "shopify.order.get"
version = "1"
side_effect = "READ"
timeout_ms = 1000
input_schema = { type = "object" }
output_schema = { type = "object" }

[[scopes]]
principal = "agent:a"
tools = ["shopify.order.get"]

[[workflows]]
id = "WF01"
name = "OrderFulfillWorkflow"
principal = "agent:a"
[[workflows.steps]]
id = "fetch"
tool = "shopify.order.get"
"#;

    fn parse(s: &str) -> BusinessConfig {
        BusinessConfig::parse(Path::new("t.toml"), s.to_owned()).unwrap()
    }

    #[test]
    fn shipped_schema_compiles() {
        let _ = schema();
    }

    #[test]
    fn a_minimal_config_is_valid() {
        let report = parse(MINIMAL).check();
        assert!(report.is_ok(), "{:?}", report.diagnostics);
        assert!(report.config_hash.starts_with("sha256:") && report.config_hash.len() == 71);
    }

    #[test]
    fn the_hash_ignores_layout_and_follows_meaning() {
        let a = parse(MINIMAL).hash();
        let reordered = MINIMAL.replace("name = \"t\"", "# a comment\nname    =    \"t\"");
        assert_eq!(a, parse(&reordered).hash());
        let changed = MINIMAL.replace("max_steps = 10", "max_steps = 11");
        assert_ne!(a, parse(&changed).hash());
    }

    #[test]
    fn invalid_values_are_reported_with_path_and_line_in_a_stable_order() {
        let bad = MINIMAL
            .replace("side_effect = \"READ\"", "side_effect = \"MAYBE\"")
            .replace("max_steps = 10", "max_steps = -1");
        let report = parse(&bad).check();
        assert_eq!(report.diagnostics.len(), 2, "{:?}", report.diagnostics);
        let first = &report.diagnostics[0];
        assert_eq!(first.path, "/bounds/max_steps");
        assert_eq!(first.line, Some(6));
        assert_eq!(report.diagnostics[1].path, "/tools/0/side_effect");
        assert_eq!(report.diagnostics[1].line, Some(14));
        assert_eq!(report, parse(&bad).check(), "deterministic");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let bad = MINIMAL.replace("[bounds]", "[bounds]\nmax_stepz = 3");
        let report = parse(&bad).check();
        assert_eq!(report.diagnostics.len(), 1);
        assert_eq!(report.diagnostics[0].path, "/bounds");
    }

    #[test]
    fn malformed_toml_is_a_parse_error_with_a_line() {
        let err = BusinessConfig::parse(Path::new("x.toml"), "[business]\nname = \n".into()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ConfigParse);
        assert!(err.message().starts_with("x.toml:2:"), "{}", err.message());
    }
}
