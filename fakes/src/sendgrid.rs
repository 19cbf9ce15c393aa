//! The SendGrid fake: `POST /v3/mail/send` with `Bearer SG....` auth.
//! Sandbox mode (`mail_settings.sandbox_mode.enable: true`) validates and
//! answers 200 with no body, delivering nothing; a real send answers 202
//! with an empty body and an `X-Message-Id`. Errors use SendGrid's
//! `{"errors":[{"message","field","help"}]}`.

use std::collections::VecDeque;
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::server::{Ages, Exchange, Provider, Reply};

/// One accepted mail send.
#[derive(Debug, Clone, PartialEq)]
pub struct SentMail {
    pub to: Vec<String>,
    pub from: String,
    pub template_id: Option<String>,
    pub dynamic_template_data: Value,
    /// True when it came in sandbox mode (validated, never delivered).
    pub sandbox: bool,
    /// `X-Message-Id` (real sends only).
    pub message_id: Option<String>,
}

/// The SendGrid fake's state: accepted sends.
#[derive(Default)]
pub struct SendgridState {
    seq: u64,
    sent: VecDeque<SentMail>,
    /// Sends by acceptance, oldest first.
    made: Ages<()>,
}

fn bad(field: Option<&str>, message: &str) -> Reply {
    Reply::json(400, json!({ "errors": [{ "message": message, "field": field, "help": Value::Null }] }))
}

fn is_email(s: &str) -> bool {
    s.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'))
}

impl SendgridState {
    pub fn sent(&self) -> Vec<SentMail> {
        self.sent.iter().cloned().collect()
    }

    /// The same, borrowed.
    pub fn sent_iter(&self) -> impl DoubleEndedIterator<Item = &SentMail> {
        self.sent.iter()
    }

    fn send(&mut self, body: Option<Value>) -> Reply {
        let Some(body) = body.filter(Value::is_object) else {
            return bad(None, "Bad Request: the request body must be JSON");
        };
        let sandbox = match body.pointer("/mail_settings/sandbox_mode/enable") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return bad(
                    Some("mail_settings.sandbox_mode.enable"),
                    "The sandbox mode enable param should be a boolean value.",
                );
            }
        };
        let Some(personalizations) = body["personalizations"].as_array().filter(|p| !p.is_empty()) else {
            return bad(
                Some("personalizations"),
                "The personalizations field is required and must have at least one personalization.",
            );
        };
        let mut to = Vec::new();
        for p in personalizations {
            let Some(list) = p["to"].as_array().filter(|l| !l.is_empty()) else {
                return bad(
                    Some("personalizations.0.to"),
                    "The to array is required for all personalization objects, and must have at least one email object with a valid email address.",
                );
            };
            for r in list {
                match r["email"].as_str() {
                    Some(e) if is_email(e) => to.push(e.to_owned()),
                    _ => return bad(Some("personalizations.0.to.0.email"), "Does not contain a valid address."),
                }
            }
        }
        let Some(from) = body["from"]["email"].as_str().filter(|e| is_email(e)) else {
            return bad(Some("from.email"), "The from email does not contain a valid address.");
        };
        let template_id = body["template_id"].as_str().map(str::to_owned);
        if template_id.is_none() && body["content"].as_array().is_none_or(|c| c.is_empty()) {
            return bad(Some("content"), "Unless a valid template_id is provided, the content parameter is required.");
        }
        let message_id = if sandbox {
            None
        } else {
            self.seq += 1;
            Some(format!("fakeMsg{:010}", self.seq)) // no card-like digit run, as the Stripe fake's ids
        };
        self.made.made(());
        self.sent.push_back(SentMail {
            to,
            from: from.to_owned(),
            template_id,
            dynamic_template_data: personalizations[0]["dynamic_template_data"].clone(),
            sandbox,
            message_id: message_id.clone(),
        });
        match message_id {
            None => Reply::empty(200),
            Some(id) => Reply::empty(202).header("X-Message-Id", id),
        }
    }
}

impl Provider for SendgridState {
    const NAME: &'static str = "sendgrid";
    const REQUEST_ID_HEADER: Option<&'static str> = None;

    fn request_id(&mut self) -> String {
        String::new()
    }

    fn authorized(&self, ex: &Exchange<'_>) -> bool {
        ex.bearer().is_some_and(|k| k.starts_with("SG."))
    }

    fn unauthorized(&self) -> Reply {
        Reply::json(
            401,
            json!({ "errors": [{ "field": Value::Null, "message": "The provided authorization grant is invalid, expired, or revoked", "help": Value::Null }] }),
        )
    }

    fn handle(&mut self, ex: &Exchange<'_>) -> Reply {
        match (ex.method(), ex.path()) {
            ("POST", "/v3/mail/send") => self.send(ex.json_body()),
            _ => Reply::json(404, json!({ "errors": [{ "field": Value::Null, "message": "resource not found" }] })),
        }
    }

    fn error_body(&self, _status: u16, message: &str) -> Value {
        json!({ "errors": [{ "field": Value::Null, "message": message, "help": Value::Null }] })
    }

    fn error_in_200(&self) -> Value {
        json!({ "errors": [{ "field": Value::Null, "message": "internal error", "help": Value::Null }] })
    }

    fn tick(&mut self, at: SystemTime) {
        self.made.tick(at);
    }

    fn forget_before(&mut self, cutoff: SystemTime) {
        self.made.expire_front(cutoff, &mut self.sent);
    }
}
