// A buyer's journey through the Stampede API, written the way a shop's engineers would: the
// types come from `openapi-typescript` run over the server's own /openapi.json, the calls go
// through `openapi-fetch`. Register, log in (after a wrong password: a typed 401 problem),
// pick a live sale with stock, reserve one unit, pay for it (with an Idempotency-Key, then the
// same request again), and find the order, confirmed, in the buyer's list.
//
// Each answer is also checked against the document at run time: its status and content type
// must be documented for the operation, and its body must match the documented schema (types
// only say what the document claims; this says whether the server keeps to it).
//
//   STAMPEDE_URL=http://127.0.0.1:8080 STAMPEDE_OPENAPI=openapi.json node dist/journey.js
//
// scripts/client-journeys generates src/schema.d.ts, type-checks, compiles and runs this.

import { readFileSync } from "node:fs";
import { randomUUID } from "node:crypto";
import createClient from "openapi-fetch";
import type { components, paths } from "./schema.js";

type Sale = components["schemas"]["SaleDto"];
type Hold = components["schemas"]["HoldDto"];
type Order = components["schemas"]["OrderDto"];

class JourneyError extends Error {}

function fail(step: string, message: string): never {
  throw new JourneyError(`${step}: ${message}`);
}

function check(step: string, ok: boolean, message: string): asserts ok {
  if (!ok) fail(step, message);
}

function show(value: unknown): string {
  const text = JSON.stringify(value);
  return text === undefined ? String(value) : text.length > 400 ? `${text.slice(0, 400)}…` : text;
}

// ---- The document, and answers checked against it ------------------------------------------

interface Schema {
  $ref?: string;
  type?: string | string[];
  required?: string[];
  properties?: Record<string, Schema>;
  additionalProperties?: boolean | Schema;
  items?: Schema;
  oneOf?: Schema[];
  anyOf?: Schema[];
  allOf?: Schema[];
  enum?: unknown[];
  minimum?: number;
  maximum?: number;
  format?: string;
}

interface MediaType {
  schema?: Schema;
}

interface ResponseSpec {
  content?: Record<string, MediaType>;
}

interface Operation {
  operationId?: string;
  responses?: Record<string, ResponseSpec>;
}

interface Document {
  paths: Record<string, Record<string, Operation>>;
  components?: { schemas?: Record<string, Schema> };
}

const baseUrl = process.env["STAMPEDE_URL"] ?? "";
const documentPath = process.env["STAMPEDE_OPENAPI"] ?? "";
if (!baseUrl || !documentPath) {
  console.error("set STAMPEDE_URL (the server) and STAMPEDE_OPENAPI (its downloaded /openapi.json)");
  process.exit(2);
}
const document = JSON.parse(readFileSync(documentPath, "utf8")) as Document;

function resolve(schema: Schema): Schema {
  let s = schema;
  for (let depth = 0; s.$ref !== undefined; depth++) {
    const name = s.$ref.replace(/^#\/components\/schemas\//, "");
    const target = document.components?.schemas?.[name];
    if (target === undefined || depth > 20) throw new Error(`unresolvable $ref ${s.$ref}`);
    s = target;
  }
  return s;
}

function typeOf(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "number") return Number.isInteger(value) ? "integer" : "number";
  return typeof value;
}

// Fields the server sends that the document does not name: allowed by the schema (no
// `additionalProperties: false`), but invisible to a generated client. Reported, not failed.
const undocumented = new Set<string>();
let answering = "";

// Where `value` breaks `schema`: one line per mismatch, each naming the field's path.
function mismatches(value: unknown, schema: Schema, at: string): string[] {
  const s = resolve(schema);
  const out: string[] = [];
  for (const part of s.allOf ?? []) out.push(...mismatches(value, part, at));
  for (const [alternatives, exactlyOne] of [
    [s.oneOf, true],
    [s.anyOf, false],
  ] as const) {
    if (alternatives === undefined) continue;
    const matching = alternatives.filter((alt) => mismatches(value, alt, at).length === 0).length;
    if (matching === 0 || (exactlyOne && matching > 1)) {
      out.push(`${at}: ${show(value)} matches ${matching} of the ${alternatives.length} alternatives`);
    }
  }
  if (s.type !== undefined) {
    const allowed = Array.isArray(s.type) ? s.type : [s.type];
    const actual = typeOf(value);
    const fits = allowed.includes(actual) || (actual === "integer" && allowed.includes("number"));
    if (!fits) {
      out.push(`${at}: the document says ${allowed.join(" | ")}, the server sent ${actual === "null" ? "null" : `${actual} ${show(value)}`}`);
      return out;
    }
  }
  if (s.enum !== undefined && !s.enum.some((e) => e === value)) {
    out.push(`${at}: ${show(value)} is not one of ${show(s.enum)}`);
  }
  if (typeof value === "number") {
    if (s.minimum !== undefined && value < s.minimum) out.push(`${at}: ${value} < minimum ${s.minimum}`);
    if (s.maximum !== undefined && value > s.maximum) out.push(`${at}: ${value} > maximum ${s.maximum}`);
    if (s.format === "int32" && (value < -(2 ** 31) || value >= 2 ** 31)) out.push(`${at}: ${value} is not an int32`);
  }
  if (Array.isArray(value) && s.items !== undefined) {
    value.forEach((item, i) => out.push(...mismatches(item, s.items as Schema, `${at}[${i}]`)));
  }
  if (typeOf(value) === "object") {
    const object = value as Record<string, unknown>;
    for (const name of s.required ?? []) {
      if (!(name in object)) out.push(`${at}.${name}: required by the document, absent from the answer`);
    }
    for (const [name, field] of Object.entries(object)) {
      const declared = s.properties?.[name];
      if (declared !== undefined) {
        out.push(...mismatches(field, declared, `${at}.${name}`));
      } else if (s.additionalProperties === false) {
        out.push(`${at}.${name}: sent by the server, not allowed by the document`);
      } else if (s.properties !== undefined) {
        undocumented.add(`${answering}: ${at.replace(/\[\d+\]/g, "[]")}.${name}`);
      }
    }
  }
  return out;
}

// The answer of `method path` against the document: a documented status, a documented content
// type, a body that matches the schema. Fails the step on any difference.
function conforms(step: string, method: string, path: string, response: Response, body: unknown): void {
  const operation = document.paths[path]?.[method.toLowerCase()];
  check(step, operation !== undefined, `${method} ${path} is not in the document`);
  const where = `${method} ${path} → ${response.status}`;
  answering = `${method} ${path}`;
  const documented = operation.responses?.[String(response.status)] ?? operation.responses?.["default"];
  check(step, documented !== undefined, `${where}: status ${response.status} is not documented for ${operation.operationId}`);
  const sent = (response.headers.get("content-type") ?? "").split(";")[0]?.trim() ?? "";
  const media = documented.content ?? {};
  if (Object.keys(media).length === 0) {
    check(step, body === undefined, `${where}: the document has no body, the server sent ${show(body)}`);
    return;
  }
  const spec = media[sent];
  check(step, spec !== undefined, `${where}: content type ${sent || "(none)"}, the document says ${Object.keys(media).join(", ")}`);
  if (spec.schema !== undefined) {
    const problems = mismatches(body, spec.schema, "body");
    check(step, problems.length === 0, `${where} does not match the document:\n    ${problems.join("\n    ")}`);
  }
}

// ---- The journey -----------------------------------------------------------------------------

function log(step: string, message: string): void {
  console.log(`  ts  ${step.padEnd(8)} ${message}`);
}

async function journey(): Promise<void> {
  const anonymous = createClient<paths>({ baseUrl });

  // 1. register a new buyer
  let step = "register";
  const email = `journey-ts-${randomUUID()}@example.com`;
  const password = `journey-${randomUUID()}`;
  const registered = await anonymous.POST("/api/v1/auth/register", {
    body: { email, password, name: "TypeScript Journey" },
  });
  check(step, registered.response.status === 201, `expected 201, got ${registered.response.status} ${show(registered.error)}`);
  conforms(step, "POST", "/api/v1/auth/register", registered.response, registered.data);
  check(step, registered.data !== undefined, "no body");
  const userId = registered.data.user_id;
  check(step, userId.length > 0, "empty user_id");
  log(step, `${email} → user ${userId}`);

  // 2. log in: a wrong password first (the error is a typed problem), then the right one
  step = "login";
  const refused = await anonymous.POST("/api/v1/auth/login", { body: { email, password: `${password}-wrong` } });
  check(step, refused.response.status === 401, `wrong password: expected 401, got ${refused.response.status}`);
  conforms(step, "POST", "/api/v1/auth/login", refused.response, refused.error);
  check(step, refused.error?.code === "bad_credentials", `wrong password: code ${refused.error?.code}, expected bad_credentials`);
  const loggedIn = await anonymous.POST("/api/v1/auth/login", { body: { email, password } });
  check(step, loggedIn.response.status === 200, `expected 200, got ${loggedIn.response.status} ${show(loggedIn.error)}`);
  conforms(step, "POST", "/api/v1/auth/login", loggedIn.response, loggedIn.data);
  check(step, loggedIn.data !== undefined, "no body");
  const session = loggedIn.data;
  check(step, session.token.length > 0, "empty token");
  check(step, session.user_id === userId, `user_id ${session.user_id}, registered as ${userId}`);
  check(step, session.role === "buyer", `role ${session.role}, expected buyer`);
  check(step, Date.parse(session.expires_at) > Date.now(), `expires_at ${session.expires_at} is not in the future`);
  log(step, `wrong password → 401 ${refused.error.code}; bearer token for ${session.role}, expires ${session.expires_at}`);

  const buyer = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${session.token}` } });

  // 3. list the sales, pick a live one with stock that needs no waiting room
  step = "sales";
  const listed = await buyer.GET("/api/v1/sales", { params: { query: { status: "live" } } });
  check(step, listed.response.status === 200, `expected 200, got ${listed.response.status} ${show(listed.error)}`);
  conforms(step, "GET", "/api/v1/sales", listed.response, listed.data);
  check(step, listed.data !== undefined, "no body");
  for (const s of listed.data.sales) {
    check(step, s.status === "live", `asked for live sales, got ${s.sale_id} ${s.status}`);
  }
  const sale: Sale | undefined = listed.data.sales.find((s) => s.available > 0 && !s.queue_required);
  check(step, sale !== undefined, `no live sale with stock and no queue among ${listed.data.sales.length}`);
  log(step, `${listed.data.sales.length} live; picked ${sale.sale_id} "${sale.name}" at ${sale.sale_price} ${sale.currency}, ${sale.available} available`);

  // 4. reserve one unit
  step = "reserve";
  const reserved = await buyer.POST("/api/v1/cart/items", { body: { sale_id: sale.sale_id, quantity: 1 } });
  check(step, reserved.response.status === 201, `expected 201, got ${reserved.response.status} ${show(reserved.error)}`);
  conforms(step, "POST", "/api/v1/cart/items", reserved.response, reserved.data);
  check(step, reserved.data !== undefined, "no body");
  const hold: Hold = reserved.data;
  check(step, hold.sale_id === sale.sale_id, `hold is for ${hold.sale_id}, not ${sale.sale_id}`);
  check(step, hold.quantity === 1, `quantity ${hold.quantity}, expected 1`);
  check(step, hold.unit_price === sale.sale_price, `unit_price ${hold.unit_price}, the sale says ${sale.sale_price}`);
  check(step, hold.currency === sale.currency, `currency ${hold.currency}, the sale says ${sale.currency}`);
  check(step, Date.parse(hold.expires_at) > Date.now(), `expires_at ${hold.expires_at} is not in the future`);
  log(step, `hold ${hold.hold_id}: 1 × ${hold.unit_price} ${hold.currency} until ${hold.expires_at}`);

  // 5. pay, with an Idempotency-Key; the same request again is the same order
  step = "pay";
  const idempotencyKey = randomUUID();
  const orderRequest = {
    params: { header: { "Idempotency-Key": idempotencyKey } },
    body: { hold_ids: [hold.hold_id], payment: { method: "card", token: "tok_ok" } },
  };
  const paid = await buyer.POST("/api/v1/orders", orderRequest);
  check(step, paid.response.status === 201, `expected 201, got ${paid.response.status} ${show(paid.error)}`);
  conforms(step, "POST", "/api/v1/orders", paid.response, paid.data);
  check(step, paid.data !== undefined, "no body");
  const order: Order = paid.data;
  check(step, order.status === "confirmed", `status ${order.status}, expected confirmed`);
  check(step, order.items.length === 1, `${order.items.length} items, expected 1`);
  const item = order.items[0];
  check(step, item !== undefined && item.sale_id === sale.sale_id && item.quantity === 1, `items ${show(order.items)}`);
  check(step, item.unit_price === hold.unit_price, `unit_price ${item.unit_price}, the hold says ${hold.unit_price}`);
  check(step, Number(order.total) === Number(hold.unit_price), `total ${order.total}, expected ${hold.unit_price}`);
  check(step, order.currency === hold.currency, `currency ${order.currency}, the hold says ${hold.currency}`);
  check(step, order.payment != null, "no payment on a confirmed order");
  check(step, order.payment.method === "card", `payment method ${order.payment.method}`);
  check(step, order.payment.status === "captured", `payment status ${order.payment.status}, expected captured`);
  const replayed = await buyer.POST("/api/v1/orders", orderRequest);
  check(step, replayed.response.status === 201, `replay: expected 201, got ${replayed.response.status} ${show(replayed.error)}`);
  conforms(step, "POST", "/api/v1/orders", replayed.response, replayed.data);
  check(step, replayed.data?.order_id === order.order_id, `replay gave order ${replayed.data?.order_id}, not ${order.order_id}`);
  log(step, `order ${order.order_id} ${order.status}, ${order.total} ${order.currency}, payment ${order.payment.status}; replay → same order`);

  // 6. the order is in the buyer's list, confirmed
  step = "orders";
  const orders = await buyer.GET("/api/v1/orders");
  check(step, orders.response.status === 200, `expected 200, got ${orders.response.status} ${show(orders.error)}`);
  conforms(step, "GET", "/api/v1/orders", orders.response, orders.data);
  check(step, orders.data !== undefined, "no body");
  const mine = orders.data.orders.filter((o) => o.order_id === order.order_id);
  check(step, mine.length === 1, `order ${order.order_id} found ${mine.length} times in ${orders.data.orders.length} orders`);
  check(step, orders.data.orders.length === 1, `a new buyer with one order has ${orders.data.orders.length}`);
  check(step, mine[0]?.status === "confirmed", `status ${mine[0]?.status}, expected confirmed`);
  log(step, `${order.order_id} listed, confirmed`);
}

try {
  await journey();
  for (const field of undocumented) console.log(`  ts  note     undocumented field in an answer: ${field}`);
  console.log("  ts  journey passed");
} catch (e) {
  if (e instanceof JourneyError) {
    console.error(`  ts  FAILED at ${e.message}`);
  } else {
    console.error("  ts  FAILED:", e);
  }
  process.exit(1);
}
