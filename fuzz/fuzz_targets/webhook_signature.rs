//! The payment webhook's `Stampede-Signature` check, on any header, body, secret and clock.
//!
//! Asserts: nothing panics (whatever `t=` says); an empty secret verifies nothing; what `sign`
//! makes verifies at the moment it was made, and no longer once the body changes, the secret
//! changes, or the clock moves past the tolerance.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use stampede_app::webhook::{sign, verify};
use stampede_core::Timestamp;

#[derive(Debug, Arbitrary)]
struct Input {
    secret: String,
    header: String,
    /// A `t=` the attacker picks, put in front of `header`.
    t: i64,
    body: Vec<u8>,
    now_ms: i64,
    tolerance_secs: i64,
}

fuzz_target!(|i: Input| {
    let now = Timestamp(i.now_ms);
    let raw = verify(&i.secret, &i.header, &i.body, now, i.tolerance_secs);
    let with_t = format!("t={},{}", i.t, i.header);
    let timed = verify(&i.secret, &with_t, &i.body, now, i.tolerance_secs);
    if i.secret.is_empty() {
        assert!(!raw && !timed);
        return;
    }
    let tolerance = i.tolerance_secs.clamp(0, 86_400);
    let signed = sign(&i.secret, now, &i.body);
    assert!(
        verify(&i.secret, &signed, &i.body, now, tolerance),
        "{signed}"
    );
    let mut other_body = i.body.clone();
    other_body.push(b' ');
    assert!(!verify(&i.secret, &signed, &other_body, now, tolerance));
    let other_secret = format!("{}x", i.secret);
    assert!(!verify(&other_secret, &signed, &i.body, now, tolerance));
    if let Some(later) = i.now_ms.checked_add((tolerance + 2) * 1000) {
        assert!(!verify(
            &i.secret,
            &signed,
            &i.body,
            Timestamp(later),
            tolerance
        ));
    }
});
