//! Parsing and redacting `--database-url`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Error, ErrorCode, Result};

/// The embedded default: a SQLite file under `.autobiz/`, created on first use.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://.autobiz/autobiz.db";

/// Which database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        })
    }
}

/// A validated database URL. `Display` hides the password, so the value can go
/// into messages and logs; [`DatabaseUrl::expose`] gives the real string to
/// the driver.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    raw: String,
    kind: Kind,
}

#[derive(Clone, PartialEq, Eq)]
enum Kind {
    SqliteFile(PathBuf),
    SqliteMemory,
    Postgres(url::Url),
}

impl DatabaseUrl {
    pub fn backend(&self) -> Backend {
        match self.kind {
            Kind::SqliteFile(_) | Kind::SqliteMemory => Backend::Sqlite,
            Kind::Postgres(_) => Backend::Postgres,
        }
    }

    /// The SQLite file, if this URL names one.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match &self.kind {
            Kind::SqliteFile(p) => Some(p),
            _ => None,
        }
    }

    pub fn is_sqlite_memory(&self) -> bool {
        matches!(self.kind, Kind::SqliteMemory)
    }

    /// The user a PostgreSQL URL connects as.
    pub fn postgres_user(&self) -> Option<&str> {
        match &self.kind {
            Kind::Postgres(u) => Some(u.username()),
            _ => None,
        }
    }

    /// The same PostgreSQL server and database as another user (without a
    /// password unless given). Used to reach the kernel role from an
    /// administrator's URL in tests and local set-ups with trust auth.
    pub fn with_postgres_user(&self, user: &str, password: Option<&str>) -> Result<DatabaseUrl> {
        match &self.kind {
            Kind::Postgres(u) => {
                let mut u = u.clone();
                let bad = |_| Error::new(ErrorCode::DatabaseUrlInvalid, "cannot set the user of this database URL");
                u.set_username(user).map_err(bad)?;
                u.set_password(password).map_err(bad)?;
                u.as_str().parse()
            }
            _ => Err(Error::new(ErrorCode::DatabaseUrlInvalid, "only a postgres:// URL has a user")),
        }
    }

    /// The same PostgreSQL server with another database name.
    pub fn with_postgres_database(&self, database: &str) -> Result<DatabaseUrl> {
        match &self.kind {
            Kind::Postgres(u) => {
                let mut u = u.clone();
                u.set_path(&format!("/{database}"));
                u.as_str().parse()
            }
            _ => Err(Error::new(ErrorCode::DatabaseUrlInvalid, "only a postgres:// URL has a database name")),
        }
    }

    /// The database name of a PostgreSQL URL.
    pub fn postgres_database(&self) -> Option<&str> {
        match &self.kind {
            Kind::Postgres(u) => Some(u.path().trim_start_matches('/')),
            _ => None,
        }
    }

    /// The URL with its password, for the driver only.
    pub fn expose(&self) -> &str {
        &self.raw
    }
}

fn invalid(raw: &str, why: &str) -> Error {
    Error::new(
        ErrorCode::DatabaseUrlInvalid,
        format!(
            "invalid database URL {}: {why} (expected sqlite://PATH, sqlite::memory: or postgres://USER@HOST:PORT/DB)",
            redact(raw)
        ),
    )
}

impl FromStr for DatabaseUrl {
    type Err = Error;

    fn from_str(raw: &str) -> Result<Self> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(invalid(raw, "it is empty"));
        }
        if let Some(rest) = raw.strip_prefix("sqlite:") {
            if rest == ":memory:" || rest == "//:memory:" {
                return Ok(DatabaseUrl { raw: raw.to_owned(), kind: Kind::SqliteMemory });
            }
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.contains('?') {
                return Err(invalid(raw, "query parameters are not supported for SQLite"));
            }
            if path.is_empty() || path.ends_with('/') {
                return Err(invalid(raw, "it names no file"));
            }
            return Ok(DatabaseUrl { raw: raw.to_owned(), kind: Kind::SqliteFile(PathBuf::from(path)) });
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            let url = url::Url::parse(raw).map_err(|e| invalid(raw, &e.to_string()))?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err(invalid(raw, "it names no host"));
            }
            if url.path().trim_start_matches('/').is_empty() {
                return Err(invalid(raw, "it names no database"));
            }
            return Ok(DatabaseUrl { raw: raw.to_owned(), kind: Kind::Postgres(url) });
        }
        Err(invalid(raw, "unsupported scheme"))
    }
}

/// Replace the password of anything shaped like `scheme://user:pass@host...`,
/// even when the rest of the URL does not parse (a malformed URL is exactly
/// the one that ends up in an error message).
fn redact(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://").map(|i| i + 3) else { return raw.to_owned() };
    let rest = &raw[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else { return raw.to_owned() };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!("{}{}:***{}", &raw[..scheme_end], &userinfo[..colon], &rest[at..]),
        None => raw.to_owned(),
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.raw))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_backends() {
        let d: DatabaseUrl = DEFAULT_DATABASE_URL.parse().unwrap();
        assert_eq!(d.backend(), Backend::Sqlite);
        assert_eq!(d.sqlite_path().unwrap(), std::path::Path::new(".autobiz/autobiz.db"));
        let abs: DatabaseUrl = "sqlite:///tmp/x.db".parse().unwrap();
        assert_eq!(abs.sqlite_path().unwrap(), std::path::Path::new("/tmp/x.db"));
        assert!("sqlite::memory:".parse::<DatabaseUrl>().unwrap().is_sqlite_memory());
        let pg: DatabaseUrl = "postgres://postgres@127.0.0.1:5432/test".parse().unwrap();
        assert_eq!(pg.backend(), Backend::Postgres);
        assert_eq!(pg.postgres_user(), Some("postgres"));
        assert_eq!(pg.postgres_database(), Some("test"));
    }

    #[test]
    fn rejects_malformed_urls_with_a_stable_code() {
        for bad in [
            "",
            "mysql://x/y",
            "sqlite://",
            "sqlite://dir/",
            "postgres://",
            "postgres://h",
            "nonsense",
            "postgres://h:notaport/db",
        ] {
            let err = bad.parse::<DatabaseUrl>().unwrap_err();
            assert_eq!(err.code(), ErrorCode::DatabaseUrlInvalid, "{bad}");
        }
    }

    #[test]
    fn display_never_shows_the_password() {
        let pg: DatabaseUrl = "postgres://kernel:s3cr3t-pw@db.internal:5432/prod".parse().unwrap();
        assert!(!pg.to_string().contains("s3cr3t-pw"));
        assert!(!format!("{pg:?}").contains("s3cr3t-pw"));
        assert_eq!(pg.expose(), "postgres://kernel:s3cr3t-pw@db.internal:5432/prod");
        for bad in [
            "postgres://kernel:s3cr3t-pw@/prod",
            "postgres://kernel:s3cr3t-pw@h:bad/prod",
            "postgres://kernel:s3cr3t-pw@h",
        ] {
            let err = bad.parse::<DatabaseUrl>().unwrap_err();
            assert!(!err.message().contains("s3cr3t-pw"), "{}", err.message());
            assert!(err.message().contains("kernel:***@"), "{}", err.message());
        }
    }

    #[test]
    fn swaps_user_and_database() {
        let admin: DatabaseUrl = "postgres://postgres@127.0.0.1:5432/test".parse().unwrap();
        let k = admin.with_postgres_user("autobiz_kernel", None).unwrap();
        assert_eq!(k.postgres_user(), Some("autobiz_kernel"));
        let other = admin.with_postgres_database("other").unwrap();
        assert_eq!(other.postgres_database(), Some("other"));
    }
}
