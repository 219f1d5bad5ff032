//! The small parsers of headers, query strings and path segments: times, prices and
//! currencies, ids (path segments and `after` cursors), the `status` filter of the sale list,
//! `X-Device-Id`, `Idempotency-Key`, the account search pattern, and the query strings of
//! the listing routes.
//!
//! Asserts: nothing panics; whatever is accepted round-trips through the text the server
//! shows or stores (ids, times, prices, statuses, search patterns) and keeps its documented
//! bounds (device ids, header values).

#![no_main]

use arbitrary::Arbitrary;
use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use libfuzzer_sys::fuzz_target;

use stampede_app::ports::{contains_pattern, Role, UserStatus};
use stampede_app::waiting_room::check_device_id;
use stampede_core::{Currency, HoldId, Money, OrderId, SaleId, SaleStatus, Timestamp, UserId};
use stampede_http::dto::{parse_time, rfc3339, AuditQuery, NotificationsQuery, SalesQuery};
use stampede_http::extract::device_id;
use stampede_http::routes::users::AccountsQuery;

#[derive(Debug, Arbitrary)]
struct Input {
    text: String,
    raw: Vec<u8>,
    ms: i64,
}

macro_rules! id_round_trip {
    ($t:ty, $text:expr) => {
        if let Some(id) = <$t>::parse($text) {
            assert_eq!(id.as_str().len(), 26);
            assert_eq!(<$t>::parse(id.as_str()), Some(id.clone()));
        }
    };
}

/// Undoes `contains_pattern`'s escaping; `None` if an unescaped wildcard is left.
fn unescape_pattern(p: &str) -> Option<String> {
    let inner = p.strip_prefix('%')?.strip_suffix('%')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '%' | '_' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

fuzz_target!(|i: Input| {
    let text = i.text.as_str();

    // Times: what parses is shown as it parsed; any instant we show parses back.
    if let Ok(t) = parse_time("t", text) {
        assert_eq!(parse_time("t", &rfc3339(t)).ok(), Some(t));
    }
    let shown = rfc3339(Timestamp(i.ms));
    if !shown.is_empty() {
        assert_eq!(
            parse_time("t", &shown).ok(),
            Some(Timestamp(i.ms)),
            "{shown}"
        );
    }

    // Prices and currencies.
    if let Ok(c) = Currency::parse(text) {
        assert_eq!(c.as_str(), text.to_ascii_uppercase());
    }
    for code in ["EUR", "JPY"] {
        if let Ok(cur) = Currency::parse(code) {
            if let Ok(m) = Money::parse(text, &cur) {
                assert!(m.0 >= 0);
                assert_eq!(Money::parse(&m.format(&cur), &cur), Ok(m));
            }
        }
    }

    // Ids in paths and cursors.
    id_round_trip!(SaleId, text);
    id_round_trip!(UserId, text);
    id_round_trip!(HoldId, text);
    id_round_trip!(OrderId, text);

    // `GET /api/v1/sales?status=live,scheduled`.
    for word in text.split(',') {
        if let Some(s) = SaleStatus::parse(word.trim()) {
            assert_eq!(s.as_str(), word.trim());
        }
    }
    if let Some(s) = UserStatus::parse(text) {
        assert_eq!(s.as_str(), text);
    }
    if let Some(r) = Role::parse(text) {
        assert_eq!(r.as_str(), text);
    }

    // Headers: `X-Device-Id` (rate limits), `Idempotency-Key` (checkout).
    if let Ok(value) = HeaderValue::from_bytes(&i.raw) {
        let mut headers = HeaderMap::new();
        headers.insert("x-device-id", value.clone());
        if let Some(d) = device_id(&headers) {
            assert!((1..=128).contains(&d.len()));
            assert_eq!(d, d.trim());
        }
        if let Ok(key) = value.to_str() {
            assert!(key.is_ascii());
        }
    }
    // The waiting room's device id (bound into admission tokens).
    if let Ok(d) = check_device_id(text) {
        assert!((1..=64).contains(&d.len()) && !d.contains('|'));
    }

    // Account search: the pattern matches the query literally.
    assert_eq!(
        unescape_pattern(&contains_pattern(text)),
        Some(text.to_lowercase())
    );

    // Query strings of the listing routes, as axum's `Query` reads them.
    if let Ok(uri) = format!("/x?{text}").parse::<Uri>() {
        for result in [
            Query::<SalesQuery>::try_from_uri(&uri).map(drop),
            Query::<AuditQuery>::try_from_uri(&uri).map(drop),
            Query::<NotificationsQuery>::try_from_uri(&uri).map(drop),
            Query::<AccountsQuery>::try_from_uri(&uri).map(drop),
        ] {
            if let Err(rejection) = result {
                assert_eq!(rejection.status(), StatusCode::BAD_REQUEST);
            }
        }
    }
});
