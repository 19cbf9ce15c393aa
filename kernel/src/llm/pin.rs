//! What a run's model calls are pinned to: the model name and the prompt
//! template, the template identified by the SHA-256 of its content.
//!
//! Why a content hash and not a name or a version number: a template edited
//! in place keeps its name, and the behaviour of a run depends on every byte
//! the model sees. Two runs with the same pin saw the same model and the same
//! template; a replay can tell whether it runs under the pins it was recorded
//! with. The pin is fixed when the client is built, so a run cannot switch
//! model half way (no dynamic model switching without the deploy gate).

use serde_json::{Value, json};

/// A prompt template: text with `{{name}}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTemplate {
    text: String,
    sha256: String,
}

impl PromptTemplate {
    pub fn new(text: impl Into<String>) -> PromptTemplate {
        let text = text.into();
        let sha256 = crate::canonical::sha256_hex_of(text.as_bytes());
        PromptTemplate { text, sha256 }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Hex SHA-256 of the template's bytes: its identity.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The template with each `{{name}}` replaced by `vars[name]` (strings as
    /// they are, other values as compact JSON). Unknown placeholders stay as
    /// written, so a missing variable shows in the prompt rather than
    /// silently vanishing.
    pub fn render(&self, vars: &Value) -> String {
        let mut out = self.text.clone();
        if let Some(map) = vars.as_object() {
            for (k, v) in map {
                let value = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                out = out.replace(&format!("{{{{{k}}}}}"), &value);
            }
        }
        out
    }
}

/// The model and template a run's calls are pinned to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelPin {
    pub model: String,
    pub prompt_template_sha256: String,
}

impl ModelPin {
    pub fn new(model: &str, template: &PromptTemplate) -> ModelPin {
        ModelPin { model: model.to_owned(), prompt_template_sha256: template.sha256().to_owned() }
    }

    /// The pins object for a run's `run_start` (trace and transcript):
    /// `{"llm": {"model": ..., "prompt_template_sha256": ...}}`. Pass it as
    /// `RunSpec::pins` / `Executor::start`'s `pins`.
    pub fn as_pins(&self) -> Value {
        json!({ "llm": self })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p1_t_rk01c_a_template_is_pinned_by_its_content() {
        let a = PromptTemplate::new("Classify: {{message}}");
        let b = PromptTemplate::new("Classify: {{message}} ");
        assert_eq!(a.sha256().len(), 64);
        assert_ne!(a.sha256(), b.sha256(), "one byte changes the pin");
        assert_eq!(a.sha256(), PromptTemplate::new("Classify: {{message}}").sha256());
        assert_eq!(a.render(&json!({"message": "where is my order?"})), "Classify: where is my order?");
        assert_eq!(a.render(&json!({})), "Classify: {{message}}");
        let pin = ModelPin::new("gpt-4o-mini", &a);
        assert_eq!(pin.as_pins()["llm"]["model"], "gpt-4o-mini");
        assert_eq!(pin.as_pins()["llm"]["prompt_template_sha256"], a.sha256());
    }
}
