//! The autobiz kernel: the part of autobiz that business agents run inside.
//!
//! This crate does no terminal output and knows nothing of the harness's
//! folders (`suites/`, `golden/`, `cassettes/`): the CLI parses those and hands
//! the kernel data. Its main types so far:
//!
//! * [`store::Store`]: the tenant-isolated store on SQLite (embedded default)
//!   or PostgreSQL (row-level security), with embedded migrations.
//! * [`tenant::TenantContext`]: tenant, principal and correlation id, passed
//!   to every store and secrets call; [`tenant::EntityId`] carries its tenant.
//! * [`secrets::SecretsProvider`]: per-tenant credentials, audited, with the
//!   encrypted-file default [`secrets::FileSecrets`].
//! * [`config::BusinessConfig`]: `autobiz.toml`, its schema, its hash, and the
//!   compile checks ([`config::compile`]) over the typed [`config::Model`].
//! * [`executor::Executor`]: the one path every tool call takes: contract
//!   lookup ([`contract::ToolRegistry`]), schema validation, permissions
//!   ([`permission::PermissionEnforcer`]), bounds and loop detection
//!   ([`bounds`]), timeouts, cost, and a redacted, persisted [`trace`].
//! * [`workflow::Workflow`]: declared steps and branches, run through the
//!   executor; [`assembly::Assembly`] builds both from a checked config.
//! * [`redaction::RedactionPolicy`]: what of a tool call may reach a persisted
//!   trace (allowlist, sensitive names, scanners that raise alerts).
//! * [`state`]: entity state changed only by RFC 6902 patches, versioned,
//!   with optimistic locking (`Store::apply_patch`).
//! * [`idempotency::IdempotencyKey`]: INV-05 keys (SHA-256 over RFC 8785) and
//!   the claim protocol (`Store::idempotency_begin` / `_complete`), so a side
//!   effect runs once; [`receipts`]: the immutable evidence of each effect,
//!   and tool blocks for effects that could not be receipted.
//! * [`hitl`]: human approvals (INV-07): the `when` condition language, the
//!   approval lifecycle as a state machine persisted in `hitl_requests`, and
//!   the Slack adapter.
//! * [`breaker::Breakers`]: circuit breakers per dependency, their state in
//!   the database so every process shares it.
//! * [`providers`]: HTTP clients of Stripe, Shopify, Printful and SendGrid as
//!   tools, behind the [`providers::SandboxGuard`] and an outbound audit.
//! * [`llm`]: the OpenAI-compatible LLM client (model and prompt pinned per
//!   run, primary and fallback endpoints, tokens and cost per call, VCR
//!   cassettes) and the agent step, whose proposals go through the executor.
//! * [`ingress`]: webhook signature verification (Stripe, Shopify, tokens),
//!   normalized and deduplicated events, the ordering gate, worker claims.
//! * [`Error`]: one error type with stable [`ErrorCode`]s.
//!
//! See `ARCHITECTURE.md` at the repository root for the map and invariants.

pub mod assembly;
pub mod bounds;
pub mod breaker;
pub mod canonical;
pub mod clock;
pub mod closeout;
pub mod config;
pub mod contract;
pub mod engine;
mod error;
pub mod executor;
pub mod hitl;
pub mod idempotency;
pub mod ingress;
pub mod llm;
pub mod permission;
pub mod providers;
pub mod receipts;
pub mod reconcile;
pub mod redaction;
pub mod replay;
pub mod run;
pub mod secrets;
pub mod state;
pub mod store;
pub mod tenant;
pub mod trace;
pub mod transcript;
pub mod workflow;

pub use error::{Error, ErrorClass, ErrorCode, Result};
