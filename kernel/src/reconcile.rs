//! The reconciliation detector (P1-TASK-25, §11.4 and §11.5): local state
//! and receipts against the providers' truth, read through the provider
//! clients ([`crate::providers::Providers`]), plus the events the ordering
//! gate routed to reconciliation.
//!
//! What it compares, per tenant:
//!
//! | check | local | provider | class |
//! |---|---|---|---|
//! | captures | `stripe.payment_intent.capture` receipts | Stripe's PaymentIntents (`amount_received`, `status`) | financial |
//! | refunds | `stripe.refund.create` receipts, summed per PaymentIntent | `amount_refunded` of the PaymentIntent | financial |
//! | Shopify tags | tags of the last `shopify.order.update` receipt of an order | the order's `tags` | non-financial |
//! | Shopify cancel | a `shopify.order.cancel` receipt | the order's `cancelled_at` | financial (a cancellation may refund) |
//! | Printful status | the state entity `printful_order/<external_id>`, else the last `printful.order.*` receipt | the order's `status` | non-financial |
//! | events | `event_precondition_failed` cases (held, precondition still false after the hold) | the precondition re-checked now | non-financial |
//!
//! What it does with each drift:
//!
//! * A **drift case** is opened in `reconciliation` with an id derived from
//!   the drift (kind and entity), so a rerun that finds the same drift opens
//!   no second case ([`Store::reconciliation_open`]).
//! * **Non-financial** drift is repaired at once: the missing Shopify tags
//!   are set again, the Printful status is written into local state, a
//!   released event goes back to `READY`. The case becomes `REPAIRED` and an
//!   immutable action row says what was wrong, what was done, by which
//!   principal and when (`reconciliation_actions`). Drift that comes back
//!   after a repair reopens the same case (action `recurred`).
//! * **Financial** drift is never repaired automatically: a `hitl_requests`
//!   row (FINANCIAL, failing on timeout) is created through
//!   [`Store::hitl_create`] and the case stays `AWAITING_HUMAN` until it is
//!   decided (`autobiz hitl approve|deny`). A later run records the outcome:
//!   approved -> `RESOLVED`, denied -> `DISMISSED`. An event whose
//!   precondition still fails is escalated the same way (a WRITE request):
//!   approved releases it to `READY`.
//!
//! Every read and write is under the caller's [`TenantContext`], so one
//! tenant's run never sees or repairs another's drift.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::closeout;
use crate::config::model::OnTimeout;
use crate::contract::SideEffect;
use crate::error::{Error, ErrorCode, Result};
use crate::executor::CallContext;
use crate::hitl::{ApprovalState, NewApproval, RuleMatch};
use crate::ingress::{Precondition, StorePrecondition};
use crate::providers::Providers;
use crate::store::{NewAction, NewCase, ReconciliationCase, Store};
use crate::tenant::{EntityId, TenantContext};

/// The HITL "run" every reconciliation request belongs to; the step is the
/// case id, so a case has exactly one request.
pub const HITL_RUN: &str = "reconcile";
/// The tool name an approver sees on a reconciliation request.
pub const HITL_TOOL: &str = "reconcile.drift@1";
/// How long a human has to decide on a reconciliation request (7 days).
pub const HITL_TIMEOUT_S: u64 = 7 * 24 * 3600;

/// The kind of the cases the ordering gate opens.
pub const EVENT_CASE_KIND: &str = "event_precondition_failed";

/// Case statuses.
pub mod status {
    pub const OPEN: &str = "OPEN";
    pub const AWAITING_HUMAN: &str = "AWAITING_HUMAN";
    pub const REPAIRED: &str = "REPAIRED";
    pub const RESOLVED: &str = "RESOLVED";
    pub const DISMISSED: &str = "DISMISSED";

    /// A case a human still has to look at.
    pub fn needs_human(s: &str) -> bool {
        s == AWAITING_HUMAN || s == OPEN
    }
}

/// Provider tools the detector reads with and repairs through.
const SHOPIFY_UPDATE: &str = "shopify.order.update";
const SHOPIFY_CANCEL: &str = "shopify.order.cancel";
const REFUND_TOOL: &str = "stripe.refund.create";
const PRINTFUL_TOOLS: [&str; 3] = ["printful.order.create", "printful.order.confirm", "printful.order.cancel"];

/// Whether a case's drift is about money (it goes to a human, never
/// repaired automatically) or not: the `kind` label of the
/// `reconciliation_open_cases` and `drift_case_opened_total` series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseClass {
    Financial,
    NonFinancial,
}

impl CaseClass {
    /// The class of a case of `kind` (the kinds this module opens: Stripe
    /// captures and refunds and Shopify cancellations are financial; tags,
    /// Printful status and held events are not). A stored case carries only
    /// its kind, so the class is a function of it; `handle` checks that the
    /// drift it opens agrees.
    pub fn of_kind(kind: &str) -> CaseClass {
        if kind.starts_with("stripe_") || kind.starts_with("shopify_cancel") {
            CaseClass::Financial
        } else {
            CaseClass::NonFinancial
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CaseClass::Financial => "financial",
            CaseClass::NonFinancial => "non_financial",
        }
    }
}

/// Which checks need which provider.
pub const PROVIDER_CHECKS: [&str; 3] = ["stripe", "shopify", "printful"];

/// What one run found and did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ReconcileReport {
    pub tenant: String,
    /// Receipts and events compared, per check.
    pub checked: BTreeMap<String, u64>,
    /// Checks not run (no provider clients).
    pub skipped: Vec<String>,
    pub findings: Vec<Finding>,
    /// Cases opened by this run.
    pub opened: u64,
    /// The same cases by class (`financial`, `non_financial`), for
    /// `drift_case_opened_total`.
    pub opened_by_class: BTreeMap<CaseClass, u64>,
    /// Cases repaired automatically by this run.
    pub repaired: u64,
    /// Cases sent to a human by this run.
    pub escalated: u64,
    /// Human decisions recorded by this run.
    pub decided: u64,
    /// Cases still waiting for a human after this run (this tenant, all runs).
    pub awaiting_human: u64,
}

/// One drift case as this run saw it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Finding {
    pub case_id: String,
    pub kind: String,
    pub entity: Option<String>,
    pub financial: bool,
    /// What this run did: `repaired`, `sent_to_hitl`, `awaiting_human`,
    /// `approved`, `denied`, `expired`, `repair_failed`.
    pub action: String,
    /// The case's status after the run.
    pub status: String,
    pub hitl_request: Option<String>,
    pub detail: Value,
}

impl ReconcileReport {
    /// Whether anything was found that is still open for a human.
    pub fn needs_human(&self) -> bool {
        self.awaiting_human > 0
    }
}

/// How to repair a non-financial drift.
#[derive(Debug, Clone, PartialEq)]
enum Repair {
    /// Set `tags` on the Shopify order (the provider's plus the missing ones).
    ShopifyTags { order_id: String, tags: Vec<String> },
    /// Record the provider's status as the local state of the order.
    PrintfulStatus { external_id: String, status: String },
    /// Release the event from RECONCILE to READY.
    ReleaseEvent { event_id: i64 },
}

/// A drift the checks found.
#[derive(Debug, Clone, PartialEq)]
struct Drift {
    case_id: String,
    kind: String,
    entity: Option<String>,
    detail: Value,
    /// `None`: financial, or otherwise for a human (never repaired here).
    repair: Option<Repair>,
    side_effect: SideEffect,
}

/// The detector, over a store and (optionally) the provider clients.
#[derive(Clone)]
pub struct Reconciler {
    store: Store,
    providers: Option<Arc<Providers>>,
}

impl Reconciler {
    /// `providers: None` runs only the checks that need no provider (the
    /// events routed to reconciliation); the provider checks are listed in
    /// [`ReconcileReport::skipped`], never silently passed.
    pub fn new(store: Store, providers: Option<Arc<Providers>>) -> Reconciler {
        Reconciler { store, providers }
    }

    /// One reconciliation pass for `ctx`'s tenant: detect, open cases,
    /// repair non-financial drift, send financial drift to HITL, and record
    /// the decisions humans made since the last pass. Idempotent: a rerun
    /// with nothing changed opens, repairs and asks nothing.
    pub async fn run(&self, ctx: &TenantContext) -> Result<ReconcileReport> {
        let mut report = ReconcileReport { tenant: ctx.tenant().as_str().to_owned(), ..Default::default() };
        let mut drift = Vec::new();
        match &self.providers {
            Some(p) => {
                let mut calls = Calls { providers: p, ctx, seq: 0 };
                drift.extend(self.stripe(&mut calls, &mut report).await?);
                drift.extend(self.shopify(&mut calls, &mut report).await?);
                drift.extend(self.printful(&mut calls, &mut report).await?);
            }
            None => report.skipped = PROVIDER_CHECKS.iter().map(|s| (*s).to_owned()).collect(),
        }
        let cases = self.store.reconciliation_cases(ctx).await?;
        drift.extend(self.events(ctx, &cases, &mut report).await?);
        for d in drift {
            let finding = self.handle(ctx, &cases, d, &mut report).await?;
            report.findings.push(finding);
        }
        // Decisions on cases this run did not meet again.
        let handled: Vec<String> = report.findings.iter().map(|f| f.case_id.clone()).collect();
        for c in cases.iter().filter(|c| c.status == status::AWAITING_HUMAN && !handled.contains(&c.case_id)) {
            let finding = self.follow_up(ctx, c, &mut report).await?;
            report.findings.push(finding);
        }
        report.awaiting_human =
            self.store.reconciliation_cases(ctx).await?.iter().filter(|c| status::needs_human(&c.status)).count()
                as u64;
        Ok(report)
    }

    // --- checks ----------------------------------------------------------------

    async fn stripe(&self, calls: &mut Calls<'_>, report: &mut ReconcileReport) -> Result<Vec<Drift>> {
        let ctx = calls.ctx;
        let mut captures = Vec::new();
        for (r, result) in self.store.receipt_results(ctx, closeout::CAPTURE_TOOL).await? {
            let pi = result.as_ref().and_then(|v| v["id"].as_str()).map(str::to_owned).unwrap_or_default();
            captures.push((pi, r.amount_minor));
        }
        let mut refunds: BTreeMap<String, i64> = BTreeMap::new();
        let refund_receipts = self.store.receipt_results(ctx, REFUND_TOOL).await?;
        for (r, result) in &refund_receipts {
            if let Some(pi) = result.as_ref().and_then(|v| v["payment_intent"].as_str()) {
                *refunds.entry(pi.to_owned()).or_default() += r.amount_minor.unwrap_or(0);
            }
        }
        report.checked.insert("stripe.captures".into(), captures.len() as u64);
        report.checked.insert("stripe.refunds".into(), refund_receipts.len() as u64);
        let listed = calls.call("stripe.payment_intent.list", json!({})).await?;
        let intents = listed["data"].as_array().cloned().unwrap_or_default();
        let mut out = Vec::new();
        let receipted: std::collections::HashSet<&str> = captures.iter().map(|(pi, _)| pi.as_str()).collect();
        let found = closeout::reconcile(&captures, &receipted, &intents);
        for d in found["drift"].as_array().into_iter().flatten() {
            let pi = d["payment_intent"].as_str().unwrap_or_default();
            out.push(Drift {
                case_id: format!("stripe-{}", d["id"].as_str().unwrap_or_default()),
                kind: format!("stripe_capture_{}", d["kind"].as_str().unwrap_or_default()),
                entity: Some(format!("payment_intent:{pi}")),
                detail: d.clone(),
                repair: None,
                side_effect: SideEffect::Financial,
            });
        }
        for pi in &intents {
            let id = pi["id"].as_str().unwrap_or_default();
            let provider = pi["amount_refunded"].as_i64().unwrap_or(0);
            let local = refunds.get(id).copied().unwrap_or(0);
            if provider != local {
                out.push(refund_drift(id, local, Some(provider)));
            }
        }
        for (pi, local) in &refunds {
            if !intents.iter().any(|p| p["id"].as_str() == Some(pi)) {
                out.push(refund_drift(pi, *local, None));
            }
        }
        Ok(out)
    }

    async fn shopify(&self, calls: &mut Calls<'_>, report: &mut ReconcileReport) -> Result<Vec<Drift>> {
        let ctx = calls.ctx;
        // The last tags the workflows set, per order.
        let mut tagged: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let updates = self.store.receipt_results(ctx, SHOPIFY_UPDATE).await?;
        for (_, result) in &updates {
            if let Some(order) = result
                && let Some(id) = order_id(order)
            {
                tagged.insert(id, split_tags(&order["tags"]));
            }
        }
        let mut cancelled = Vec::new();
        let cancels = self.store.receipt_results(ctx, SHOPIFY_CANCEL).await?;
        for (_, result) in &cancels {
            if let Some(id) = result.as_ref().and_then(order_id) {
                cancelled.push(id);
            }
        }
        report.checked.insert("shopify.orders".into(), (updates.len() + cancels.len()) as u64);
        let mut out = Vec::new();
        for (id, local) in &tagged {
            let order = calls.call("shopify.order.get", json!({"order_id": id})).await?;
            let provider = split_tags(&order["tags"]);
            let missing: Vec<String> = local.iter().filter(|t| !provider.contains(t)).cloned().collect();
            if missing.is_empty() {
                continue;
            }
            let mut tags = provider.clone();
            tags.extend(missing.iter().cloned());
            out.push(Drift {
                case_id: format!("shopify-tags-{id}"),
                kind: "shopify_tags_missing".into(),
                entity: Some(format!("order:{id}")),
                detail: json!({"order_id": id, "local_tags": local, "provider_tags": provider, "missing": missing}),
                repair: Some(Repair::ShopifyTags { order_id: id.clone(), tags }),
                side_effect: SideEffect::Write,
            });
        }
        for id in &cancelled {
            let order = calls.call("shopify.order.get", json!({"order_id": id})).await?;
            if order["cancelled_at"].is_null() {
                out.push(Drift {
                    case_id: format!("shopify-cancel-{id}"),
                    kind: "shopify_cancel_not_at_provider".into(),
                    entity: Some(format!("order:{id}")),
                    detail: json!({"order_id": id, "local": "cancelled", "provider_cancelled_at": null}),
                    repair: None,
                    side_effect: SideEffect::Financial,
                });
            }
        }
        Ok(out)
    }

    async fn printful(&self, calls: &mut Calls<'_>, report: &mut ReconcileReport) -> Result<Vec<Drift>> {
        let ctx = calls.ctx;
        // The last status the kernel saw, per external id.
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut n = 0u64;
        for tool in PRINTFUL_TOOLS {
            for (_, result) in self.store.receipt_results(ctx, tool).await? {
                n += 1;
                if let Some(order) = result
                    && let (Some(ext), Some(st)) = (order["external_id"].as_str(), order["status"].as_str())
                {
                    seen.insert(ext.to_owned(), st.to_owned());
                }
            }
        }
        report.checked.insert("printful.orders".into(), n);
        let mut out = Vec::new();
        for (ext, receipted) in &seen {
            let local = match self.store.state(ctx, &printful_entity(ctx, ext)?).await? {
                Some(v) => v.state["status"].as_str().unwrap_or(receipted).to_owned(),
                None => receipted.clone(),
            };
            let order = calls.call("printful.order.get", json!({"external_id": ext})).await?;
            let Some(provider) = order["status"].as_str() else { continue };
            if provider == local {
                continue;
            }
            out.push(Drift {
                case_id: format!("printful-status-{ext}"),
                kind: "printful_status_differs".into(),
                entity: Some(format!("printful_order:{ext}")),
                detail: json!({"external_id": ext, "local_status": local, "provider_status": provider}),
                repair: Some(Repair::PrintfulStatus { external_id: ext.clone(), status: provider.to_owned() }),
                side_effect: SideEffect::Write,
            });
        }
        Ok(out)
    }

    /// Open `event_precondition_failed` cases: released when the
    /// precondition holds by now, else escalated to a human.
    async fn events(
        &self,
        ctx: &TenantContext,
        cases: &[ReconciliationCase],
        report: &mut ReconcileReport,
    ) -> Result<Vec<Drift>> {
        let open: Vec<&ReconciliationCase> =
            cases.iter().filter(|c| c.kind == EVENT_CASE_KIND && c.status == status::OPEN).collect();
        report.checked.insert("events".into(), open.len() as u64);
        let pre = StorePrecondition(self.store.clone());
        let mut out = Vec::new();
        for c in open {
            let Some(event_id) = c.detail["event_id"].as_i64() else { continue };
            let Some(event) = self.store.event(ctx, event_id).await? else { continue };
            let holds = pre.holds(ctx, &event).await?;
            out.push(Drift {
                case_id: c.case_id.clone(),
                kind: c.kind.clone(),
                entity: c.entity_id.clone(),
                detail: json!({
                    "event_id": event_id,
                    "source": event.source,
                    "event_type": event.event_type,
                    "waiting_for": event.waiting_for,
                    "precondition_holds": holds,
                }),
                repair: holds.then_some(Repair::ReleaseEvent { event_id }),
                side_effect: SideEffect::Write,
            });
        }
        Ok(out)
    }

    // --- actions ---------------------------------------------------------------

    async fn handle(
        &self,
        ctx: &TenantContext,
        cases: &[ReconciliationCase],
        d: Drift,
        report: &mut ReconcileReport,
    ) -> Result<Finding> {
        let financial = d.side_effect == SideEffect::Financial;
        debug_assert_eq!(
            financial,
            CaseClass::of_kind(&d.kind) == CaseClass::Financial,
            "CaseClass::of_kind disagrees with the drift {}",
            d.kind
        );
        let existing = cases.iter().find(|c| c.case_id == d.case_id);
        let mut current = match existing {
            Some(c) => c.status.clone(),
            None => {
                let opened = self
                    .store
                    .reconciliation_open(
                        ctx,
                        &NewCase {
                            case_id: &d.case_id,
                            kind: &d.kind,
                            entity_id: d.entity.as_deref(),
                            status: status::OPEN,
                            detail: &d.detail,
                        },
                    )
                    .await?;
                if opened {
                    report.opened += 1;
                    *report.opened_by_class.entry(CaseClass::of_kind(&d.kind)).or_default() += 1;
                }
                status::OPEN.to_owned()
            }
        };
        let finding = |action: &str, status: &str, hitl: Option<String>| Finding {
            case_id: d.case_id.clone(),
            kind: d.kind.clone(),
            entity: d.entity.clone(),
            financial,
            action: action.to_owned(),
            status: status.to_owned(),
            hitl_request: hitl,
            detail: d.detail.clone(),
        };
        if current == status::REPAIRED && d.repair.is_some() {
            // The drift came back after a repair: reopen, then repair again.
            let done = json!({"reopened": true});
            if self.transition(ctx, &d.case_id, status::REPAIRED, status::OPEN, "recurred", &d.detail, &done).await? {
                current = status::OPEN.to_owned();
            }
        }
        match current.as_str() {
            status::OPEN => match &d.repair {
                Some(repair) => match self.repair(ctx, repair).await {
                    Ok(done) => {
                        self.transition(ctx, &d.case_id, status::OPEN, status::REPAIRED, "repaired", &d.detail, &done)
                            .await?;
                        report.repaired += 1;
                        Ok(finding("repaired", status::REPAIRED, None))
                    }
                    // A repair that fails leaves the case open for the next
                    // run (and a human reading `reconcile list`).
                    Err(e) if e.code() != ErrorCode::StoreUnavailable => {
                        let mut f = finding("repair_failed", status::OPEN, None);
                        f.detail["repair_error"] = json!(format!("{}: {}", e.code(), e.message()));
                        Ok(f)
                    }
                    Err(e) => Err(e),
                },
                None => {
                    let request = self.escalate(ctx, &d).await?;
                    let done = json!({"hitl_request": request, "side_effect": d.side_effect.as_str()});
                    self.transition(
                        ctx,
                        &d.case_id,
                        status::OPEN,
                        status::AWAITING_HUMAN,
                        "sent_to_hitl",
                        &d.detail,
                        &done,
                    )
                    .await?;
                    report.escalated += 1;
                    Ok(finding("sent_to_hitl", status::AWAITING_HUMAN, Some(request)))
                }
            },
            status::AWAITING_HUMAN => {
                let c = ReconciliationCase {
                    case_id: d.case_id.clone(),
                    kind: d.kind.clone(),
                    entity_id: d.entity.clone(),
                    status: current.clone(),
                    detail: d.detail.clone(),
                    created_at: self.store.now(),
                };
                let mut f = self.follow_up(ctx, &c, report).await?;
                f.financial = financial;
                Ok(f)
            }
            // Repaired (and now clean again), or decided by a human.
            other => Ok(finding("none", other, None)),
        }
    }

    /// A case waiting for a human: record the decision if there is one.
    async fn follow_up(
        &self,
        ctx: &TenantContext,
        c: &ReconciliationCase,
        report: &mut ReconcileReport,
    ) -> Result<Finding> {
        let approval = self.store.hitl_find(ctx, HITL_RUN, &c.case_id).await?;
        let mut f = Finding {
            case_id: c.case_id.clone(),
            kind: c.kind.clone(),
            entity: c.entity_id.clone(),
            financial: approval.as_ref().is_some_and(|a| a.side_effect == SideEffect::Financial),
            action: "awaiting_human".into(),
            status: status::AWAITING_HUMAN.into(),
            hitl_request: approval.as_ref().map(|a| a.request_id.clone()),
            detail: c.detail.clone(),
        };
        let Some(a) = approval else { return Ok(f) };
        let decision = json!({
            "hitl_request": a.request_id,
            "approver": a.approver,
            "reason": a.reason,
            "decided_at": a.decided_at,
        });
        let (to, action) = match a.status {
            ApprovalState::Approved => (status::RESOLVED, "approved"),
            ApprovalState::Denied => (status::DISMISSED, "denied"),
            ApprovalState::Expired => {
                f.action = "expired".into();
                return Ok(f);
            }
            ApprovalState::Pending => return Ok(f),
        };
        let mut done = decision;
        if a.status == ApprovalState::Approved
            && c.kind == EVENT_CASE_KIND
            && let Some(event_id) = c.detail["event_id"].as_i64()
        {
            done["event_released"] = json!(self.store.event_release_reconciled(ctx, event_id).await?);
        }
        if self.transition(ctx, &c.case_id, status::AWAITING_HUMAN, to, action, &c.detail, &done).await? {
            report.decided += 1;
        }
        f.action = action.into();
        f.status = to.into();
        Ok(f)
    }

    #[allow(clippy::too_many_arguments)]
    async fn transition(
        &self,
        ctx: &TenantContext,
        case_id: &str,
        from: &str,
        to: &str,
        action: &str,
        wrong: &Value,
        done: &Value,
    ) -> Result<bool> {
        self.store.reconciliation_transition(ctx, case_id, from, to, &NewAction { action, wrong, done }).await
    }

    /// A pending request for a human (created once per case).
    async fn escalate(&self, ctx: &TenantContext, d: &Drift) -> Result<String> {
        let rule = RuleMatch {
            rule_index: None,
            approvers: Vec::new(),
            timeout_s: HITL_TIMEOUT_S,
            on_timeout: OnTimeout::Fail,
        };
        let now = self.store.now();
        let approval = self
            .store
            .hitl_create(
                ctx,
                &NewApproval {
                    run_id: HITL_RUN.to_owned(),
                    step: d.case_id.clone(),
                    tool: HITL_TOOL.to_owned(),
                    side_effect: d.side_effect,
                    summary: json!({"case_id": d.case_id, "kind": d.kind, "entity": d.entity, "detail": d.detail}),
                    expires_at: crate::hitl::expiry(now, &rule),
                    rule,
                },
            )
            .await?;
        Ok(approval.request_id)
    }

    /// Carry out a non-financial repair; what was done.
    async fn repair(&self, ctx: &TenantContext, repair: &Repair) -> Result<Value> {
        match repair {
            Repair::ShopifyTags { order_id, tags } => {
                let providers = self.providers.as_ref().ok_or_else(no_providers)?;
                let mut calls = Calls { providers, ctx, seq: 100 };
                let order = calls.call(SHOPIFY_UPDATE, json!({"order_id": order_id, "tags": tags})).await?;
                Ok(
                    json!({"provider_call": SHOPIFY_UPDATE, "order_id": order_id, "tags_now": split_tags(&order["tags"])}),
                )
            }
            Repair::PrintfulStatus { external_id, status } => {
                let entity = printful_entity(ctx, external_id)?;
                let current = self.store.state(ctx, &entity).await?;
                let (version, op) = match &current {
                    Some(v) => (v.version, json!({"op": "add", "path": "/status", "value": status})),
                    None => (0, json!({"op": "add", "path": "", "value": {"status": status}})),
                };
                let patch: json_patch::Patch = serde_json::from_value(json!([op]))
                    .map_err(|e| Error::new(ErrorCode::InvalidInput, format!("reconcile: {e}")))?;
                let written = self.store.apply_patch(ctx, &entity, version, &patch).await?;
                Ok(json!({"state": entity.to_string(), "version": written.version, "status": status}))
            }
            Repair::ReleaseEvent { event_id } => {
                let released = self.store.event_release_reconciled(ctx, *event_id).await?;
                Ok(json!({"event_id": event_id, "released_to": "READY", "released": released}))
            }
        }
    }
}

fn no_providers() -> Error {
    Error::new(ErrorCode::InvalidInput, "reconcile: this repair needs the provider clients")
}

fn refund_drift(pi: &str, local: i64, provider: Option<i64>) -> Drift {
    let kind = match provider {
        None => "stripe_refund_missing_at_provider",
        Some(p) if local == 0 && p > 0 => "stripe_refund_missing_receipt",
        Some(_) => "stripe_refund_amount_mismatch",
    };
    Drift {
        case_id: format!("stripe-refund-{pi}"),
        kind: kind.into(),
        entity: Some(format!("payment_intent:{pi}")),
        detail: json!({"payment_intent": pi, "receipted_refunded_minor": local, "provider_refunded_minor": provider}),
        repair: None,
        side_effect: SideEffect::Financial,
    }
}

fn printful_entity(ctx: &TenantContext, external_id: &str) -> Result<EntityId> {
    EntityId::new(ctx.tenant().clone(), "printful_order", external_id)
}

/// A Shopify order's id (a number in the API) as the client takes it.
fn order_id(order: &Value) -> Option<String> {
    match &order["id"] {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Shopify's comma-separated tags (or an array), trimmed, without empties.
fn split_tags(tags: &Value) -> Vec<String> {
    match tags {
        Value::String(s) => s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect(),
        Value::Array(a) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// Provider reads and repairs, outside any workflow run: each call has its
/// own sequence number under one reconcile "run" id.
struct Calls<'a> {
    providers: &'a Providers,
    ctx: &'a TenantContext,
    seq: u64,
}

impl Calls<'_> {
    async fn call(&mut self, tool: &str, input: Value) -> Result<Value> {
        self.seq += 1;
        let call = CallContext {
            ctx: self.ctx.clone(),
            run_id: format!("reconcile-{}", self.ctx.correlation_id().as_str()),
            seq: self.seq,
            tool: format!("{tool}@1"),
            idempotency_key: None,
        };
        Ok(self.providers.call(tool, &call, &input).await?.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_like_shopify_writes_them() {
        assert_eq!(split_tags(&json!("paid, vip ,,wf01")), ["paid", "vip", "wf01"]);
        assert_eq!(split_tags(&json!(["a", "b"])), ["a", "b"]);
        assert!(split_tags(&Value::Null).is_empty());
    }

    #[test]
    fn p1_t_rk02d_case_classes_follow_the_kinds_this_module_opens() {
        for kind in [
            "stripe_capture_missing_at_provider",
            "stripe_refund_missing_receipt",
            "stripe_refund_amount_mismatch",
            "shopify_cancel_not_at_provider",
        ] {
            assert_eq!(CaseClass::of_kind(kind), CaseClass::Financial, "{kind}");
        }
        for kind in ["shopify_tags_missing", "printful_status_differs", EVENT_CASE_KIND] {
            assert_eq!(CaseClass::of_kind(kind), CaseClass::NonFinancial, "{kind}");
        }
        assert_eq!(CaseClass::of_kind(&refund_drift("pi_1", 0, Some(1)).kind), CaseClass::Financial);
        assert_eq!(serde_json::to_value(CaseClass::NonFinancial).unwrap(), "non_financial");
    }

    #[test]
    fn refund_drift_names_which_side_is_missing() {
        assert_eq!(refund_drift("pi_1", 0, Some(500)).kind, "stripe_refund_missing_receipt");
        assert_eq!(refund_drift("pi_1", 500, Some(0)).kind, "stripe_refund_amount_mismatch");
        assert_eq!(refund_drift("pi_1", 500, None).kind, "stripe_refund_missing_at_provider");
        assert!(refund_drift("pi_1", 1, Some(2)).repair.is_none(), "financial drift is never repaired here");
    }
}
