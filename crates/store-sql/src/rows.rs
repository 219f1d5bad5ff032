//! Decoding rows back into domain types, once for both engines: every function here is generic
//! over the sqlx row type ([`DbRow`]). Everything read here was written by a store, but a
//! malformed value (an unknown state word, a negative quantity) is still reported as an
//! `Internal` error rather than trusted or panicked on.

use sqlx::{ColumnIndex, Decode, Row, Type};

use stampede_app::ports::{PortResult, Role, User};
use stampede_core::checkout::{FoundHold, OrderLine};
use stampede_core::{
    Currency, DropId, Hold, HoldId, HoldState, Money, Order, OrderId, OrderItem, OrderStatus,
    Payment, PaymentId, PaymentStatus, ProductId, Sale, SaleControl, SaleId, StockLevels,
    Timestamp, UserId,
};

use crate::internal;

/// A row that yields a `T` from a named column; every sqlx row does for every owned type its
/// engine decodes.
pub trait Column<T> {
    /// The column's value, with a decoding failure as an `Internal` error.
    fn column(&self, name: &str) -> PortResult<T>;
}

impl<R, T> Column<T> for R
where
    R: Row,
    T: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    for<'a> &'a str: ColumnIndex<R>,
{
    fn column(&self, name: &str) -> PortResult<T> {
        self.try_get(name)
            .map_err(|e| internal(format!("column {name}: {e}")))
    }
}

/// A row of either engine: the column types the stores' tables use, as supertraits so generic
/// code needs no further bounds.
pub trait DbRow:
    Column<String> + Column<Option<String>> + Column<i64> + Column<Option<i64>> + Column<bool>
{
}

impl<R> DbRow for R where
    R: Column<String> + Column<Option<String>> + Column<i64> + Column<Option<i64>> + Column<bool>
{
}

/// One column.
pub fn col<T>(row: &impl Column<T>, name: &str) -> PortResult<T> {
    row.column(name)
}

/// A quantity or limit column: stored as a 64-bit integer, must fit a `u32`.
pub fn col_u32<R: Column<i64>>(row: &R, name: &str) -> PortResult<u32> {
    let v: i64 = row.column(name)?;
    u32::try_from(v).map_err(|_| internal(format!("column {name}: {v} is not a u32")))
}

/// A time column.
pub fn col_ts<R: Column<i64>>(row: &R, name: &str) -> PortResult<Timestamp> {
    Ok(Timestamp(row.column(name)?))
}

/// A money column.
pub fn col_money<R: Column<i64>>(row: &R, name: &str) -> PortResult<Money> {
    Ok(Money(row.column(name)?))
}

/// A stored word parsed by one of the domain's `parse` functions.
pub fn col_word<T, R: Column<Option<String>>>(
    row: &R,
    name: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> PortResult<T> {
    col_opt_word(row, name, parse)?.ok_or_else(|| internal(format!("column {name}: NULL")))
}

/// A stored word or NULL, parsed like [`col_word`].
pub fn col_opt_word<T, R: Column<Option<String>>>(
    row: &R,
    name: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> PortResult<Option<T>> {
    let s: Option<String> = row.column(name)?;
    s.map(|s| parse(&s).ok_or_else(|| internal(format!("column {name}: unknown word {s:?}"))))
        .transpose()
}

/// Columns of [`user`].
#[macro_export]
macro_rules! user_cols {
    () => {
        "id, email, name, role, created_at"
    };
}

/// A `users` row.
pub fn user<R: DbRow>(row: &R) -> PortResult<User> {
    Ok(User {
        id: UserId::from_trusted(col(row, "id")?),
        email: col(row, "email")?,
        name: col(row, "name")?,
        role: col_word(row, "role", Role::parse)?,
        created_at: col_ts(row, "created_at")?,
    })
}

/// Columns of [`sale`].
#[macro_export]
macro_rules! sale_cols {
    () => {
        "id, name, description, original_price, sale_price, currency, starts_at, ends_at, \
         per_user_limit, queue_required, hold_seconds, control, total_stock, available, held, \
         sold, product_id, drop_id, category, created_at, updated_at"
    };
}

/// A `sales` row, counters included.
pub fn sale<R: DbRow>(row: &R) -> PortResult<Sale> {
    Ok(Sale {
        id: SaleId::from_trusted(col(row, "id")?),
        name: col(row, "name")?,
        description: col(row, "description")?,
        original_price: col_money(row, "original_price")?,
        sale_price: col_money(row, "sale_price")?,
        currency: Currency::from_trusted(col(row, "currency")?),
        starts_at: col_ts(row, "starts_at")?,
        ends_at: col_ts(row, "ends_at")?,
        per_user_limit: col_u32(row, "per_user_limit")?,
        queue_required: col(row, "queue_required")?,
        hold_seconds: col_u32(row, "hold_seconds")?,
        control: col_word(row, "control", SaleControl::parse)?,
        stock: stock(row)?,
        product_id: col::<Option<String>>(row, "product_id")?.map(ProductId::from_trusted),
        drop_id: col::<Option<String>>(row, "drop_id")?.map(DropId::from_trusted),
        category: col(row, "category")?,
        created_at: col_ts(row, "created_at")?,
        updated_at: col_ts(row, "updated_at")?,
    })
}

/// A sale's counters (`total_stock`, `available`, `held`, `sold`).
pub fn stock<R: DbRow>(row: &R) -> PortResult<StockLevels> {
    Ok(StockLevels {
        total: col(row, "total_stock")?,
        available: col(row, "available")?,
        held: col(row, "held")?,
        sold: col(row, "sold")?,
    })
}

/// A `holds` row joined with its order's status.
pub fn hold_row<R: DbRow>(row: &R) -> PortResult<FoundHold> {
    let order_status = col_opt_word(row, "order_status", OrderStatus::parse)?;
    Ok(FoundHold {
        hold: Hold {
            id: HoldId::from_trusted(col(row, "id")?),
            sale_id: SaleId::from_trusted(col(row, "sale_id")?),
            user_id: UserId::from_trusted(col(row, "user_id")?),
            quantity: col_u32(row, "quantity")?,
            unit_price: col_money(row, "unit_price")?,
            currency: Currency::from_trusted(col(row, "currency")?),
            state: col_word(row, "state", HoldState::parse)?,
            created_at: col_ts(row, "created_at")?,
            expires_at: col_ts(row, "expires_at")?,
        },
        in_pending_order: order_status == Some(OrderStatus::PendingPayment),
    })
}

/// An order line joined with its hold's current state (`hold_quantity`, `state`,
/// `expires_at` from the hold).
pub fn order_line<R: DbRow>(row: &R) -> PortResult<OrderLine> {
    Ok(OrderLine {
        hold_id: HoldId::from_trusted(col(row, "hold_id")?),
        sale_id: SaleId::from_trusted(col(row, "sale_id")?),
        user_id: UserId::from_trusted(col(row, "user_id")?),
        quantity: col_u32(row, "quantity")?,
        hold_quantity: col_u32(row, "hold_quantity")?,
        state: col_word(row, "state", HoldState::parse)?,
        expires_at: col_ts(row, "expires_at")?,
    })
}

/// Columns of [`order`] (from `orders`).
pub const ORDER_COLS: &str = "id, user_id, status, total, currency, created_at";

/// Columns of [`payment`] (from `payments`).
pub const PAYMENT_COLS: &str =
    "id, order_id, status, method, reference, amount, failure_reason, updated_at";

/// An `order_items` row.
pub fn order_item<R: DbRow>(row: &R) -> PortResult<OrderItem> {
    Ok(OrderItem {
        sale_id: SaleId::from_trusted(col(row, "sale_id")?),
        hold_id: HoldId::from_trusted(col(row, "hold_id")?),
        quantity: col_u32(row, "quantity")?,
        unit_price: col_money(row, "unit_price")?,
    })
}

/// A `payments` row.
pub fn payment<R: DbRow>(row: &R) -> PortResult<Payment> {
    Ok(Payment {
        id: PaymentId::from_trusted(col(row, "id")?),
        order_id: OrderId::from_trusted(col(row, "order_id")?),
        status: col_word(row, "status", PaymentStatus::parse)?,
        method: col(row, "method")?,
        reference: col(row, "reference")?,
        amount: col_money(row, "amount")?,
        failure_reason: col(row, "failure_reason")?,
        updated_at: col_ts(row, "updated_at")?,
    })
}

/// An `orders` row with its items (in checkout order) and its payment.
pub fn order<R: DbRow>(
    row: &R,
    items: Vec<OrderItem>,
    payment: Option<Payment>,
) -> PortResult<Order> {
    Ok(Order {
        id: OrderId::from_trusted(col(row, "id")?),
        user_id: UserId::from_trusted(col(row, "user_id")?),
        status: col_word(row, "status", OrderStatus::parse)?,
        items,
        total: col_money(row, "total")?,
        currency: Currency::from_trusted(col(row, "currency")?),
        created_at: col_ts(row, "created_at")?,
        payment,
    })
}
