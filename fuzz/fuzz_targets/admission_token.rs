//! Admission tokens (`X-Admission-Token`, and the proof-of-work challenge, which is one):
//! verify and parse any text under any key; sign any claims.
//!
//! Asserts: nothing panics; a token that verifies decodes to claims that sign and verify back
//! to the same claims; a token we sign (and that fits the length limit) verifies to exactly
//! its claims (times in whole seconds, as JWTs carry them), and with one character changed, or
//! under another key, does not verify.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use stampede_core::admission::{AdmissionClaims, AdmissionKey, MAX_TOKEN_LEN};
use stampede_core::Timestamp;

#[derive(Debug, Arbitrary)]
struct Input {
    seed: [u8; 32],
    token: String,
    sale_id: String,
    user_id: String,
    device_id: String,
    ticket: u64,
    issued_at: i64,
    expires_at: i64,
    now: i64,
    tamper_at: usize,
    tamper_with: u8,
}

const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";

/// What a time becomes on the wire and back: whole seconds.
fn whole_secs(ms: i64) -> Timestamp {
    Timestamp(ms.div_euclid(1000).saturating_mul(1000))
}

fuzz_target!(|i: Input| {
    let key = AdmissionKey::from_seed(&i.seed);
    if let Ok(c) = AdmissionClaims::verify(&key, &i.token) {
        let _ = c.admits(&i.sale_id, &i.user_id, Some(&i.device_id), Timestamp(i.now));
        if let Some(again) = c.sign(&key) {
            assert_eq!(AdmissionClaims::verify(&key, &again), Ok(c));
        }
    }

    let claims = AdmissionClaims {
        sale_id: i.sale_id,
        user_id: i.user_id,
        device_id: i.device_id,
        ticket: i.ticket,
        issued_at: Timestamp(i.issued_at),
        expires_at: Timestamp(i.expires_at),
    };
    let Some(token) = claims.sign(&key) else {
        return;
    };
    let expected = AdmissionClaims {
        issued_at: whole_secs(i.issued_at),
        expires_at: whole_secs(i.expires_at),
        ..claims
    };
    if token.len() > MAX_TOKEN_LEN {
        assert!(AdmissionClaims::verify(&key, &token).is_err());
        return;
    }
    assert_eq!(AdmissionClaims::verify(&key, &token), Ok(expected.clone()));
    assert_eq!(
        expected.admits(
            &expected.sale_id,
            &expected.user_id,
            Some(&expected.device_id),
            Timestamp(expected.expires_at.millis().saturating_sub(1)),
        ),
        if expected.expires_at.millis() == i64::MIN {
            Err(stampede_core::admission::TokenRefusal::Expired)
        } else {
            Ok(())
        }
    );
    let mut other_seed = i.seed;
    other_seed[0] ^= 1;
    assert!(AdmissionClaims::verify(&AdmissionKey::from_seed(&other_seed), &token).is_err());

    let mut bytes = token.into_bytes();
    let at = i.tamper_at % bytes.len();
    let with = B64URL[usize::from(i.tamper_with) % B64URL.len()];
    if bytes[at] != with {
        bytes[at] = with;
        let tampered = String::from_utf8_lossy(&bytes);
        assert!(
            AdmissionClaims::verify(&key, &tampered).is_err(),
            "{tampered}"
        );
    }
});
