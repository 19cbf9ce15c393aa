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
//! * [`Error`]: one error type with stable [`ErrorCode`]s.
//!
//! See `ARCHITECTURE.md` at the repository root for the map and invariants.

pub mod clock;
pub mod config;
mod error;
pub mod secrets;
pub mod store;
pub mod tenant;

pub use error::{Error, ErrorClass, ErrorCode, Result};
