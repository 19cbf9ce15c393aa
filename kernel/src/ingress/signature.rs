//! Webhook signature verification, before anything of a delivery is stored
//! or parsed.
//!
//! * Stripe: `Stripe-Signature: t=TIMESTAMP,v1=HEX[,v1=HEX...]`, HMAC-SHA256
//!   over `TIMESTAMP.BODY` with the endpoint secret (the whole `whsec_...`
//!   string as key bytes), the timestamp within [`STRIPE_TOLERANCE_SECS`]
//!   of the injected clock. Several `v1` entries (Stripe sends one per
//!   active secret while one is rolled) and several local secrets (the
//!   current version and those still in their grace period) are all tried.
//! * Shopify: `X-Shopify-Hmac-Sha256: BASE64`, HMAC-SHA256 of the raw body.
//! * Printful and any provider without a signature scheme: a per-tenant
//!   token (URL `?token=` or `X-Autobiz-Webhook-Token`), compared as
//!   SHA-256 digests in constant time.
//!
//! Every comparison is constant-time (`hmac`'s `verify_slice`, `subtle`).
//! Errors name what failed, never a secret or an expected value.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, ErrorCode, Result};

type HmacSha256 = Hmac<Sha256>;

/// Stripe's default tolerance between the signed timestamp and now.
pub const STRIPE_TOLERANCE_SECS: i64 = 300;
/// Longest signature header accepted (bounds the parsing work).
const MAX_HEADER_LEN: usize = 4096;

fn missing(what: &str) -> Error {
    Error::new(ErrorCode::SignatureMissing, format!("the delivery carries no {what}"))
}

fn invalid(what: &str) -> Error {
    Error::new(ErrorCode::SignatureInvalid, format!("the {what} does not verify"))
}

fn mac(secret: &SecretString) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    <HmacSha256 as Mac>::new_from_slice(secret.expose_secret().as_bytes()).unwrap_or_else(|_| unreachable!())
}

/// Verify a Stripe delivery. Returns the signed timestamp.
///
/// `SIGNATURE_MISSING` without a header or a `v1` entry,
/// `SIGNATURE_INVALID` when no `v1` matches any secret or the header does
/// not parse, `SIGNATURE_EXPIRED` when the timestamp is further than
/// `tolerance_secs` from `now` (checked after the signature, so an expired
/// forgery is still reported as invalid).
pub fn verify_stripe(
    header: Option<&str>,
    body: &[u8],
    secrets: &[SecretString],
    now: DateTime<Utc>,
    tolerance_secs: i64,
) -> Result<i64> {
    let header = header.ok_or_else(|| missing("Stripe-Signature header"))?;
    if header.len() > MAX_HEADER_LEN {
        return Err(invalid("Stripe-Signature header"));
    }
    let mut timestamp: Option<&str> = None;
    let mut signatures: Vec<Vec<u8>> = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else { continue };
        match key {
            "t" if timestamp.is_none() => timestamp = Some(value),
            "t" => return Err(invalid("Stripe-Signature header (two timestamps)")),
            // An entry that is not hex can never match; skip it like Stripe's libraries do.
            "v1" => signatures.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or_else(|| invalid("Stripe-Signature header (no timestamp)"))?;
    let t: i64 = timestamp
        .parse()
        .ok()
        .filter(|t: &i64| *t >= 0 && timestamp.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| invalid("Stripe-Signature header (timestamp)"))?;
    if signatures.is_empty() {
        return Err(missing("v1 signature in the Stripe-Signature header"));
    }
    let matched = secrets.iter().any(|secret| {
        let mut base = mac(secret);
        base.update(timestamp.as_bytes());
        base.update(b".");
        base.update(body);
        // Every candidate is checked: no early exit on the first match
        // would tell which secret or entry matched.
        signatures.iter().fold(false, |ok, sig| base.clone().verify_slice(sig).is_ok() | ok)
    });
    if !matched {
        return Err(invalid("Stripe signature"));
    }
    if (now.timestamp() - t).abs() > tolerance_secs {
        return Err(Error::new(
            ErrorCode::SignatureExpired,
            format!(
                "the Stripe signature's timestamp is more than {tolerance_secs} s from now (replayed or clock skew)"
            ),
        ));
    }
    Ok(t)
}

/// Verify a Shopify delivery: `X-Shopify-Hmac-Sha256` is the base64
/// HMAC-SHA256 of the raw body under one of `secrets`.
pub fn verify_shopify(header: Option<&str>, body: &[u8], secrets: &[SecretString]) -> Result<()> {
    use base64::Engine as _;
    let header = header.ok_or_else(|| missing("X-Shopify-Hmac-Sha256 header"))?;
    if header.len() > MAX_HEADER_LEN {
        return Err(invalid("X-Shopify-Hmac-Sha256 header"));
    }
    let sig = base64::engine::general_purpose::STANDARD
        .decode(header.trim())
        .map_err(|_| invalid("X-Shopify-Hmac-Sha256 header (not base64)"))?;
    let matched = secrets.iter().fold(false, |ok, secret| {
        let mut m = mac(secret);
        m.update(body);
        m.verify_slice(&sig).is_ok() | ok
    });
    if matched { Ok(()) } else { Err(invalid("Shopify HMAC")) }
}

/// Verify a shared-token delivery (Printful, custom sources): the token
/// presented equals one of `secrets`. Both sides are hashed first, so the
/// comparison is constant-time whatever their lengths.
pub fn verify_token(presented: Option<&str>, secrets: &[SecretString]) -> Result<()> {
    let presented = presented.ok_or_else(|| missing("webhook token"))?;
    let p = Sha256::digest(presented.as_bytes());
    let matched = secrets.iter().fold(subtle::Choice::from(0), |ok, secret| {
        ok | Sha256::digest(secret.expose_secret().as_bytes()).as_slice().ct_eq(p.as_slice())
    });
    if bool::from(matched) { Ok(()) } else { Err(invalid("webhook token")) }
}

/// A `Stripe-Signature` header for `body` at `t` under each secret: what a
/// test client or the load generator sends. Stripe's own format.
pub fn stripe_header(body: &[u8], t: i64, secrets: &[SecretString]) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        let mut m = mac(secret);
        m.update(t.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        header.push_str(",v1=");
        header.push_str(&hex::encode(m.finalize().into_bytes()));
    }
    header
}

/// The base64 HMAC-SHA256 Shopify sends for `body`.
pub fn shopify_header(body: &[u8], secret: &SecretString) -> String {
    use base64::Engine as _;
    let mut m = mac(secret);
    m.update(body);
    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> SecretString {
        SecretString::from(v.to_owned())
    }

    fn at(t: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(t, 0).unwrap()
    }

    // Stripe's documented example shape: t=, v1= over "t.payload".
    #[test]
    fn p1_t36_stripe_signature_verifies_and_rejects_tampering() {
        let body = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
        let secret = s("whsec_test_secret");
        let header = stripe_header(body, 1_700_000_000, std::slice::from_ref(&secret));
        assert_eq!(
            verify_stripe(Some(&header), body, std::slice::from_ref(&secret), at(1_700_000_100), 300).unwrap(),
            1_700_000_000
        );
        let tampered = br#"{"id":"evt_1","type":"payment_intent.succeedeD"}"#;
        let e =
            verify_stripe(Some(&header), tampered, std::slice::from_ref(&secret), at(1_700_000_100), 300).unwrap_err();
        assert_eq!(e.code(), ErrorCode::SignatureInvalid);
        let e = verify_stripe(Some(&header), body, &[s("whsec_other")], at(1_700_000_100), 300).unwrap_err();
        assert_eq!(e.code(), ErrorCode::SignatureInvalid);
        // The timestamp is signed: changing it breaks the signature.
        let moved = header.replacen("t=1700000000", "t=1700000050", 1);
        let e = verify_stripe(Some(&moved), body, &[secret], at(1_700_000_100), 300).unwrap_err();
        assert_eq!(e.code(), ErrorCode::SignatureInvalid);
    }

    #[test]
    fn p1_t36_stripe_timestamp_outside_tolerance_is_expired() {
        let body = b"{}";
        let secret = s("whsec_x");
        let header = stripe_header(body, 1_000, std::slice::from_ref(&secret));
        assert!(verify_stripe(Some(&header), body, std::slice::from_ref(&secret), at(1_300), 300).is_ok());
        let e = verify_stripe(Some(&header), body, std::slice::from_ref(&secret), at(1_301), 300).unwrap_err();
        assert_eq!(e.code(), ErrorCode::SignatureExpired);
        let e = verify_stripe(Some(&header), body, &[secret], at(699), 300).unwrap_err();
        assert_eq!(e.code(), ErrorCode::SignatureExpired, "too far in the future too");
    }

    #[test]
    fn p1_t36_stripe_rotation_accepts_any_active_secret_and_any_v1() {
        let body = b"{\"id\":\"evt_r\"}";
        let (old, new) = (s("whsec_old"), s("whsec_new"));
        // Stripe signs with both while the endpoint secret is rolled.
        let both = stripe_header(body, 50, &[old.clone(), new.clone()]);
        assert!(verify_stripe(Some(&both), body, std::slice::from_ref(&new), at(50), 300).is_ok());
        assert!(verify_stripe(Some(&both), body, std::slice::from_ref(&old), at(50), 300).is_ok());
        // Our side holds both versions while the old one is in its grace period.
        let only_old = stripe_header(body, 50, std::slice::from_ref(&old));
        assert!(verify_stripe(Some(&only_old), body, &[new.clone(), old], at(50), 300).is_ok());
        assert!(verify_stripe(Some(&only_old), body, &[new], at(50), 300).is_err());
    }

    #[test]
    fn p1_t36_stripe_malformed_headers_are_refused_without_panic() {
        let secret = [s("whsec_x")];
        for header in [
            "",
            "t=",
            "v1=00",
            "t=abc,v1=00",
            "t=-5,v1=00",
            "t=1,t=2,v1=00",
            "t=1",
            "t=1,v0=abcd",
            "garbage",
            "t=1,v1=zz",
            "t=+1,v1=00",
            "t=99999999999999999999,v1=00",
        ] {
            let e = verify_stripe(Some(header), b"{}", &secret, at(1), 300).unwrap_err();
            assert!(
                matches!(e.code(), ErrorCode::SignatureInvalid | ErrorCode::SignatureMissing),
                "{header:?}: {:?}",
                e.code()
            );
        }
        assert_eq!(verify_stripe(None, b"{}", &secret, at(1), 300).unwrap_err().code(), ErrorCode::SignatureMissing);
        let long = format!("t=1,{}", "v1=00,".repeat(2000));
        assert_eq!(
            verify_stripe(Some(&long), b"{}", &secret, at(1), 300).unwrap_err().code(),
            ErrorCode::SignatureInvalid
        );
        // No secrets configured: nothing verifies.
        let h = stripe_header(b"{}", 1, &secret);
        assert!(verify_stripe(Some(&h), b"{}", &[], at(1), 300).is_err());
    }

    #[test]
    fn p1_t36_shopify_hmac_verifies_the_raw_body() {
        let body = br#"{"id":820982911946154508}"#;
        let secret = s("shpss_secret");
        let header = shopify_header(body, &secret);
        assert!(verify_shopify(Some(&header), body, std::slice::from_ref(&secret)).is_ok());
        assert_eq!(
            verify_shopify(Some(&header), br#"{"id":820982911946154509}"#, std::slice::from_ref(&secret))
                .unwrap_err()
                .code(),
            ErrorCode::SignatureInvalid
        );
        assert_eq!(
            verify_shopify(Some("not base64!"), body, std::slice::from_ref(&secret)).unwrap_err().code(),
            ErrorCode::SignatureInvalid
        );
        assert_eq!(verify_shopify(None, body, &[secret]).unwrap_err().code(), ErrorCode::SignatureMissing);
    }

    // RFC 4231 test case 2: an independent known answer for the HMAC itself.
    #[test]
    fn p1_t36_hmac_matches_rfc4231_known_answer() {
        let header = shopify_header(b"what do ya want for nothing?", &s("Jefe"));
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD.decode(header).unwrap();
        assert_eq!(hex::encode(raw), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn p1_t36_token_compare_accepts_only_the_tenant_token() {
        let tokens = [s("tok-current"), s("tok-previous")];
        assert!(verify_token(Some("tok-current"), &tokens).is_ok());
        assert!(verify_token(Some("tok-previous"), &tokens).is_ok());
        assert_eq!(verify_token(Some("tok-current "), &tokens).unwrap_err().code(), ErrorCode::SignatureInvalid);
        assert_eq!(verify_token(Some(""), &tokens).unwrap_err().code(), ErrorCode::SignatureInvalid);
        assert_eq!(verify_token(None, &tokens).unwrap_err().code(), ErrorCode::SignatureMissing);
        assert!(verify_token(Some("tok-current"), &[]).is_err());
    }

    #[test]
    fn p1_t36_errors_never_carry_the_secret() {
        let secret = s("whsec_do_not_print_me");
        let h = stripe_header(b"{}", 1, &[s("whsec_other")]);
        let e = verify_stripe(Some(&h), b"{}", std::slice::from_ref(&secret), at(1), 300).unwrap_err();
        assert!(!e.to_string().contains("do_not_print_me"));
        let e = verify_token(Some("guess"), &[secret]).unwrap_err();
        assert!(!e.to_string().contains("do_not_print_me") && !e.to_string().contains("guess"));
    }
}
