//! Tool contracts and the registry that finds them.
//!
//! A contract is everything the kernel must know about a tool before letting
//! it run: its input and output JSON Schemas (compiled once per tool version),
//! its side-effect class, its timeout and its price. The registry answers
//! "which contract is `stripe.refund.create` version 1?" and nothing else; an
//! unknown name or version is `TOOL_UNKNOWN` before anything runs.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, ErrorCode, Result};

/// What running a tool can do to the world. FINANCIAL moves money and always
/// needs human approval; NOTIFY reaches a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SideEffect {
    Read,
    Write,
    Financial,
    Notify,
}

impl SideEffect {
    /// The name as written in configs (`FINANCIAL`).
    pub fn as_str(self) -> &'static str {
        match self {
            SideEffect::Read => "READ",
            SideEffect::Write => "WRITE",
            SideEffect::Financial => "FINANCIAL",
            SideEffect::Notify => "NOTIFY",
        }
    }
}

/// What a call costs, in millionths of a US dollar so that sums are exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PriceModel {
    pub per_call_micro_usd: u64,
    pub per_1k_tokens_micro_usd: u64,
}

impl PriceModel {
    /// From dollar figures as written in a config (`per_call_usd = 0.0001`).
    pub fn from_usd(per_call: f64, per_1k_tokens: f64) -> PriceModel {
        let micros = |usd: f64| if usd.is_finite() && usd > 0.0 { (usd * 1_000_000.0).round() as u64 } else { 0 };
        PriceModel { per_call_micro_usd: micros(per_call), per_1k_tokens_micro_usd: micros(per_1k_tokens) }
    }

    /// The price of one call that used `tokens` tokens.
    pub fn cost(&self, tokens: u64) -> u64 {
        self.per_call_micro_usd + self.per_1k_tokens_micro_usd.saturating_mul(tokens).div_ceil(1000)
    }
}

/// A compiled JSON Schema for tool inputs or outputs.
///
/// Object schemas are closed by default: every subschema that lists
/// `properties` and says nothing about additional ones gets
/// `additionalProperties: false`, so an agent cannot smuggle an unknown field
/// (`"force": true`) past validation. A schema that wants open objects says so
/// explicitly.
pub struct CompiledSchema {
    source: Value,
    validator: jsonschema::Validator,
}

impl fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledSchema").field("source", &self.source).finish_non_exhaustive()
    }
}

/// One reason a value broke its schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SchemaViolation {
    /// JSON pointer to the offending value (`/items/0/sku`); empty for the root.
    pub path: String,
    /// The schema keyword that failed (`type`, `required`, `additionalProperties`).
    pub keyword: String,
    /// For unknown fields: their names (keys, not values).
    pub unexpected: Vec<String>,
    /// The validator's full message. It quotes the offending value, which
    /// may be customer data: never put it in a trace; [`SchemaViolation::summary`] is safe.
    pub message: String,
}

impl SchemaViolation {
    /// Where and which rule failed, without the value: safe for traces and
    /// errors. Unknown-field violations name the field (a key, not a value).
    pub fn summary(&self) -> String {
        let at = if self.path.is_empty() { "the top level" } else { self.path.as_str() };
        if self.unexpected.is_empty() {
            format!("{at} fails \"{}\"", self.keyword)
        } else {
            format!("{at} has unknown field(s) {}", self.unexpected.join(", "))
        }
    }
}

impl CompiledSchema {
    /// Compile `schema`; `TOOL_SCHEMA_INVALID` when it is not a valid JSON Schema.
    pub fn compile(schema: &Value) -> Result<CompiledSchema> {
        let mut closed = schema.clone();
        close_objects(&mut closed);
        let validator = jsonschema::validator_for(&closed)
            .map_err(|e| Error::new(ErrorCode::ToolSchemaInvalid, format!("not a valid JSON Schema: {e}")))?;
        Ok(CompiledSchema { source: closed, validator })
    }

    /// The schema as enforced (objects closed): what an agent is shown.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// Every violation, in a stable order (by path, then message).
    pub fn violations(&self, value: &Value) -> Vec<SchemaViolation> {
        let mut v: Vec<SchemaViolation> = self
            .validator
            .iter_errors(value)
            .map(|e| {
                let unexpected = match e.kind() {
                    jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected }
                    | jsonschema::error::ValidationErrorKind::UnevaluatedProperties { unexpected } => {
                        unexpected.clone()
                    }
                    _ => Vec::new(),
                };
                SchemaViolation {
                    path: e.instance_path().as_str().to_owned(),
                    keyword: e.schema_path().as_str().rsplit('/').next().unwrap_or_default().to_owned(),
                    unexpected,
                    message: e.to_string(),
                }
            })
            .collect();
        v.sort_by(|a, b| (&a.path, &a.message).cmp(&(&b.path, &b.message)));
        v
    }

    pub fn is_valid(&self, value: &Value) -> bool {
        self.validator.is_valid(value)
    }
}

fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let open_said = ["additionalProperties", "unevaluatedProperties", "patternProperties"]
                .iter()
                .any(|k| map.contains_key(*k));
            if map.contains_key("properties") && !open_said {
                map.insert("additionalProperties".to_owned(), Value::Bool(false));
            }
            for (key, child) in map.iter_mut() {
                // Literal values are data, not subschemas.
                if !matches!(key.as_str(), "const" | "enum" | "default" | "examples") {
                    close_objects(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// Everything the kernel knows about one version of one tool.
#[derive(Debug)]
pub struct ToolContract {
    pub name: String,
    pub version: String,
    pub side_effect: SideEffect,
    pub input: CompiledSchema,
    pub output: CompiledSchema,
    /// The call is cancelled when it takes longer.
    pub timeout: Duration,
    pub price: PriceModel,
}

impl ToolContract {
    /// Build a contract, compiling both schemas.
    pub fn new(
        name: &str,
        version: &str,
        side_effect: SideEffect,
        input_schema: &Value,
        output_schema: &Value,
        timeout: Duration,
        price: PriceModel,
    ) -> Result<ToolContract> {
        let compile = |which: &str, s: &Value| {
            CompiledSchema::compile(s)
                .map_err(|e| Error::new(e.code(), format!("tool {name} v{version}: {which} schema is {}", e.message())))
        };
        Ok(ToolContract {
            name: name.to_owned(),
            version: version.to_owned(),
            side_effect,
            input: compile("input", input_schema)?,
            output: compile("output", output_schema)?,
            timeout,
            price,
        })
    }

    /// `name@version`, as traces and errors show it.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// Contracts by name and version.
#[derive(Debug, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<(String, String), ToolContract>,
}

impl ToolRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a contract; a second contract for the same name and version is
    /// refused (`INVALID_INPUT`) rather than silently replacing the first.
    pub fn register(&mut self, contract: ToolContract) -> Result<()> {
        let key = (contract.name.clone(), contract.version.clone());
        if self.tools.contains_key(&key) {
            return Err(Error::new(ErrorCode::InvalidInput, format!("tool {} is registered twice", contract.id())));
        }
        self.tools.insert(key, contract);
        Ok(())
    }

    /// The contract for `name` at `version`; `TOOL_UNKNOWN` otherwise.
    pub fn lookup(&self, name: &str, version: &str) -> Result<&ToolContract> {
        self.tools.get(&(name.to_owned(), version.to_owned())).ok_or_else(|| {
            let known: Vec<&str> = self.tools.keys().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect();
            let hint = if known.is_empty() {
                "no such tool".to_owned()
            } else {
                format!("known versions: {}", known.join(", "))
            };
            Error::new(ErrorCode::ToolUnknown, format!("unknown tool {name}@{version} ({hint})"))
        })
    }

    pub fn len(&self) -> usize {
        self.tools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refund() -> ToolContract {
        ToolContract::new(
            "stripe.refund.create",
            "1",
            SideEffect::Financial,
            &json!({"type": "object", "required": ["amount", "currency"],
                    "properties": {"amount": {"type": "integer", "minimum": 1}, "currency": {"type": "string"},
                                   "meta": {"type": "object", "properties": {"note": {"type": "string"}}}}}),
            &json!({"type": "object"}),
            Duration::from_secs(5),
            PriceModel::from_usd(0.01, 0.0),
        )
        .unwrap()
    }

    #[test]
    fn p1_t01_valid_input_passes() {
        assert!(refund().input.violations(&json!({"amount": 100, "currency": "usd"})).is_empty());
    }

    #[test]
    fn p1_t01_neg_unknown_fields_are_rejected_at_every_level() {
        let c = refund();
        let v = c.input.violations(&json!({"amount": 100, "currency": "usd", "force": true}));
        assert_eq!(v.len(), 1);
        assert!(v[0].message.contains("force"), "{v:?}");
        assert_eq!(v[0].keyword, "additionalProperties");
        assert_eq!(v[0].summary(), "the top level has unknown field(s) force");
        let v = c.input.violations(&json!({"amount": 100, "currency": "usd", "meta": {"note": "x", "evil": 1}}));
        assert_eq!(v[0].path, "/meta");
    }

    #[test]
    fn p1_t01_neg_wrong_type_and_missing_field_name_the_path() {
        let v = refund().input.violations(&json!({"amount": "100"}));
        let paths: Vec<&str> = v.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(paths, vec!["", "/amount"], "{v:?}");
        assert_eq!(v[1].summary(), "/amount fails \"type\"");
    }

    #[test]
    fn explicit_open_objects_stay_open() {
        let s =
            CompiledSchema::compile(&json!({"type": "object", "properties": {"a": {}}, "additionalProperties": true}))
                .unwrap();
        assert!(s.is_valid(&json!({"a": 1, "b": 2})));
    }

    #[test]
    fn enum_values_are_not_mistaken_for_schemas() {
        let s = CompiledSchema::compile(&json!({"enum": [{"properties": 1, "x": 2}]})).unwrap();
        assert!(s.is_valid(&json!({"properties": 1, "x": 2})));
    }

    #[test]
    fn p1_t28_an_invalid_schema_is_refused_at_registration() {
        let err = ToolContract::new(
            "t",
            "1",
            SideEffect::Read,
            &json!({"type": "no-such-type"}),
            &json!({}),
            Duration::from_secs(1),
            PriceModel::default(),
        )
        .unwrap_err();
        assert_eq!(err.code(), ErrorCode::ToolSchemaInvalid);
        assert!(err.message().contains("input schema"));
    }

    #[test]
    fn p1_t02_unknown_tool_or_version_is_tool_unknown() {
        let mut r = ToolRegistry::new();
        r.register(refund()).unwrap();
        assert!(r.lookup("stripe.refund.create", "1").is_ok());
        let err = r.lookup("stripe.refund.create", "2").unwrap_err();
        assert_eq!(err.code(), ErrorCode::ToolUnknown);
        assert!(err.message().contains("known versions: 1"));
        assert_eq!(r.lookup("rm.rf", "1").unwrap_err().code(), ErrorCode::ToolUnknown);
        assert_eq!(r.register(refund()).unwrap_err().code(), ErrorCode::InvalidInput);
    }

    #[test]
    fn prices_are_exact_micro_dollars() {
        let p = PriceModel::from_usd(0.0001, 0.002);
        assert_eq!(p.per_call_micro_usd, 100);
        assert_eq!(p.cost(0), 100);
        assert_eq!(p.cost(1500), 100 + 3000);
        assert_eq!(PriceModel::from_usd(f64::NAN, -1.0), PriceModel::default());
    }
}
