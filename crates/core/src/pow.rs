//! Proof of work at queue join: the buyer's device finds a `nonce` such that
//! `SHA-256(challenge ":" nonce)` starts with `bits` zero bits. Finding one costs about
//! `2^bits` hashes on the device; checking it costs the server one. It prices a bot's
//! thousand accounts without bothering one person with one phone.

use sha2::{Digest, Sha256};

/// Most bits a sale may ask for (2^24 hashes is seconds on a phone; more is a denial of service).
pub const MAX_POW_BITS: u8 = 24;

fn leading_zero_bits(hash: &[u8]) -> u32 {
    let mut bits = 0;
    for byte in hash {
        if *byte == 0 {
            bits += 8;
        } else {
            bits += byte.leading_zeros();
            break;
        }
    }
    bits
}

/// Whether `nonce` solves `challenge` at `bits`.
pub fn solves(challenge: &str, nonce: &str, bits: u8) -> bool {
    if nonce.len() > 64 {
        return false;
    }
    let hash = Sha256::new()
        .chain_update(challenge.as_bytes())
        .chain_update(b":")
        .chain_update(nonce.as_bytes())
        .finalize();
    leading_zero_bits(&hash) >= u32::from(bits)
}

/// Finds a nonce (what a client does; used by tests and the drill).
pub fn solve(challenge: &str, bits: u8) -> String {
    let mut n: u64 = 0;
    loop {
        let nonce = n.to_string();
        if solves(challenge, &nonce, bits) {
            return nonce;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_solution_checks_out_and_a_guess_mostly_does_not() {
        let nonce = solve("abc", 12);
        assert!(solves("abc", &nonce, 12));
        let wrong = (0..200)
            .filter(|n| solves("xyz", &n.to_string(), 16))
            .count();
        assert!(wrong < 5, "2^-16 odds, got {wrong} of 200");
        assert!(solves("anything", "1", 0));
    }
}
