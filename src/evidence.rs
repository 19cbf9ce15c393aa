//! Signed gate evidence: an in-toto Statement v1 in a DSSE envelope, signed
//! with Ed25519, so that `autobiz deploy` (and standard DSSE tooling) can
//! check that a commit, a config and a binary passed the gate.
//!
//! * [`Statement`]: `_type` `https://in-toto.io/Statement/v1`; three subjects,
//!   the commit (`git:commit`, digest `gitCommit`), the config
//!   (`autobiz.toml`, digest `sha256` of [`BusinessConfig::hash`] without its
//!   `sha256:` prefix) and the binary (`autobiz`, digest `sha256` of the
//!   executable); `predicateType` `https://autobiz.dev/gate-evidence/v1`; the
//!   predicate is the gate's JSON and holds at least `"verdict": "pass" |
//!   "fail"`.
//! * [`Envelope`]: DSSE (`payloadType` `application/vnd.in-toto+json`,
//!   `payload` the statement JSON in standard base64, `signatures` with
//!   `keyid` and `sig`). The signature is Ed25519 over the DSSE
//!   pre-authentication encoding ([`pae`]); `keyid` is the hex SHA-256 of the
//!   raw 32-byte public key ([`keyid`]).
//! * [`sign`] and [`verify`] (with `verify_strict`: no malleable signatures,
//!   no weak keys); [`Statement::check_deployable`] compares a verified
//!   statement with this commit and config.
//! * Keys as PEM: PKCS#8 for the private key, SPKI for the public one.
//!
//! Failures are [`EvidenceError`]s with stable codes ([`EvidenceCode`]); the
//! CLI maps them to exit codes in `report.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use autobiz_kernel::config::BusinessConfig;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature as Ed25519Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// `predicateType` of autobiz gate evidence.
pub const PREDICATE_TYPE: &str = "https://autobiz.dev/gate-evidence/v1";
/// The predicate type of soak evidence: the same envelope, subjects and
/// verdict rule as the gate's, another predicate (written by `autobiz soak`,
/// read by `autobiz exit-criteria`).
pub const SOAK_PREDICATE_TYPE: &str = "https://autobiz.dev/soak-evidence/v1";
/// DSSE `payloadType` of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// Subject name of the commit; its digest algorithm is `gitCommit`.
pub const COMMIT_SUBJECT: &str = "git:commit";
/// Subject name of the business config; digest `sha256`.
pub const CONFIG_SUBJECT: &str = "autobiz.toml";
/// Subject name of the binary; digest `sha256`.
pub const BINARY_SUBJECT: &str = "autobiz";

/// Stable error codes of evidence handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvidenceCode {
    /// The envelope or the statement is not what the format says: bad JSON,
    /// bad base64, another payload or statement type, missing subjects or
    /// verdict.
    Malformed,
    /// No signature of the envelope verifies with the given public key.
    SignatureInvalid,
    /// A key cannot be read or is not an Ed25519 key in the expected PEM.
    KeyInvalid,
    /// The statement is for another commit or config.
    SubjectMismatch,
    /// The gate said no: `predicate.verdict` is not `pass`.
    VerdictFail,
}

impl EvidenceCode {
    pub fn as_str(self) -> &'static str {
        match self {
            EvidenceCode::Malformed => "EVIDENCE_MALFORMED",
            EvidenceCode::SignatureInvalid => "EVIDENCE_SIGNATURE_INVALID",
            EvidenceCode::KeyInvalid => "EVIDENCE_KEY_INVALID",
            EvidenceCode::SubjectMismatch => "EVIDENCE_SUBJECT_MISMATCH",
            EvidenceCode::VerdictFail => "EVIDENCE_VERDICT_FAIL",
        }
    }
}

impl fmt::Display for EvidenceCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An evidence failure: a stable code and one line saying what differed.
/// Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceError {
    code: EvidenceCode,
    message: String,
}

impl EvidenceError {
    pub fn new(code: EvidenceCode, message: impl Into<String>) -> Self {
        EvidenceError { code, message: message.into() }
    }

    pub fn code(&self) -> EvidenceCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for EvidenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for EvidenceError {}

fn malformed(message: impl Into<String>) -> EvidenceError {
    EvidenceError::new(EvidenceCode::Malformed, message)
}

/// One subject of a statement: a name and its digests (algorithm -> hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub name: String,
    pub digest: BTreeMap<String, String>,
}

impl Subject {
    pub fn new(name: &str, algorithm: &str, value: &str) -> Self {
        Subject { name: name.to_owned(), digest: BTreeMap::from([(algorithm.to_owned(), value.to_owned())]) }
    }
}

/// An in-toto Statement v1 about one gate run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub statement_type: String,
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The gate's result; holds at least `"verdict": "pass" | "fail"`.
    pub predicate: Value,
}

impl Statement {
    /// A statement about `commit` (hex git object id), the config whose
    /// hash is `config_sha256` (hex, with or without the `sha256:` prefix)
    /// and the binary whose SHA-256 is `binary_sha256` (hex).
    pub fn new(commit: &str, config_sha256: &str, binary_sha256: &str, predicate: Value) -> Self {
        let config = config_sha256.strip_prefix("sha256:").unwrap_or(config_sha256);
        Statement {
            statement_type: STATEMENT_TYPE.to_owned(),
            subject: vec![
                Subject::new(COMMIT_SUBJECT, "gitCommit", commit),
                Subject::new(CONFIG_SUBJECT, "sha256", config),
                Subject::new(BINARY_SUBJECT, "sha256", binary_sha256),
            ],
            predicate_type: PREDICATE_TYPE.to_owned(),
            predicate,
        }
    }

    /// A statement about `commit`, `config` and the running executable.
    pub fn for_current_binary(commit: &str, config: &BusinessConfig, predicate: Value) -> std::io::Result<Self> {
        Ok(Statement::new(commit, &config_digest(config), &current_binary_digest()?, predicate))
    }

    /// The one digest of the subject `name` under `algorithm`; `None` when
    /// there is none, or more than one such subject.
    fn digest(&self, name: &str, algorithm: &str) -> Option<&str> {
        let mut found = self.subject.iter().filter(|s| s.name == name);
        let first = found.next()?;
        if found.next().is_some() {
            return None;
        }
        first.digest.get(algorithm).map(String::as_str)
    }

    /// The commit the evidence is for.
    pub fn commit(&self) -> Option<&str> {
        self.digest(COMMIT_SUBJECT, "gitCommit")
    }

    /// The config hash (hex, no prefix) the evidence is for.
    pub fn config_sha256(&self) -> Option<&str> {
        self.digest(CONFIG_SUBJECT, "sha256")
    }

    /// The SHA-256 (hex) of the binary that produced the evidence.
    pub fn binary_sha256(&self) -> Option<&str> {
        self.digest(BINARY_SUBJECT, "sha256")
    }

    /// `predicate.verdict`.
    pub fn verdict(&self) -> Option<&str> {
        self.predicate.get("verdict").and_then(Value::as_str)
    }

    /// The format's rules: statement and predicate types, exactly one of
    /// each subject, a verdict of `pass` or `fail`. `EVIDENCE_MALFORMED`
    /// otherwise.
    pub fn validate(&self) -> Result<(), EvidenceError> {
        self.validate_as(PREDICATE_TYPE)
    }

    /// [`Statement::validate`] for a statement of another predicate type.
    pub fn validate_as(&self, predicate_type: &str) -> Result<(), EvidenceError> {
        if self.statement_type != STATEMENT_TYPE {
            return Err(malformed(format!(
                "the statement's _type is {:?}, expected {STATEMENT_TYPE:?}",
                self.statement_type
            )));
        }
        if self.predicate_type != predicate_type {
            return Err(malformed(format!(
                "the statement's predicateType is {:?}, expected {predicate_type:?}",
                self.predicate_type
            )));
        }
        for (name, algorithm, value) in [
            (COMMIT_SUBJECT, "gitCommit", self.commit()),
            (CONFIG_SUBJECT, "sha256", self.config_sha256()),
            (BINARY_SUBJECT, "sha256", self.binary_sha256()),
        ] {
            if value.is_none_or(|v| v.is_empty() || !v.bytes().all(|b| b.is_ascii_hexdigit())) {
                return Err(malformed(format!(
                    "the statement needs exactly one subject {name:?} with a hex {algorithm} digest"
                )));
            }
        }
        match self.verdict() {
            Some("pass" | "fail") => Ok(()),
            Some(other) => Err(malformed(format!("predicate.verdict is {other:?}, expected \"pass\" or \"fail\""))),
            None => Err(malformed("the predicate has no \"verdict\"")),
        }
    }

    /// May this verified statement deploy `commit` with the config hashing
    /// to `config_sha256` (with or without the `sha256:` prefix)? Checks, in
    /// this order, the commit and the config (`EVIDENCE_SUBJECT_MISMATCH`,
    /// naming both values, abbreviated) and the verdict
    /// (`EVIDENCE_VERDICT_FAIL`). The binary is recorded, not compared: the
    /// deploying binary may be another build of the same commit.
    pub fn check_deployable(&self, commit: &str, config_sha256: &str) -> Result<(), EvidenceError> {
        let mismatch = |message: String| EvidenceError::new(EvidenceCode::SubjectMismatch, message);
        let found = self.commit().unwrap_or("");
        if !found.eq_ignore_ascii_case(commit) {
            return Err(mismatch(format!(
                "the evidence is for commit {}, but HEAD is {}",
                abbrev(found),
                abbrev(commit)
            )));
        }
        let config = config_sha256.strip_prefix("sha256:").unwrap_or(config_sha256);
        let found_config = self.config_sha256().unwrap_or("");
        if !found_config.eq_ignore_ascii_case(config) {
            return Err(mismatch(format!(
                "the evidence is for config sha256:{}, but the config hashes to sha256:{}",
                abbrev(found_config),
                abbrev(config)
            )));
        }
        match self.verdict() {
            Some("pass") => Ok(()),
            other => Err(EvidenceError::new(
                EvidenceCode::VerdictFail,
                format!("the gate's verdict for commit {} is {:?}, not \"pass\"", abbrev(found), other.unwrap_or("")),
            )),
        }
    }
}

/// The first 12 characters of a hex id (the whole id when shorter).
pub fn abbrev(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A DSSE envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Standard base64 of the serialized statement.
    pub payload: String,
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub signatures: Vec<Signature>,
}

/// One DSSE signature: a key hint and the base64 signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Hex SHA-256 of the raw public key; a hint only, never trusted.
    #[serde(default)]
    pub keyid: String,
    /// Standard base64 of the 64-byte Ed25519 signature.
    pub sig: String,
}

impl Envelope {
    /// Parse an envelope from JSON (`EVIDENCE_MALFORMED` when it is not one).
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, EvidenceError> {
        serde_json::from_slice(bytes).map_err(|e| malformed(format!("not a DSSE envelope: {e}")))
    }

    /// Pretty JSON, as written to disk.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("an envelope serializes")
    }
}

/// The DSSE v1 pre-authentication encoding:
/// `"DSSEv1" SP len(type) SP type SP len(body) SP body`, lengths in ASCII
/// decimal of byte counts.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// Hex SHA-256 of the raw 32 bytes of `key`.
pub fn keyid(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Serialize `statement`, sign its PAE with `key`, wrap it in an envelope.
pub fn sign(statement: &Statement, key: &SigningKey) -> Envelope {
    let body = serde_json::to_vec(statement).expect("a statement serializes");
    let sig = key.sign(&pae(PAYLOAD_TYPE, &body));
    Envelope {
        payload: STANDARD.encode(&body),
        payload_type: PAYLOAD_TYPE.to_owned(),
        signatures: vec![Signature { keyid: keyid(&key.verifying_key()), sig: STANDARD.encode(sig.to_bytes()) }],
    }
}

/// Base64 as DSSE allows it: standard or URL-safe, padded or not.
fn decode_base64(what: &str, text: &str) -> Result<Vec<u8>, EvidenceError> {
    [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .ok_or_else(|| malformed(format!("the envelope's {what} is not base64")))
}

/// Check that a signature of `envelope` verifies (strictly) with `key`, then
/// parse and validate the statement. The payload type must be
/// [`PAYLOAD_TYPE`]; keyids are hints and are not trusted, every signature
/// is tried. Nothing of the payload is parsed before a signature verified.
pub fn verify(envelope: &Envelope, key: &VerifyingKey) -> Result<Statement, EvidenceError> {
    verify_as(envelope, key, PREDICATE_TYPE)
}

/// [`verify`] for a statement of another predicate type.
pub fn verify_as(envelope: &Envelope, key: &VerifyingKey, predicate_type: &str) -> Result<Statement, EvidenceError> {
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(malformed(format!(
            "the envelope's payloadType is {:?}, expected {PAYLOAD_TYPE:?}",
            envelope.payload_type
        )));
    }
    if envelope.signatures.is_empty() {
        return Err(EvidenceError::new(EvidenceCode::SignatureInvalid, "the envelope has no signature"));
    }
    let body = decode_base64("payload", &envelope.payload)?;
    let message = pae(&envelope.payload_type, &body);
    let mut verified = false;
    for signature in &envelope.signatures {
        let bytes = decode_base64("signature", &signature.sig)?;
        let Ok(sig) = Ed25519Signature::from_slice(&bytes) else {
            continue;
        };
        if key.verify_strict(&message, &sig).is_ok() {
            verified = true;
            break;
        }
    }
    if !verified {
        return Err(EvidenceError::new(
            EvidenceCode::SignatureInvalid,
            format!("no signature of the evidence verifies with the public key {}", abbrev(&keyid(key))),
        ));
    }
    parse_statement(&body, predicate_type)
}

fn parse_statement(body: &[u8], predicate_type: &str) -> Result<Statement, EvidenceError> {
    let statement: Statement =
        serde_json::from_slice(body).map_err(|e| malformed(format!("the payload is not an in-toto statement: {e}")))?;
    statement.validate_as(predicate_type)?;
    Ok(statement)
}

/// How far a statement read by [`read`] is trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "trust", rename_all = "snake_case")]
pub enum Trust {
    /// A signature verified with this key.
    Verified { keyid: String },
    /// Read as a report only: why it was not verified.
    Unverified { reason: String },
}

/// Read evidence from a file's bytes, for reporting (`trace-matrix`,
/// `exit-criteria`): a DSSE envelope, verified when `key` is given (a bad
/// signature is an error, never a downgrade to unverified), or the unsigned
/// statement the gate writes with `--unsigned` (only when no key is given).
/// `deploy` never uses this: it requires a key.
pub fn read(
    bytes: &[u8],
    key: Option<&VerifyingKey>,
    predicate_type: &str,
) -> Result<(Statement, Trust), EvidenceError> {
    match (Envelope::from_json(bytes), key) {
        (Ok(envelope), Some(key)) => {
            let statement = verify_as(&envelope, key, predicate_type)?;
            Ok((statement, Trust::Verified { keyid: keyid(key) }))
        }
        (Ok(envelope), None) => {
            let body = decode_base64("payload", &envelope.payload)?;
            let statement = parse_statement(&body, predicate_type)?;
            Ok((statement, Trust::Unverified { reason: "no public key configured".to_owned() }))
        }
        (Err(_), Some(_)) => Err(EvidenceError::new(
            EvidenceCode::SignatureInvalid,
            "the evidence is not a signed DSSE envelope, and a public key is configured to verify it",
        )),
        (Err(_), None) => {
            let statement = parse_statement(bytes, predicate_type)?;
            Ok((statement, Trust::Unverified { reason: "an unsigned statement".to_owned() }))
        }
    }
}

/// A fresh key from the operating system's random source.
pub fn generate_key() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// The private key as PKCS#8 v1 PEM (RFC 8410, the seed only, no embedded
/// public key, which OpenSSL 3.0 cannot read); zeroized when dropped.
pub fn signing_key_to_pem(key: &SigningKey) -> zeroize::Zeroizing<String> {
    let bytes = ed25519_dalek::pkcs8::KeypairBytes { secret_key: key.to_bytes(), public_key: None };
    bytes.to_pkcs8_pem(LineEnding::LF).expect("an Ed25519 key encodes as PKCS#8")
}

/// The public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
pub fn verifying_key_to_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF).expect("an Ed25519 key encodes as SPKI")
}

/// A private key from PKCS#8 PEM (`EVIDENCE_KEY_INVALID` otherwise).
pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey, EvidenceError> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| {
        EvidenceError::new(EvidenceCode::KeyInvalid, format!("not an Ed25519 private key in PKCS#8 PEM: {e}"))
    })
}

/// A public key from SPKI PEM; weak (small-order) keys are refused
/// (`EVIDENCE_KEY_INVALID`).
pub fn verifying_key_from_pem(pem: &str) -> Result<VerifyingKey, EvidenceError> {
    let key = VerifyingKey::from_public_key_pem(pem).map_err(|e| {
        EvidenceError::new(EvidenceCode::KeyInvalid, format!("not an Ed25519 public key in SPKI PEM: {e}"))
    })?;
    if key.is_weak() {
        return Err(EvidenceError::new(EvidenceCode::KeyInvalid, "the public key is a weak (small-order) point"));
    }
    Ok(key)
}

fn read_key_file(path: &Path) -> Result<zeroize::Zeroizing<String>, EvidenceError> {
    std::fs::read_to_string(path).map(zeroize::Zeroizing::new).map_err(|e| {
        EvidenceError::new(EvidenceCode::KeyInvalid, format!("cannot read the key {}: {e}", path.display()))
    })
}

/// Read a PKCS#8 PEM private key file.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, EvidenceError> {
    signing_key_from_pem(&read_key_file(path)?)
        .map_err(|e| EvidenceError::new(e.code(), format!("{}: {}", path.display(), e.message())))
}

/// Read an SPKI PEM public key file.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, EvidenceError> {
    verifying_key_from_pem(&read_key_file(path)?)
        .map_err(|e| EvidenceError::new(e.code(), format!("{}: {}", path.display(), e.message())))
}

/// The config subject's digest: [`BusinessConfig::hash`] without `sha256:`.
pub fn config_digest(config: &BusinessConfig) -> String {
    let hash = config.hash();
    hash.strip_prefix("sha256:").map(str::to_owned).unwrap_or(hash)
}

/// Hex SHA-256 of the file at `path`.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Hex SHA-256 of the running executable (`std::env::current_exe`).
pub fn current_binary_digest() -> std::io::Result<String> {
    file_sha256(&std::env::current_exe()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
    const CONFIG: &str = "aa00000000000000000000000000000000000000000000000000000000000000";
    const BINARY: &str = "bb00000000000000000000000000000000000000000000000000000000000000";

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn statement(verdict: &str) -> Statement {
        Statement::new(COMMIT, &format!("sha256:{CONFIG}"), BINARY, json!({ "verdict": verdict, "stages": [] }))
    }

    fn code(r: Result<Statement, EvidenceError>) -> EvidenceCode {
        r.expect_err("refused").code()
    }

    /// The envelope with its payload replaced by `body` (signature kept).
    fn with_payload(envelope: &Envelope, body: &[u8]) -> Envelope {
        Envelope { payload: STANDARD.encode(body), ..envelope.clone() }
    }

    #[test]
    fn p1_t18_sign_then_verify_round_trips_the_statement() {
        let k = key(1);
        let s = statement("pass");
        let envelope = sign(&s, &k);
        assert_eq!(envelope.payload_type, PAYLOAD_TYPE);
        assert_eq!(envelope.signatures.len(), 1);
        assert_eq!(envelope.signatures[0].keyid, keyid(&k.verifying_key()));
        assert_eq!(verify(&envelope, &k.verifying_key()).unwrap(), s);
        // Through JSON, as written to and read from disk.
        let back = Envelope::from_json(envelope.to_json().as_bytes()).unwrap();
        assert_eq!(verify(&back, &k.verifying_key()).unwrap(), s);
    }

    #[test]
    fn p1_t18_statement_has_the_in_toto_v1_shape() {
        let v = serde_json::to_value(statement("pass")).unwrap();
        assert_eq!(v["_type"], STATEMENT_TYPE);
        assert_eq!(v["predicateType"], PREDICATE_TYPE);
        assert_eq!(v["subject"][0], json!({ "name": "git:commit", "digest": { "gitCommit": COMMIT } }));
        assert_eq!(v["subject"][1], json!({ "name": "autobiz.toml", "digest": { "sha256": CONFIG } }));
        assert_eq!(v["subject"][2], json!({ "name": "autobiz", "digest": { "sha256": BINARY } }));
        assert_eq!(v["predicate"]["verdict"], "pass");
    }

    #[test]
    fn p1_t18_pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol description.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
        // Lengths count bytes, not characters.
        assert_eq!(pae("t", "é".as_bytes()), "DSSEv1 1 t 2 é".as_bytes().to_vec());
    }

    #[test]
    fn p1_t18_the_signature_is_plain_ed25519_over_the_pae() {
        // What any DSSE verifier does: decode, PAE, Ed25519 verify.
        let k = key(2);
        let envelope = sign(&statement("pass"), &k);
        let body = STANDARD.decode(&envelope.payload).unwrap();
        let sig = Ed25519Signature::from_slice(&STANDARD.decode(&envelope.signatures[0].sig).unwrap()).unwrap();
        k.verifying_key().verify_strict(&pae(PAYLOAD_TYPE, &body), &sig).unwrap();
        assert_eq!(hex::encode(Sha256::digest(k.verifying_key().to_bytes())), envelope.signatures[0].keyid);
    }

    #[test]
    fn inv08_a_tampered_payload_is_refused() {
        let k = key(3);
        let envelope = sign(&statement("fail"), &k);
        let mut body = STANDARD.decode(&envelope.payload).unwrap();
        let text = String::from_utf8(body.clone()).unwrap().replace("\"fail\"", "\"pass\"");
        assert_eq!(
            code(verify(&with_payload(&envelope, text.as_bytes()), &k.verifying_key())),
            EvidenceCode::SignatureInvalid
        );
        body.push(b' ');
        assert_eq!(code(verify(&with_payload(&envelope, &body), &k.verifying_key())), EvidenceCode::SignatureInvalid);
    }

    #[test]
    fn inv08_a_tampered_signature_is_refused() {
        let k = key(4);
        let mut envelope = sign(&statement("pass"), &k);
        let mut sig = STANDARD.decode(&envelope.signatures[0].sig).unwrap();
        sig[0] ^= 1;
        envelope.signatures[0].sig = STANDARD.encode(&sig);
        assert_eq!(code(verify(&envelope, &k.verifying_key())), EvidenceCode::SignatureInvalid);
        // A signature of the wrong length is no signature either.
        envelope.signatures[0].sig = STANDARD.encode(&sig[..63]);
        assert_eq!(code(verify(&envelope, &k.verifying_key())), EvidenceCode::SignatureInvalid);
        envelope.signatures.clear();
        assert_eq!(code(verify(&envelope, &k.verifying_key())), EvidenceCode::SignatureInvalid);
    }

    #[test]
    fn inv08_evidence_signed_by_another_key_is_refused() {
        let envelope = sign(&statement("pass"), &key(5));
        let other = key(6).verifying_key();
        let err = verify(&envelope, &other).unwrap_err();
        assert_eq!(err.code(), EvidenceCode::SignatureInvalid);
        assert!(err.message().contains(abbrev(&keyid(&other))), "{err}");
        // The keyid is a hint: claiming the other key's id changes nothing.
        let mut claimed = envelope.clone();
        claimed.signatures[0].keyid = keyid(&other);
        assert_eq!(code(verify(&claimed, &other)), EvidenceCode::SignatureInvalid);
    }

    #[test]
    fn inv08_another_payload_type_is_refused() {
        let k = key(7);
        let mut envelope = sign(&statement("pass"), &k);
        envelope.payload_type = "application/json".to_owned();
        assert_eq!(code(verify(&envelope, &k.verifying_key())), EvidenceCode::Malformed);
    }

    #[test]
    fn inv08_malformed_base64_and_json_are_refused() {
        let k = key(8);
        let envelope = sign(&statement("pass"), &k);
        let bad_payload = Envelope { payload: "not base64!".to_owned(), ..envelope.clone() };
        assert_eq!(code(verify(&bad_payload, &k.verifying_key())), EvidenceCode::Malformed);
        let mut bad_sig = envelope.clone();
        bad_sig.signatures[0].sig = "***".to_owned();
        assert_eq!(code(verify(&bad_sig, &k.verifying_key())), EvidenceCode::Malformed);
        for text in ["", "{", "[]", "{\"payload\": 1}", "{\"payloadType\": \"x\", \"signatures\": []}"] {
            assert_eq!(Envelope::from_json(text.as_bytes()).unwrap_err().code(), EvidenceCode::Malformed, "{text}");
        }
    }

    #[test]
    fn inv08_a_signed_payload_that_is_no_gate_statement_is_refused() {
        // Correctly signed, but not what the format says: still refused.
        let k = key(9);
        let sign_body = |body: &[u8]| Envelope {
            payload: STANDARD.encode(body),
            payload_type: PAYLOAD_TYPE.to_owned(),
            signatures: vec![Signature {
                keyid: keyid(&k.verifying_key()),
                sig: STANDARD.encode(k.sign(&pae(PAYLOAD_TYPE, body)).to_bytes()),
            }],
        };
        assert_eq!(code(verify(&sign_body(b"not json"), &k.verifying_key())), EvidenceCode::Malformed);
        let mut s = statement("pass");
        s.predicate_type = "https://slsa.dev/provenance/v1".to_owned();
        assert_eq!(
            code(verify(&sign_body(&serde_json::to_vec(&s).unwrap()), &k.verifying_key())),
            EvidenceCode::Malformed
        );
        let mut s = statement("pass");
        s.statement_type = "https://in-toto.io/Statement/v0.1".to_owned();
        assert_eq!(
            code(verify(&sign_body(&serde_json::to_vec(&s).unwrap()), &k.verifying_key())),
            EvidenceCode::Malformed
        );
        let mut s = statement("pass");
        s.subject.remove(0);
        assert_eq!(
            code(verify(&sign_body(&serde_json::to_vec(&s).unwrap()), &k.verifying_key())),
            EvidenceCode::Malformed
        );
        let mut s = statement("pass");
        s.subject.push(Subject::new(COMMIT_SUBJECT, "gitCommit", "ffff"));
        assert_eq!(
            code(verify(&sign_body(&serde_json::to_vec(&s).unwrap()), &k.verifying_key())),
            EvidenceCode::Malformed
        );
        for predicate in [json!({}), json!({ "verdict": "maybe" }), json!({ "verdict": true }), json!(null)] {
            let mut s = statement("pass");
            s.predicate = predicate;
            assert_eq!(
                code(verify(&sign_body(&serde_json::to_vec(&s).unwrap()), &k.verifying_key())),
                EvidenceCode::Malformed
            );
        }
    }

    #[test]
    fn inv08_check_deployable_compares_commit_config_and_verdict() {
        let s = statement("pass");
        s.check_deployable(COMMIT, CONFIG).unwrap();
        s.check_deployable(&COMMIT.to_uppercase(), &format!("sha256:{CONFIG}")).unwrap();
        let other = "fedcba9876543210fedcba9876543210fedcba98";
        let err = s.check_deployable(other, CONFIG).unwrap_err();
        assert_eq!(err.code(), EvidenceCode::SubjectMismatch);
        assert_eq!(err.message(), "the evidence is for commit 0123456789ab, but HEAD is fedcba987654");
        let err = s.check_deployable(COMMIT, BINARY).unwrap_err();
        assert_eq!(err.code(), EvidenceCode::SubjectMismatch);
        assert!(err.message().contains("sha256:aa0000000000") && err.message().contains("sha256:bb0000000000"));
        let err = statement("fail").check_deployable(COMMIT, CONFIG).unwrap_err();
        assert_eq!(err.code(), EvidenceCode::VerdictFail);
    }

    #[test]
    fn p1_t18_keys_round_trip_through_pem_and_bad_pem_is_refused() {
        let k = generate_key();
        let private = signing_key_to_pem(&k);
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
        let public = verifying_key_to_pem(&k.verifying_key());
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(signing_key_from_pem(&private).unwrap().to_bytes(), k.to_bytes());
        assert_eq!(verifying_key_from_pem(&public).unwrap(), k.verifying_key());
        assert_eq!(signing_key_from_pem(&public).unwrap_err().code(), EvidenceCode::KeyInvalid);
        assert_eq!(verifying_key_from_pem(&private).unwrap_err().code(), EvidenceCode::KeyInvalid);
        assert_eq!(verifying_key_from_pem("garbage").unwrap_err().code(), EvidenceCode::KeyInvalid);
        // Two fresh keys differ.
        assert_ne!(generate_key().to_bytes(), k.to_bytes());
    }

    #[test]
    fn p1_t18_a_weak_public_key_is_refused() {
        // The identity point (small order) encoded as SPKI.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = VerifyingKey::from_bytes(&identity).unwrap();
        assert!(weak.is_weak());
        let pem = verifying_key_to_pem(&weak);
        assert_eq!(verifying_key_from_pem(&pem).unwrap_err().code(), EvidenceCode::KeyInvalid);
    }
}
