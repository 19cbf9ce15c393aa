//! Cassettes: recorded LLM exchanges that tests and golden scenarios replay
//! with no network.
//!
//! The recording and matching are `reqwest-vcr`'s (the maintained fork of
//! `rvcr`, same design and VCR JSON format, on reqwest 0.12 through
//! `reqwest-middleware`), so the workspace carries one reqwest. This module
//! adds what autobiz needs on top:
//!
//! * the mode comes from `AUTOBIZ_CASSETTE_MODE` (`replay`, the default, or
//!   `record`), never from code left behind in a test;
//! * secrets are stripped from every request before it is matched or
//!   written: `Authorization`, `api-key`, `x-api-key`, cookies, and `key` /
//!   `api-key` query parameters. Stripping on both sides means a cassette
//!   recorded with one key replays with any other, and holds none;
//! * the endpoint's scheme, host and port become `http://primary.llm.invalid`
//!   or `http://fallback.llm.invalid`: a cassette recorded against a fake on
//!   a random port replays anywhere, and still says which endpoint answered;
//! * a replay whose cassette file is missing fails at once, naming the file,
//!   instead of quietly recording nothing.

use std::path::{Path, PathBuf};

use reqwest_vcr::{VCRMiddleware, VCRMode};
use url::Url;

use crate::error::{Error, ErrorCode, Result};

/// The env var that selects the mode.
pub const CASSETTE_MODE_ENV: &str = "AUTOBIZ_CASSETTE_MODE";

/// Request headers never written to (nor matched in) a cassette.
pub const STRIPPED_HEADERS: [&str; 5] = ["authorization", "api-key", "x-api-key", "cookie", "openai-organization"];
/// Query parameters never written to (nor matched in) a cassette.
pub const STRIPPED_QUERY: [&str; 3] = ["key", "api-key", "api_key"];

/// Replay recorded answers, or record new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CassetteMode {
    /// Answer from the file; a request not in it is an error
    /// (`LLM_CASSETTE_MISS`) naming the file. Nothing is sent.
    Replay,
    /// Send to the real (configured) endpoint and write every exchange to
    /// the file when the client is dropped, replacing what was there.
    Record,
}

impl CassetteMode {
    /// `AUTOBIZ_CASSETTE_MODE`: unset or `replay` -> replay, `record` ->
    /// record; anything else is refused (`INVALID_INPUT`), so a typo cannot
    /// turn a replay into a recording or the reverse.
    pub fn from_env() -> Result<CassetteMode> {
        match std::env::var(CASSETTE_MODE_ENV).ok().as_deref().map(str::trim) {
            None | Some("") | Some("replay") => Ok(CassetteMode::Replay),
            Some("record") => Ok(CassetteMode::Record),
            Some(other) => Err(Error::new(
                ErrorCode::InvalidInput,
                format!("{CASSETTE_MODE_ENV}={other:?}: expected `replay` or `record`"),
            )),
        }
    }
}

/// A cassette file and what to do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cassette {
    path: PathBuf,
    mode: CassetteMode,
}

impl Cassette {
    pub fn new(path: impl Into<PathBuf>, mode: CassetteMode) -> Cassette {
        Cassette { path: path.into(), mode }
    }

    /// `path` in the mode `AUTOBIZ_CASSETTE_MODE` selects.
    pub fn from_env(path: impl Into<PathBuf>) -> Result<Cassette> {
        Ok(Cassette::new(path, CassetteMode::from_env()?))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn mode(&self) -> CassetteMode {
        self.mode
    }

    /// The VCR middleware for this cassette. `endpoints` are the (label,
    /// base URL) pairs whose origin is normalized.
    pub(crate) fn middleware(&self, endpoints: Vec<(&'static str, Url)>) -> Result<VCRMiddleware> {
        if self.mode == CassetteMode::Replay && !self.path.exists() {
            return Err(Error::new(
                ErrorCode::LlmCassetteMiss,
                format!(
                    "cassette {} does not exist; record it with {CASSETTE_MODE_ENV}=record (see cassettes/README.md)",
                    self.path.display()
                ),
            ));
        }
        let mw = VCRMiddleware::try_from(self.path.clone()).map_err(|e| {
            Error::new(ErrorCode::LlmCassetteMiss, format!("cassette {} cannot be read: {e}", self.path.display()))
        })?;
        let mode = match self.mode {
            CassetteMode::Replay => VCRMode::Replay,
            CassetteMode::Record => VCRMode::Record,
        };
        Ok(mw
            .with_mode(mode)
            .with_rich_diff(true)
            .with_modify_request(move |req| {
                req.headers.retain(|name, _| !STRIPPED_HEADERS.contains(&name.to_ascii_lowercase().as_str()));
                req.uri = normalize(&req.uri, &endpoints);
            })
            .with_modify_response(|resp| {
                resp.headers.retain(|name, _| !name.eq_ignore_ascii_case("set-cookie"));
            }))
    }
}

/// `url` without secret query parameters, its origin replaced by the label
/// of the endpoint it belongs to.
fn normalize(url: &Url, endpoints: &[(&'static str, Url)]) -> Url {
    let mut out = url.clone();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !STRIPPED_QUERY.contains(&k.to_ascii_lowercase().as_str()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if pairs.is_empty() {
        out.set_query(None);
    } else {
        out.query_pairs_mut().clear().extend_pairs(pairs);
    }
    let label = endpoints
        .iter()
        .find(|(_, base)| base.origin() == url.origin() && url.path().starts_with(base.path().trim_end_matches('/')))
        .map_or("unknown", |(label, _)| *label);
    let _ = out.set_scheme("http");
    let _ = out.set_host(Some(&format!("{label}.llm.invalid")));
    let _ = out.set_port(None);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_become_labels_and_secret_query_parameters_go() {
        let primary = Url::parse("http://127.0.0.1:4321/v1").unwrap();
        let fallback = Url::parse("http://127.0.0.1:5555/v1").unwrap();
        let eps = vec![("primary", primary), ("fallback", fallback)];
        let n = |s: &str| normalize(&Url::parse(s).unwrap(), &eps).to_string();
        assert_eq!(n("http://127.0.0.1:4321/v1/chat/completions"), "http://primary.llm.invalid/v1/chat/completions");
        assert_eq!(
            n("http://127.0.0.1:5555/v1/chat/completions?key=SECRET&x=1"),
            "http://fallback.llm.invalid/v1/chat/completions?x=1"
        );
        assert_eq!(
            n("https://elsewhere:1/v1/chat/completions?api-key=S"),
            "http://unknown.llm.invalid/v1/chat/completions"
        );
    }
}
