//! The Slack adapter: posts an approval request to a Slack-compatible
//! incoming webhook as a Block Kit message (`{"text": ..., "blocks": [...]}`)
//! with the request id, tool, run, redacted summary, expiry, and the
//! commands that decide it.
//!
//! The webhook URL is a credential (its path is the token): it is never put
//! in an error message or a log line; errors name only the host.

use std::time::Duration;

use serde_json::{Value, json};

use super::Approval;
use crate::error::{Error, ErrorCode, Result};

/// How long one post may take before it is abandoned.
pub const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest summary shown in the message; the rest is cut (Slack refuses
/// section texts over 3,000 characters).
const SUMMARY_MAX: usize = 2_000;

/// Posts approval requests to one incoming-webhook URL.
#[derive(Clone)]
pub struct SlackNotifier {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl std::fmt::Debug for SlackNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackNotifier").field("host", &self.url.host_str()).finish_non_exhaustive()
    }
}

impl SlackNotifier {
    /// A notifier for `webhook_url` (http or https). `INVALID_INPUT` for
    /// anything else; the URL is not echoed.
    pub fn new(webhook_url: &str) -> Result<SlackNotifier> {
        let url = reqwest::Url::parse(webhook_url).map_err(|e| {
            Error::new(ErrorCode::InvalidInput, format!("the Slack webhook URL does not parse ({e}); it is not shown"))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(Error::new(ErrorCode::InvalidInput, "the Slack webhook URL must be http(s)://HOST/..."));
        }
        let client = reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::new(ErrorCode::NotifyFailed, format!("cannot build the HTTP client: {e}")))?;
        Ok(SlackNotifier { client, url })
    }

    /// Post `approval`. `NOTIFY_FAILED` when the webhook cannot be reached
    /// or answers with anything but 2xx.
    pub async fn notify(&self, approval: &Approval) -> Result<()> {
        let host = self.url.host_str().unwrap_or("?").to_owned();
        let response = self.client.post(self.url.clone()).json(&message(approval)).send().await.map_err(|e| {
            let why = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "cannot connect"
            } else {
                "request failed"
            };
            Error::new(
                ErrorCode::NotifyFailed,
                format!("cannot post approval {} to Slack at {host}: {why}", approval.request_id),
            )
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::new(
                ErrorCode::NotifyFailed,
                format!("Slack at {host} refused approval {}: HTTP {}", approval.request_id, status.as_u16()),
            ));
        }
        Ok(())
    }
}

/// The Block Kit message for `a`.
pub fn message(a: &Approval) -> Value {
    let mut summary = serde_json::to_string_pretty(&a.summary).unwrap_or_else(|_| "{}".to_owned());
    if summary.len() > SUMMARY_MAX {
        let mut cut = SUMMARY_MAX;
        while !summary.is_char_boundary(cut) {
            cut -= 1;
        }
        summary.truncate(cut);
        summary.push_str("\n…");
    }
    let approvers = if a.approvers.is_empty() { "anyone".to_owned() } else { a.approvers.join(", ") };
    let who = a.approvers.first().map_or("WHO", String::as_str);
    let approve = format!("autobiz --tenant {} hitl approve {} --approver {who}", a.tenant_id, a.request_id);
    let deny = format!("autobiz --tenant {} hitl deny {} --approver {who} --reason \"...\"", a.tenant_id, a.request_id);
    let text = format!(
        "Approval needed: {} ({}) in run {}, request {}",
        a.tool,
        a.side_effect.as_str(),
        a.run_id,
        a.request_id
    );
    json!({
        "text": text,
        "blocks": [
            { "type": "header", "text": { "type": "plain_text", "text": "Approval needed" } },
            { "type": "section", "fields": [
                { "type": "mrkdwn", "text": format!("*Request*\n`{}`", a.request_id) },
                { "type": "mrkdwn", "text": format!("*Tool*\n`{}` ({})", a.tool, a.side_effect.as_str()) },
                { "type": "mrkdwn", "text": format!("*Run*\n`{}` step `{}`", a.run_id, a.step) },
                { "type": "mrkdwn", "text": format!("*Tenant*\n`{}`", a.tenant_id) },
                { "type": "mrkdwn", "text": format!("*Expires*\n{}", a.expires_at.to_rfc3339()) },
                { "type": "mrkdwn", "text": format!("*Approvers*\n{approvers}") }
            ] },
            { "type": "section", "text": { "type": "mrkdwn", "text": format!("*Summary (redacted)*\n```{summary}```") } },
            { "type": "section", "text": { "type": "mrkdwn", "text": format!("*Approve*\n```{approve}```\n*Deny*\n```{deny}```") } },
            { "type": "context", "elements": [
                { "type": "mrkdwn", "text": "Decisions are final and audited; an expired FINANCIAL request fails its step." }
            ] }
        ]
    })
}
