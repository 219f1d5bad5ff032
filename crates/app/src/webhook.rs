//! Payment webhook signatures: `Stampede-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<raw body>">`. Signing lives here too so the sandbox gateway and tests sign exactly as
//! the verifier expects.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use stampede_core::Timestamp;

type HmacSha256 = Hmac<Sha256>;

/// The header value for `body` signed at `at` with `secret`.
pub fn sign(secret: &str, at: Timestamp, body: &[u8]) -> String {
    let t = at.millis() / 1000;
    format!("t={t},v1={}", hex::encode(mac(secret, t, body)))
}

fn mac(secret: &str, t: i64, body: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail; an empty MAC would never verify.
    let Ok(mut m) = HmacSha256::new_from_slice(secret.as_bytes()) else {
        return Vec::new();
    };
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

/// Whether `header` is a valid signature of `body` made within `tolerance_secs` of `now`.
/// Compares in constant time.
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now: Timestamp,
    tolerance_secs: i64,
) -> bool {
    if secret.is_empty() {
        return false;
    }
    let mut t: Option<i64> = None;
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse().ok(),
            Some(("v1", v)) => {
                if let Ok(bytes) = hex::decode(v) {
                    candidates.push(bytes);
                }
            }
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    // `t` is the sender's: any i64, so the distance is taken without overflow (a negative
    // tolerance accepts nothing).
    let off_by_secs = (now.millis() / 1000).abs_diff(t);
    if u64::try_from(tolerance_secs).map_or(true, |tolerance| off_by_secs > tolerance) {
        return false;
    }
    candidates.iter().any(|c| {
        let Ok(mut m) = HmacSha256::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        m.update(t.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        m.verify_slice(c).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_right_secret_body_and_time() {
        let now = Timestamp(1_700_000_000_000);
        let h = sign("s3cret", now, b"{}");
        assert!(verify("s3cret", &h, b"{}", now, 300));
        assert!(!verify("other", &h, b"{}", now, 300));
        assert!(!verify("s3cret", &h, b"{ }", now, 300));
        assert!(!verify("s3cret", &h, b"{}", now.plus_secs(301), 300));
        assert!(!verify("s3cret", "garbage", b"{}", now, 300));
        assert!(!verify("", &sign("", now, b"{}"), b"{}", now, 300));
    }

    #[test]
    fn a_timestamp_at_the_ends_of_i64_is_refused_not_a_panic() {
        let now = Timestamp(1_700_000_000_000);
        for t in [i64::MIN, i64::MIN + 1, i64::MAX] {
            let header = format!("t={t},v1=00");
            assert!(!verify("s3cret", &header, b"{}", now, 300), "{header}");
        }
        let far = Timestamp(i64::MIN);
        assert!(!verify(
            "s3cret",
            "t=9223372036854775807,v1=00",
            b"{}",
            far,
            300
        ));
        let h = sign("s3cret", now, b"{}");
        assert!(
            !verify("s3cret", &h, b"{}", now, -1),
            "a negative tolerance accepts nothing"
        );
        assert!(verify("s3cret", &h, b"{}", now, 0));
    }
}
