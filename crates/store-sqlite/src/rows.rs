//! Decoding rows back into domain types. Everything read here was written by this crate, but a
//! malformed value (an unknown state word, a negative quantity) is still reported as an
//! `Internal` error rather than trusted or panicked on.

use sqlx::sqlite::SqliteRow;
use sqlx::{Decode, Row, Sqlite, Type};

use stampede_app::ports::{PortResult, Role, User};
use stampede_core::checkout::OrderLine;
use stampede_core::{
    Currency, DropId, Hold, HoldId, HoldState, Money, OrderStatus, PaymentStatus, ProductId, Sale,
    SaleControl, SaleId, StockLevels, Timestamp, UserId,
};

use crate::error::internal;

/// One column, with a decoding failure as an `Internal` error.
pub(crate) fn col<'r, T>(row: &'r SqliteRow, name: &str) -> PortResult<T>
where
    T: Decode<'r, Sqlite> + Type<Sqlite>,
{
    row.try_get(name)
        .map_err(|e| internal(format!("column {name}: {e}")))
}

/// A quantity or limit column: stored as INTEGER, must fit a `u32`.
pub(crate) fn col_u32(row: &SqliteRow, name: &str) -> PortResult<u32> {
    let v: i64 = col(row, name)?;
    u32::try_from(v).map_err(|_| internal(format!("column {name}: {v} is not a u32")))
}

/// A time column.
pub(crate) fn col_ts(row: &SqliteRow, name: &str) -> PortResult<Timestamp> {
    Ok(Timestamp(col(row, name)?))
}

/// A money column.
pub(crate) fn col_money(row: &SqliteRow, name: &str) -> PortResult<Money> {
    Ok(Money(col(row, name)?))
}

/// A stored word parsed by one of the domain's `parse` functions.
pub(crate) fn col_word<T>(
    row: &SqliteRow,
    name: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> PortResult<T> {
    let s: String = col(row, name)?;
    parse(&s).ok_or_else(|| internal(format!("column {name}: unknown word {s:?}")))
}

/// Columns of [`user`].
macro_rules! user_cols {
    () => {
        "id, email, name, role, created_at"
    };
}
pub(crate) use user_cols;

/// A `users` row.
pub(crate) fn user(row: &SqliteRow) -> PortResult<User> {
    Ok(User {
        id: UserId::from_trusted(col(row, "id")?),
        email: col(row, "email")?,
        name: col(row, "name")?,
        role: col_word(row, "role", Role::parse)?,
        created_at: col_ts(row, "created_at")?,
    })
}

/// Columns of [`sale`].
macro_rules! sale_cols {
    () => {
        "id, name, description, original_price, sale_price, currency, starts_at, ends_at, \
         per_user_limit, queue_required, hold_seconds, control, total_stock, available, held, \
         sold, product_id, drop_id, category, created_at, updated_at"
    };
}
pub(crate) use sale_cols;

/// A `sales` row, counters included.
pub(crate) fn sale(row: &SqliteRow) -> PortResult<Sale> {
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
        stock: StockLevels {
            total: col(row, "total_stock")?,
            available: col(row, "available")?,
            held: col(row, "held")?,
            sold: col(row, "sold")?,
        },
        product_id: col::<Option<String>>(row, "product_id")?.map(ProductId::from_trusted),
        drop_id: col::<Option<String>>(row, "drop_id")?.map(DropId::from_trusted),
        category: col(row, "category")?,
        created_at: col_ts(row, "created_at")?,
        updated_at: col_ts(row, "updated_at")?,
    })
}

/// Columns of [`hold_row`]: the hold, plus the status of the order it is in (if any).
macro_rules! hold_cols {
    () => {
        "h.id, h.sale_id, h.user_id, h.quantity, h.unit_price, h.currency, h.state, \
         h.created_at, h.expires_at, o.status AS order_status"
    };
}
pub(crate) use hold_cols;

/// The `FROM` clause that goes with [`hold_cols`].
macro_rules! hold_from {
    () => {
        " FROM holds h LEFT JOIN orders o ON o.id = h.order_id "
    };
}
pub(crate) use hold_from;

/// A hold as the adapter sees it: the domain hold plus whether an order is paying for it.
pub(crate) use stampede_core::checkout::FoundHold as HoldRow;

/// A `holds` row joined with its order's status.
pub(crate) fn hold_row(row: &SqliteRow) -> PortResult<HoldRow> {
    let order_status: Option<String> = col(row, "order_status")?;
    Ok(HoldRow {
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
        in_pending_order: order_status.as_deref() == Some(OrderStatus::PendingPayment.as_str()),
    })
}

/// An order line joined with its hold's current state (`hold_quantity`, `state`,
/// `expires_at` from the hold).
pub(crate) fn order_line(row: &SqliteRow) -> PortResult<OrderLine> {
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

/// Parses a payment status word.
pub(crate) fn payment_status(row: &SqliteRow, name: &str) -> PortResult<PaymentStatus> {
    col_word(row, name, PaymentStatus::parse)
}
