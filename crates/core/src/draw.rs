//! Seeded, auditable draws: the pre-queue shuffle at a sale's start and the lottery.
//!
//! Both are the same algorithm: every entrant gets the key `SHA-256(seed ‖ purpose ‖ user_id)`
//! and entrants are ordered by key. The shuffle is that whole order; a lottery's winners are its
//! first `winners` entries. The order depends only on the seed and the set of entrants, not on
//! the order they arrived in, so arriving early or hammering at T-0 gains nothing, and anyone
//! holding the published record can recompute it ([`DrawRecord::verify`], `stampede
//! verify-draw`). The seed is committed before the draw by publishing its hash, and revealed
//! after; a seed that does not match its commitment fails verification.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a draw decided, which is mixed into every key so one seed cannot serve two purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrawPurpose {
    /// The order of buyers who joined before the start.
    PreQueue,
    /// Who among the waiting buyers may buy what is left.
    Lottery,
}

impl DrawPurpose {
    fn tag(self) -> &'static [u8] {
        match self {
            DrawPurpose::PreQueue => b"pre_queue",
            DrawPurpose::Lottery => b"lottery",
        }
    }
}

/// A draw's seed: 32 random bytes, shown as 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed(pub [u8; 32]);

impl Seed {
    /// The commitment published before the draw: hex SHA-256 of the seed bytes.
    pub fn commitment(&self) -> String {
        hex::encode(Sha256::digest(self.0))
    }

    /// The seed as 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Seed> {
        let bytes = hex::decode(s.trim()).ok()?;
        <[u8; 32]>::try_from(bytes.as_slice()).ok().map(Seed)
    }
}

fn key(seed: &Seed, purpose: DrawPurpose, entrant: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed.0);
    h.update(purpose.tag());
    h.update([0u8]);
    h.update(entrant.as_bytes());
    h.finalize().into()
}

/// Entrants in drawn order. Duplicates count once; ties (impossible in practice) fall back to
/// the id so the order is total.
pub fn draw_order<S: AsRef<str>>(seed: &Seed, purpose: DrawPurpose, entrants: &[S]) -> Vec<String> {
    let mut keyed: Vec<([u8; 32], &str)> = entrants
        .iter()
        .map(|e| (key(seed, purpose, e.as_ref()), e.as_ref()))
        .collect();
    keyed.sort_unstable();
    keyed.dedup_by(|a, b| a.1 == b.1);
    keyed.into_iter().map(|(_, e)| e.to_owned()).collect()
}

/// The published record of one draw: enough for anyone to recompute it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrawRecord {
    pub sale_id: String,
    pub purpose: DrawPurpose,
    /// Hex SHA-256 of the seed, published before the draw.
    pub seed_commitment: String,
    /// The seed itself, revealed once the draw is done.
    pub seed: String,
    /// Every eligible entrant (user ids), in any order.
    pub entrants: Vec<String>,
    /// How many were drawn (for a pre-queue shuffle, all of them).
    pub winners_count: usize,
    /// The result: the first `winners_count` entrants in drawn order.
    pub winners: Vec<String>,
}

/// Why a published draw does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrawMismatch {
    #[error("the seed is not 64 hex digits")]
    BadSeed,
    #[error("the seed does not match its published commitment")]
    CommitmentBroken,
    #[error("recomputed winners differ from the published ones (first difference at #{0})")]
    WinnersDiffer(usize),
}

impl DrawRecord {
    /// Performs a draw and writes its record.
    pub fn run(
        sale_id: &str,
        purpose: DrawPurpose,
        seed: &Seed,
        entrants: Vec<String>,
        winners_count: usize,
    ) -> DrawRecord {
        let order = draw_order(seed, purpose, &entrants);
        let winners: Vec<String> = order.into_iter().take(winners_count).collect();
        DrawRecord {
            sale_id: sale_id.to_owned(),
            purpose,
            seed_commitment: seed.commitment(),
            seed: seed.to_hex(),
            winners_count: winners.len(),
            entrants,
            winners,
        }
    }

    /// Recomputes the draw from the published data; `Ok` returns the recomputed winners.
    pub fn verify(&self) -> Result<Vec<String>, DrawMismatch> {
        let seed = Seed::from_hex(&self.seed).ok_or(DrawMismatch::BadSeed)?;
        if seed.commitment() != self.seed_commitment.trim().to_ascii_lowercase() {
            return Err(DrawMismatch::CommitmentBroken);
        }
        let again: Vec<String> = draw_order(&seed, self.purpose, &self.entrants)
            .into_iter()
            .take(self.winners_count)
            .collect();
        if again != self.winners {
            let at = again
                .iter()
                .zip(&self.winners)
                .position(|(a, b)| a != b)
                .unwrap_or(again.len().min(self.winners.len()));
            return Err(DrawMismatch::WinnersDiffer(at + 1));
        }
        Ok(again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entrants(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("user-{i:05}")).collect()
    }

    #[test]
    fn pre_queue_shuffle_is_reproducible_from_its_seed_and_differs_between_seeds() {
        let people = entrants(500);
        let a = draw_order(&Seed([7; 32]), DrawPurpose::PreQueue, &people);
        let again = draw_order(&Seed([7; 32]), DrawPurpose::PreQueue, &people);
        let other = draw_order(&Seed([8; 32]), DrawPurpose::PreQueue, &people);
        assert_eq!(a, again, "same seed, same order");
        assert_ne!(a, other, "another seed, another order");
        assert_ne!(a, people, "a shuffle, not the arrival order");
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, people, "a permutation of the entrants");
    }

    #[test]
    fn arrival_order_does_not_matter() {
        let people = entrants(200);
        let mut reversed = people.clone();
        reversed.reverse();
        let seed = Seed([3; 32]);
        assert_eq!(
            draw_order(&seed, DrawPurpose::PreQueue, &people),
            draw_order(&seed, DrawPurpose::PreQueue, &reversed)
        );
    }

    #[test]
    fn a_record_verifies_and_a_changed_seed_or_result_does_not() {
        let record = DrawRecord::run("s1", DrawPurpose::Lottery, &Seed([1; 32]), entrants(50), 5);
        assert_eq!(record.verify().unwrap(), record.winners);

        let mut changed_seed = record.clone();
        changed_seed.seed = Seed([2; 32]).to_hex();
        assert_eq!(changed_seed.verify(), Err(DrawMismatch::CommitmentBroken));
        changed_seed.seed_commitment = Seed([2; 32]).commitment();
        assert!(matches!(
            changed_seed.verify(),
            Err(DrawMismatch::WinnersDiffer(_))
        ));

        let mut forged = record.clone();
        forged.winners[0] = "user-99999".into();
        assert_eq!(forged.verify(), Err(DrawMismatch::WinnersDiffer(1)));
    }

    proptest! {
        #[test]
        fn winners_are_distinct_entrants(seed in any::<[u8; 32]>(), n in 0usize..80, k in 0usize..100) {
            let people = entrants(n);
            let r = DrawRecord::run("s", DrawPurpose::Lottery, &Seed(seed), people.clone(), k);
            prop_assert_eq!(r.winners.len(), k.min(n));
            let mut w = r.winners.clone();
            w.sort();
            w.dedup();
            prop_assert_eq!(w.len(), r.winners.len());
            prop_assert!(r.winners.iter().all(|x| people.contains(x)));
        }
    }
}
