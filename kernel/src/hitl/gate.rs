//! The approval policy a durable run asks before every call
//! ([`crate::engine::ApprovalPolicy`]): the config's `[[hitl]]` rules decide
//! whether a human must look, `hitl_requests` holds the question and its
//! answer, and the Slack adapter (when configured) tells people.
//!
//! Request ids are derived from run and step, so a run that resumes after a
//! restart finds its own request (pending, or decided while it was down)
//! instead of asking twice.

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::model::OnTimeout;
use crate::contract::ToolContract;
use crate::engine::{ApprovalPolicy, Verdict};
use crate::error::Result;
use crate::redaction::RedactionPolicy;
use crate::run::StepCall;
use crate::store::Store;
use crate::tenant::TenantContext;

use super::slack::SlackNotifier;
use super::{ApprovalState, HitlRules, NewApproval, expiry};

/// HITL rules over the store's approval queue.
pub struct StoreApprovals {
    store: Store,
    rules: HitlRules,
    clock: Arc<dyn Clock>,
    redaction: RedactionPolicy,
    notifier: Option<SlackNotifier>,
}

impl StoreApprovals {
    pub fn new(store: Store, rules: HitlRules, clock: Arc<dyn Clock>) -> StoreApprovals {
        StoreApprovals { store, rules, clock, redaction: RedactionPolicy::default(), notifier: None }
    }

    /// Post every new request to a Slack-compatible incoming webhook. A
    /// failed post is logged and counted, never a lost request: the queue
    /// (`autobiz hitl list`) is the source of truth.
    pub fn with_slack(mut self, notifier: SlackNotifier) -> StoreApprovals {
        self.notifier = Some(notifier);
        self
    }
}

#[async_trait::async_trait]
impl ApprovalPolicy for StoreApprovals {
    async fn check(
        &self,
        ctx: &TenantContext,
        run_id: &str,
        call: &StepCall,
        contract: &ToolContract,
    ) -> Result<Verdict> {
        let Some(rule) = self.rules.required(&contract.name, &contract.version, contract.side_effect, &call.input)
        else {
            return Ok(Verdict::NotRequired);
        };
        let step = call.step_key();
        let now = self.clock.now();
        let approval = match self.store.hitl_find(ctx, run_id, &step).await? {
            Some(a) => a,
            None => {
                let new = NewApproval {
                    run_id: run_id.to_owned(),
                    step: step.clone(),
                    tool: contract.id(),
                    side_effect: contract.side_effect,
                    summary: self.redaction.redact(&call.input).value,
                    expires_at: expiry(now, &rule),
                    rule,
                };
                let created = self.store.hitl_create(ctx, &new).await?;
                if let Some(n) = &self.notifier
                    && let Err(e) = n.notify(&created).await
                {
                    tracing::warn!(target: "autobiz::hitl", request_id = %created.request_id, code = %e.code(), "approval request not posted to Slack: {}", e.message());
                }
                return Ok(Verdict::Pending { request_id: created.request_id });
            }
        };
        let approval = if approval.status == ApprovalState::Pending && approval.expires_at <= now {
            let expired = self.store.hitl_expire_due(ctx, now).await?;
            match expired.into_iter().find(|a| a.request_id == approval.request_id) {
                Some(a) => a,
                None => self.store.hitl_get(ctx, &approval.request_id).await?,
            }
        } else {
            approval
        };
        Ok(match approval.status {
            ApprovalState::Pending => Verdict::Pending { request_id: approval.request_id },
            ApprovalState::Approved => {
                Verdict::Approved { request_id: approval.request_id, approver: approval.approver.unwrap_or_default() }
            }
            ApprovalState::Denied => {
                Verdict::Denied { request_id: approval.request_id, approver: approval.approver.unwrap_or_default() }
            }
            // A FINANCIAL step never proceeds on timeout (timeout_policy
            // forces FAIL); ESCALATE ends the run too, and the expired
            // request stays in the queue for whoever owns escalations.
            ApprovalState::Expired => Verdict::Expired {
                proceed: approval.timeout_policy() == OnTimeout::Proceed,
                request_id: approval.request_id,
            },
        })
    }
}
