//! The proof of work sent with a queue join (`pow.challenge`, `pow.nonce`), at any difficulty.
//!
//! Asserts: nothing panics; a nonce over 64 bytes never solves; any nonce of allowed length
//! solves difficulty 0; a solution at `bits` is one at every lower difficulty; what `solve`
//! finds checks out.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use stampede_core::pow::{solve, solves};

#[derive(Debug, Arbitrary)]
struct Input {
    challenge: String,
    nonce: String,
    bits: u8,
}

fuzz_target!(|i: Input| {
    let ok = solves(&i.challenge, &i.nonce, i.bits);
    if i.nonce.len() > 64 {
        assert!(!ok);
    } else {
        assert!(solves(&i.challenge, &i.nonce, 0));
    }
    if ok {
        for lower in 0..i.bits {
            assert!(
                solves(&i.challenge, &i.nonce, lower),
                "{lower} of {}",
                i.bits
            );
        }
    }
    // Cheap difficulties only: 2^bits hashes on average.
    let easy = i.bits % 9;
    let found = solve(&i.challenge, easy);
    assert!(solves(&i.challenge, &found, easy), "{found}");
});
