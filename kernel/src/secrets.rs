//! Scoped credentials: per-tenant secrets behind the [`SecretsProvider`]
//! interface.
//!
//! The default provider, [`FileSecrets`], keeps every tenant's secrets in one
//! JSON file whose values are sealed with XChaCha20-Poly1305 under a 256-bit
//! master key that lives elsewhere (`AUTOBIZ_MASTER_KEY` or a key file that
//! may not sit beside the data). Each value's associated data binds it to its
//! tenant, name and version, so a ciphertext copied into another tenant's
//! entry fails to open instead of leaking across the boundary.
//!
//! Names and metadata are stored in clear (like a vault's paths); values never
//! are, and never appear in errors, logs or `list`.
//!
//! Every access is audited through an [`AuditSink`] (the store in
//! production): a read that cannot be audited fails. A reference to another
//! tenant's secret (`globex/STRIPE_KEY` from tenant `acme`) is refused with
//! `TENANT_FORBIDDEN`, audited as denied and recorded as a security event.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, ErrorCode, Result};
use crate::store::{AuditEvent, SecurityEvent, Store};
use crate::tenant::{TenantContext, TenantId};

/// Environment variable holding the master key (base64 or hex of 32 bytes).
pub const MASTER_KEY_ENV: &str = "AUTOBIZ_MASTER_KEY";
/// Environment variable naming a file that holds the master key.
pub const MASTER_KEY_FILE_ENV: &str = "AUTOBIZ_MASTER_KEY_FILE";
/// How long a rotated-out version stays readable unless told otherwise.
pub const DEFAULT_GRACE: Duration = Duration::hours(24);

const FORMAT: &str = "autobiz-secrets/v1";
const KEY_CHECK_PLAINTEXT: &[u8] = b"autobiz master key check";
const KEY_CHECK_AAD: &[u8] = b"autobiz-secrets/v1 key-check";

/// Where audit and security events about secret access go.
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync {
    async fn audit(&self, ctx: &TenantContext, event: &AuditEvent) -> Result<()>;
    async fn security(&self, ctx: &TenantContext, event: &SecurityEvent) -> Result<()>;
    /// Write `events` in order, all or none where the sink can (the store:
    /// one transaction). By default, one [`AuditSink::audit`] each, stopping
    /// at the first that fails.
    async fn audit_all(&self, ctx: &TenantContext, events: &[AuditEvent]) -> Result<()> {
        for event in events {
            self.audit(ctx, event).await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl AuditSink for Store {
    async fn audit(&self, ctx: &TenantContext, event: &AuditEvent) -> Result<()> {
        self.record_audit(ctx, event).await
    }

    async fn audit_all(&self, ctx: &TenantContext, events: &[AuditEvent]) -> Result<()> {
        self.record_audits(ctx, events).await
    }

    async fn security(&self, ctx: &TenantContext, event: &SecurityEvent) -> Result<()> {
        self.record_security_event(ctx, event).await
    }
}

/// What `list` shows of a secret: never its value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretInfo {
    pub name: String,
    pub version: u32,
    pub created_at: DateTime<Utc>,
    /// Whole days since the current version was written
    /// (`credential_rotation_age_days`).
    pub age_days: i64,
    /// Earlier versions still readable, with the end of their grace period.
    pub previous: Vec<PreviousVersion>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PreviousVersion {
    pub version: u32,
    pub readable_until: DateTime<Utc>,
}

/// What [`SecretsProvider::get_then`]'s caller checks of a value before it
/// uses it (the sandbox guard's live-key check).
pub type ValueCheck<'a> = dyn for<'v> Fn(&'v SecretString) -> Result<()> + Send + Sync + 'a;

/// Per-tenant credentials. Implementations must refuse cross-tenant access
/// and audit every access.
#[async_trait::async_trait]
pub trait SecretsProvider: Send + Sync {
    /// The current value of `reference` (`NAME`, or `TENANT/NAME` naming the
    /// caller's own tenant).
    async fn get(&self, ctx: &TenantContext, reference: &str) -> Result<SecretString>;
    /// [`SecretsProvider::get`] for a caller that audits what it does with
    /// the value next (a provider request it authenticates): `check` looks
    /// at the value first; if it refuses, only the read is audited and
    /// `check`'s error returned; otherwise the read and `then` are audited
    /// and the value returned, and no value is returned unless both are on
    /// record.
    ///
    /// By default the read is audited as `get` does it and `then` is
    /// written to `sink` after `check`. A provider that audits through a
    /// sink of its own writes the read and `then` there in one write (one
    /// commit for the store), which is what this method is for.
    async fn get_then(
        &self,
        ctx: &TenantContext,
        reference: &str,
        check: &ValueCheck<'_>,
        then: &[AuditEvent],
        sink: &dyn AuditSink,
    ) -> Result<SecretString> {
        let value = self.get(ctx, reference).await?;
        check(&value)?;
        sink.audit_all(ctx, then).await?;
        Ok(value)
    }
    /// A specific version: the current one, or a previous one within its
    /// grace period (`SECRET_VERSION_EXPIRED` after it).
    async fn get_version(&self, ctx: &TenantContext, reference: &str, version: u32) -> Result<SecretString>;
    /// Create the secret, or replace it at once (the previous version stops
    /// being readable immediately).
    async fn set(&self, ctx: &TenantContext, name: &str, value: SecretString) -> Result<SecretInfo>;
    /// Write a new version; the previous one stays readable for `grace`.
    async fn rotate(&self, ctx: &TenantContext, name: &str, value: SecretString, grace: Duration)
    -> Result<SecretInfo>;
    /// The tenant's secrets, without values.
    async fn list(&self, ctx: &TenantContext) -> Result<Vec<SecretInfo>>;
}

/// A 256-bit master key. Zeroed on drop; never printed.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

impl MasterKey {
    /// Decode a key written as base64 (44 characters) or hex (64 characters).
    pub fn decode(text: &str) -> Result<MasterKey> {
        let text = text.trim();
        let bytes = Zeroizing::new(if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).ok()
        } else {
            B64.decode(text).ok()
        });
        match bytes.as_deref() {
            Some(b) if b.len() == 32 => {
                let mut key = Zeroizing::new([0u8; 32]);
                key.copy_from_slice(b);
                Ok(MasterKey(key))
            }
            _ => Err(Error::new(
                ErrorCode::MasterKeyInvalid,
                "the master key must be 32 bytes written as base64 or hex (make one with: head -c 32 /dev/urandom | base64)",
            )),
        }
    }

    /// A fresh random key (for tests and first-time set-up tools).
    pub fn generate() -> MasterKey {
        MasterKey(Zeroizing::new(XChaCha20Poly1305::generate_key(&mut OsRng).into()))
    }

    /// The key as base64, for handing to a person once.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(*self.0))
    }

    /// Load the key from `AUTOBIZ_MASTER_KEY`, or from the file named by
    /// `AUTOBIZ_MASTER_KEY_FILE`, which must not lie in the directory tree
    /// that holds `secrets_file`.
    pub fn from_env(secrets_file: &Path) -> Result<MasterKey> {
        if let Ok(text) = std::env::var(MASTER_KEY_ENV) {
            return MasterKey::decode(&text);
        }
        let Some(key_file) = std::env::var_os(MASTER_KEY_FILE_ENV).map(PathBuf::from) else {
            return Err(Error::new(
                ErrorCode::MasterKeyMissing,
                format!(
                    "no master key: set {MASTER_KEY_ENV} (32 random bytes as base64: head -c 32 /dev/urandom | base64) or {MASTER_KEY_FILE_ENV}"
                ),
            ));
        };
        let key_path = key_file.canonicalize().map_err(|e| {
            Error::new(
                ErrorCode::MasterKeyMissing,
                format!("cannot read the master key file {}: {e}", key_file.display()),
            )
        })?;
        let data_dir = secrets_file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if let Ok(data_dir) = data_dir.canonicalize()
            && key_path.starts_with(&data_dir)
        {
            return Err(Error::new(
                ErrorCode::MasterKeyInvalid,
                format!(
                    "the master key file {} lies beside the secrets it protects ({}): keep it elsewhere",
                    key_path.display(),
                    data_dir.display()
                ),
            ));
        }
        let text = Zeroizing::new(fs::read_to_string(&key_path).map_err(|e| {
            Error::new(
                ErrorCode::MasterKeyMissing,
                format!("cannot read the master key file {}: {e}", key_path.display()),
            )
        })?);
        MasterKey::decode(&text)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.0).into())
    }
}

/// The on-disk document.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Vault {
    format: String,
    key_check: String,
    tenants: BTreeMap<String, BTreeMap<String, Vec<StoredVersion>>>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StoredVersion {
    version: u32,
    created_at: DateTime<Utc>,
    /// Set when a newer version replaced this one; the end of its grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    readable_until: Option<DateTime<Utc>>,
    /// base64(nonce || ciphertext).
    sealed: String,
}

/// The default [`SecretsProvider`]: an encrypted local file.
pub struct FileSecrets {
    path: PathBuf,
    key: Arc<MasterKey>,
    audit: Arc<dyn AuditSink>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for FileSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSecrets").field("path", &self.path).finish_non_exhaustive()
    }
}

impl FileSecrets {
    /// Open (or prepare to create) the secrets file at `path`. If the file
    /// exists, the key is checked against it now: a wrong key fails here
    /// with `MASTER_KEY_INVALID`, before anything is read or written.
    pub fn open(path: impl Into<PathBuf>, key: MasterKey, audit: Arc<dyn AuditSink>) -> Result<FileSecrets> {
        Self::open_with_clock(path, key, audit, Arc::new(SystemClock))
    }

    pub fn open_with_clock(
        path: impl Into<PathBuf>,
        key: MasterKey,
        audit: Arc<dyn AuditSink>,
        clock: Arc<dyn Clock>,
    ) -> Result<FileSecrets> {
        let secrets = FileSecrets { path: path.into(), key: Arc::new(key), audit, clock };
        secrets.load()?;
        Ok(secrets)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolve `NAME` or `TENANT/NAME` to (owner, name).
    fn resolve(ctx: &TenantContext, reference: &str) -> Result<(TenantId, String)> {
        match reference.split_once('/') {
            Some((tenant, name)) => Ok((tenant.parse()?, valid_name(name)?.to_owned())),
            None => Ok((ctx.tenant().clone(), valid_name(reference)?.to_owned())),
        }
    }

    /// Refuse another tenant's secret: audit as denied, record a security
    /// event, then return `TENANT_FORBIDDEN`.
    async fn authorize(&self, ctx: &TenantContext, owner: &TenantId, name: &str) -> Result<()> {
        let resource = format!("secret:{owner}/{name}");
        let Err(refusal) = ctx.authorize(owner, &resource) else { return Ok(()) };
        self.audit
            .audit(
                ctx,
                &AuditEvent { action: "secret_read".into(), resource: resource.clone(), outcome: "denied".into() },
            )
            .await?;
        self.audit
            .security(
                ctx,
                &SecurityEvent {
                    kind: "cross_tenant_access".into(),
                    action: "secret_read".into(),
                    resource,
                    target_tenant: Some(owner.to_string()),
                },
            )
            .await?;
        Err(refusal)
    }

    fn event(ctx: &TenantContext, action: &str, name: &str, outcome: &str) -> AuditEvent {
        AuditEvent {
            action: action.to_owned(),
            resource: format!("secret:{}/{name}", ctx.tenant()),
            outcome: outcome.to_owned(),
        }
    }

    async fn audit(&self, ctx: &TenantContext, action: &str, name: &str, outcome: &str) -> Result<()> {
        self.audit.audit(ctx, &Self::event(ctx, action, name, outcome)).await
    }

    async fn read_version(&self, ctx: &TenantContext, reference: &str, wanted: Option<u32>) -> Result<SecretString> {
        self.read_then(ctx, reference, wanted, &|_| Ok(()), &[]).await
    }

    /// Read version `wanted` (else the current one) of `reference`, audited;
    /// when `check` accepts the value, `then` is written with the read's
    /// entry, in one write (see [`SecretsProvider::get_then`]).
    async fn read_then(
        &self,
        ctx: &TenantContext,
        reference: &str,
        wanted: Option<u32>,
        check: &ValueCheck<'_>,
        then: &[AuditEvent],
    ) -> Result<SecretString> {
        let (owner, name) = Self::resolve(ctx, reference)?;
        self.authorize(ctx, &owner, &name).await?;
        let vault = self.load_blocking().await?;
        let now = self.clock.now();
        let versions = vault.tenants.get(owner.as_str()).and_then(|t| t.get(&name));
        let found = versions.and_then(|vs| match wanted {
            None => vs.iter().find(|v| v.readable_until.is_none()),
            Some(n) => vs.iter().find(|v| v.version == n),
        });
        let Some(stored) = found else {
            self.audit(ctx, "secret_read", &name, "not_found").await?;
            let which = wanted.map(|n| format!(" version {n}")).unwrap_or_default();
            return Err(Error::new(ErrorCode::SecretNotFound, format!("tenant {owner} has no secret {name:?}{which}")));
        };
        if let Some(until) = stored.readable_until
            && now > until
        {
            self.audit(ctx, "secret_read", &name, "expired").await?;
            return Err(Error::new(
                ErrorCode::SecretVersionExpired,
                format!(
                    "version {} of secret {name:?} was rotated out and its grace period ended at {until}",
                    stored.version
                ),
            ));
        }
        let value = self.key.open(&owner, &name, stored)?;
        let read = Self::event(ctx, "secret_read", &name, "allowed");
        if let Err(refused) = check(&value) {
            self.audit.audit(ctx, &read).await?;
            return Err(refused);
        }
        let mut events = Vec::with_capacity(1 + then.len());
        events.push(read);
        events.extend_from_slice(then);
        self.audit.audit_all(ctx, &events).await?;
        Ok(value)
    }

    async fn write(
        &self,
        ctx: &TenantContext,
        name: &str,
        value: SecretString,
        grace: Option<Duration>,
    ) -> Result<SecretInfo> {
        let name = valid_name(name)?.to_owned();
        if value.expose_secret().is_empty() {
            return Err(Error::new(ErrorCode::InvalidInput, "refusing to store an empty secret"));
        }
        let tenant = ctx.tenant().clone();
        let now = self.clock.now();
        let key = Arc::clone(&self.key);
        let path = self.path.clone();
        let rotate = grace.is_some();
        let name2 = name.clone();
        let info = tokio::task::spawn_blocking(move || -> Result<SecretInfo> {
            let _lock = lock_file(&path)?;
            let mut vault = read_vault(&path, &key)?.unwrap_or_else(|| new_vault(&key));
            let versions = vault.tenants.entry(tenant.to_string()).or_default().entry(name2.clone()).or_default();
            if rotate && versions.iter().all(|v| v.readable_until.is_some()) {
                return Err(Error::new(
                    ErrorCode::SecretNotFound,
                    format!("tenant {tenant} has no secret {name2:?} to rotate: use `secrets set` first"),
                ));
            }
            for v in versions.iter_mut().filter(|v| v.readable_until.is_none()) {
                v.readable_until = Some(now + grace.unwrap_or(Duration::zero()));
            }
            // Versions whose grace has ended are dropped for good.
            versions.retain(|v| v.readable_until.is_none_or(|until| until > now));
            let version = versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
            let sealed = key.seal(&tenant, &name2, version, &value)?;
            versions.push(StoredVersion { version, created_at: now, readable_until: None, sealed });
            let info = info_of(&name2, versions, now);
            write_vault(&path, &vault)?;
            Ok(info)
        })
        .await
        .map_err(|e| Error::new(ErrorCode::SecretsIo, format!("the secrets writer failed: {e}")))??;
        self.audit(ctx, if rotate { "secret_rotate" } else { "secret_set" }, &name, "allowed").await?;
        Ok(info)
    }

    fn load(&self) -> Result<Option<Vault>> {
        read_vault(&self.path, &self.key)
    }

    async fn load_blocking(&self) -> Result<Vault> {
        let path = self.path.clone();
        let key = Arc::clone(&self.key);
        tokio::task::spawn_blocking(move || read_vault(&path, &key))
            .await
            .map_err(|e| Error::new(ErrorCode::SecretsIo, format!("the secrets reader failed: {e}")))
            .and_then(|r| r)
            .map(Option::unwrap_or_default)
    }
}

#[async_trait::async_trait]
impl SecretsProvider for FileSecrets {
    async fn get(&self, ctx: &TenantContext, reference: &str) -> Result<SecretString> {
        self.read_version(ctx, reference, None).await
    }

    /// The read and `then` in one write to this provider's own sink (`sink`
    /// is not used: in `autobiz` both are the store).
    async fn get_then(
        &self,
        ctx: &TenantContext,
        reference: &str,
        check: &ValueCheck<'_>,
        then: &[AuditEvent],
        _sink: &dyn AuditSink,
    ) -> Result<SecretString> {
        self.read_then(ctx, reference, None, check, then).await
    }

    async fn get_version(&self, ctx: &TenantContext, reference: &str, version: u32) -> Result<SecretString> {
        self.read_version(ctx, reference, Some(version)).await
    }

    async fn set(&self, ctx: &TenantContext, name: &str, value: SecretString) -> Result<SecretInfo> {
        self.write(ctx, name, value, None).await
    }

    async fn rotate(
        &self,
        ctx: &TenantContext,
        name: &str,
        value: SecretString,
        grace: Duration,
    ) -> Result<SecretInfo> {
        if grace < Duration::zero() {
            return Err(Error::new(ErrorCode::InvalidInput, "the grace period cannot be negative"));
        }
        self.write(ctx, name, value, Some(grace)).await
    }

    async fn list(&self, ctx: &TenantContext) -> Result<Vec<SecretInfo>> {
        let vault = self.load_blocking().await?;
        let now = self.clock.now();
        let list = vault
            .tenants
            .get(ctx.tenant().as_str())
            .map(|t| t.iter().filter_map(|(name, vs)| Some(info_of(name, vs, now)).filter(|i| i.version > 0)).collect())
            .unwrap_or_default();
        self.audit
            .audit(
                ctx,
                &AuditEvent {
                    action: "secret_list".into(),
                    resource: format!("secret:{}/*", ctx.tenant()),
                    outcome: "allowed".into(),
                },
            )
            .await?;
        Ok(list)
    }
}

fn valid_name(name: &str) -> Result<&str> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(name)
    } else {
        Err(Error::new(
            ErrorCode::InvalidInput,
            format!("invalid secret name {name:?}: use 1-128 characters of A-Z, a-z, 0-9, '_', '-' and '.'"),
        ))
    }
}

fn info_of(name: &str, versions: &[StoredVersion], now: DateTime<Utc>) -> SecretInfo {
    let current = versions.iter().find(|v| v.readable_until.is_none());
    SecretInfo {
        name: name.to_owned(),
        version: current.map_or(0, |v| v.version),
        created_at: current.map_or(now, |v| v.created_at),
        age_days: current.map_or(0, |v| (now - v.created_at).num_days()),
        previous: versions
            .iter()
            .filter_map(|v| {
                v.readable_until.filter(|u| *u > now).map(|u| PreviousVersion { version: v.version, readable_until: u })
            })
            .collect(),
    }
}

fn aad(tenant: &TenantId, name: &str, version: u32) -> Vec<u8> {
    format!("{FORMAT}\0{tenant}\0{name}\0{version}").into_bytes()
}

impl MasterKey {
    fn seal_bytes(&self, plaintext: &[u8], aad: &[u8]) -> Result<String> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = self
            .cipher()
            .encrypt(&nonce, Payload { msg: plaintext, aad })
            .map_err(|_| Error::new(ErrorCode::SecretsIo, "encryption failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(B64.encode(out))
    }

    fn open_bytes(&self, sealed: &str, aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let raw = B64.decode(sealed).ok()?;
        if raw.len() < 24 {
            return None;
        }
        let (nonce, ct) = raw.split_at(24);
        self.cipher().decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad }).ok().map(Zeroizing::new)
    }

    fn seal(&self, tenant: &TenantId, name: &str, version: u32, value: &SecretString) -> Result<String> {
        self.seal_bytes(value.expose_secret().as_bytes(), &aad(tenant, name, version))
    }

    fn open(&self, tenant: &TenantId, name: &str, stored: &StoredVersion) -> Result<SecretString> {
        let plain = self.open_bytes(&stored.sealed, &aad(tenant, name, stored.version)).ok_or_else(|| {
            Error::new(
                ErrorCode::SecretsFileCorrupt,
                format!("secret {tenant}/{name} version {} does not decrypt: the file was altered", stored.version),
            )
        })?;
        let text = String::from_utf8(plain.to_vec())
            .map_err(|_| Error::new(ErrorCode::SecretsFileCorrupt, format!("secret {tenant}/{name} is not UTF-8")))?;
        Ok(SecretString::from(text))
    }
}

fn new_vault(key: &MasterKey) -> Vault {
    Vault {
        format: FORMAT.to_owned(),
        key_check: key.seal_bytes(KEY_CHECK_PLAINTEXT, KEY_CHECK_AAD).unwrap_or_default(),
        tenants: BTreeMap::new(),
    }
}

/// Read and key-check the file; `None` when it does not exist yet.
fn read_vault(path: &Path, key: &MasterKey) -> Result<Option<Vault>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::new(
                ErrorCode::SecretsIo,
                format!("cannot read the secrets file {}: {e}", path.display()),
            ));
        }
    };
    let corrupt = |why: String| {
        Error::new(ErrorCode::SecretsFileCorrupt, format!("the secrets file {} is not usable: {why}", path.display()))
    };
    let vault: Vault = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if vault.format != FORMAT {
        return Err(corrupt(format!("unknown format {:?} (this autobiz reads {FORMAT})", vault.format)));
    }
    if key.open_bytes(&vault.key_check, KEY_CHECK_AAD).is_none_or(|p| p.as_slice() != KEY_CHECK_PLAINTEXT) {
        return Err(Error::new(
            ErrorCode::MasterKeyInvalid,
            format!("the master key does not match the one {} was written with", path.display()),
        ));
    }
    Ok(Some(vault))
}

/// Write atomically: a temporary file beside the target, fsync, rename, fsync
/// the directory. Mode 0600 on Unix.
fn write_vault(path: &Path, vault: &Vault) -> Result<()> {
    let io = |e: std::io::Error| {
        Error::new(ErrorCode::SecretsIo, format!("cannot write the secrets file {}: {e}", path.display()))
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension("json.tmp");
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(io)?;
    let body = serde_json::to_vec_pretty(vault).map_err(|e| Error::new(ErrorCode::SecretsIo, e.to_string()))?;
    file.write_all(&body).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// An exclusive advisory lock on `PATH.lock`, held while writing, so two
/// processes rotating at once cannot lose a version.
fn lock_file(path: &Path) -> Result<File> {
    let io = |e: std::io::Error| {
        Error::new(ErrorCode::SecretsIo, format!("cannot lock the secrets file {}: {e}", path.display()))
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.with_extension("json.lock"))
        .map_err(io)?;
    lock.lock().map_err(io)?;
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::clock::ManualClock;
    use crate::tenant::{CorrelationId, Principal};

    /// Records what the provider audits, in memory.
    #[derive(Default)]
    struct MemoryAudit {
        audits: Mutex<Vec<(String, AuditEvent)>>,
        security: Mutex<Vec<(String, SecurityEvent)>>,
        /// The number of entries of each write, in order.
        writes: Mutex<Vec<usize>>,
        fail: bool,
    }

    #[async_trait::async_trait]
    impl AuditSink for MemoryAudit {
        async fn audit(&self, ctx: &TenantContext, event: &AuditEvent) -> Result<()> {
            self.audit_all(ctx, std::slice::from_ref(event)).await
        }
        async fn audit_all(&self, ctx: &TenantContext, events: &[AuditEvent]) -> Result<()> {
            if self.fail {
                return Err(Error::new(ErrorCode::StoreUnavailable, "audit store down"));
            }
            let mut audits = self.audits.lock().unwrap();
            audits.extend(events.iter().map(|e| (ctx.tenant().to_string(), e.clone())));
            self.writes.lock().unwrap().push(events.len());
            Ok(())
        }
        async fn security(&self, ctx: &TenantContext, event: &SecurityEvent) -> Result<()> {
            self.security.lock().unwrap().push((ctx.tenant().to_string(), event.clone()));
            Ok(())
        }
    }

    fn ctx(t: &str) -> TenantContext {
        TenantContext::new(t.parse().unwrap(), Principal::new("test"), CorrelationId::new("c"))
    }

    fn start() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z").unwrap().with_timezone(&Utc)
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        key_b64: String,
        audit: Arc<MemoryAudit>,
        clock: Arc<ManualClock>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        Fixture {
            path,
            _dir: dir,
            key_b64: MasterKey::generate().to_base64().to_string(),
            audit: Arc::new(MemoryAudit::default()),
            clock: Arc::new(ManualClock::new(start())),
        }
    }

    impl Fixture {
        fn open(&self) -> Result<FileSecrets> {
            FileSecrets::open_with_clock(
                &self.path,
                MasterKey::decode(&self.key_b64)?,
                self.audit.clone(),
                self.clock.clone(),
            )
        }
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[tokio::test]
    async fn set_then_get_round_trips_and_the_file_holds_no_plaintext() {
        let f = fixture();
        let s = f.open().unwrap();
        s.set(&ctx("acme"), "STRIPE_KEY", secret("sk_test_plaintext_123")).await.unwrap();
        assert_eq!(s.get(&ctx("acme"), "STRIPE_KEY").await.unwrap().expose_secret(), "sk_test_plaintext_123");
        assert_eq!(s.get(&ctx("acme"), "acme/STRIPE_KEY").await.unwrap().expose_secret(), "sk_test_plaintext_123");
        let raw = fs::read_to_string(&f.path).unwrap();
        assert!(!raw.contains("sk_test_plaintext_123"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&f.path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn p1_t32_cross_tenant_secret_access_is_refused_and_audited() {
        let f = fixture();
        let s = f.open().unwrap();
        s.set(&ctx("globex"), "STRIPE_KEY", secret("sk_test_globex")).await.unwrap();
        let err = s.get(&ctx("acme"), "globex/STRIPE_KEY").await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::TenantForbidden);
        assert!(!err.message().contains("sk_test_globex"));
        let err = s.get_version(&ctx("acme"), "globex/STRIPE_KEY", 1).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::TenantForbidden);
        // Tenant acme has no secret of that name of its own either.
        assert_eq!(s.get(&ctx("acme"), "STRIPE_KEY").await.unwrap_err().code(), ErrorCode::SecretNotFound);
        let audits = f.audit.audits.lock().unwrap();
        let denied: Vec<_> = audits.iter().filter(|(t, e)| t == "acme" && e.outcome == "denied").collect();
        assert_eq!(denied.len(), 2);
        assert_eq!(denied[0].1.resource, "secret:globex/STRIPE_KEY");
        let security = f.audit.security.lock().unwrap();
        assert_eq!(security.len(), 2);
        assert_eq!(security[0].1.target_tenant.as_deref(), Some("globex"));
        assert_eq!(security[0].1.kind, "cross_tenant_access");
    }

    #[tokio::test]
    async fn p1_t32_a_ciphertext_moved_to_another_tenant_does_not_decrypt() {
        let f = fixture();
        let s = f.open().unwrap();
        s.set(&ctx("globex"), "KEY", secret("globex-secret")).await.unwrap();
        s.set(&ctx("acme"), "KEY", secret("acme-secret")).await.unwrap();
        // An attacker with write access to the file copies globex's sealed value into acme's entry.
        let mut doc: serde_json::Value = serde_json::from_str(&fs::read_to_string(&f.path).unwrap()).unwrap();
        doc["tenants"]["acme"]["KEY"][0]["sealed"] = doc["tenants"]["globex"]["KEY"][0]["sealed"].clone();
        fs::write(&f.path, serde_json::to_vec(&doc).unwrap()).unwrap();
        let err = s.get(&ctx("acme"), "KEY").await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::SecretsFileCorrupt);
        assert!(!err.message().contains("globex-secret"));
    }

    #[tokio::test]
    async fn every_access_is_audited_and_a_failed_audit_withholds_the_value() {
        let f = fixture();
        let s = f.open().unwrap();
        s.set(&ctx("acme"), "K", secret("v1")).await.unwrap();
        s.get(&ctx("acme"), "K").await.unwrap();
        s.list(&ctx("acme")).await.unwrap();
        let actions: Vec<_> =
            f.audit.audits.lock().unwrap().iter().map(|(_, e)| (e.action.clone(), e.outcome.clone())).collect();
        assert_eq!(
            actions,
            vec![
                ("secret_set".into(), "allowed".into()),
                ("secret_read".into(), "allowed".into()),
                ("secret_list".into(), "allowed".into())
            ]
        );
        let failing = Arc::new(MemoryAudit { fail: true, ..Default::default() });
        let s2 = FileSecrets::open(&f.path, MasterKey::decode(&f.key_b64).unwrap(), failing).unwrap();
        assert_eq!(s2.get(&ctx("acme"), "K").await.unwrap_err().code(), ErrorCode::StoreUnavailable);
    }

    /// What a provider call does with a credential: the read and the
    /// request it authenticates are one write; a value its check refuses is
    /// audited as read, alone, and the check's error returned; a write that
    /// fails withholds the value.
    #[tokio::test]
    async fn p1_h06_a_read_and_the_request_it_authenticates_are_audited_in_one_write() {
        let f = fixture();
        let s = f.open().unwrap();
        let c = ctx("acme");
        s.set(&c, "K", secret("sk_test_1")).await.unwrap();
        let sent = [AuditEvent {
            action: "provider.stripe.request".into(),
            resource: "POST 127.0.0.1:9/v1/payment_intents".into(),
            outcome: "sent".into(),
        }];
        let accept = |_: &SecretString| Ok(());
        let value = s.get_then(&c, "K", &accept, &sent, f.audit.as_ref()).await.unwrap();
        assert_eq!(value.expose_secret(), "sk_test_1");
        assert_eq!(*f.audit.writes.lock().unwrap(), vec![1, 2], "set, then the read with the request");
        let last: Vec<_> =
            f.audit.audits.lock().unwrap().iter().skip(1).map(|(_, e)| (e.action.clone(), e.outcome.clone())).collect();
        assert_eq!(
            last,
            vec![("secret_read".into(), "allowed".into()), ("provider.stripe.request".into(), "sent".into())]
        );

        let refuse = |_: &SecretString| Err(Error::new(ErrorCode::SandboxLiveKeyRefused, "a live key"));
        let err = s.get_then(&c, "K", &refuse, &sent, f.audit.as_ref()).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::SandboxLiveKeyRefused);
        assert_eq!(*f.audit.writes.lock().unwrap(), vec![1, 2, 1], "the read alone, no request");
        let (_, read) = f.audit.audits.lock().unwrap().last().cloned().unwrap();
        assert_eq!((read.action.as_str(), read.outcome.as_str()), ("secret_read", "allowed"));

        let failing = Arc::new(MemoryAudit { fail: true, ..Default::default() });
        let s2 = FileSecrets::open(&f.path, MasterKey::decode(&f.key_b64).unwrap(), failing.clone()).unwrap();
        let err = s2.get_then(&c, "K", &accept, &sent, failing.as_ref()).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::StoreUnavailable);
    }

    #[tokio::test]
    async fn a_wrong_master_key_is_refused_before_any_read_or_write() {
        let f = fixture();
        f.open().unwrap().set(&ctx("acme"), "K", secret("v")).await.unwrap();
        let before = fs::read(&f.path).unwrap();
        let err = FileSecrets::open(&f.path, MasterKey::generate(), f.audit.clone()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::MasterKeyInvalid);
        assert_eq!(fs::read(&f.path).unwrap(), before, "no partial write");
    }

    #[tokio::test]
    async fn rotation_keeps_the_previous_version_for_the_grace_period() {
        let f = fixture();
        let s = f.open().unwrap();
        let c = ctx("acme");
        s.set(&c, "K", secret("old")).await.unwrap();
        f.clock.advance(Duration::days(30));
        let info = s.rotate(&c, "K", secret("new"), Duration::hours(24)).await.unwrap();
        assert_eq!(info.version, 2);
        assert_eq!(
            info.previous,
            vec![PreviousVersion { version: 1, readable_until: start() + Duration::days(30) + Duration::hours(24) }]
        );
        assert_eq!(s.get(&c, "K").await.unwrap().expose_secret(), "new");
        assert_eq!(s.get_version(&c, "K", 1).await.unwrap().expose_secret(), "old");
        f.clock.advance(Duration::hours(25));
        assert_eq!(s.get_version(&c, "K", 1).await.unwrap_err().code(), ErrorCode::SecretVersionExpired);
        let listed = s.list(&c).await.unwrap();
        assert_eq!(listed[0].age_days, 1);
        assert!(listed[0].previous.is_empty());
        // `set` replaces at once: no grace.
        s.set(&c, "K", secret("newer")).await.unwrap();
        f.clock.advance(Duration::seconds(1));
        assert_eq!(s.get_version(&c, "K", 2).await.unwrap_err().code(), ErrorCode::SecretNotFound);
        assert_eq!(s.get(&c, "K").await.unwrap().expose_secret(), "newer");
        assert_eq!(
            s.rotate(&c, "NOPE", secret("x"), DEFAULT_GRACE).await.unwrap_err().code(),
            ErrorCode::SecretNotFound
        );
    }

    #[test]
    fn master_keys_decode_from_base64_or_hex_only_at_32_bytes() {
        assert!(MasterKey::decode(&B64.encode([7u8; 32])).is_ok());
        assert!(MasterKey::decode(&hex::encode([7u8; 32])).is_ok());
        for bad in ["", "short", &B64.encode([7u8; 16]), &hex::encode([7u8; 31])] {
            assert_eq!(MasterKey::decode(bad).unwrap_err().code(), ErrorCode::MasterKeyInvalid);
        }
        assert_eq!(format!("{:?}", MasterKey::generate()), "MasterKey([REDACTED])");
    }

    #[test]
    fn names_are_validated() {
        assert!(valid_name("STRIPE_API_KEY").is_ok());
        assert!(valid_name("shopify.token-2").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(129)] {
            assert_eq!(valid_name(bad).unwrap_err().code(), ErrorCode::InvalidInput);
        }
    }
}
