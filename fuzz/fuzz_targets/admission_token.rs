//! Admission tokens (`X-Admission-Token`, and the proof-of-work challenge, which is one):
//! verify and parse any text under any key; sign any claims.
//!
//! Asserts: nothing panics; a token that verifies decodes to claims that sign and verify back
//! to the same claims; a token we sign (and that fits the length limit) verifies to exactly
//! its claims, and with one character changed, or under another key, does not verify.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use stampede_core::admission::{AdmissionClaims, MAX_TOKEN_LEN};
use stampede_core::Timestamp;

#[derive(Debug, Arbitrary)]
struct Input {
    key: Vec<u8>,
    token: String,
    sale_id: String,
    user_id: String,
    device_id: String,
    ticket: u64,
    expires_at: i64,
    now: i64,
    tamper_at: usize,
    tamper_with: u8,
}

const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";

fuzz_target!(|i: Input| {
    if let Ok(c) = AdmissionClaims::verify(&i.key, &i.token) {
        let _ = c.admits(&i.sale_id, &i.user_id, Some(&i.device_id), Timestamp(i.now));
        if let Some(again) = c.sign(&i.key) {
            assert_eq!(AdmissionClaims::verify(&i.key, &again), Ok(c));
        }
    }

    let claims = AdmissionClaims {
        sale_id: i.sale_id,
        user_id: i.user_id,
        device_id: i.device_id,
        ticket: i.ticket,
        expires_at: Timestamp(i.expires_at),
    };
    let Some(token) = claims.sign(&i.key) else {
        return;
    };
    if token.len() > MAX_TOKEN_LEN {
        assert!(AdmissionClaims::verify(&i.key, &token).is_err());
        return;
    }
    assert_eq!(AdmissionClaims::verify(&i.key, &token), Ok(claims.clone()));
    assert_eq!(
        claims.admits(
            &claims.sale_id,
            &claims.user_id,
            Some(&claims.device_id),
            Timestamp(claims.expires_at.millis().saturating_sub(1)),
        ),
        if claims.expires_at.millis() == i64::MIN {
            Err(stampede_core::admission::TokenRefusal::Expired)
        } else {
            Ok(())
        }
    );
    let mut other_key = i.key.clone();
    other_key.push(1);
    assert!(AdmissionClaims::verify(&other_key, &token).is_err());

    let mut bytes = token.into_bytes();
    let at = i.tamper_at % bytes.len();
    let with = B64URL[usize::from(i.tamper_with) % B64URL.len()];
    if bytes[at] != with {
        bytes[at] = with;
        let tampered = String::from_utf8_lossy(&bytes);
        assert!(
            AdmissionClaims::verify(&i.key, &tampered).is_err(),
            "{tampered}"
        );
    }
});
