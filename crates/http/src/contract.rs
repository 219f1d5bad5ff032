//! The parts of the OpenAPI document that every route shares, written once here rather than
//! repeated on each handler's annotation, so the document lists every answer a route can give.
//!
//! The handlers' annotations say what is particular to a route (its body, its success, the
//! refusals of its own use case). Everything the layers around every handler add is added here,
//! from the same facts the router uses: authentication (401), the admin role (403), path ids
//! (404), bodies and query strings (413, 422), the rate limits (429 with its headers) and the
//! request deadline (503 with `Retry-After`). Every error answer is `application/problem+json`
//! with the `Problem` schema, whose `code` lists every code the server sends. Create routes get
//! OpenAPI links to the routes that read or change what they created, so generated clients and
//! stateful testers can chain them.

use serde_json::{json, Map, Value};

use crate::problem::PROBLEM_CODES;

/// Paths under this prefix need the `admin` role.
const ADMIN_PREFIX: &str = "/api/v1/admin/";

/// The HTTP methods an OpenAPI path item can hold.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Completes the generated document in place (see the module's doc).
pub(crate) fn complete(doc: &mut Value) {
    describe_problem(doc);
    state_request_rules(doc);
    describe_security(doc);
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for method in METHODS {
            if let Some(op) = item.get_mut(method).and_then(Value::as_object_mut) {
                complete_operation(path, op);
            }
        }
    }
    add_links(doc);
    add_response_headers(doc);
}

/// Operations answered from the read cache: `ETag` + `Cache-Control`, `If-None-Match` → 304.
const CONDITIONAL_READS: &[&str] = &[
    "list_sales",
    "get_sale",
    "list_products",
    "get_product",
    "list_drops",
    "get_drop",
];

/// Headers of answers that the handlers' annotations leave out: the request id on every
/// answer, the validators of conditional reads, and the replay marker of an idempotent retry.
fn add_response_headers(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut() {
        for method in METHODS {
            let Some(op) = item.get_mut(method).and_then(Value::as_object_mut) else {
                continue;
            };
            let id = op
                .get("operationId")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if CONDITIONAL_READS.contains(&id.as_str()) {
                let params = op.entry("parameters").or_insert_with(|| json!([]));
                if let Some(params) = params.as_array_mut() {
                    params.push(json!({
                        "name": "If-None-Match",
                        "in": "header",
                        "required": false,
                        "description": "The `ETag` of an earlier answer: 304 with no body if it is still current.",
                        "schema": { "type": "string" }
                    }));
                }
            }
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            for (status, response) in responses.iter_mut() {
                let Some(response) = response.as_object_mut() else {
                    continue;
                };
                let headers = response.entry("headers").or_insert_with(|| json!({}));
                headers["X-Request-Id"] = header(
                    "This request's id, as logged by the server (or as sent by the client).",
                    json!({ "type": "string" }),
                );
                if CONDITIONAL_READS.contains(&id.as_str()) && (status == "200" || status == "304")
                {
                    headers["ETag"] = header(
                        "A weak validator of this answer.",
                        json!({ "type": "string" }),
                    );
                    headers["Cache-Control"] = header(
                        "How long the answer may be reused (the server's read-cache interval).",
                        json!({ "type": "string" }),
                    );
                }
                if id == "create_order" && status.starts_with('2') {
                    headers["Idempotent-Replayed"] = header(
                        "`true` when this is the stored answer to an earlier request with the same `Idempotency-Key`.",
                        json!({ "type": "string", "enum": ["true"] }),
                    );
                }
            }
        }
    }
}

/// `code` names every code the server sends today. Not as a closed `enum`: the contract may
/// grow a code, and a client generated from a closed list would fail to read the problem.
fn describe_problem(doc: &mut Value) {
    if let Some(code) = doc.pointer_mut("/components/schemas/Problem/properties/code") {
        code["description"] = json!(format!(
            "Stable machine-readable word. Today one of: {}. New codes may be added; treat an \
             unknown one by its status.",
            PROBLEM_CODES.join(", ")
        ));
        code["examples"] = json!(PROBLEM_CODES);
    }
}

fn describe_security(doc: &mut Value) {
    if let Some(bearer) = doc.pointer_mut("/components/securitySchemes/bearer") {
        bearer["bearerFormat"] = json!("opaque session token");
        bearer["description"] = json!(
            "The `token` from `POST /api/v1/auth/login`. Routes under `/api/v1/admin/` also need \
             the `admin` role (listed as the requirement's role); a buyer gets 403 `forbidden` \
             before the body is read."
        );
    }
}

/// What Rust calls whitespace (`char::is_whitespace`, which `str::trim` strips), as the
/// inside of a regular-expression class: the document's patterns must mean what the server's
/// checks do, and `\\s` differs between regex dialects.
const WHITESPACE: &str = "\t\n\u{b}\u{c}\r \u{85}\u{a0}\u{1680}\u{2000}-\u{200a}\u{2028}\u{2029}\u{202f}\u{205f}\u{3000}";

/// Crockford base32 as the id parser reads it (either case).
const ULID: &str = "[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}";

/// Text the server trims and then needs non-empty, at most `max` characters as sent.
fn nonblank(max: u64) -> Value {
    json!({ "type": "string", "maxLength": max, "pattern": format!("[^{WHITESPACE}]") })
}

/// Text the server trims and then needs non-empty, at most `max` characters as sent, with no
/// control characters anywhere (it is shown as a line of text).
fn plain_nonblank(max: u64) -> Value {
    // As regex escapes: the document must not carry control characters itself.
    let cc = "\\u0000-\\u001f\\u007f-\\u009f";
    json!({
        "type": "string",
        "maxLength": max,
        "pattern": format!("^[^{cc}]*[^{cc}{WHITESPACE}][^{cc}]*$"),
    })
}

/// Text of at most `max` characters, blank allowed.
fn text(max: u64) -> Value {
    json!({ "type": "string", "maxLength": max })
}

/// An id, or blank (which the server reads as absent).
fn ulid_or_blank() -> Value {
    json!({ "type": "string", "pattern": format!("^[{WHITESPACE}]*({ULID})?[{WHITESPACE}]*$") })
}

fn integer(min: i64, max: i64) -> Value {
    json!({ "type": "integer", "format": "int64", "minimum": min, "maximum": max })
}

/// A comma-separated list of `words`, blank meaning any.
fn word_list(words: &[&str]) -> Value {
    let w = format!("({})", words.join("|"));
    let ws = format!("[{WHITESPACE}]*");
    json!({ "type": "string", "pattern": format!("^{ws}({w}{ws}(,{ws}{w}{ws})*)?$") })
}

/// A decimal amount: digits, at most two places that count (trailing zeros aside), below the
/// largest amount the server keeps.
fn money() -> Value {
    let ws = format!("[{WHITESPACE}]*");
    json!({ "type": "string", "pattern": format!("^{ws}[0-9]{{1,10}}(\\.[0-9]{{0,2}}0*)?{ws}$"),
            "description": "Decimal string in the currency, e.g. \"19.99\"." })
}

/// An image URL as `app::catalog` accepts it: http(s), characters RFC 3986 shows unencoded
/// (no IPv6 brackets).
fn image_url_pattern() -> String {
    format!("^[{WHITESPACE}]*https?://[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]*[{WHITESPACE}]*$")
}

/// At most 20 image URLs (`app::catalog`'s limit).
fn image_urls() -> Value {
    json!({ "type": "array", "maxItems": 20,
            "items": { "type": "string", "maxLength": 2000, "pattern": image_url_pattern() } })
}

fn currency() -> Value {
    json!({ "type": "string", "pattern": "^[A-Za-z]{3}$", "description": "ISO 4217 code, e.g. \"EUR\"." })
}

fn date_time() -> Value {
    json!({ "type": "string", "format": "date-time", "description": "RFC 3339, e.g. \"2026-11-22T18:00:00Z\"." })
}

fn nullable(mut schema: Value) -> Value {
    if let Some(t) = schema
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_owned)
    {
        schema["type"] = json!([t, "null"]);
    }
    // An enum lists every value allowed: `null` too, or the type's null is forbidden anyway.
    if let Some(values) = schema.get_mut("enum").and_then(Value::as_array_mut) {
        values.push(Value::Null);
    }
    schema
}

/// The rules the server checks on each request field, stated in the document so that what the
/// schema allows the server accepts and what it forbids the server refuses. Each line mirrors a
/// check in the use cases (`app::{auth, sales, catalog, cart, checkout, accounts}`).
fn body_rules() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "RegisterBody",
            "email",
            json!({ "type": "string", "maxLength": 254,
            "pattern": format!("^[{WHITESPACE}]*[^@{WHITESPACE}]+@[^{WHITESPACE}]*\\.[^{WHITESPACE}]*[{WHITESPACE}]*$") }),
        ),
        (
            "RegisterBody",
            "password",
            json!({ "type": "string", "minLength": 8, "maxLength": 128 }),
        ),
        ("RegisterBody", "name", nonblank(100)),
        ("ReserveBody", "quantity", integer(1, 1000)),
        ("ResizeBody", "quantity", integer(1, 1000)),
        ("PaymentBody", "method", nonblank(32)),
        ("PaymentBody", "token", nonblank(256)),
        (
            "OrderBody",
            "hold_ids",
            json!({ "type": "array", "items": { "type": "string" },
            "minItems": 1, "maxItems": 50, "uniqueItems": true }),
        ),
        ("CreateSaleBody", "name", text(200)),
        ("CreateSaleBody", "description", text(5000)),
        ("CreateSaleBody", "total_stock", integer(0, 10_000_000)),
        ("CreateSaleBody", "per_user_limit", integer(1, 1000)),
        (
            "CreateSaleBody",
            "discount_percent",
            nullable(integer(0, 100)),
        ),
        (
            "CreateSaleBody",
            "hold_seconds",
            nullable(integer(1, 86_400)),
        ),
        ("CreateSaleBody", "category", nullable(text(80))),
        ("PatchSaleBody", "name", nullable(nonblank(200))),
        ("PatchSaleBody", "description", nullable(text(5000))),
        ("PatchSaleBody", "original_price", nullable(money())),
        ("PatchSaleBody", "sale_price", nullable(money())),
        ("PatchSaleBody", "currency", nullable(currency())),
        (
            "PatchSaleBody",
            "total_stock",
            nullable(integer(0, 10_000_000)),
        ),
        ("PatchSaleBody", "starts_at", nullable(date_time())),
        ("PatchSaleBody", "ends_at", nullable(date_time())),
        (
            "PatchSaleBody",
            "per_user_limit",
            nullable(integer(1, 1000)),
        ),
        (
            "PatchSaleBody",
            "hold_seconds",
            nullable(integer(1, 86_400)),
        ),
        ("CreateProductBody", "name", nonblank(200)),
        ("CreateProductBody", "description", text(5000)),
        ("CreateProductBody", "category", text(80)),
        ("CreateProductBody", "image_urls", image_urls()),
        ("CreateProductBody", "regular_price", money()),
        ("CreateProductBody", "currency", currency()),
        (
            "CreateProductBody",
            "status",
            nullable(
                json!({ "type": "string", "enum": ["active", "out_of_stock", "discontinued"] }),
            ),
        ),
        ("PatchProductBody", "name", nullable(nonblank(200))),
        ("PatchProductBody", "description", nullable(text(5000))),
        ("PatchProductBody", "category", nullable(text(80))),
        ("PatchProductBody", "image_urls", nullable(image_urls())),
        ("PatchProductBody", "regular_price", nullable(money())),
        ("PatchProductBody", "currency", nullable(currency())),
        (
            "PatchProductBody",
            "status",
            nullable(
                json!({ "type": "string", "enum": ["active", "out_of_stock", "discontinued"] }),
            ),
        ),
        ("CreateDropBody", "name", nonblank(200)),
        ("CreateDropBody", "description", text(5000)),
        ("CreateDropBody", "category", text(80)),
        ("CreateDropBody", "starts_at", date_time()),
        ("CreateDropBody", "ends_at", date_time()),
        (
            "CreateDropBody",
            "per_user_limit",
            nullable(integer(1, 1000)),
        ),
        ("PatchDropBody", "name", nullable(nonblank(200))),
        ("PatchDropBody", "description", nullable(text(5000))),
        ("PatchDropBody", "category", nullable(text(80))),
        (
            "PatchDropBody",
            "per_user_limit",
            nullable(integer(1, 1000)),
        ),
        (
            "StatusBody",
            "status",
            json!({ "type": "string", "enum": ["active", "disabled", "banned"] }),
        ),
        ("StatusBody", "reason", text(500)),
        ("RoomRulesDto", "pow_bits", integer(0, 24)),
        (
            "RoomRulesDto",
            "new_per_minute",
            integer(0, i64::from(u32::MAX)),
        ),
        (
            "RoomRulesDto",
            "max_active",
            integer(0, i64::from(u32::MAX)),
        ),
        ("RoomControlBody", "reason", nonblank(500)),
        ("BroadcastBody", "message", plain_nonblank(280)),
        ("BanHoarderBody", "reason", nonblank(500)),
        (
            "BanHoarderBody",
            "device_id",
            nullable(json!({ "type": "string", "minLength": 1, "maxLength": 128 })),
        ),
        ("AdmissionCeilingBody", "reason", nonblank(500)),
        (
            "AdmissionCeilingBody",
            "per_minute",
            integer(0, i64::from(u32::MAX)),
        ),
        (
            "RoomRulesDto",
            "max_accounts_per_device",
            integer(0, i64::from(u32::MAX)),
        ),
        (
            "RoomRulesDto",
            "device_limit",
            integer(0, i64::from(u32::MAX)),
        ),
        (
            "JoinBody",
            "device_id",
            json!({ "type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$" }),
        ),
    ]
}

/// The same for query strings, by operation and parameter.
fn query_rules() -> Vec<(&'static str, &'static str, Value)> {
    let sale_statuses = word_list(&["live", "scheduled", "ended", "paused"]);
    let mut rules = Vec::new();
    for (op, statuses) in [
        ("list_sales", sale_statuses),
        (
            "list_products",
            word_list(&["active", "out_of_stock", "discontinued"]),
        ),
        ("list_drops", word_list(&["scheduled", "live", "ended"])),
    ] {
        rules.push((op, "status", statuses));
        rules.push((op, "category", text(80)));
        rules.push((op, "q", text(200)));
        rules.push((op, "after", ulid_or_blank()));
        rules.push((op, "limit", integer(1, 200)));
    }
    rules.push(("list_sales", "drop_id", ulid_or_blank()));
    rules.push(("list_users", "q", text(200)));
    rules.push((
        "list_users",
        "after",
        json!({ "type": "string", "pattern": format!("^{ULID}$") }),
    ));
    rules.push(("list_users", "limit", integer(1, 200)));
    rules.push(("list_notifications", "limit", integer(1, 100)));
    rules.push(("list_audit_entries", "limit", integer(1, 1000)));
    rules.push(("list_hoarders", "limit", integer(1, 100)));
    rules.push((
        "list_hoarders",
        "min_lapsed",
        integer(1, i64::from(u32::MAX)),
    ));
    rules
}

fn state_request_rules(doc: &mut Value) {
    for (schema, property, rule) in body_rules() {
        let pointer = format!("/components/schemas/{schema}/properties/{property}");
        if let Some(slot) = doc.pointer_mut(&pointer) {
            let description = slot.get("description").cloned();
            *slot = rule;
            if let Some(d) = description {
                slot["description"] = d;
            }
        }
    }
    let rules = query_rules();
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut() {
        for method in METHODS {
            let Some(op) = item.get_mut(method) else {
                continue;
            };
            let id = op["operationId"].as_str().unwrap_or_default().to_owned();
            let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
                continue;
            };
            for p in params.iter_mut().filter(|p| p["in"] == "query") {
                let name = p["name"].as_str().unwrap_or_default().to_owned();
                if let Some((_, _, rule)) = rules.iter().find(|(o, n, _)| *o == id && *n == name) {
                    p["schema"] = rule.clone();
                }
            }
        }
    }
}

fn complete_operation(path: &str, op: &mut Map<String, Value>) {
    let secured = op
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty());
    let admin = path.starts_with(ADMIN_PREFIX);
    if admin {
        // OpenAPI 3.1: for schemes other than OAuth2 the list names the roles required.
        op.insert("security".into(), json!([{ "bearer": ["admin"] }]));
    }
    let params = op
        .get("parameters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has_query = params.iter().any(|p| p["in"] == "query");
    let has_path_ids = path.contains('{');
    let has_body = op.contains_key("requestBody");
    if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
        for p in params.iter_mut().filter(|p| p["in"] == "header") {
            header_param_is_a_plain_string(p);
        }
    }

    let responses = op
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let Some(responses) = responses else {
        return;
    };
    if secured {
        add_response(
            responses,
            401,
            "`unauthenticated`: no bearer token, or one that has expired or was revoked.",
            json!({ "WWW-Authenticate": header("Always `Bearer`.", json!({ "type": "string" })) }),
        );
    }
    if admin {
        add_response(
            responses,
            403,
            "`forbidden`: the caller is not an admin.",
            json!({}),
        );
    }
    // Waiting-room routes all find the sale's room first.
    if path.contains("/queue") || path.ends_with("/draws") {
        add_response(
            responses,
            409,
            "`conflict`: the sale has no waiting room.",
            json!({}),
        );
    }
    if has_path_ids || params.iter().any(|p| p["name"] == "drop_id") {
        add_response(
            responses,
            404,
            "`not_found`: no such resource, or one that belongs to another buyer.",
            json!({}),
        );
    }
    if has_body {
        add_response(
            responses,
            413,
            "`payload_too_large`: the body is larger than 64 KiB.",
            json!({}),
        );
    }
    if has_body {
        add_response(
            responses,
            408,
            "`request_timeout`: the body stopped arriving before it was complete.",
            json!({}),
        );
    }
    if has_body || has_query {
        add_response(
            responses,
            422,
            "`invalid_input`: the body or query string does not say what the schema asks.",
            json!({}),
        );
    }
    add_response(
        responses,
        429,
        "`rate_limited`: past a quota (per client IP, per user, per device).",
        json!({
            "Retry-After": header("Seconds to wait.", json!({ "type": "integer", "minimum": 0 })),
            "RateLimit-Policy": header("The quota that refused, e.g. `20;w=1;burst=40;comment=\"per user\"`.", json!({ "type": "string" })),
            "RateLimit": header("What is left of it, e.g. `limit=40, remaining=0, reset=1`.", json!({ "type": "string" })),
        }),
    );
    add_response(
        responses,
        503,
        "`unavailable`: a dependency did not answer within the request deadline; retry.",
        json!({ "Retry-After": header("Seconds to wait.", json!({ "type": "integer", "minimum": 0 })) }),
    );
    for (status, response) in responses.iter_mut() {
        if status.as_str() >= "400" {
            as_problem(response);
        }
    }
}

/// A header parameter is a string when sent; absence is said by `required: false`, not `null`.
fn header_param_is_a_plain_string(param: &mut Value) {
    if let Some(schema) = param.get_mut("schema") {
        if let Some(types) = schema.get("type").and_then(Value::as_array) {
            let non_null: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
            if non_null.len() == 1 {
                schema["type"] = non_null[0].clone();
            }
        }
    }
}

fn header(description: &str, schema: Value) -> Value {
    json!({ "description": description, "schema": schema })
}

/// Adds an error answer the route did not document itself, or its headers to one it did.
fn add_response(
    responses: &mut Map<String, Value>,
    status: u16,
    description: &str,
    headers: Value,
) {
    let entry = responses
        .entry(status.to_string())
        .or_insert_with(|| json!({ "description": description }));
    if entry["description"].as_str().is_none_or(str::is_empty) {
        entry["description"] = json!(description);
    }
    if let Some(add) = headers.as_object().filter(|h| !h.is_empty()) {
        let existing = entry
            .as_object_mut()
            .map(|e| e.entry("headers").or_insert_with(|| json!({})));
        if let Some(Value::Object(existing)) = existing {
            for (name, h) in add {
                existing.entry(name.clone()).or_insert_with(|| h.clone());
            }
        }
    }
}

/// Error answers are `application/problem+json` (RFC 9457) with the `Problem` schema.
fn as_problem(response: &mut Value) {
    response["content"] = json!({
        "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } }
    });
}

/// Which created thing each create route's answer names, and who reads or changes it.
const LINKS: &[(&str, &str, &str, &[&str])] = &[
    (
        "create_sale",
        "201",
        "sale_id",
        &[
            "get_sale",
            "update_sale",
            "pause_sale",
            "resume_sale",
            "stop_sale",
            "get_sale_metrics",
        ],
    ),
    (
        "create_product",
        "201",
        "product_id",
        &["get_product", "update_product", "retire_product"],
    ),
    (
        "create_drop",
        "201",
        "drop_id",
        &["get_drop", "update_drop"],
    ),
    (
        "reserve",
        "201",
        "hold_id",
        &["resize_hold", "release_hold"],
    ),
    (
        "create_order",
        "201",
        "order_id",
        &["get_order", "cancel_order"],
    ),
];

/// OpenAPI links from each create route to the routes that take the id it returns.
fn add_links(doc: &mut Value) {
    let mut where_is: Map<String, Value> = Map::new();
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (path, item) in paths {
            for method in METHODS {
                if let Some(id) = item
                    .get(method)
                    .and_then(|op| op.get("operationId"))
                    .and_then(Value::as_str)
                {
                    where_is.insert(id.to_owned(), json!([path, method]));
                }
            }
        }
    }
    for (creator, status, field, readers) in LINKS {
        let Some(at) = where_is.get(*creator).cloned() else {
            continue;
        };
        let (Some(path), Some(method)) = (at[0].as_str(), at[1].as_str()) else {
            continue;
        };
        let mut links = Map::new();
        for reader in readers.iter().filter(|r| where_is.contains_key(**r)) {
            links.insert(
                (*reader).to_owned(),
                json!({
                    "operationId": reader,
                    "parameters": { *field: format!("$response.body#/{field}") },
                }),
            );
        }
        let pointer = format!(
            "/paths/{}/{method}/responses/{status}",
            path.replace('~', "~0").replace('/', "~1")
        );
        if let Some(response) = doc.pointer_mut(&pointer) {
            response["links"] = Value::Object(links);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn doc() -> Value {
        crate::openapi()
    }

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                out.push((path.clone(), method.clone(), op.clone()));
            }
        }
        out
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = doc();
        let mut seen = std::collections::BTreeSet::new();
        for (path, method, op) in operations(&doc) {
            let id = op["operationId"].as_str().unwrap().to_owned();
            assert!(seen.insert(id.clone()), "{method} {path}: {id} used twice");
        }
    }

    #[test]
    fn every_error_answer_is_problem_json_and_every_route_documents_the_shared_ones() {
        let doc = doc();
        for (path, method, op) in operations(&doc) {
            let responses = op["responses"].as_object().unwrap();
            for (status, r) in responses {
                if status.as_str() >= "400" {
                    assert!(
                        r["content"]["application/problem+json"].is_object(),
                        "{method} {path} {status}: {r}"
                    );
                    assert!(r["content"].get("application/json").is_none());
                }
            }
            for must in ["429", "503"] {
                assert!(responses.contains_key(must), "{method} {path} lacks {must}");
            }
            assert!(responses["429"]["headers"]["Retry-After"].is_object());
            if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
                assert!(responses.contains_key("401"), "{method} {path} lacks 401");
            }
            if path.starts_with(ADMIN_PREFIX) {
                assert!(responses.contains_key("403"), "{method} {path} lacks 403");
                assert_eq!(op["security"], json!([{ "bearer": ["admin"] }]));
            }
        }
    }

    #[test]
    fn create_routes_link_to_what_reads_their_result() {
        let doc = doc();
        let links = &doc["paths"]["/api/v1/admin/sales"]["post"]["responses"]["201"]["links"];
        assert_eq!(links["get_sale"]["operationId"], "get_sale");
        assert_eq!(
            links["get_sale"]["parameters"]["sale_id"],
            "$response.body#/sale_id"
        );
        let links = &doc["paths"]["/api/v1/orders"]["post"]["responses"]["201"]["links"];
        assert!(links["get_order"].is_object(), "{links}");
    }

    #[test]
    fn problem_codes_are_all_named_but_left_open() {
        let doc = doc();
        let code = &doc["components"]["schemas"]["Problem"]["properties"]["code"];
        assert!(
            code.get("enum").is_none(),
            "a closed list breaks older clients"
        );
        let codes = code["examples"].as_array().unwrap();
        for c in ["sold_out", "not_admitted", "internal", "rate_limited"] {
            assert!(codes.iter().any(|x| x == c), "{c}");
        }
    }
}
