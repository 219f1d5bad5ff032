//! Server-rendered pages: the storefront, a sale, its waiting room, cart and checkout, orders,
//! sign-up and log-in, and the admin dashboard. Small HTML from the same binary (no front-end
//! server, no build step), one stylesheet and one script, both embedded and served under
//! content-hashed names so a CDN or browser keeps them for a year.
//!
//! The pages hold no secrets and know no user: the bearer token lives in the browser's
//! `localStorage` and the script calls the same JSON API as any other client, so every rule
//! (authentication, admin role, limits, admission) is enforced where it always is, by the API.
//! What a page renders on the server is public (sales, prices, stock), and every piece of text
//! that came from a user or an admin goes through [`escape`].
//!
//! Live figures arrive over one Server-Sent Events stream per page (a sale's `events`, the
//! buyer's place in the waiting room, the admin's `live` figures); countdowns run against the
//! `server_time` the page was rendered with, never the visitor's clock alone.

mod assets;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use stampede_core::{Sale, SaleStatus, Timestamp};

use crate::dto::rfc3339;
use crate::state::AppState;

pub use assets::asset;

/// Sales the storefront lists at most (live first, then the soonest to start).
const MAX_STOREFRONT_SALES: usize = 60;

/// HTML-escapes text for element content and double-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The scripts and styles a page may use: only this server's own files, no inline script, so
/// an injected tag in user text could not run even if it escaped [`escape`].
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// A whole page: the layout around `main`. `page` names the script's entry point.
fn page(s: &AppState, status: StatusCode, title: &str, page: &str, main: &str) -> Response {
    page_with_head(s, status, title, page, "", main)
}

/// [`page`] with `head` (trusted markup of our own) added to the document's head.
fn page_with_head(
    s: &AppState,
    status: StatusCode,
    title: &str,
    page: &str,
    head: &str,
    main: &str,
) -> Response {
    let now = rfc3339(s.app.clock.now());
    let html = format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title} · Stampede</title>
<link rel="stylesheet" href="/assets/{css}">
<script src="/assets/{js}" defer></script>
{head}</head>
<body data-page="{page}" data-server-time="{now}">
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<nav aria-label="Main">
<a class="brand" href="/">Stampede</a>
<a href="/cart">Cart</a>
<a href="/orders">Orders</a>
<a href="/admin">Admin</a>
<span id="account" class="account"><a href="/login">Log in</a> <a href="/signup">Sign up</a></span>
</nav>
</header>
<main id="main" tabindex="-1">
{main}
</main>
<noscript><p class="notice">Live stock, buying and the dashboard need JavaScript.</p></noscript>
</body>
</html>
"##,
        title = escape(title),
        css = assets::css_name(),
        js = assets::js_name(),
        page = escape(page),
    );
    let mut res = (status, html).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page carries `server_time` for the countdowns: always revalidate it. The assets it
    // names are the cacheable part.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    res
}

/// Whole percent off, rounded down (0 when the sale price is not lower).
fn discount_pct(sale: &Sale) -> i64 {
    let was = sale.original_price.0;
    let now = sale.sale_price.0;
    if was <= 0 || now >= was {
        0
    } else {
        (was - now) * 100 / was
    }
}

/// The data a sale's live parts (countdown, stock, status) need, as attributes.
fn sale_attrs(sale: &Sale, now: Timestamp) -> String {
    format!(
        r#"data-sale-id="{id}" data-status="{status}" data-starts-at="{starts}" data-ends-at="{ends}" data-total="{total}" data-available="{available}" data-queue="{queue}""#,
        id = escape(sale.id.as_str()),
        status = sale.status_at(now).as_str(),
        starts = rfc3339(sale.starts_at),
        ends = rfc3339(sale.ends_at),
        total = sale.stock.total,
        available = sale.stock.available,
        queue = sale.queue_required,
    )
}

fn price_html(sale: &Sale) -> String {
    let pct = discount_pct(sale);
    let off = if pct > 0 {
        format!(r#" <span class="off">−{pct}%</span>"#)
    } else {
        String::new()
    };
    format!(
        r#"<p class="prices"><span class="price">{now} {cur}</span> <s class="was" aria-label="was {was} {cur}">{was} {cur}</s>{off}</p>"#,
        now = sale.sale_price.format(&sale.currency),
        was = sale.original_price.format(&sale.currency),
        cur = escape(sale.currency.as_str()),
    )
}

fn stock_html(sale: &Sale) -> String {
    format!(
        r#"<p class="stock"><progress class="bar" max="{total}" value="{available}" aria-label="stock left"></progress> <span class="left" aria-live="polite"><b class="available">{available}</b> of {total} left</span></p>"#,
        total = sale.stock.total.max(1),
        available = sale.stock.available,
    )
}

fn status_html(status: SaleStatus) -> String {
    let word = status.as_str();
    format!(r#"<span class="badge badge-{word}" data-role="status">{word}</span>"#)
}

/// One sale in a list (storefront, drop page), with its live stock and countdown.
fn sale_card(sale: &Sale, now: Timestamp) -> String {
    format!(
        r#"<li class="card sale" {attrs}><h2><a href="/sales/{id}">{name}</a> {status}</h2>{price}{stock}<p class="when"><span class="countdown" aria-live="off"></span></p></li>"#,
        attrs = sale_attrs(sale, now),
        id = escape(sale.id.as_str()),
        name = escape(&sale.name),
        status = status_html(sale.status_at(now)),
        price = price_html(sale),
        stock = stock_html(sale),
    )
}

/// The storefront: live and upcoming sales, live ones first.
pub async fn storefront(State(s): State<AppState>) -> Response {
    let now = s.app.clock.now();
    let mut sales = match s.app.list_sales(None).await {
        Ok(sales) => sales,
        Err(_) => return unavailable(&s),
    };
    sales.retain(|sale| sale.status_at(now) != SaleStatus::Ended);
    sales.sort_by_key(|sale| (sale.status_at(now) == SaleStatus::Scheduled, sale.starts_at));
    // A page a phone can load in a stampede: the next sales, not every sale ever scheduled.
    sales.truncate(MAX_STOREFRONT_SALES);
    let mut main = String::from(
        r#"<h1>Sales</h1><p class="lede">Live and upcoming flash sales. Stock and countdowns update by themselves.</p><ul class="sales" role="list">"#,
    );
    for sale in &sales {
        main.push_str(&sale_card(sale, now));
    }
    main.push_str("</ul>");
    if sales.is_empty() {
        main.push_str(r#"<p class="notice">No live or upcoming sales right now.</p>"#);
    }
    page(&s, StatusCode::OK, "Sales", "storefront", &main)
}

/// A drop: its SKUs (each a sale with its own stock and Buy button) under one schedule, with
/// the limit that spans them.
pub async fn drop_page(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let now = s.app.clock.now();
    let found = match s.app.drop_with_sales(&id).await {
        Ok(found) => found,
        Err(stampede_app::AppError::NotFound) => return not_found(&s),
        Err(_) => return unavailable(&s),
    };
    let drop = &found.drop;
    let limit = match drop.per_user_limit {
        Some(1) => "One per buyer across every item of this drop.".to_owned(),
        Some(n) => format!("At most {n} per buyer across every item of this drop."),
        None => "Each item has its own limit per buyer.".to_owned(),
    };
    let mut main = format!(
        r#"<article class="drop"><h1>{name} {status}</h1><p class="description">{description}</p><p class="limit" data-role="drop-limit">{limit}</p><ul class="sales" role="list">"#,
        name = escape(&drop.name),
        status = status_html(drop.status_at(now)),
        description = escape(&drop.description),
        limit = escape(&limit),
    );
    for sale in &found.sales {
        main.push_str(&sale_card(sale, now));
    }
    main.push_str("</ul></article>");
    page(&s, StatusCode::OK, &drop.name, "drop", &main)
}

/// A sale: description, live stock and status, the countdown, and Buy.
pub async fn sale(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let now = s.app.clock.now();
    let sale = match s.app.sale(&id).await {
        Ok(sale) => sale,
        Err(stampede_app::AppError::NotFound) => return not_found(&s),
        Err(_) => return unavailable(&s),
    };
    let status = sale.status_at(now);
    let limit = sale.per_user_limit.clamp(1, 20);
    let options: String = (1..=limit)
        .map(|n| format!(r#"<option value="{n}">{n}</option>"#))
        .collect();
    let queue_note = if sale.queue_required {
        format!(
            r#"<p class="notice">This sale sells through a <a href="/sales/{id}/queue">waiting room</a>: join the line, and you can buy once it is your turn.</p>"#,
            id = escape(sale.id.as_str())
        )
    } else {
        String::new()
    };
    let main = format!(
        r#"<article class="card sale sale-page" {attrs}>
<h1>{name} {status}</h1>
<p class="description">{description}</p>
{price}
{stock}
<p class="when"><span class="countdown" aria-live="off"></span></p>
{queue_note}
<p class="limit">At most {per_user} per buyer. A reservation holds your units for {hold}.</p>
<form id="buy" class="buy" novalidate>
<label for="quantity">Quantity</label>
<select id="quantity" name="quantity">{options}</select>
<button type="submit" id="buy-button">Buy</button>
</form>
<div id="sale-notice" class="outcome" role="status" aria-live="polite"></div>
<div id="outcome" class="outcome" role="status" aria-live="polite"></div>
</article>"#,
        attrs = sale_attrs(&sale, now),
        name = escape(&sale.name),
        status = status_html(status),
        description = escape(&sale.description),
        price = price_html(&sale),
        stock = stock_html(&sale),
        per_user = sale.per_user_limit,
        hold = human_secs(u64::from(sale.hold_seconds)),
    );
    page(&s, StatusCode::OK, &sale.name, "sale", &main)
}

/// A sale's waiting room: join, live place and ETA, and the hand-over once admitted.
pub async fn queue(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    if is_crawler(&headers) {
        return crawler_answer();
    }
    let now = s.app.clock.now();
    let sale = match s.app.sale(&id).await {
        Ok(sale) => sale,
        Err(stampede_app::AppError::NotFound) => return not_found(&s),
        Err(_) => return unavailable(&s),
    };
    let main = format!(
        r#"<article class="card room" {attrs}>
<h1>Waiting room: {name}</h1>
<p><a href="/sales/{id}">Back to the sale</a> · {status}</p>
<p class="lede">The line is first come, first served from the start; who arrives before the start is placed by a published draw. When it is your turn you get a couple of minutes to buy.</p>
<p class="when"><span class="countdown" aria-live="off"></span></p>
<form id="join" novalidate><button type="submit" id="join-button">Join the line</button></form>
<dl class="figures" id="place" hidden>
<div><dt>Your place</dt><dd id="position" aria-live="polite">–</dd></div>
<div><dt>Estimated wait</dt><dd id="eta">–</dd></div>
<div><dt>Status</dt><dd id="queue-status">–</dd></div>
</dl>
<div id="room-outcome" class="outcome" role="status" aria-live="polite"></div>
<p class="hint" id="place-link" hidden>To follow your place without this page's script (or on another screen), keep <a id="place-url" href=".">this link</a>: it refreshes by itself and takes you to the sale when it is your turn. It shows your place; it cannot buy.</p>
<noscript><p>This page needs JavaScript to join the line. If you joined elsewhere (the shop's app, its e-mail), open the place link you were given: it works without JavaScript.</p></noscript>
</article>"#,
        attrs = sale_attrs(&sale, now),
        name = escape(&sale.name),
        id = escape(sale.id.as_str()),
        status = status_html(sale.status_at(now)),
    );
    page(&s, StatusCode::OK, "Waiting room", "queue", &main)
}

/// Words in the user agents of crawlers, link previewers and monitors: a waiting room is no
/// place for them (each would hold a place or cost a render a second).
const CRAWLER_WORDS: [&str; 8] = [
    "bot",
    "crawl",
    "spider",
    "slurp",
    "facebookexternalhit",
    "preview",
    "archiver",
    "mediapartners",
];

/// Whether the request comes from a crawler (by its user agent; a headless browser driven for
/// a real buyer is not one).
fn is_crawler(headers: &axum::http::HeaderMap) -> bool {
    let Some(agent) = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let agent = agent.to_ascii_lowercase();
    CRAWLER_WORDS.iter().any(|w| agent.contains(w))
}

/// What a crawler gets from the queue pages: 503 with `Retry-After`, so it comes back later
/// (and search engines keep the page as it was) instead of indexing a line or holding a place.
fn crawler_answer() -> Response {
    let mut res = (
        StatusCode::SERVICE_UNAVAILABLE,
        "The waiting room is for buyers; crawlers please come back later.\n",
    )
        .into_response();
    let h = res.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("3600"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The place link's query.
#[derive(Debug, serde::Deserialize)]
pub struct PlaceQuery {
    pub ticket: Option<String>,
}

/// Seconds until the place page looks again: often near the front, rarely far back.
fn place_refresh_secs(position: u64, eta_seconds: u64) -> u64 {
    if position <= 50 {
        3
    } else {
        (eta_seconds / 10).clamp(5, 30)
    }
}

/// The buyer's place, rendered on the server: works without JavaScript. It refreshes itself
/// (`Refresh` header and `<meta http-equiv="refresh">`) and, once the buyer is admitted,
/// sends them to the sale page (`303 See Other`). Changes are announced to screen readers by
/// an ARIA live region. The key in the link shows this place only; it cannot buy.
pub async fn queue_place(
    State(s): State<AppState>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<PlaceQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    if is_crawler(&headers) {
        return crawler_answer();
    }
    let ticket = q.ticket.unwrap_or_default();
    let (sale, view) = match s.app.queue_status_by_place_ticket(&id, &ticket).await {
        Ok(found) => found,
        Err(stampede_app::AppError::NotFound) => {
            return page(
                &s,
                StatusCode::NOT_FOUND,
                "Place not found",
                "none",
                r#"<h1>This place link does not work</h1><p>It has expired, or it is not a link we gave. Join the line again from the sale's waiting room.</p>"#,
            )
        }
        Err(_) => return unavailable(&s),
    };
    use stampede_app::waiting_room::QueueStatus as Q;
    let sale_url = format!("/sales/{}", sale.id.as_str());
    if matches!(view.status, Q::Admitted | Q::LotteryWon) {
        let mut res = StatusCode::SEE_OTHER.into_response();
        if let Ok(to) = HeaderValue::from_str(&sale_url) {
            res.headers_mut().insert(header::LOCATION, to);
        }
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return res;
    }
    let (now_text, keep_looking) = match view.status {
        Q::Waiting if view.paused => (
            format!(
                "You are number {} in line. Admission is paused by the organiser; your place is kept.",
                view.position
            ),
            true,
        ),
        Q::Waiting if view.pre_queue => (
            format!(
                "You are number {} in line for now: at the start, places before it are drawn at random.",
                view.position
            ),
            true,
        ),
        Q::Waiting => (
            format!(
                "You are number {} in line. Estimated wait: about {}.",
                view.position,
                human_secs(view.eta_seconds.max(1))
            ),
            true,
        ),
        Q::SoldOut if !view.closed => (
            "Sold out for now. You keep your place: if units come back, the next in line get them.".to_owned(),
            true,
        ),
        Q::SoldOut => ("Sold out. The waiting room is closed.".to_owned(), false),
        Q::Used => (
            "You have used your turn. See your cart or orders.".to_owned(),
            false,
        ),
        Q::Expired => (
            "Your turn lapsed unused. Join the line again from the waiting room.".to_owned(),
            false,
        ),
        Q::LotteryLost => ("You were not drawn this time.".to_owned(), false),
        Q::Admitted | Q::LotteryWon => ("It is your turn.".to_owned(), false),
    };
    let message = view
        .message
        .as_ref()
        .map(|m| {
            format!(
                r#"<p class="notice" id="organiser-message"><strong>From the organiser:</strong> {}</p>"#,
                escape(&m.text)
            )
        })
        .unwrap_or_default();
    let refresh = place_refresh_secs(view.position, view.eta_seconds);
    let head = if keep_looking {
        format!(r#"<meta http-equiv="refresh" content="{refresh}">"#)
    } else {
        String::new()
    };
    let main = format!(
        r#"<article class="card room">
<h1>Waiting room: {name}</h1>
<div id="place-status" role="status" aria-live="polite" aria-atomic="true">
<p class="lede" id="place-now">{now_text}</p>
{message}</div>
<dl class="figures">
<div><dt>Your place</dt><dd id="position">{position}</dd></div>
<div><dt>Status</dt><dd id="queue-status">{status}</dd></div>
</dl>
<p>{looking} <a href="{sale_url}">The sale</a>.</p>
</article>"#,
        name = escape(&sale.name),
        position = view.position,
        status = crate::routes::queue::status_word(view.status),
        looking = if keep_looking {
            format!("This page looks again every {refresh} seconds and takes you to the sale when it is your turn; you may also leave it and come back.")
        } else {
            String::new()
        },
    );
    let mut res = page_with_head(&s, StatusCode::OK, "Your place", "place", &head, &main);
    let h = res.headers_mut();
    if keep_looking {
        if let Ok(v) = HeaderValue::from_str(&refresh.to_string()) {
            h.insert(header::REFRESH, v);
        }
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The key is in the URL: never send it on to another site.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

/// The cart: holds with their countdowns, release, and checkout with the sandbox tokens.
pub async fn cart(State(s): State<AppState>) -> Response {
    let main = r#"<h1>Your cart</h1>
<div id="cart-items" aria-live="polite"><p>Loading…</p></div>
<form id="pay" class="card pay" novalidate hidden>
<h2>Pay</h2>
<label for="card-token">Card token</label>
<input id="card-token" name="token" value="tok_ok" autocomplete="off" spellcheck="false" aria-describedby="token-hint" required>
<p id="token-hint" class="hint">Test payments only: this shop runs the sandbox gateway. Use <code>tok_ok</code> (paid) or <code>tok_decline</code> (declined). No real card is charged.</p>
<button type="submit" id="pay-button">Pay</button>
</form>
<div id="pay-outcome" class="outcome" role="status" aria-live="polite"></div>"#;
    page(&s, StatusCode::OK, "Cart", "cart", main)
}

/// The buyer's orders, with cancel.
pub async fn orders(State(s): State<AppState>) -> Response {
    let main = r#"<h1>Your orders</h1>
<div id="order-outcome" class="outcome" role="status" aria-live="polite"></div>
<div id="orders-list"><p>Loading…</p></div>"#;
    page(&s, StatusCode::OK, "Orders", "orders", main)
}

/// Log in.
pub async fn login(State(s): State<AppState>) -> Response {
    let main = r#"<h1>Log in</h1>
<form id="login" class="card narrow" novalidate>
<label for="email">Email</label>
<input id="email" name="email" type="email" autocomplete="username" required>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Log in</button>
<div id="form-error" class="error" role="alert"></div>
</form>
<p>New here? <a href="/signup">Sign up</a>.</p>"#;
    page(&s, StatusCode::OK, "Log in", "login", main)
}

/// Sign up (then logged in at once).
pub async fn signup(State(s): State<AppState>) -> Response {
    let main = r#"<h1>Sign up</h1>
<form id="signup" class="card narrow" novalidate>
<label for="name">Name</label>
<input id="name" name="name" autocomplete="name" required>
<label for="email">Email</label>
<input id="email" name="email" type="email" autocomplete="username" required>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="new-password" minlength="8" aria-describedby="password-hint" required>
<p id="password-hint" class="hint">At least 8 characters.</p>
<button type="submit">Create account</button>
<div id="form-error" class="error" role="alert"></div>
</form>
<p>Already have an account? <a href="/login">Log in</a>.</p>"#;
    page(&s, StatusCode::OK, "Sign up", "signup", main)
}

/// The admin dashboard. The page is public HTML; everything on it comes from the admin API,
/// which refuses anyone without the admin role.
pub async fn admin(State(s): State<AppState>) -> Response {
    let main = r#"<h1>Dashboard</h1>
<div id="admin-gate" class="notice" role="status"></div>
<div id="admin" hidden>
<section class="card" aria-labelledby="watch-title">
<h2 id="watch-title">Watch a sale</h2>
<label for="sale-select">Sale</label>
<select id="sale-select"></select>
<div class="controls">
<button type="button" id="pause">Pause</button>
<button type="button" id="resume">Resume</button>
<button type="button" id="stop" class="danger">Stop</button>
</div>
<div id="control-outcome" class="outcome" role="status" aria-live="polite"></div>
<p id="invariant" class="invariant" role="status" aria-live="polite">Invariant: waiting for figures</p>
<p id="live-status" class="meta"></p>
<div class="charts">
<figure class="chart"><figcaption>Stock: available, held, sold</figcaption><svg id="chart-stock" viewBox="0 0 300 120" role="img" aria-label="stock over time"></svg><p class="legend" id="legend-stock"></p></figure>
<figure class="chart"><figcaption>Orders per second</figcaption><svg id="chart-orders" viewBox="0 0 300 120" role="img" aria-label="orders per second"></svg><p class="legend" id="legend-orders"></p></figure>
<figure class="chart"><figcaption>Waiting room: queue length and admissions per second</figcaption><svg id="chart-queue" viewBox="0 0 300 120" role="img" aria-label="queue length and admission rate"></svg><p class="legend" id="legend-queue"></p></figure>
<figure class="chart"><figcaption>Hold expiries per second</figcaption><svg id="chart-expiries" viewBox="0 0 300 120" role="img" aria-label="hold expiries per second"></svg><p class="legend" id="legend-expiries"></p></figure>
<figure class="chart"><figcaption>Reserve latency p50 / p99 (ms, last 10 s, this node)</figcaption><svg id="chart-latency" viewBox="0 0 300 120" role="img" aria-label="reserve latency"></svg><p class="legend" id="legend-latency"></p></figure>
<figure class="chart"><figcaption>Refusals by reason (since start, this node)</figcaption><svg id="chart-refusals" viewBox="0 0 300 120" role="img" aria-label="refusals by reason"></svg><p class="legend" id="legend-refusals"></p></figure>
</div>
<div id="room-panel" hidden>
<h3>Waiting room figures <span class="meta">(this node)</span></h3>
<dl class="figures" id="room-figures"></dl>
<p class="legend" id="room-per-minute"></p>
<form id="broadcast" novalidate>
<label for="broadcast-text">Message to everyone waiting</label>
<input id="broadcast-text" name="message" maxlength="280" placeholder="Checkout is back in five minutes: you keep your place." required>
<button type="submit">Send</button>
</form>
<div id="broadcast-outcome" class="outcome" role="status" aria-live="polite"></div>
</div>
</section>
<section class="card" aria-labelledby="hoarders-title">
<h2 id="hoarders-title">Suspected hoarders</h2>
<p class="hint">Accounts and devices whose holds lapsed unpaid at least 3 times (denial of inventory). A ban ends their sessions and gives their live holds' stock back at once.</p>
<button type="button" id="hoarders-refresh">Refresh</button>
<div id="hoarders-outcome" class="outcome" role="status" aria-live="polite"></div>
<div id="hoarders"></div>
</section>
<section class="card" aria-labelledby="create-title">
<h2 id="create-title">Create and schedule a sale</h2>
<form id="create-sale" class="grid" novalidate>
<label for="f-name">Name</label><input id="f-name" name="name" required>
<label for="f-description">Description</label><textarea id="f-description" name="description" rows="2"></textarea>
<label for="f-original">Original price</label><input id="f-original" name="original_price" inputmode="decimal" placeholder="100.00" required>
<label for="f-price">Sale price</label><input id="f-price" name="sale_price" inputmode="decimal" placeholder="20.00" required>
<label for="f-currency">Currency</label><input id="f-currency" name="currency" value="EUR" maxlength="3" required>
<label for="f-stock">Total stock</label><input id="f-stock" name="total_stock" type="number" min="1" value="100" required>
<label for="f-limit">Per buyer</label><input id="f-limit" name="per_user_limit" type="number" min="1" value="2" required>
<label for="f-hold">Hold (seconds)</label><input id="f-hold" name="hold_seconds" type="number" min="1" value="300">
<label for="f-starts">Starts (your time)</label><input id="f-starts" name="starts_at" type="datetime-local" step="1" required>
<label for="f-ends">Ends (your time)</label><input id="f-ends" name="ends_at" type="datetime-local" step="1" required>
<span></span><label class="check"><input id="f-queue" name="queue_required" type="checkbox"> Sell through a waiting room</label>
<span></span><button type="submit">Create sale</button>
</form>
<div id="create-outcome" class="outcome" role="alert"></div>
</section>
</div>"#;
    page(&s, StatusCode::OK, "Dashboard", "admin", main)
}

fn not_found(s: &AppState) -> Response {
    page(
        s,
        StatusCode::NOT_FOUND,
        "Not found",
        "none",
        r#"<h1>Not found</h1><p>No such sale. <a href="/">See the sales</a>.</p>"#,
    )
}

fn unavailable(s: &AppState) -> Response {
    let mut res = page(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        "Busy",
        "none",
        r#"<h1>One moment</h1><p>The shop is busy; try again in a few seconds.</p>"#,
    );
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    res
}

/// "5 minutes", "90 seconds".
fn human_secs(secs: u64) -> String {
    if secs >= 60 && secs % 60 == 0 {
        let m = secs / 60;
        format!("{m} minute{}", if m == 1 { "" } else { "s" })
    } else {
        format!("{secs} second{}", if secs == 1 { "" } else { "s" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>"x" & 'y'</script>"#),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_secs(300), "5 minutes");
        assert_eq!(human_secs(60), "1 minute");
        assert_eq!(human_secs(90), "90 seconds");
    }
}
