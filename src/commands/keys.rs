//! `autobiz keys generate`: a new Ed25519 key pair for gate evidence.
//! `DIR/evidence.key` (PKCS#8 PEM, mode 0600) and `DIR/evidence.pub` (SPKI
//! PEM), each written to a temporary file beside it, fsynced, then moved into
//! place: a reader never sees half a key, and without `--force` an existing
//! file is never replaced, not even by a race (the move is a hard link, which
//! fails when the target exists).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::{KeysCommand, KeysGenerateArgs};
use crate::evidence;
use crate::report::{CliError, Reporter};

/// File name of the private key inside `--out`.
pub const PRIVATE_KEY_FILE: &str = "evidence.key";
/// File name of the public key inside `--out`.
pub const PUBLIC_KEY_FILE: &str = "evidence.pub";

pub fn run(cmd: KeysCommand, reporter: &Reporter) -> Result<ExitCode, CliError> {
    match cmd {
        KeysCommand::Generate(args) => generate(args, reporter),
    }
}

fn generate(args: KeysGenerateArgs, reporter: &Reporter) -> Result<ExitCode, CliError> {
    let private_path = args.out.join(PRIVATE_KEY_FILE);
    let public_path = args.out.join(PUBLIC_KEY_FILE);
    if !args.force {
        for path in [&private_path, &public_path] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(exists(path));
            }
        }
    }
    fs::create_dir_all(&args.out).map_err(|e| io_error(&args.out, e))?;
    let key = evidence::generate_key();
    let public = key.verifying_key();
    let keyid = evidence::keyid(&public);
    write_new(&private_path, evidence::signing_key_to_pem(&key).as_bytes(), 0o600, args.force)?;
    write_new(&public_path, evidence::verifying_key_to_pem(&public).as_bytes(), 0o644, args.force)?;
    reporter.result(
        || {
            format!(
                "keyid: {keyid}\nprivate key: {} (keep it secret; set AUTOBIZ_EVIDENCE_KEY to this path where the gate runs)\npublic key: {} (set AUTOBIZ_EVIDENCE_PUBKEY to this path where deploy runs)",
                private_path.display(),
                public_path.display()
            )
        },
        &serde_json::json!({
            "keyid": keyid,
            "private_key": private_path,
            "public_key": public_path,
        }),
    );
    Ok(ExitCode::SUCCESS)
}

fn exists(path: &Path) -> CliError {
    CliError::input("KEY_EXISTS", format!("{} already exists; pass --force to replace the key pair", path.display()))
}

fn io_error(path: &Path, e: std::io::Error) -> CliError {
    CliError::infrastructure("KEYS_IO", format!("cannot write {}: {e}", path.display()))
}

/// Write `body` to `path` with `mode` (Unix) through a temporary file in the
/// same directory: created exclusively, fsynced, then renamed over `path`
/// (`replace`) or hard-linked to it (never replaces; `KEY_EXISTS`).
fn write_new(path: &Path, body: &[u8], mode: u32, replace: bool) -> Result<(), CliError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp: PathBuf = dir.join(format!(".{name}.tmp-{}-{nanos}", std::process::id()));
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let mut file = options.open(&tmp).map_err(|e| io_error(path, e))?;
        file.write_all(body).map_err(|e| io_error(path, e))?;
        file.sync_all().map_err(|e| io_error(path, e))?;
        if replace {
            fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
        } else {
            fs::hard_link(&tmp, path).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => exists(path),
                _ => io_error(path, e),
            })?;
        }
        Ok(())
    })();
    let _ = fs::remove_file(&tmp);
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    result
}
