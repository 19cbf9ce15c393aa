//! A read-only secrets provider over a map, for tests that need provider
//! credentials without a secrets file. Included by path
//! (`#[path = "common/memory_secrets.rs"] mod memory_secrets;`).

use std::collections::BTreeMap;

use autobiz_kernel::secrets::{SecretInfo, SecretsProvider};
use autobiz_kernel::tenant::TenantContext;
use autobiz_kernel::{Error, ErrorCode, Result};
use secrecy::SecretString;

pub struct MemorySecrets(pub BTreeMap<String, String>);

#[async_trait::async_trait]
impl SecretsProvider for MemorySecrets {
    async fn get(&self, _ctx: &TenantContext, reference: &str) -> Result<SecretString> {
        self.0
            .get(reference)
            .map(|v| SecretString::from(v.clone()))
            .ok_or_else(|| Error::new(ErrorCode::SecretNotFound, format!("no secret {reference}")))
    }
    async fn get_version(&self, ctx: &TenantContext, reference: &str, _version: u32) -> Result<SecretString> {
        self.get(ctx, reference).await
    }
    async fn set(&self, _: &TenantContext, _: &str, _: SecretString) -> Result<SecretInfo> {
        Err(Error::new(ErrorCode::SecretsIo, "read-only"))
    }
    async fn rotate(&self, _: &TenantContext, _: &str, _: SecretString, _: chrono::Duration) -> Result<SecretInfo> {
        Err(Error::new(ErrorCode::SecretsIo, "read-only"))
    }
    async fn list(&self, _: &TenantContext) -> Result<Vec<SecretInfo>> {
        Ok(Vec::new())
    }
}
