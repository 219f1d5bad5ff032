// Stampede pages: a little vanilla JavaScript over the JSON API, no build step.
//
// The session token is kept in localStorage ("stampede.token"): the pages are static HTML that
// any CDN may cache, so the server renders nothing per user and the script sends the token as
// a bearer header like every other API client. The API, not the page, enforces who may do what.
// Countdowns run on the server's clock: the page is rendered with data-server-time and the
// script keeps the offset between that and the device's clock.
"use strict";

(function () {
  const store = window.localStorage;
  const session = window.sessionStorage;
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  // --- the server's clock ----------------------------------------------------------------
  const rendered = Date.parse(document.body.dataset.serverTime || "");
  const clockOffset = isNaN(rendered) ? 0 : rendered - Date.now();
  const serverNow = () => Date.now() + clockOffset;

  function duration(ms) {
    let s = Math.max(0, Math.ceil(ms / 1000));
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    const pad = (n) => String(n).padStart(2, "0");
    if (d > 0) return d + "d " + h + "h " + pad(m) + "m";
    if (h > 0) return h + ":" + pad(m) + ":" + pad(s);
    return m + ":" + pad(s);
  }

  // --- session ----------------------------------------------------------------------------
  const auth = {
    token: () => store.getItem("stampede.token"),
    role: () => store.getItem("stampede.role"),
    email: () => store.getItem("stampede.email"),
    save(login, email) {
      store.setItem("stampede.token", login.token);
      store.setItem("stampede.role", login.role);
      store.setItem("stampede.email", email);
    },
    clear() {
      ["stampede.token", "stampede.role", "stampede.email"].forEach((k) => store.removeItem(k));
    },
  };

  // One device id per browser, generated once: the waiting room binds admission to it.
  function deviceId() {
    let id = store.getItem("stampede.device");
    if (!id) {
      const bytes = new Uint8Array(16);
      crypto.getRandomValues(bytes);
      id = "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      store.setItem("stampede.device", id);
    }
    return id;
  }

  function randomKey() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // --- the API ----------------------------------------------------------------------------
  async function api(method, path, body, headers) {
    const h = Object.assign({ accept: "application/json" }, headers || {});
    const token = auth.token();
    if (token) h.authorization = "Bearer " + token;
    if (body !== undefined) h["content-type"] = "application/json";
    let res;
    try {
      res = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      return { status: 0, json: { detail: "The shop cannot be reached; check your connection." }, headers: new Headers() };
    }
    let json = null;
    const text = await res.text();
    try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
    if (res.status === 401 && token) auth.clear();
    return { status: res.status, json: json || {}, headers: res.headers };
  }

  function problemText(r) {
    return (r.json && (r.json.detail || r.json.title)) || "Something went wrong (HTTP " + r.status + ").";
  }

  // Server-Sent Events over fetch, so that a bearer token can be sent (EventSource cannot send
  // headers). Reconnects after a pause unless stopped; returns a stop function.
  function sse(path, onEvent, opts) {
    opts = opts || {};
    let stopped = false;
    let controller = null;
    async function run() {
      while (!stopped) {
        controller = new AbortController();
        const headers = { accept: "text/event-stream" };
        if (opts.auth && auth.token()) headers.authorization = "Bearer " + auth.token();
        try {
          const res = await fetch(path, { headers, signal: controller.signal, cache: "no-store" });
          if (!res.ok || !res.body) {
            if (opts.onError) opts.onError(res.status);
            if (res.status === 401 || res.status === 403 || res.status === 404) return;
          } else {
            const reader = res.body.getReader();
            const decoder = new TextDecoder();
            let buf = "";
            for (;;) {
              const { value, done } = await reader.read();
              if (done) break;
              buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
              let cut;
              while ((cut = buf.indexOf("\n\n")) >= 0) {
                const block = buf.slice(0, cut);
                buf = buf.slice(cut + 2);
                let event = "message";
                const data = [];
                block.split("\n").forEach((line) => {
                  if (line.startsWith("event:")) event = line.slice(6).trim();
                  else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
                });
                if (data.length) {
                  let parsed;
                  try { parsed = JSON.parse(data.join("\n")); } catch (e) { parsed = data.join("\n"); }
                  if (onEvent(event, parsed) === false) { stopped = true; controller.abort(); return; }
                }
              }
            }
            if (opts.once) return;
          }
        } catch (e) {
          if (stopped) return;
        }
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
    run();
    return () => { stopped = true; if (controller) controller.abort(); };
  }

  // --- little DOM helpers -----------------------------------------------------------------
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (k === "text") node.textContent = v;
      else if (k === "on") Object.entries(v).forEach(([ev, fn]) => node.addEventListener(ev, fn));
      else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v === true ? "" : v);
    });
    (children || []).forEach((c) => node.append(c));
    return node;
  }

  function say(target, kind, parts) {
    target.replaceChildren(el("div", { class: "msg " + kind }, parts));
  }

  function loginLink(text) {
    const next = location.pathname + location.search;
    return el("a", { href: "/login?next=" + encodeURIComponent(next), text: text || "Log in" });
  }

  function safeNext() {
    const next = new URLSearchParams(location.search).get("next") || "/";
    return next.startsWith("/") && !next.startsWith("//") ? next : "/";
  }

  // --- the header -------------------------------------------------------------------------
  function renderAccount() {
    const box = $("#account");
    if (!box) return;
    if (!auth.token()) return;
    const out = el("button", { type: "button", id: "logout", text: "Log out" });
    out.addEventListener("click", async () => {
      await api("POST", "/api/v1/auth/logout");
      auth.clear();
      location.href = "/";
    });
    box.replaceChildren(el("span", { class: "who", text: auth.email() || "signed in" }), out);
  }

  // --- sale cards: status, countdown and live stock -------------------------------------------
  function setStatus(card, status) {
    card.dataset.status = status;
    const badge = $("[data-role=status]", card);
    if (badge) { badge.textContent = status; badge.className = "badge badge-" + status; }
    card.dispatchEvent(new CustomEvent("salestatus", { detail: status }));
  }

  function setStock(card, available) {
    card.dataset.available = String(available);
    const n = $(".available", card);
    if (n) n.textContent = String(available);
    const bar = $(".bar", card);
    if (bar) bar.value = available;
    if (available <= 0 && card.dataset.status === "live") card.classList.add("sold-out");
  }

  function tickCountdown(card) {
    const cd = $(".countdown", card);
    if (!cd) return;
    const starts = Date.parse(card.dataset.startsAt);
    const ends = Date.parse(card.dataset.endsAt);
    const now = serverNow();
    const status = card.dataset.status;
    if (status === "scheduled") {
      if (now >= starts) { setStatus(card, "live"); return tickCountdown(card); }
      cd.textContent = "Starts in " + duration(starts - now);
    } else if (status === "live") {
      if (now >= ends) { setStatus(card, "ended"); cd.textContent = "Ended"; return; }
      cd.textContent = Number(card.dataset.available) > 0 ? "Ends in " + duration(ends - now) : "Sold out";
    } else if (status === "paused") {
      cd.textContent = "Paused by the shop: buying is on hold";
    } else {
      cd.textContent = "Ended";
    }
  }

  function watchSale(card) {
    const id = card.dataset.saleId;
    return sse("/api/v1/sales/" + encodeURIComponent(id) + "/events", (event, data) => {
      if (event === "stock" && typeof data.available === "number") setStock(card, data.available);
      if (event === "status" && data.status) {
        // The stream's status follows the server's clock; a scheduled sale turns live by the
        // countdown, so ignore a stale "scheduled" once the countdown passed.
        if (!(data.status === "scheduled" && card.dataset.status === "live")) setStatus(card, data.status);
      }
      tickCountdown(card);
    });
  }

  function everySecond(fn) { fn(); return setInterval(fn, 1000); }

  // --- storefront ---------------------------------------------------------------------------
  function storefront() {
    const cards = $$(".sale[data-sale-id]");
    everySecond(() => cards.forEach(tickCountdown));
    // A browser opens few connections per server; keep streams to the first sales shown and
    // leave room for the page's own requests.
    cards.slice(0, 4).forEach(watchSale);
  }

  // --- a sale ---------------------------------------------------------------------------------
  function salePage() {
    const card = $(".sale-page");
    const id = card.dataset.saleId;
    const buy = $("#buy");
    const button = $("#buy-button");
    const outcome = $("#outcome");
    let retryUntil = 0;
    let holdTimer = null;

    function refreshButton() {
      const status = card.dataset.status;
      const wait = Math.ceil((retryUntil - Date.now()) / 1000);
      if (wait > 0) { button.disabled = true; button.textContent = "Retry in " + wait + " s"; return; }
      button.textContent = status === "paused" ? "Paused" : status === "scheduled" ? "Not yet" : status === "ended" ? "Ended" : "Buy";
      button.disabled = status !== "live" || Number(card.dataset.available) <= 0;
      if (status === "live" && Number(card.dataset.available) <= 0) button.textContent = "Sold out";
    }

    const notice = $("#sale-notice");
    card.addEventListener("salestatus", (e) => {
      refreshButton();
      if (e.detail === "paused") say(notice, "warn", ["This sale is paused by the shop. Stay on this page: it resumes here."]);
      else if (e.detail === "ended") say(notice, "bad", ["This sale has ended."]);
      else notice.replaceChildren();
    });
    if (card.dataset.status === "paused") say(notice, "warn", ["This sale is paused by the shop. Stay on this page: it resumes here."]);
    everySecond(() => { tickCountdown(card); refreshButton(); });
    watchSale(card);

    const admitted = admission(id);
    if (card.dataset.queue === "true" && admitted) {
      say(outcome, "ok", ["It is your turn: buy before " + new Date(Date.parse(admitted.until) - clockOffset).toLocaleTimeString() + "."]);
    }

    buy.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (!auth.token()) { say(outcome, "warn", [loginLink(), " to buy."]); return; }
      const quantity = Number($("#quantity").value);
      const headers = {};
      const adm = admission(id);
      if (adm) { headers["x-admission-token"] = adm.token; headers["x-device-id"] = adm.device; }
      button.disabled = true;
      const r = await api("POST", "/api/v1/cart/items", { sale_id: id, quantity }, headers);
      if (adm) session.removeItem("stampede.admission." + id);
      const code = r.json.code;
      if (r.status === 201) {
        const expires = Date.parse(r.json.expires_at);
        const left = el("span", { class: "countdown hold-countdown" });
        say(outcome, "ok", [
          "Reserved " + r.json.quantity + " × " + r.json.unit_price + " " + r.json.currency + ". Yours for ",
          left, ". ", el("a", { href: "/cart", text: "Go to checkout" }),
        ]);
        clearInterval(holdTimer);
        holdTimer = everySecond(() => {
          const ms = expires - serverNow();
          left.textContent = ms > 0 ? duration(ms) : "0:00 (expired)";
        });
      } else if (code === "sold_out") {
        say(outcome, "bad", ["Sold out: every unit is taken. Units come back when holds lapse, so this page will show it if any do."]);
      } else if (code === "limit_exceeded") {
        say(outcome, "bad", ["Limit reached: you already hold or bought the most one buyer may have in this sale. ", el("a", { href: "/cart", text: "See your cart" })]);
      } else if (code === "not_admitted") {
        say(outcome, "warn", ["You need your turn in the waiting room first. ", el("a", { href: "/sales/" + encodeURIComponent(id) + "/queue", id: "to-queue", text: "Go to the waiting room" })]);
      } else if (code === "rate_limited") {
        const secs = Number(r.headers.get("retry-after")) || (r.json.retry_after || 1);
        retryUntil = Date.now() + secs * 1000;
        say(outcome, "warn", ["Too many tries at once. Retry in " + secs + " s."]);
      } else if (code === "sale_not_live") {
        say(outcome, "warn", ["This sale is not open right now (" + (card.dataset.status || "closed") + ")."]);
      } else if (r.status === 401) {
        say(outcome, "warn", ["Your session ended. ", loginLink()]);
      } else {
        say(outcome, "bad", [problemText(r)]);
      }
      refreshButton();
    });
  }

  function admission(saleId) {
    try {
      const a = JSON.parse(session.getItem("stampede.admission." + saleId) || "null");
      if (a && Date.parse(a.until) > serverNow()) return a;
    } catch (e) { /* ignore */ }
    return null;
  }

  // --- the waiting room -------------------------------------------------------------------------
  function queuePage() {
    const card = $(".room");
    const id = card.dataset.saleId;
    const form = $("#join");
    const outcome = $("#room-outcome");
    const place = $("#place");
    let stop = null;
    everySecond(() => tickCountdown(card));

    function show(q) {
      place.hidden = false;
      $("#position").textContent = q.status === "waiting" || q.status === "sold_out" ? String(q.position) : "–";
      $("#eta").textContent = q.status === "waiting" && !q.paused ? (q.eta_seconds > 0 ? "about " + duration(q.eta_seconds * 1000) : "moments") : "–";
      const words = { waiting: q.pre_queue ? "waiting (before the start: places are drawn at the start)" : "waiting",
        admitted: "your turn", used: "you bought with your turn", expired: "your turn lapsed",
        lottery_won: "you won the draw", lottery_lost: "not drawn this time", sold_out: "sold out" };
      $("#queue-status").textContent = q.paused && q.status === "waiting"
        ? "paused by the organiser: you keep your place"
        : q.waitlist_position ? "on the waitlist: place " + q.waitlist_position : (words[q.status] || q.status);
      if (q.place_url) {
        $("#place-url").href = q.place_url;
        $("#place-link").hidden = false;
      }
      let note = $("#organiser-message");
      if (q.message && q.message.text) {
        if (!note) {
          note = el("p", { id: "organiser-message", class: "notice", role: "status" });
          card.insertBefore(note, outcome);
        }
        note.replaceChildren(el("strong", { text: "From the organiser: " }), document.createTextNode(q.message.text));
      }
      if ((q.status === "admitted" || q.status === "lottery_won") && q.admission_token) {
        session.setItem("stampede.admission." + id, JSON.stringify({ token: q.admission_token, device: deviceId(), until: q.admitted_until }));
        const link = el("a", { href: "/sales/" + encodeURIComponent(id), id: "to-sale", text: "Buy now" });
        const claim = q.claim_deadline
          ? " A unit came back for you: reserve it before " + new Date(q.claim_deadline).toLocaleTimeString() + ", or it passes to the next on the waitlist."
          : "";
        say(outcome, "ok", ["It is your turn! ", link, " — taking you to the sale…" + claim]);
        setTimeout(() => { location.href = "/sales/" + encodeURIComponent(id); }, 1200);
        return false;
      }
      if (q.status === "sold_out" && !q.closed) {
        say(outcome, "bad", ["Sold out for now. You are on the waitlist" + (q.waitlist_position ? " (place " + q.waitlist_position + ")" : "") + ": if a hold lapses, a buyer lets go or an order is cancelled, the unit is offered to the next in line for a limited time."]);
      } else if (q.closed) {
        say(outcome, "bad", ["Sold out: this waiting room is closed."]);
        return false;
      } else if (q.status === "lottery_lost" || q.status === "expired") {
        say(outcome, "bad", [q.status === "expired" ? "Your turn lapsed before you bought." : "You were not drawn this time."]);
        return false;
      } else {
        outcome.replaceChildren();
      }
      return true;
    }

    function follow() {
      if (stop) stop();
      stop = sse("/api/v1/sales/" + encodeURIComponent(id) + "/queue/me/events", (event, data) => {
        if (event === "queue") return show(data);
      }, { auth: true, once: true });
    }

    async function solve(challenge, bits) {
      // SHA-256(challenge ":" nonce) must start with `bits` zero bits.
      const enc = new TextEncoder();
      for (let n = 0; n < 1e8; n++) {
        const h = new Uint8Array(await crypto.subtle.digest("SHA-256", enc.encode(challenge + ":" + n)));
        let zero = 0;
        for (const b of h) { if (b === 0) { zero += 8; continue; } zero += Math.clz32(b) - 24; break; }
        if (zero >= bits) return String(n);
      }
      return "0";
    }

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (!auth.token()) { say(outcome, "warn", [loginLink(), " to join the line."]); return; }
      $("#join-button").disabled = true;
      const body = { device_id: deviceId() };
      const ch = await api("GET", "/api/v1/sales/" + encodeURIComponent(id) + "/queue/challenge");
      if (ch.status === 200 && ch.json.difficulty_bits > 0) {
        say(outcome, "warn", ["Checking your browser…"]);
        body.pow = { challenge: ch.json.challenge, nonce: await solve(ch.json.challenge, ch.json.difficulty_bits) };
      }
      const r = await api("POST", "/api/v1/sales/" + encodeURIComponent(id) + "/queue", body);
      if (r.status === 202) {
        form.hidden = true;
        if (show(r.json)) follow();
      } else {
        $("#join-button").disabled = false;
        if (r.status === 401) say(outcome, "warn", [loginLink(), " to join the line."]);
        else if (r.json.code === "sold_out") say(outcome, "bad", ["Sold out: this waiting room is closed."]);
        else say(outcome, "bad", [problemText(r)]);
      }
    });

    // Back on the page with a place already: pick it up.
    if (auth.token()) {
      api("GET", "/api/v1/sales/" + encodeURIComponent(id) + "/queue/me").then((r) => {
        if (r.status === 200) { form.hidden = true; if (show(r.json)) follow(); }
      });
    }
  }

  // --- cart and checkout ------------------------------------------------------------------------
  function cartPage() {
    const list = $("#cart-items");
    const pay = $("#pay");
    const outcome = $("#pay-outcome");
    let timers = [];

    async function load() {
      timers.forEach(clearInterval);
      timers = [];
      if (!auth.token()) { list.replaceChildren(el("p", {}, [loginLink(), " to see your cart."])); pay.hidden = true; return; }
      const r = await api("GET", "/api/v1/cart");
      if (r.status !== 200) { list.replaceChildren(el("p", { class: "error", text: problemText(r) })); return; }
      const items = r.json.items || [];
      if (!items.length) {
        list.replaceChildren(el("p", {}, ["Your cart is empty. ", el("a", { href: "/", text: "See the sales" })]));
        pay.hidden = true;
        return;
      }
      const names = await saleNames(items.map((i) => i.sale_id));
      const rows = items.map((h) => {
        const left = el("span", { class: "countdown" });
        const expires = Date.parse(h.expires_at);
        timers.push(everySecond(() => {
          const ms = expires - serverNow();
          left.textContent = ms > 0 ? duration(ms) : "expired";
          if (ms <= 0) { setTimeout(load, 1500); }
        }));
        const release = el("button", { type: "button", class: "secondary", text: "Release" });
        release.setAttribute("aria-label", "Release " + (names[h.sale_id] || "item"));
        release.addEventListener("click", async () => {
          release.disabled = true;
          const d = await api("DELETE", "/api/v1/cart/items/" + encodeURIComponent(h.hold_id));
          if (d.status !== 204) say(outcome, "bad", [problemText(d)]);
          load();
        });
        return el("tr", { class: "hold", "data-hold-id": h.hold_id }, [
          el("td", {}, [el("a", { href: "/sales/" + encodeURIComponent(h.sale_id), text: names[h.sale_id] || h.sale_id })]),
          el("td", { text: h.quantity + " × " + h.unit_price + " " + h.currency }),
          el("td", {}, ["held for ", left]),
          el("td", {}, [release]),
        ]);
      });
      list.replaceChildren(
        el("table", {}, [
          el("caption", { class: "meta", text: "Held for you until the time shown; then the units go back on sale." }),
          el("thead", {}, [el("tr", {}, [el("th", { text: "Item" }), el("th", { text: "Price" }), el("th", { text: "Time left" }), el("th", { text: "" })])]),
          el("tbody", {}, rows),
        ]),
        el("p", { class: "total" }, ["Total: ", el("strong", { id: "cart-total", text: r.json.total + " " + (r.json.currency || "") })])
      );
      pay.hidden = false;
      pay.dataset.holds = JSON.stringify(items.map((i) => i.hold_id));
    }

    pay.addEventListener("submit", async (e) => {
      e.preventDefault();
      const token = $("#card-token").value.trim();
      if (!token) { $("#card-token").setAttribute("aria-invalid", "true"); say(outcome, "bad", ["Enter a card token, for example tok_ok."]); return; }
      $("#card-token").removeAttribute("aria-invalid");
      $("#pay-button").disabled = true;
      const holds = JSON.parse(pay.dataset.holds || "[]");
      const r = await api("POST", "/api/v1/orders", { hold_ids: holds, payment: { method: "card", token } }, { "idempotency-key": "web-" + randomKey() });
      $("#pay-button").disabled = false;
      if (r.status === 201 || r.status === 200) {
        const o = r.json;
        const done = o.status === "confirmed";
        say(outcome, "ok", [
          (done ? "Order confirmed: " : "Order received, payment pending: ") + o.total + " " + o.currency + " (order " + o.order_id + "). ",
          el("a", { href: "/orders", text: "See your orders" }),
        ]);
      } else if (r.json.code === "payment_declined") {
        say(outcome, "bad", [
          "Your card was declined" + (r.json.reason ? " (" + r.json.reason + ")" : "") + ". Nothing was charged, and your items are still held for you: try another card before the timer runs out.",
        ]);
      } else if (r.json.code === "hold_expired") {
        say(outcome, "bad", ["Your hold expired before payment, so nothing was charged. The units went back on sale."]);
      } else if (r.json.code === "rate_limited") {
        say(outcome, "warn", ["Too many tries. Retry in " + (r.headers.get("retry-after") || 1) + " s."]);
      } else {
        say(outcome, "bad", [problemText(r)]);
      }
      load();
    });

    load();
  }

  async function saleNames(ids) {
    const names = {};
    await Promise.all(Array.from(new Set(ids)).map(async (id) => {
      const r = await api("GET", "/api/v1/sales/" + encodeURIComponent(id));
      if (r.status === 200) names[id] = r.json.name;
    }));
    return names;
  }

  // --- orders -------------------------------------------------------------------------------------
  function ordersPage() {
    const list = $("#orders-list");
    const outcome = $("#order-outcome");
    async function load() {
      if (!auth.token()) { list.replaceChildren(el("p", {}, [loginLink(), " to see your orders."])); return; }
      const r = await api("GET", "/api/v1/orders");
      if (r.status !== 200) { list.replaceChildren(el("p", { class: "error", text: problemText(r) })); return; }
      const orders = (r.json.orders || []).slice().sort((a, b) => b.created_at.localeCompare(a.created_at));
      if (!orders.length) { list.replaceChildren(el("p", { text: "No orders yet." })); return; }
      const names = await saleNames(orders.flatMap((o) => o.items.map((i) => i.sale_id)));
      list.replaceChildren(el("table", {}, [
        el("thead", {}, [el("tr", {}, ["Order", "Items", "Total", "Status", ""].map((t) => el("th", { text: t })))]),
        el("tbody", {}, orders.map((o) => {
          const cell = el("td");
          if (o.status === "confirmed") {
            const cancel = el("button", { type: "button", class: "secondary", text: "Cancel" });
            cancel.setAttribute("aria-label", "Cancel order " + o.order_id);
            cancel.addEventListener("click", async () => {
              if (!confirm("Cancel this order? You will be refunded.")) return;
              cancel.disabled = true;
              const c = await api("POST", "/api/v1/orders/" + encodeURIComponent(o.order_id) + "/cancel");
              if (c.status === 200) say(outcome, "ok", ["Order cancelled and refunded."]);
              else say(outcome, "bad", [problemText(c)]);
              load();
            });
            cell.append(cancel);
          }
          const reason = o.payment && o.payment.failure_reason ? " (" + o.payment.failure_reason + ")" : "";
          return el("tr", { class: "order", "data-order-id": o.order_id, "data-status": o.status }, [
            el("td", {}, [el("code", { text: o.order_id }), el("br"), el("span", { class: "meta", text: new Date(o.created_at).toLocaleString() })]),
            el("td", { text: o.items.map((i) => i.quantity + " × " + (names[i.sale_id] || i.sale_id)).join(", ") }),
            el("td", { text: o.total + " " + o.currency }),
            el("td", { class: "order-status", text: o.status.replace("_", " ") + reason }),
            cell,
          ]);
        })),
      ]));
    }
    load();
  }

  // --- log in, sign up ----------------------------------------------------------------------------
  async function logIn(email, password) {
    const r = await api("POST", "/api/v1/auth/login", { email, password });
    if (r.status === 200) { auth.save(r.json, email); return null; }
    return r;
  }

  function loginPage() {
    const form = $("#login");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const err = $("#form-error");
      err.textContent = "";
      const failed = await logIn($("#email").value.trim(), $("#password").value);
      if (!failed) { location.href = safeNext(); return; }
      err.textContent = failed.json.code === "bad_credentials" ? "Wrong email or password." : problemText(failed);
    });
  }

  function signupPage() {
    const form = $("#signup");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const err = $("#form-error");
      err.textContent = "";
      const name = $("#name").value.trim();
      const email = $("#email").value.trim();
      const password = $("#password").value;
      ["#name", "#email", "#password"].forEach((s) => $(s).removeAttribute("aria-invalid"));
      const r = await api("POST", "/api/v1/auth/register", { email, password, name });
      if (r.status === 201) {
        const failed = await logIn(email, password);
        if (!failed) { location.href = safeNext(); return; }
        err.textContent = problemText(failed);
        return;
      }
      if (r.json.code === "email_taken") { $("#email").setAttribute("aria-invalid", "true"); err.textContent = "That email already has an account. Log in instead."; return; }
      const detail = problemText(r);
      ["name", "email", "password"].forEach((f) => { if (detail.toLowerCase().includes(f)) $("#" + f).setAttribute("aria-invalid", "true"); });
      err.textContent = detail;
    });
  }

  // --- admin dashboard -------------------------------------------------------------------------------
  const COLORS = { available: "#0a6b2d", held: "#b06f00", sold: "#0b57d0", orders: "#0b57d0", queue: "#6a1b9a",
    admitted: "#0a6b2d", expiries: "#b3261e", p50: "#0b57d0", p99: "#b3261e" };
  const SVGNS = "http://www.w3.org/2000/svg";

  function svgEl(tag, attrs) {
    const n = document.createElementNS(SVGNS, tag);
    Object.entries(attrs).forEach(([k, v]) => n.setAttribute(k, String(v)));
    return n;
  }

  function legend(id, entries) {
    const box = $("#" + id);
    box.replaceChildren(...entries.map(([label, color, value]) => {
      const swatch = el("i", { "aria-hidden": "true" });
      swatch.style.background = color;
      return el("span", {}, [swatch, label + ": " + value]);
    }));
  }

  // A line chart of several series over the last points; the y axis starts at 0.
  function lineChart(id, series) {
    const svg = $("#" + id);
    const W = 300, H = 120, L = 34, B = 14, T = 6;
    const max = Math.max(1, ...series.flatMap((s) => s.points));
    const n = Math.max(2, ...series.map((s) => s.points.length));
    const x = (i) => L + (i * (W - L - 4)) / (n - 1);
    const y = (v) => T + (H - T - B) * (1 - v / max);
    const nodes = [
      svgEl("line", { x1: L, y1: y(0), x2: W - 4, y2: y(0), stroke: "#767676" }),
      svgEl("line", { x1: L, y1: T, x2: L, y2: y(0), stroke: "#767676" }),
    ];
    const top = svgEl("text", { x: L - 4, y: T + 8, "text-anchor": "end", "font-size": 10, fill: "#333" });
    top.textContent = max >= 100 ? Math.round(max) : +max.toFixed(2);
    const zero = svgEl("text", { x: L - 4, y: y(0), "text-anchor": "end", "font-size": 10, fill: "#333" });
    zero.textContent = "0";
    const span = svgEl("text", { x: W - 4, y: H - 2, "text-anchor": "end", "font-size": 10, fill: "#333" });
    span.textContent = "last " + n + " s";
    nodes.push(top, zero, span);
    series.forEach((s) => {
      const pts = s.points.map((v, i) => x(i + (n - s.points.length)) + "," + y(v)).join(" ");
      nodes.push(svgEl("polyline", { points: pts, fill: "none", stroke: s.color, "stroke-width": 2, "data-series": s.name }));
    });
    svg.replaceChildren(...nodes);
  }

  function barChart(id, entries) {
    const svg = $("#" + id);
    const W = 300, H = 120;
    if (!entries.length) {
      const t = svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", "font-size": 12, fill: "#333" });
      t.textContent = "no refusals";
      svg.replaceChildren(t);
      return;
    }
    const max = Math.max(1, ...entries.map((e) => e[1]));
    const rowH = Math.min(22, (H - 4) / entries.length);
    const nodes = [];
    entries.forEach(([label, value], i) => {
      const yy = 2 + i * rowH;
      const w = ((W - 150) * value) / max;
      nodes.push(svgEl("rect", { x: 110, y: yy + 2, width: Math.max(1, w), height: rowH - 5, fill: "#b3261e" }));
      const t = svgEl("text", { x: 106, y: yy + rowH / 2 + 3, "text-anchor": "end", "font-size": 10, fill: "#222" });
      t.textContent = label;
      const v = svgEl("text", { x: 114 + w, y: yy + rowH / 2 + 3, "font-size": 10, fill: "#222" });
      v.textContent = String(value);
      nodes.push(t, v);
    });
    svg.replaceChildren(...nodes);
  }

  function adminPage() {
    const gate = $("#admin-gate");
    const panel = $("#admin");
    if (!auth.token()) { gate.replaceChildren("Admins only. ", loginLink("Log in as an admin")); return; }
    if (auth.role() !== "admin") { gate.replaceChildren("This account is not an admin. ", loginLink("Log in as an admin")); return; }
    gate.hidden = true;
    panel.hidden = false;
    const select = $("#sale-select");
    const control = $("#control-outcome");
    let stop = null;
    let history = [];

    async function loadSales(pick) {
      const r = await api("GET", "/api/v1/sales");
      if (r.status !== 200) { say(control, "bad", [problemText(r)]); return; }
      const sales = r.json.sales || [];
      select.replaceChildren(...sales.map((s) => el("option", { value: s.sale_id, text: s.name + " (" + s.status + ")" })));
      const want = pick || new URLSearchParams(location.search).get("sale") || (sales.find((s) => s.status === "live") || sales[0] || {}).sale_id;
      if (want) select.value = want;
      watch();
      roomFigures();
    }

    function watch() {
      if (stop) stop();
      history = [];
      const id = select.value;
      if (!id) return;
      $("#invariant").className = "invariant";
      $("#invariant").textContent = "Invariant: waiting for figures";
      stop = sse("/api/v1/admin/sales/" + encodeURIComponent(id) + "/live", (event, f) => {
        if (event !== "figures") return;
        history.push(f);
        if (history.length > 60) history.shift();
        draw(f);
      }, { auth: true, onError: (status) => { if (status === 401 || status === 403) say(control, "bad", ["The API refused: log in as an admin."]); } });
    }

    function draw(f) {
      const m = f.metrics;
      const inv = $("#invariant");
      inv.className = "invariant " + (m.invariant_ok ? "good" : "broken");
      inv.textContent = m.invariant_ok
        ? "Invariant holds: available + held + sold = " + m.total_stock
        : "INVARIANT BROKEN: available " + m.available + " + held " + m.held + " + sold " + m.sold + " ≠ " + m.total_stock;
      $("#live-status").textContent = "Status: " + f.status + " · orders " + m.orders + " · conversion " + Math.round(m.conversion_rate * 100) + "% · updated " + new Date(Date.parse(f.at) - clockOffset).toLocaleTimeString();
      const col = (fn) => history.map(fn);
      lineChart("chart-stock", [
        { name: "available", color: COLORS.available, points: col((h) => h.metrics.available) },
        { name: "held", color: COLORS.held, points: col((h) => h.metrics.held) },
        { name: "sold", color: COLORS.sold, points: col((h) => h.metrics.sold) },
      ]);
      legend("legend-stock", [["available", COLORS.available, m.available], ["held", COLORS.held, m.held], ["sold", COLORS.sold, m.sold]]);
      lineChart("chart-orders", [{ name: "orders", color: COLORS.orders, points: col((h) => h.orders_per_sec) }]);
      legend("legend-orders", [["orders/s", COLORS.orders, f.orders_per_sec.toFixed(1)], ["total", COLORS.orders, m.orders]]);
      lineChart("chart-queue", [
        { name: "queue", color: COLORS.queue, points: col((h) => h.metrics.queue_length) },
        { name: "admitted", color: COLORS.admitted, points: col((h) => h.admission_rate_per_sec) },
      ]);
      legend("legend-queue", [["waiting", COLORS.queue, m.queue_length], ["admitted/s", COLORS.admitted, f.admission_rate_per_sec.toFixed(1)], ["admitted", COLORS.admitted, m.admitted]]);
      lineChart("chart-expiries", [{ name: "expiries", color: COLORS.expiries, points: col((h) => h.holds_expired_per_sec) }]);
      legend("legend-expiries", [["expired/s", COLORS.expiries, f.holds_expired_per_sec.toFixed(1)], ["total", COLORS.expiries, m.holds_expired]]);
      lineChart("chart-latency", [
        { name: "p50", color: COLORS.p50, points: col((h) => h.reserve.p50_ms) },
        { name: "p99", color: COLORS.p99, points: col((h) => h.reserve.p99_ms) },
      ]);
      legend("legend-latency", [["p50", COLORS.p50, f.reserve.p50_ms.toFixed(1) + " ms"], ["p99", COLORS.p99, f.reserve.p99_ms.toFixed(1) + " ms"], ["samples", "#767676", f.reserve.samples]]);
      const refusals = Object.entries(f.reserve.refusals).concat(Object.entries(f.room_refusals).map(([k, v]) => ["room: " + k, v]));
      barChart("chart-refusals", refusals);
      legend("legend-refusals", [["accepted reserves", COLORS.available, f.reserve.accepted]]);
    }

    // The waiting room's figures and the broadcast, for a sale sold through one.
    const roomPanel = $("#room-panel");
    async function roomFigures() {
      const id = select.value;
      if (!id) { roomPanel.hidden = true; return; }
      const r = await api("GET", "/api/v1/admin/sales/" + encodeURIComponent(id) + "/queue");
      if (r.status !== 200 || select.value !== id) { roomPanel.hidden = true; return; }
      roomPanel.hidden = false;
      const a = r.json.analytics;
      const pct = (x) => Math.round(x * 100) + "%";
      const rows = [
        ["Joined / admitted", a.joined + " / " + a.admitted],
        ["Time in queue p50 / p99", a.time_in_queue_p50_secs.toFixed(0) + " s / " + a.time_in_queue_p99_secs.toFixed(0) + " s"],
        ["Abandoned (left before their turn)", a.abandoned + " (" + pct(a.abandonment_rate) + ")"],
        ["No-shows (admitted, bought nothing)", a.no_shows + " (" + pct(a.no_show_rate) + ")"],
        ["ETA error p50 / p90", a.eta_error_p50_secs.toFixed(0) + " s / " + a.eta_error_p90_secs.toFixed(0) + " s (bias " + a.eta_bias_secs.toFixed(0) + " s)"],
        ["Admissions, busiest minute", a.max_admissions_in_a_minute + (a.admissions_per_minute_limit ? " (limit " + a.admissions_per_minute_limit + "/min)" : " (no limit)")],
      ];
      $("#room-figures").replaceChildren(...rows.map(([k, v]) => el("div", {}, [el("dt", { text: k }), el("dd", { text: v })])));
      $("#room-per-minute").textContent = "Admitted per minute, last 10 minutes: " + a.admissions_per_minute.join(" · ");
    }
    $("#broadcast").addEventListener("submit", async (e) => {
      e.preventDefault();
      const id = select.value;
      const out = $("#broadcast-outcome");
      const r = await api("POST", "/api/v1/admin/sales/" + encodeURIComponent(id) + "/queue/broadcast", { message: $("#broadcast-text").value });
      if (r.status === 200) say(out, "ok", ["Sent to everyone waiting: " + r.json.text]);
      else say(out, "bad", [problemText(r)]);
    });
    setInterval(roomFigures, 5000);

    // Suspected hoarders, with a one-click ban.
    async function hoarders() {
      const out = $("#hoarders-outcome");
      const r = await api("GET", "/api/v1/admin/hoarders");
      if (r.status !== 200) { say(out, "bad", [problemText(r)]); return; }
      const ban = (body, what) => el("button", { type: "button", class: "danger", text: "Ban", on: { click: async () => {
        body.reason = "holds lapsed unpaid again and again (" + what + ")";
        const b = await api("POST", "/api/v1/admin/hoarders/ban", body);
        if (b.status === 200) { say(out, "ok", ["Banned " + b.json.banned.map((a) => a.email).join(", ") + "; their holds are back in stock."]); hoarders(); }
        else say(out, "bad", [problemText(b)]);
      } } });
      const rows = [];
      (r.json.accounts || []).forEach((h) => {
        const a = h.accounts[0] || { email: h.subject, status: "?" };
        rows.push(el("tr", {}, [el("td", { text: "account" }), el("td", { text: a.email }), el("td", { text: String(h.lapsed) }),
          el("td", { text: new Date(h.last_lapsed_at).toLocaleString() }), el("td", { text: a.status }),
          el("td", {}, a.status === "banned" ? [] : [ban({ user_id: h.subject }, a.email)])]));
      });
      (r.json.devices || []).forEach((h) => {
        const active = h.accounts.filter((a) => a.status !== "banned");
        rows.push(el("tr", {}, [el("td", { text: "device" }), el("td", { text: h.subject + " (" + h.accounts.map((a) => a.email).join(", ") + ")" }),
          el("td", { text: String(h.lapsed) }), el("td", { text: new Date(h.last_lapsed_at).toLocaleString() }),
          el("td", { text: active.length ? active.length + " active" : "banned" }),
          el("td", {}, active.length ? [ban({ device_id: h.subject }, "device " + h.subject)] : [])]));
      });
      if (!rows.length) { $("#hoarders").replaceChildren(el("p", { text: "Nobody so far." })); return; }
      const head = el("tr", {}, ["Kind", "Who", "Lapsed", "Last lapsed", "Status", ""].map((t) => el("th", { scope: "col", text: t })));
      $("#hoarders").replaceChildren(el("table", { id: "hoarders-table" }, [el("thead", {}, [head]), el("tbody", {}, rows)]));
    }
    $("#hoarders-refresh").addEventListener("click", hoarders);
    hoarders();

    select.addEventListener("change", () => { watch(); roomFigures(); });
    ["pause", "resume", "stop"].forEach((action) => {
      $("#" + action).addEventListener("click", async () => {
        const id = select.value;
        if (!id) return;
        if (action === "stop" && !confirm("Stop this sale for good?")) return;
        const r = await api("POST", "/api/v1/admin/sales/" + encodeURIComponent(id) + "/" + action);
        if (r.status === 200) {
          say(control, "ok", ["Sale " + r.json.name + " is now " + r.json.status + "."]);
          const opt = select.selectedOptions[0];
          if (opt) opt.textContent = r.json.name + " (" + r.json.status + ")";
        } else {
          say(control, "bad", [problemText(r)]);
        }
      });
    });

    // Default schedule: starts in five minutes, lasts an hour (in the admin's local time).
    const local = (ms) => { const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000); return d.toISOString().slice(0, 19); };
    $("#f-starts").value = local(serverNow() + 5 * 60000);
    $("#f-ends").value = local(serverNow() + 65 * 60000);

    $("#create-sale").addEventListener("submit", async (e) => {
      e.preventDefault();
      const out = $("#create-outcome");
      const form = e.target;
      $$("[aria-invalid]", form).forEach((n) => n.removeAttribute("aria-invalid"));
      const val = (n) => form.elements[n].value.trim();
      const iso = (n) => { const t = new Date(val(n)); return isNaN(t) ? val(n) : t.toISOString(); };
      const body = {
        name: val("name"), description: val("description"), original_price: val("original_price"),
        sale_price: val("sale_price"), currency: val("currency").toUpperCase(),
        total_stock: Number(val("total_stock")), per_user_limit: Number(val("per_user_limit")),
        hold_seconds: val("hold_seconds") ? Number(val("hold_seconds")) : null,
        starts_at: iso("starts_at"), ends_at: iso("ends_at"), queue_required: form.elements.queue_required.checked,
      };
      const r = await api("POST", "/api/v1/admin/sales", body);
      if (r.status === 201) {
        out.replaceChildren(el("div", { class: "msg ok", text: "Created " + r.json.name + " (" + r.json.status + ", starts " + new Date(r.json.starts_at).toLocaleString() + ")." }));
        loadSales(r.json.sale_id);
        return;
      }
      const detail = problemText(r);
      Object.keys(body).forEach((k) => { if (detail.includes(k) && form.elements[k]) form.elements[k].setAttribute("aria-invalid", "true"); });
      out.replaceChildren(el("div", { class: "msg bad", text: "Not created: " + detail }));
    });

    loadSales();
  }

  // --- start ------------------------------------------------------------------------------------------
  renderAccount();
  const pages = { storefront, sale: salePage, queue: queuePage, cart: cartPage, orders: ordersPage,
    login: loginPage, signup: signupPage, admin: adminPage };
  const start = pages[document.body.dataset.page];
  if (start) start();
})();
