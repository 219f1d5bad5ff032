//! `stampede verify-draw`'s input: the JSON of `GET /api/v1/sales/{id}/draws` (or one draw),
//! read as the command reads it, then every record recomputed.
//!
//! Asserts: nothing panics on any input; a record that checks out recomputes exactly its
//! published winners; a draw we run ourselves checks out, also after a trip through its
//! published JSON, and no longer once its seed is changed.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

use stampede_core::draw::{DrawPurpose, DrawRecord, Seed};

fn published(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let items = match value.get("draws") {
        Some(list) => list.clone(),
        None => serde_json::Value::Array(vec![value]),
    };
    let Ok(records) = serde_json::from_value::<Vec<DrawRecord>>(items) else {
        return;
    };
    for r in &records {
        if let Ok(winners) = r.verify() {
            assert_eq!(winners, r.winners);
            assert!(winners.len() <= r.entrants.len());
        }
    }
}

fn ours(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let seed = Seed(<[u8; 32]>::arbitrary(&mut u)?);
    let purpose = if bool::arbitrary(&mut u)? {
        DrawPurpose::Lottery
    } else {
        DrawPurpose::PreQueue
    };
    let entrants = Vec::<String>::arbitrary(&mut u)?;
    let winners = usize::from(u8::arbitrary(&mut u)?);
    let record = DrawRecord::run("sale", purpose, &seed, entrants, winners);
    assert_eq!(record.verify().as_ref(), Ok(&record.winners));
    let text = serde_json::to_string(&record).map_err(|_| arbitrary::Error::IncorrectFormat)?;
    let back: DrawRecord =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("published draw unreadable: {e}"));
    assert_eq!(back.verify().as_ref(), Ok(&record.winners));
    let mut other = seed.0;
    other[0] ^= 1;
    let mut forged = record.clone();
    forged.seed = Seed(other).to_hex();
    assert!(forged.verify().is_err());
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    published(data);
    let _ = ours(data);
});
