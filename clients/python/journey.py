"""A buyer's journey through the Stampede API with the client `openapi-python-client` generates
from the server's own /openapi.json (package `stampede_client`, see openapi-python-client.yaml):
register, log in (after a wrong password: a typed 401 problem), pick a live sale with stock,
reserve one unit, pay for it (with an Idempotency-Key, then the same request again), and find
the order, confirmed, in the buyer's list.

The generated client parses each answer into its models (a required field that is missing
fails there); on top of that every field the journey reads is checked for the type the document
gives it, and fields the server sends that the document does not name are reported.

    STAMPEDE_URL=http://127.0.0.1:8080 python journey.py

scripts/client-journeys generates and installs the client, then runs this.
"""

from __future__ import annotations

import math
import os
import sys
import traceback
import uuid
from datetime import UTC, datetime
from typing import Any, NoReturn

from stampede_client import AuthenticatedClient, Client
from stampede_client.api.accounts import login, register
from stampede_client.api.cart import reserve
from stampede_client.api.orders import create_order, list_orders
from stampede_client.api.sales import list_sales
from stampede_client.models import (
    HoldDto,
    LoginBody,
    LoginDto,
    OrderBody,
    OrderDto,
    OrdersDto,
    PaymentBody,
    PaymentDto,
    Problem,
    RegisterBody,
    Registered,
    ReserveBody,
    SaleDto,
    SalesDto,
)
from stampede_client.types import Response


class JourneyError(Exception):
    pass


def fail(step: str, message: str) -> NoReturn:
    raise JourneyError(f"{step}: {message}")


def check(step: str, ok: bool, message: str) -> None:
    if not ok:
        fail(step, message)


def log(step: str, message: str) -> None:
    print(f"  py  {step:<8} {message}", flush=True)


# Fields the server sends that the document does not name: a generated model keeps them in
# `additional_properties`, out of sight. Reported, not failed.
undocumented: set[str] = set()


def collect_undocumented(route: str, model: Any, at: str = "body") -> None:
    for name in getattr(model, "additional_keys", []):
        undocumented.add(f"{route}: {at}.{name}")
    for field in getattr(type(model), "__attrs_attrs__", ()):
        value = getattr(model, field.name)
        items = value if isinstance(value, list) else [value]
        for item in items:
            if hasattr(item, "additional_properties"):
                suffix = "[]" if isinstance(value, list) else ""
                collect_undocumented(route, item, f"{at}.{field.name}{suffix}")


def answer(
    step: str, route: str, response: Response[Any], status: int, model: type, media: str = "application/json"
) -> Any:
    """The parsed body of a `status` answer of type `model`, served as `media`."""
    parsed = response.parsed
    if response.status_code != status:
        detail = f"{parsed.code}: {parsed.detail}" if isinstance(parsed, Problem) else response.content[:400]
        fail(step, f"{route}: expected {status}, got {int(response.status_code)} {detail!r}")
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    check(step, content_type == media, f"{route} → {status}: content type {content_type!r}, the document says {media}")
    check(
        step, isinstance(parsed, model), f"{route} → {status}: parsed as {type(parsed).__name__}, not {model.__name__}"
    )
    collect_undocumented(route, parsed)
    return parsed


def typed(step: str, where: str, value: Any, kind: type | tuple[type, ...]) -> None:
    """`value` (read from the answer) has the type the document gives it."""
    check(
        step,
        isinstance(value, kind) and not (kind is int and isinstance(value, bool)),
        f"{where}: the document's type is {kind}, the server sent {value!r}",
    )


def in_future(step: str, where: str, stamp: str) -> None:
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        fail(step, f"{where}: {stamp!r} is not an RFC 3339 time")
    check(step, when.tzinfo is not None and when > datetime.now(UTC), f"{where}: {stamp} is not in the future")


def journey(base_url: str) -> None:
    anonymous = Client(base_url=base_url, raise_on_unexpected_status=True)

    # 1. register a new buyer
    step = "register"
    email = f"journey-py-{uuid.uuid4()}@example.com"
    password = f"journey-{uuid.uuid4()}"
    registered: Registered = answer(
        step,
        "POST /api/v1/auth/register",
        register.sync_detailed(
            client=anonymous, body=RegisterBody(email=email, password=password, name="Python Journey")
        ),
        201,
        Registered,
    )
    typed(step, "user_id", registered.user_id, str)
    check(step, registered.user_id != "", "empty user_id")
    log(step, f"{email} → user {registered.user_id}")

    # 2. log in: a wrong password first (the error is a typed problem), then the right one
    step = "login"
    refused: Problem = answer(
        step,
        "POST /api/v1/auth/login",
        login.sync_detailed(client=anonymous, body=LoginBody(email=email, password=f"{password}-wrong")),
        401,
        Problem,
        "application/problem+json",
    )
    check(
        step,
        refused.code == "bad_credentials",
        f"wrong password: code {refused.code}, expected bad_credentials",
    )
    check(step, refused.status == 401, f"wrong password: problem status {refused.status}, expected 401")
    session: LoginDto = answer(
        step,
        "POST /api/v1/auth/login",
        login.sync_detailed(client=anonymous, body=LoginBody(email=email, password=password)),
        200,
        LoginDto,
    )
    for name in ("token", "user_id", "role", "expires_at"):
        typed(step, name, getattr(session, name), str)
    check(step, session.token != "", "empty token")
    check(step, session.user_id == registered.user_id, f"user_id {session.user_id}, registered as {registered.user_id}")
    check(step, session.role == "buyer", f"role {session.role}, expected buyer")
    in_future(step, "expires_at", session.expires_at)
    log(
        step,
        f"wrong password → 401 {refused.code}; bearer token for {session.role}, expires {session.expires_at}",
    )

    buyer = AuthenticatedClient(base_url=base_url, token=session.token, raise_on_unexpected_status=True)

    # 3. list the sales, pick a live one with stock that needs no waiting room
    step = "sales"
    sales: SalesDto = answer(
        step, "GET /api/v1/sales", list_sales.sync_detailed(client=buyer, status="live"), 200, SalesDto
    )
    for s in sales.sales:
        check(step, isinstance(s, SaleDto), f"a sale parsed as {type(s).__name__}")
        check(step, s.status == "live", f"asked for live sales, got {s.sale_id} {s.status}")
        typed(step, f"sales[{s.sale_id}].available", s.available, int)
        typed(step, f"sales[{s.sale_id}].queue_required", s.queue_required, bool)
        typed(step, f"sales[{s.sale_id}].sale_price", s.sale_price, str)
    picked = [s for s in sales.sales if s.available > 0 and not s.queue_required]
    check(step, bool(picked), f"no live sale with stock and no queue among {len(sales.sales)}")
    sale = picked[0]
    log(
        step,
        f'{len(sales.sales)} live; picked {sale.sale_id} "{sale.name}" at {sale.sale_price} {sale.currency}, {sale.available} available',
    )

    # 4. reserve one unit
    step = "reserve"
    hold: HoldDto = answer(
        step,
        "POST /api/v1/cart/items",
        reserve.sync_detailed(client=buyer, body=ReserveBody(sale_id=sale.sale_id, quantity=1)),
        201,
        HoldDto,
    )
    typed(step, "quantity", hold.quantity, int)
    for name in ("hold_id", "sale_id", "unit_price", "currency", "expires_at"):
        typed(step, name, getattr(hold, name), str)
    check(step, hold.sale_id == sale.sale_id, f"hold is for {hold.sale_id}, not {sale.sale_id}")
    check(step, hold.quantity == 1, f"quantity {hold.quantity}, expected 1")
    check(step, hold.unit_price == sale.sale_price, f"unit_price {hold.unit_price}, the sale says {sale.sale_price}")
    check(step, hold.currency == sale.currency, f"currency {hold.currency}, the sale says {sale.currency}")
    in_future(step, "expires_at", hold.expires_at)
    log(step, f"hold {hold.hold_id}: 1 × {hold.unit_price} {hold.currency} until {hold.expires_at}")

    # 5. pay, with an Idempotency-Key; the same request again is the same order
    step = "pay"
    key = str(uuid.uuid4())
    body = OrderBody(hold_ids=[hold.hold_id], payment=PaymentBody(method="card", token="tok_ok"))
    order: OrderDto = answer(
        step,
        "POST /api/v1/orders",
        create_order.sync_detailed(client=buyer, body=body, idempotency_key=key),
        201,
        OrderDto,
    )
    check(step, order.status == "confirmed", f"status {order.status}, expected confirmed")
    check(step, len(order.items) == 1, f"{len(order.items)} items, expected 1")
    item = order.items[0]
    typed(step, "items[0].quantity", item.quantity, int)
    check(step, item.sale_id == sale.sale_id and item.quantity == 1, f"item {item.to_dict()}")
    check(step, item.unit_price == hold.unit_price, f"unit_price {item.unit_price}, the hold says {hold.unit_price}")
    typed(step, "total", order.total, str)
    check(
        step,
        math.isclose(float(order.total), float(hold.unit_price)),
        f"total {order.total}, expected {hold.unit_price}",
    )
    check(step, order.currency == hold.currency, f"currency {order.currency}, the hold says {hold.currency}")
    check(step, isinstance(order.payment, PaymentDto), f"payment parsed as {order.payment!r}, not a PaymentDto")
    assert isinstance(order.payment, PaymentDto)
    check(step, order.payment.method == "card", f"payment method {order.payment.method}")
    check(step, order.payment.status == "captured", f"payment status {order.payment.status}, expected captured")
    replayed: OrderDto = answer(
        step,
        "POST /api/v1/orders",
        create_order.sync_detailed(client=buyer, body=body, idempotency_key=key),
        201,
        OrderDto,
    )
    check(step, replayed.order_id == order.order_id, f"replay gave order {replayed.order_id}, not {order.order_id}")
    log(
        step,
        f"order {order.order_id} {order.status}, {order.total} {order.currency}, payment {order.payment.status}; replay → same order",
    )

    # 6. the order is in the buyer's list, confirmed
    step = "orders"
    orders: OrdersDto = answer(step, "GET /api/v1/orders", list_orders.sync_detailed(client=buyer), 200, OrdersDto)
    mine = [o for o in orders.orders if o.order_id == order.order_id]
    check(step, len(mine) == 1, f"order {order.order_id} found {len(mine)} times in {len(orders.orders)} orders")
    check(step, len(orders.orders) == 1, f"a new buyer with one order has {len(orders.orders)}")
    check(step, mine[0].status == "confirmed", f"status {mine[0].status}, expected confirmed")
    log(step, f"{order.order_id} listed, confirmed")


def main() -> int:
    base_url = os.environ.get("STAMPEDE_URL", "")
    if not base_url:
        print("set STAMPEDE_URL (the server)", file=sys.stderr)
        return 2
    try:
        journey(base_url)
    except JourneyError as e:
        print(f"  py  FAILED at {e}", file=sys.stderr)
        return 1
    # The generated client's own errors: a body that does not parse, an undocumented status.
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        print(f"  py  FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    for field in sorted(undocumented):
        print(f"  py  note     undocumented field in an answer: {field}")
    print("  py  journey passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
