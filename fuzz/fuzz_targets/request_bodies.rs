//! Every JSON request body, parsed exactly as the server parses it (`parse_body`, what the
//! `ApiJson` extractor and checkout's `parse_json` run once the body is read), then the field checks the server applies
//! after parsing, where they can be called on their own.
//!
//! Asserts: nothing panics; a refused body is a 422 problem (never a 5xx or a 413: the size
//! limit is the body limit's job); an order body's canonical form, which keys idempotency, is
//! stable under a second parse; times, prices and currencies that pass their check
//! round-trip through the text clients see.

#![no_main]

use axum::http::StatusCode;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

use stampede_app::ports::UserStatus;
use stampede_app::waiting_room::check_device_id;
use stampede_core::{pow, Currency, Money};
use stampede_http::dto::{
    parse_time, rfc3339, CreateSaleBody, LoginBody, OrderBody, PatchSaleBody, RegisterBody,
    ReserveBody, ResizeBody,
};
use stampede_http::extract::{parse_body, parse_json};
use stampede_http::routes::catalog::{
    CreateDropBody, CreateProductBody, PatchDropBody, PatchProductBody,
};
use stampede_http::routes::queue::{JoinBody, LotteryBody, RoomRulesDto};
use stampede_http::routes::users::StatusBody;

/// What `ApiJson<T>` does with a body that passed the content-type check.
fn api_json<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    match parse_body::<T>(bytes) {
        Ok(v) => Some(v),
        Err(problem) => {
            assert_eq!(
                problem.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{problem:?}"
            );
            None
        }
    }
}

/// The server's time check, and its round trip through the RFC 3339 text it answers with.
fn time(field: &str, text: &str) {
    match parse_time(field, text) {
        Ok(t) => {
            let shown = rfc3339(t);
            assert_eq!(
                parse_time(field, &shown).ok(),
                Some(t),
                "{text:?} → {shown:?}"
            );
        }
        Err(e) => assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY),
    }
}

/// A client's price in `currency`: accepted amounts are in range and shown as they parse.
fn price(text: &str, currency: &Currency) -> Option<Money> {
    let m = Money::parse(text, currency).ok()?;
    assert!((0..=1_000_000_000_000).contains(&m.0), "{text:?} → {m:?}");
    let shown = m.format(currency);
    assert_eq!(
        Money::parse(&shown, currency),
        Ok(m),
        "{text:?} → {shown:?}"
    );
    Some(m)
}

fn sale_terms(currency: &str, original: &str, sale: &str, percent: Option<i64>) {
    let Ok(currency) = Currency::parse(currency) else {
        return;
    };
    assert_eq!(currency.as_str().len(), 3);
    let original = price(original, &currency);
    price(sale, &currency);
    if let (Some(original), Some(p)) = (original, percent.and_then(|p| u32::try_from(p).ok())) {
        if let Some(after) = original.percent_off(p) {
            assert!(p <= 100 && (0..=original.0).contains(&after.0));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    api_json::<RegisterBody>(data);
    api_json::<LoginBody>(data);
    api_json::<ReserveBody>(data);
    api_json::<ResizeBody>(data);
    api_json::<LotteryBody>(data);
    api_json::<RoomRulesDto>(data);
    if let Some(b) = api_json::<StatusBody>(data) {
        let _ = UserStatus::parse(&b.status);
    }
    if let Some(b) = api_json::<JoinBody>(data) {
        if let Ok(device) = check_device_id(&b.device_id) {
            assert!((1..=64).contains(&device.len()));
        }
        if let Some(p) = b.pow {
            for bits in [0, 1, 8, pow::MAX_POW_BITS] {
                let _ = pow::solves(&p.challenge, &p.nonce, bits);
            }
        }
    }
    if let Some(b) = api_json::<CreateSaleBody>(data) {
        for t in [&b.starts_at, &b.ends_at].into_iter().flatten() {
            time("t", t);
        }
        sale_terms(
            &b.currency,
            &b.original_price,
            &b.sale_price,
            b.discount_percent,
        );
    }
    if let Some(b) = api_json::<PatchSaleBody>(data) {
        for t in [&b.starts_at, &b.ends_at].into_iter().flatten() {
            time("t", t);
        }
        if let Some(c) = &b.currency {
            sale_terms(
                c,
                b.original_price.as_deref().unwrap_or(""),
                b.sale_price.as_deref().unwrap_or(""),
                None,
            );
        }
    }
    if let Some(b) = api_json::<CreateProductBody>(data) {
        if let Ok(currency) = Currency::parse(&b.currency) {
            let _ = Money::parse(&b.regular_price, &currency);
        }
    }
    if let Some(b) = api_json::<CreateDropBody>(data) {
        time("starts_at", &b.starts_at);
        time("ends_at", &b.ends_at);
    }
    // `null` clears the limit, absent leaves it, a number sets it.
    if let Some(b) = api_json::<PatchDropBody>(data) {
        let _ = b.per_user_limit;
    }
    let _ = api_json::<PatchProductBody>(data);
    // Checkout parses the raw bytes itself (it also hashes them for idempotency).
    match parse_json::<OrderBody>(data) {
        Ok(order) => {
            let canonical = serde_json::to_value(&order)
                .map(|v| v.to_string())
                .unwrap_or_default();
            let again: OrderBody = parse_json(canonical.as_bytes())
                .unwrap_or_else(|e| panic!("canonical order body refused: {canonical} {e:?}"));
            let twice = serde_json::to_value(&again)
                .map(|v| v.to_string())
                .unwrap_or_default();
            assert_eq!(canonical, twice);
        }
        Err(e) => assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY),
    }
});
