//! The LLM fake: an OpenAI-compatible `POST /v1/chat/completions` with
//! `Authorization: Bearer sk-...`.
//!
//! It answers in the real chat-completions shape (`id`, `object:
//! "chat.completion"`, `created`, `model`, `choices[0].message.content`,
//! `finish_reason`, `usage` with `prompt_tokens`, `completion_tokens`,
//! `total_tokens`, `system_fingerprint`) and OpenAI's error shape
//! (`{"error":{"message","type","param","code"}}`): 401 `invalid_api_key`
//! for a missing or malformed key, 400 `invalid_request_error` for a body
//! without `model` or `messages`. Replies come from a script
//! ([`LlmState::script`]), in order; with the script empty, the fake
//! classifies the last user message (`wismo` when it asks where an order
//! is, `other` otherwise), so a cassette recorded against it is
//! meaningful. Tokens are counted as OpenAI's rule of thumb has it (one per
//! four characters, rounded up, plus four per message): deterministic, so
//! costs replay exactly. Faults are the shared ones (500, timeouts through
//! `Delay`, malformed and truncated bodies, an error in a 200).

use std::collections::VecDeque;
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::server::{Ages, Exchange, Provider, Reply};

/// The model the fake reports when the request names none it knows
/// (it echoes the requested one otherwise, as OpenAI does, dated).
pub const LLM_FAKE_FINGERPRINT: &str = "fp_autobiz_fake";

/// The LLM fake's state: the reply script and the completions served.
#[derive(Default)]
pub struct LlmState {
    seq: u64,
    script: VecDeque<String>,
    served: VecDeque<Value>,
    /// Completions by serving, oldest first.
    made: Ages<()>,
}

fn error(status: u16, message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Reply {
    Reply::json(status, json!({ "error": { "message": message, "type": kind, "param": param, "code": code } }))
}

/// OpenAI's rule of thumb: a token is about four characters of English.
fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

impl LlmState {
    /// Answer the next completion with `content` (after those already
    /// scripted).
    pub fn script(&mut self, content: impl Into<String>) {
        self.script.push_back(content.into());
    }

    /// Drop the scripted replies not yet used.
    pub fn clear_script(&mut self) {
        self.script.clear();
    }

    /// Scripted replies not yet used.
    pub fn pending(&self) -> usize {
        self.script.len()
    }

    /// Every completion served, in order.
    pub fn served(&self) -> Vec<Value> {
        self.served.iter().cloned().collect()
    }

    fn classify(messages: &[Value]) -> String {
        let last = messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let wismo = ["where is my order", "where's my order", "tracking", "not arrived", "shipped yet"]
            .iter()
            .any(|p| last.contains(p));
        if wismo { "wismo" } else { "other" }.to_owned()
    }

    fn complete(&mut self, body: Option<Value>) -> Reply {
        let Some(body) = body.filter(Value::is_object) else {
            return error(
                400,
                "We could not parse the JSON body of your request.",
                "invalid_request_error",
                None,
                None,
            );
        };
        let Some(model) = body["model"].as_str().filter(|m| !m.is_empty()) else {
            return error(400, "you must provide a model parameter", "invalid_request_error", Some("model"), None);
        };
        let Some(messages) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
            return error(
                400,
                "[] is too short - 'messages'",
                "invalid_request_error",
                Some("messages"),
                Some("invalid_value"),
            );
        };
        let content = self.script.pop_front().unwrap_or_else(|| LlmState::classify(messages));
        let prompt_tokens: u64 = messages.iter().map(|m| 4 + tokens(m["content"].as_str().unwrap_or_default())).sum();
        let completion_tokens = tokens(&content);
        self.seq += 1;
        let answer = json!({
            "id": format!("chatcmpl-fake{:06}", self.seq),
            "object": "chat.completion",
            "created": 1_733_040_000 + self.seq,
            "model": model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": content, "refusal": null },
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens
            },
            "system_fingerprint": LLM_FAKE_FINGERPRINT
        });
        self.served.push_back(answer.clone());
        self.made.made(());
        Reply::json(200, answer)
    }
}

impl Provider for LlmState {
    const NAME: &'static str = "llm";
    const REQUEST_ID_HEADER: Option<&'static str> = Some("x-request-id");

    fn request_id(&mut self) -> String {
        format!("req_fake{:06}", self.seq + 1)
    }

    fn authorized(&self, ex: &Exchange<'_>) -> bool {
        ex.bearer().is_some_and(|k| k.starts_with("sk-") && k.len() > 8)
    }

    fn unauthorized(&self) -> Reply {
        error(
            401,
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        )
    }

    fn handle(&mut self, ex: &Exchange<'_>) -> Reply {
        match (ex.method(), ex.path()) {
            ("POST", "/v1/chat/completions") => self.complete(ex.json_body()),
            _ => error(404, "Invalid URL", "invalid_request_error", None, None),
        }
    }

    fn error_body(&self, status: u16, message: &str) -> Value {
        let kind = if status == 429 { "requests" } else { "server_error" };
        json!({ "error": { "message": message, "type": kind, "param": null, "code": null } })
    }

    fn error_in_200(&self) -> Value {
        json!({ "error": { "message": "The server had an error processing your request.", "type": "server_error", "param": null, "code": null } })
    }

    fn tick(&mut self, at: SystemTime) {
        self.made.tick(at);
    }

    fn forget_before(&mut self, cutoff: SystemTime) {
        self.made.expire_front(cutoff, &mut self.served);
    }
}
