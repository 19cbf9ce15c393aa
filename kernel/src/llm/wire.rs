//! The OpenAI chat-completions wire format, as far as autobiz uses it.
//!
//! Kept apart from the client so that the shape the fakes speak and the
//! shape the client reads are checked against each other in one place, and
//! so that what counts as a "bad response" (not JSON, no choices, no
//! content, no usage) is decided here, once.

use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Message {
        Message { role: "system".to_owned(), content: content.into() }
    }

    pub fn user(content: impl Into<String>) -> Message {
        Message { role: "user".to_owned(), content: content.into() }
    }

    pub fn assistant(content: impl Into<String>) -> Message {
        Message { role: "assistant".to_owned(), content: content.into() }
    }
}

/// `POST /v1/chat/completions` body. Field order is fixed (struct order),
/// so the same request serializes to the same bytes: cassettes match on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatRequest<'a> {
    pub model: &'a str,
    pub messages: &'a [Message],
    /// 0 unless configured: the pinned model should answer the same prompt
    /// the same way as far as the endpoint allows.
    pub temperature: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

/// The answer's `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl TokenUsage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

#[derive(Debug, Deserialize)]
struct RawResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<RawChoice>,
    #[serde(default)]
    usage: Option<TokenUsage>,
}

#[derive(Debug, Deserialize)]
struct RawChoice {
    message: Option<RawMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawMessage {
    content: Option<String>,
}

/// A successful answer, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatResponse {
    pub id: Option<String>,
    /// The model the endpoint says answered (may carry a dated suffix).
    pub model: Option<String>,
    pub content: String,
    pub finish_reason: Option<String>,
    pub usage: TokenUsage,
}

/// Read a 2xx body. `Err` says what is wrong, without quoting the body (it
/// may echo the prompt, which may hold customer data).
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, &'static str> {
    let raw: RawResponse = serde_json::from_slice(body).map_err(|_| "the body is not a chat.completion JSON object")?;
    let choice = raw.choices.into_iter().next().ok_or("the answer has no choices")?;
    let content = choice.message.and_then(|m| m.content).ok_or("the first choice has no message content")?;
    let usage = raw.usage.ok_or("the answer has no usage")?;
    Ok(ChatResponse { id: raw.id, model: raw.model, content, finish_reason: choice.finish_reason, usage })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_shape_parses_and_garbage_does_not() {
        let ok = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini-2024-07-18",
            "choices":[{"index":0,"message":{"role":"assistant","content":"wismo"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
        let r = parse_response(ok).unwrap();
        assert_eq!((r.content.as_str(), r.usage.total()), ("wismo", 15));
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
        assert!(parse_response(b"ok<<not json").is_err());
        assert!(parse_response(br#"{"choices":[]}"#).is_err());
        assert!(parse_response(br#"{"choices":[{"message":{"content":"x"}}]}"#).is_err(), "no usage");
    }
}
