//! SendGrid: `POST /v3/mail/send` with a dynamic template, `Bearer SG...`
//! auth. Outside production the [`super::SandboxGuard`] forces
//! `mail_settings.sandbox_mode.enable = true` (SendGrid validates and
//! answers 200, delivering nothing) and refuses recipients outside the
//! allowlisted domains.
//!
//! Never retried: a mail that may have gone out must not go out twice, so an
//! ambiguous failure is returned, and even a 429 is left to the caller.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Auth, Body, FailKind, Failure, Providers, Raw, Request, RetryRule, endpoint, field};
use crate::error::{ErrorCode, Result};
use crate::executor::CallContext;

const PROVIDER: &str = "sendgrid";

/// Sender and template ids for `sendgrid.mail.send`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendgridSettings {
    /// The verified sender address.
    pub from: String,
    /// Template name (the tool input's `template`) -> SendGrid template id
    /// (`d-...`). A name not listed is sent as the template id itself.
    pub templates: BTreeMap<String, String>,
}

impl Default for SendgridSettings {
    fn default() -> Self {
        SendgridSettings { from: "orders@example.com".to_owned(), templates: BTreeMap::new() }
    }
}

/// SendGrid answers 202 (sent) or 200 (sandbox) with an empty body; errors
/// are `{"errors":[{"message","field"}]}`.
fn interpret(what: &str, raw: &Raw, sandbox: bool) -> std::result::Result<Value, Failure> {
    if let Some(f) = raw.common_failure(what, "") {
        return Err(f);
    }
    let id = raw.id_suffix();
    match raw.status {
        200 | 202 if raw.body.iter().all(u8::is_ascii_whitespace) => Ok(json!({
            "accepted": true,
            "sandbox": sandbox,
            "status": raw.status,
            "message_id": raw.request_id,
        })),
        200 | 202 => Err(Failure::new(
            ErrorCode::ProviderBadResponse,
            FailKind::Transient,
            format!("{what}: unexpected body with HTTP {}{id}", raw.status),
        )),
        400..=499 => {
            let field =
                raw.json().and_then(|b| b["errors"][0]["field"].as_str().map(str::to_owned)).unwrap_or_default();
            Err(Failure::new(
                ErrorCode::ProviderRejected,
                FailKind::Final,
                format!("{what}: rejected by SendGrid (HTTP {}, field {field:?}){id}", raw.status),
            ))
        }
        _ => Err(Failure::bad_response(what, raw)),
    }
}

/// `sendgrid.mail.send`: one recipient, a dynamic template and its data.
pub(super) async fn send(p: &Providers, call: &CallContext, input: &Value) -> Result<(Value, u64)> {
    let what = "sendgrid.mail.send";
    let to = field(input, "to", what)?;
    let template = field(input, "template", what)?;
    let guard = p.http.guard();
    guard.check_recipient(to)?;
    let sandbox = guard.sendgrid_sandbox_mode();
    let template_id = p.sendgrid.templates.get(template).cloned().unwrap_or_else(|| template.to_owned());
    let body = json!({
        "personalizations": [{
            "to": [{ "email": to }],
            "dynamic_template_data": input.get("data").cloned().unwrap_or(json!({})),
        }],
        "from": { "email": p.sendgrid.from },
        "template_id": template_id,
        "mail_settings": { "sandbox_mode": { "enable": sandbox } },
    });
    let req = Request {
        provider: PROVIDER,
        what,
        method: reqwest::Method::POST,
        url: endpoint(&p.endpoints.sendgrid, "/v3/mail/send")?,
        headers: Vec::new(),
        body: Body::Json(body),
        retry: RetryRule::Never,
    };
    p.send(call, super::SENDGRID_SECRET, Auth::Bearer, req, |raw| interpret(what, raw, sandbox)).await
}
