// End-to-end tests of Stampede's pages in a real headless Chromium, against a running server.
//
// Run by crates/stampede/tests/browser.rs, which starts the server and passes:
//   STAMPEDE_URL        the server's base URL (http://127.0.0.1:<port>)
//   ADMIN_EMAIL, ADMIN_PASSWORD   the admin account the server was started with
//   CHROMIUM            the browser binary (default /usr/bin/chromium)
//   SCREENSHOT_DIR      where the screenshots go (the README shows them)
// Exits non-zero on the first failed check, saying which scenario and why.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const BASE = process.env.STAMPEDE_URL;
const ADMIN_EMAIL = process.env.ADMIN_EMAIL;
const ADMIN_PASSWORD = process.env.ADMIN_PASSWORD;
const SHOTS = process.env.SCREENSHOT_DIR;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
if (!BASE || !ADMIN_EMAIL || !ADMIN_PASSWORD) {
  console.error("STAMPEDE_URL, ADMIN_EMAIL and ADMIN_PASSWORD are required");
  process.exit(2);
}

const T = 15_000; // the longest any single step may take
const DESKTOP = { width: 1100, height: 860 };
const PHONE = { width: 390, height: 844 };

// --- a little API client for the setup ----------------------------------------------------------
async function call(method, path, token, body) {
  const headers = { accept: "application/json" };
  if (token) headers.authorization = "Bearer " + token;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(BASE + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, json, text };
}

function expectStatus(r, status, what) {
  if (r.status !== status) throw new Error(`${what}: expected HTTP ${status}, got ${r.status}: ${r.text}`);
  return r.json;
}

async function login(email, password) {
  return expectStatus(await call("POST", "/api/v1/auth/login", null, { email, password }), 200, "login " + email).token;
}

async function newBuyer(tag) {
  const email = `${tag}-${Date.now()}-${Math.floor(Math.random() * 1e9)}@example.com`;
  expectStatus(await call("POST", "/api/v1/auth/register", null, { email, password: "correct-horse-battery", name: tag }), 201, "register");
  return login(email, "correct-horse-battery");
}

async function serverNow() {
  const r = await call("GET", "/api/v1/sales");
  // An empty list still carries no time: fall back to a sale-less clock read.
  if (r.json && r.json.sales && r.json.sales.length) return Date.parse(r.json.sales[0].server_time);
  return Date.now();
}

async function createSale(admin, fields) {
  const now = await serverNow();
  const body = Object.assign({
    description: "", original_price: "100.00", sale_price: "25.00", currency: "EUR",
    total_stock: 10, per_user_limit: 3, hold_seconds: 300, queue_required: false,
    starts_at: new Date(now - 1000).toISOString(), ends_at: new Date(now + 3600_000).toISOString(),
  }, fields);
  return expectStatus(await call("POST", "/api/v1/admin/sales", admin, body), 201, "create sale " + fields.name);
}

// --- the checks -----------------------------------------------------------------------------------------
let current = "setup";
const passed = [];
async function scenario(name, fn) {
  current = name;
  const started = Date.now();
  await fn();
  passed.push(name);
  console.log(`ok   ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
}

async function text(page, selector) {
  return (await page.locator(selector).first().textContent({ timeout: T })) || "";
}

async function waitText(page, selector, pattern, what) {
  try {
    await page.waitForFunction(([sel, src]) => {
      const n = document.querySelector(sel);
      return n && new RegExp(src, "i").test(n.textContent || "");
    }, [selector, pattern.source], { timeout: T });
  } catch (e) {
    const seen = await page.locator(selector).first().textContent({ timeout: 1000 }).catch(() => "(absent)");
    throw new Error(`${what}: ${selector} never matched /${pattern.source}/ (it reads ${JSON.stringify(seen)})`);
  }
}

async function shot(page, name) {
  if (!SHOTS) return;
  await page.screenshot({ path: join(SHOTS, name), fullPage: true });
}

function markNoReload(page) {
  return page.evaluate(() => { window.__stampedeNoReload = 1; });
}
async function assertNoReload(page, what) {
  const still = await page.evaluate(() => window.__stampedeNoReload === 1);
  if (!still) throw new Error(`${what}: the page reloaded`);
}

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
let failed = false;
try {
  if (SHOTS) mkdirSync(SHOTS, { recursive: true });
  const admin = await login(ADMIN_EMAIL, ADMIN_PASSWORD);
  const now = await serverNow();
  // The sale the buyer waits for: it opens on the countdown, a few seconds from now.
  const sneaker = await createSale(admin, {
    name: "Trail runner 2", description: "Lightweight trail shoe, sizes 36–47. Ships in 48 h.",
    original_price: "140.00", sale_price: "49.00", total_stock: 10, per_user_limit: 3,
    starts_at: new Date(now + 10_000).toISOString(),
  });
  await createSale(admin, {
    name: "Rain shell", description: "Packable waterproof jacket.", original_price: "180.00", sale_price: "72.00",
    total_stock: 250, starts_at: new Date(now + 2 * 3600_000).toISOString(), ends_at: new Date(now + 3 * 3600_000).toISOString(),
  });
  const print = await createSale(admin, {
    name: "Signed print <No. 7>", description: "A numbered print, sold through the waiting room.",
    original_price: "90.00", sale_price: "30.00", total_stock: 5, per_user_limit: 1, queue_required: true,
  });

  const buyerCtx = await browser.newContext({ viewport: DESKTOP });
  const buyer = await buyerCtx.newPage();
  const watcherCtx = await browser.newContext({ viewport: DESKTOP });
  const watcher = await watcherCtx.newPage();
  const adminCtx = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const dash = await adminCtx.newPage();
  for (const p of [buyer, watcher, dash]) {
    p.on("pageerror", (e) => { console.error(`page error (${current}): ${e.message}`); failed = true; });
  }

  await scenario("a buyer signs up and is logged in", async () => {
    await buyer.goto(BASE + "/signup");
    await buyer.getByLabel("Name").fill("Bea");
    await buyer.getByLabel("Email").fill(`bea-${Date.now()}@example.com`);
    await buyer.getByLabel("Password").fill("correct-horse-battery");
    await buyer.getByRole("button", { name: "Create account" }).click();
    await buyer.waitForURL(BASE + "/", { timeout: T });
    await waitText(buyer, "#account", /log out/, "the header shows the session");
  });

  await scenario("the storefront lists live and upcoming sales with price, discount, stock and a countdown", async () => {
    const card = buyer.locator(`.sale[data-sale-id="${sneaker.sale_id}"]`);
    await card.waitFor({ timeout: T });
    const t = await card.textContent();
    for (const want of ["49.00", "140.00", "−65%", "10", "Starts in"]) {
      if (!t.includes(want)) throw new Error(`the sneaker card lacks ${JSON.stringify(want)}: ${t}`);
    }
    const printCard = await buyer.locator(`.sale[data-sale-id="${print.sale_id}"] h2`).textContent();
    if (!printCard.includes("Signed print <No. 7>")) throw new Error("a sale name with markup is shown as text: " + printCard);
    await shot(buyer, "storefront.png");
    const phone = await buyerCtx.newPage();
    await phone.setViewportSize(PHONE);
    await phone.goto(BASE + "/");
    await phone.locator(".countdown").first().waitFor();
    await phone.waitForFunction(() => document.querySelector(".countdown").textContent.length > 0);
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
    if (overflow) throw new Error("the storefront scrolls sideways on a 390 px phone screen");
    await shot(phone, "storefront-phone.png");
    await phone.close();
  });

  await scenario("the buyer waits on the countdown, the sale goes live, and the buyer buys", async () => {
    await buyer.locator(`.sale[data-sale-id="${sneaker.sale_id}"] h2 a`).click();
    await buyer.waitForURL(`${BASE}/sales/${sneaker.sale_id}`);
    const button = buyer.locator("#buy-button");
    if (await button.isEnabled()) throw new Error("Buy is enabled before the start");
    await waitText(buyer, ".countdown", /Starts in/, "the sale page counts down");
    await watcher.goto(`${BASE}/sales/${sneaker.sale_id}`);
    await markNoReload(watcher);
    await waitText(watcher, ".available", /^10$/, "the watcher sees the full stock");
    await buyer.waitForFunction(() => !document.querySelector("#buy-button").disabled, null, { timeout: 20_000 });
    await waitText(buyer, "[data-role=status]", /live/, "the badge turns live on the countdown");
    await buyer.locator("#quantity").selectOption("1");
    await button.click();
    await waitText(buyer, "#outcome", /Reserved 1 ×/, "the reservation is confirmed");
    await waitText(buyer, "#outcome .hold-countdown", /^[45]:\d\d$/, "the hold counts down");
    await shot(buyer, "sale.png");
  });

  await scenario("a second browser on the same sale sees the stock drop without reloading", async () => {
    await waitText(watcher, ".available", /^9$/, "the watcher's stock follows the reservation");
    await assertNoReload(watcher, "the watcher");
  });

  await scenario("a declined card shows a clear message and the hold stays", async () => {
    await buyer.goto(BASE + "/cart");
    await buyer.locator("tr.hold").first().waitFor({ timeout: T });
    const hint = await text(buyer, "#token-hint");
    if (!/tok_ok/.test(hint) || !/tok_decline/.test(hint) || !/test/i.test(hint)) throw new Error("no visible test-token hint: " + hint);
    await buyer.getByLabel("Card token").fill("tok_decline");
    await buyer.getByRole("button", { name: "Pay" }).click();
    await waitText(buyer, "#pay-outcome", /declined/, "the decline is explained");
    await waitText(buyer, "#pay-outcome", /still held/, "the buyer is told the hold stays");
    await buyer.waitForTimeout(300);
    const holds = await buyer.locator("tr.hold").count();
    if (holds !== 1) throw new Error(`the hold should stay after a decline, the cart shows ${holds}`);
    await shot(buyer, "cart-declined.png");
  });

  await scenario("the buyer pays with tok_ok and sees the order", async () => {
    await buyer.getByLabel("Card token").fill("tok_ok");
    await buyer.getByRole("button", { name: "Pay" }).click();
    await waitText(buyer, "#pay-outcome", /Order confirmed/, "the order is confirmed");
    await buyer.locator("#pay-outcome a", { hasText: "See your orders" }).click();
    await buyer.waitForURL(BASE + "/orders");
    await buyer.locator('tr.order[data-status="confirmed"]').first().waitFor({ timeout: T });
    const row = await buyer.locator('tr.order[data-status="confirmed"]').first().textContent();
    if (!row.includes("Trail runner 2") || !row.includes("49.00")) throw new Error("the order row: " + row);
    await shot(buyer, "orders.png");
  });

  await scenario("an admin sees live figures, pauses the sale, and the buyer's page shows it paused", async () => {
    await buyer.goto(`${BASE}/sales/${sneaker.sale_id}`);
    await markNoReload(buyer);
    await buyer.waitForFunction(() => !document.querySelector("#buy-button").disabled, null, { timeout: T });
    await dash.goto(BASE + "/login?next=" + encodeURIComponent("/admin?sale=" + sneaker.sale_id));
    await dash.getByLabel("Email").fill(ADMIN_EMAIL);
    await dash.getByLabel("Password").fill(ADMIN_PASSWORD);
    await dash.getByRole("button", { name: "Log in" }).click();
    await dash.waitForURL(/\/admin\?sale=/);
    await waitText(dash, "#invariant", /Invariant holds/, "the invariant indicator");
    if (!(await dash.locator("#invariant.good").count())) throw new Error("the invariant indicator is not green");
    // A few more reservations (and a refusal) so that the charts have something to draw.
    const other = await newBuyer("chart");
    for (let i = 0; i < 4; i++) await call("POST", "/api/v1/cart/items", other, { sale_id: sneaker.sale_id, quantity: 1 });
    await waitText(dash, "#legend-stock", /held: [1-9]/, "the stock chart follows the holds");
    await waitText(dash, "#legend-latency", /samples: [1-9]/, "the latency chart has samples");
    await waitText(dash, "#legend-stock", /sold: 1/, "the sold unit shows");
    await dash.waitForFunction(() => document.querySelectorAll("#chart-stock polyline").length === 3, null, { timeout: T });
    await dash.waitForTimeout(2500);
    await shot(dash, "dashboard.png");
    await dash.locator("#pause").click();
    await waitText(dash, "#control-outcome", /paused/, "the admin sees the pause");
    await waitText(buyer, "[data-role=status]", /paused/, "the buyer's badge shows paused");
    await waitText(buyer, "#sale-notice", /paused/, "the buyer is told");
    if (await buyer.locator("#buy-button").isEnabled()) throw new Error("Buy stays enabled while paused");
    await assertNoReload(buyer, "the buyer's page");
    await shot(buyer, "sale-paused.png");
    await dash.locator("#resume").click();
    await waitText(buyer, "[data-role=status]", /live/, "the buyer's page shows it live again");
  });

  await scenario("the admin form shows the API's validation message, then creates a sale", async () => {
    await dash.locator("#f-name").fill("Desk lamp");
    await dash.locator("#f-original").fill("80.00");
    await dash.locator("#f-price").fill("cheap");
    await dash.getByRole("button", { name: "Create sale" }).click();
    await waitText(dash, "#create-outcome", /Not created: .*sale_price/, "the problem's detail is shown");
    if (!(await dash.locator('#f-price[aria-invalid="true"]').count())) throw new Error("the sale price field is not marked invalid");
    await dash.locator("#f-price").fill("20.00");
    await dash.getByRole("button", { name: "Create sale" }).click();
    await waitText(dash, "#create-outcome", /Created Desk lamp \(scheduled/, "the sale is created");
  });

  await scenario("each answer to Buy is explained: log in, limit reached, sold out, retry after N s", async () => {
    const pair = await createSale(admin, { name: "Last pair", description: "Two left, one per buyer.", total_stock: 2, per_user_limit: 1 });
    const url = `${BASE}/sales/${pair.sale_id}`;
    const enabled = () => !document.querySelector("#buy-button").disabled;
    // The watcher's live stream is cut, so its page still offers Buy after the stock is gone
    // and the server's own answer is what the page explains.
    await watcher.route("**/api/v1/sales/*/events", (route) => route.abort());
    await watcher.goto(url);
    await watcher.waitForFunction(enabled, null, { timeout: T });
    await watcher.locator("#buy-button").click();
    await waitText(watcher, "#outcome", /Log in to buy/, "an anonymous visitor is asked to log in");
    await buyer.goto(url);
    await buyer.waitForFunction(enabled, null, { timeout: T });
    await buyer.locator("#buy-button").click();
    await waitText(buyer, "#outcome", /Reserved 1 ×/, "the buyer's one unit");
    await buyer.waitForFunction(enabled, null, { timeout: T });
    await buyer.locator("#buy-button").click();
    await waitText(buyer, "#outcome", /Limit reached/, "a second unit is over the limit");
    const last = await newBuyer("last");
    expectStatus(await call("POST", "/api/v1/cart/items", last, { sale_id: pair.sale_id, quantity: 1 }), 201, "the last unit");
    await watcher.evaluate((t) => localStorage.setItem("stampede.token", t), await newBuyer("late"));
    await watcher.locator("#buy-button").click();
    await waitText(watcher, "#outcome", /Sold out/, "a late buyer is told it is sold out");
    // The server's 429 (its shape is checked by the API suites), as the page receives it.
    await watcher.route("**/api/v1/cart/items", (route) => route.fulfill({
      status: 429,
      headers: { "retry-after": "3", "content-type": "application/problem+json" },
      body: JSON.stringify({ type: "/problems/rate_limited", title: "Too many requests", status: 429, detail: "slow down", code: "rate_limited", retry_after: 3 }),
    }));
    await watcher.locator("#buy-button").click();
    await waitText(watcher, "#outcome", /Retry in 3 s/, "a rate-limited buyer is told when to retry");
    await waitText(watcher, "#buy-button", /Retry in [123] s/, "the button counts down");
    if (await watcher.locator("#buy-button").isEnabled()) throw new Error("Buy stays enabled while rate limited");
    await watcher.unrouteAll();
  });

  await scenario("a waiting-room sale shows the place in line and hands over to buying once admitted", async () => {
    // Straight to Buy without a turn: the page says where to go.
    await buyer.goto(`${BASE}/sales/${print.sale_id}`);
    await buyer.waitForFunction(() => !document.querySelector("#buy-button").disabled, null, { timeout: T });
    await buyer.locator("#buy-button").click();
    await waitText(buyer, "#outcome", /waiting room/, "not admitted sends the buyer to the room");
    // Pause the sale so nobody is admitted while the line forms, and put three buyers ahead.
    expectStatus(await call("POST", `/api/v1/admin/sales/${print.sale_id}/pause`, admin), 200, "pause the print");
    for (let i = 0; i < 3; i++) {
      const t = await newBuyer("early");
      expectStatus(await call("POST", `/api/v1/sales/${print.sale_id}/queue`, t, { device_id: `early-device-${i}` }), 202, "an early join");
    }
    await buyer.locator("#to-queue").click();
    await buyer.waitForURL(`${BASE}/sales/${print.sale_id}/queue`);
    await buyer.getByRole("button", { name: "Join the line" }).click();
    await waitText(buyer, "#queue-status", /waiting/, "the buyer is waiting");
    const position = Number(await text(buyer, "#position"));
    if (!(position >= 1)) throw new Error("no place in line shown: " + position);
    await shot(buyer, "waiting-room.png");
    await markNoReload(buyer);
    expectStatus(await call("POST", `/api/v1/admin/sales/${print.sale_id}/resume`, admin), 200, "resume: admissions run");
    await waitText(buyer, "#room-outcome", /your turn/, "the buyer is told it is their turn");
    await buyer.waitForURL(`${BASE}/sales/${print.sale_id}`, { timeout: T });
    await waitText(buyer, "#outcome", /your turn/, "the sale page knows the buyer's turn");
    await buyer.waitForFunction(() => !document.querySelector("#buy-button").disabled, null, { timeout: T });
    await buyer.locator("#buy-button").click();
    await waitText(buyer, "#outcome", /Reserved 1 ×/, "the admitted buyer reserves");
  });

  await scenario("without JavaScript, the place page shows the place, announces it, and moves to the sale once admitted", async () => {
    const poster = await createSale(admin, {
      name: "Numbered poster", description: "Sold through the waiting room.", original_price: "40.00", sale_price: "20.00",
      total_stock: 3, per_user_limit: 1, queue_required: true,
    });
    // Paused, so the buyer waits in line while the page is looked at.
    expectStatus(await call("POST", `/api/v1/admin/sales/${poster.sale_id}/queue/pause`, admin, { reason: "lining up" }), 200, "pause admission");
    const t = await newBuyer("nojs");
    const joined = expectStatus(await call("POST", `/api/v1/sales/${poster.sale_id}/queue`, t, { device_id: "nojs-phone" }), 202, "join");
    if (!joined.place_url) throw new Error("the join gave no place link: " + JSON.stringify(joined));
    const noJsCtx = await browser.newContext({ viewport: PHONE, javaScriptEnabled: false });
    const page = await noJsCtx.newPage();
    await page.goto(BASE + joined.place_url);
    const status = page.getByRole("status");
    await status.getByText(/You are number 1 in line/).waitFor({ timeout: T });
    if ((await status.getAttribute("aria-live")) !== "polite") throw new Error("the place is not in a polite live region");
    await page.getByText(/paused by the organiser/).first().waitFor({ timeout: T });
    await shot(page, "waiting-room-no-js.png");
    expectStatus(await call("POST", `/api/v1/admin/sales/${poster.sale_id}/queue/resume`, admin, { reason: "open" }), 200, "resume admission");
    // The page refreshes itself (no script) and lands on the sale once the buyer is admitted.
    await page.waitForURL(`${BASE}/sales/${poster.sale_id}`, { timeout: 2 * T });
    await page.getByRole("heading", { name: /Numbered poster/ }).first().waitFor({ timeout: T });
    await noJsCtx.close();
  });

  await scenario("the dashboard shows a waiting room's figures, sends a broadcast, and lists suspected hoarders", async () => {
    await dash.goto(`${BASE}/admin?sale=${print.sale_id}`);
    await waitText(dash, "#room-figures", /Time in queue p50/, "the room's figures");
    await waitText(dash, "#room-figures", /No-shows/, "the no-shows");
    await dash.locator("#broadcast-text").fill("Thank you for waiting: more prints at 18:00.");
    await dash.getByRole("button", { name: "Send" }).click();
    await waitText(dash, "#broadcast-outcome", /Sent to everyone waiting/, "the broadcast is sent");
    await waitText(dash, "#hoarders", /Nobody so far|account|device/, "the hoarders' list");
  });
} catch (e) {
  console.error(`FAIL ${current}: ${e.message}`);
  failed = true;
} finally {
  await browser.close();
}
console.log(`${passed.length} scenarios passed${failed ? ", and one failed" : ""}`);
process.exit(failed ? 1 : 0);
