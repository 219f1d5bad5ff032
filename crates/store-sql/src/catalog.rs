//! The catalog: products, drops, and browsing sales, drops and products by category, status
//! and name. Only the full-text search condition differs between the engines (FTS5, or
//! `tsvector`: [`Engine::search_condition`]). Statuses of sales and drops are derived from the
//! clock, so a status filter is a condition on the schedule at the browse's `now`, written to
//! agree with `Sale::status_at` and `DropEvent::status_at`.

use std::fmt::Write as _;

use sqlx::Pool;

use stampede_app::ports::{Browse, PortResult};
use stampede_core::{DropEvent, DropId, Product, ProductId, ProductStatus, Sale, SaleStatus};

use crate::engine::{find, statement, Arg, Bind, Engine, Run};
use crate::rows::{self, col, col_money, col_ts, col_word, DbRow};
use crate::{internal, sale_cols};

/// Columns of [`product`], from `products p`.
pub const PRODUCT_COLS: &str = "p.id, p.name, p.description, p.category, p.image_urls, \
     p.regular_price, p.currency, p.status, p.created_at, p.updated_at";

/// Columns of [`drop_event`], from `drops d`.
pub const DROP_COLS: &str = "d.id, d.name, d.description, d.category, d.starts_at, d.ends_at, \
     d.per_user_limit, d.created_at, d.updated_at";

/// A `products` row.
pub fn product<R: DbRow>(row: &R) -> PortResult<Product> {
    let urls: String = col(row, "image_urls")?;
    Ok(Product {
        id: ProductId::from_trusted(col(row, "id")?),
        name: col(row, "name")?,
        description: col(row, "description")?,
        category: col(row, "category")?,
        image_urls: serde_json::from_str(&urls)
            .map_err(|e| internal(format!("column image_urls: {e}")))?,
        regular_price: col_money(row, "regular_price")?,
        currency: stampede_core::Currency::from_trusted(col(row, "currency")?),
        status: col_word(row, "status", ProductStatus::parse)?,
        created_at: col_ts(row, "created_at")?,
        updated_at: col_ts(row, "updated_at")?,
    })
}

/// A `drops` row.
pub fn drop_event<R: DbRow>(row: &R) -> PortResult<DropEvent> {
    let limit: Option<i64> = col(row, "per_user_limit")?;
    Ok(DropEvent {
        id: DropId::from_trusted(col(row, "id")?),
        name: col(row, "name")?,
        description: col(row, "description")?,
        category: col(row, "category")?,
        starts_at: col_ts(row, "starts_at")?,
        ends_at: col_ts(row, "ends_at")?,
        per_user_limit: limit
            .map(|l| u32::try_from(l).map_err(|_| internal("column per_user_limit: not a u32")))
            .transpose()?,
        created_at: col_ts(row, "created_at")?,
        updated_at: col_ts(row, "updated_at")?,
    })
}

/// Stores a new product.
pub async fn insert_product<DB: Engine>(writer: &Pool<DB>, p: &Product) -> PortResult<()> {
    put_product(writer, p, true).await.map(|_| ())
}

/// Inserts a `new` product, or writes all its fields but the creation time (`false`: none such).
pub async fn put_product<DB: Engine>(
    writer: &Pool<DB>,
    p: &Product,
    new: bool,
) -> PortResult<bool> {
    let sql = if new {
        "INSERT INTO products (id, name, description, category, image_urls, regular_price, \
         currency, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    } else {
        "UPDATE products SET name = $2, description = $3, category = $4, image_urls = $5, \
         regular_price = $6, currency = $7, status = $8, updated_at = $9 WHERE id = $1"
    };
    let urls = serde_json::to_string(&p.image_urls).map_err(internal)?;
    let q = statement::<DB>(sql)
        .text(p.id.as_str())
        .text(&p.name)
        .text(&p.description)
        .text(&p.category)
        .string(urls)
        .int(p.regular_price.0)
        .text(p.currency.as_str())
        .text(p.status.as_str());
    let q = if new { q.int(p.created_at.0) } else { q };
    Ok(q.int(p.updated_at.0).run_in(writer, "put_product").await? == 1)
}

/// One product.
pub async fn product_by_id<DB: Engine>(
    reader: &Pool<DB>,
    id: &ProductId,
) -> PortResult<Option<Product>> {
    let sql = format!("SELECT {PRODUCT_COLS} FROM products p WHERE p.id = $1");
    find(reader, &sql, id.as_str(), product).await
}

/// Stores a new drop.
pub async fn insert_drop<DB: Engine>(writer: &Pool<DB>, d: &DropEvent) -> PortResult<()> {
    put_drop(writer, d, true).await.map(|_| ())
}

/// Inserts a `new` drop, or writes all its fields but the creation time (`false`: none such).
pub async fn put_drop<DB: Engine>(writer: &Pool<DB>, d: &DropEvent, new: bool) -> PortResult<bool> {
    let sql = if new {
        "INSERT INTO drops (id, name, description, category, starts_at, ends_at, \
         per_user_limit, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    } else {
        "UPDATE drops SET name = $2, description = $3, category = $4, starts_at = $5, \
         ends_at = $6, per_user_limit = $7, updated_at = $8 WHERE id = $1"
    };
    let q = statement::<DB>(sql)
        .text(d.id.as_str())
        .text(&d.name)
        .text(&d.description)
        .text(&d.category)
        .int(d.starts_at.0)
        .int(d.ends_at.0)
        .opt_int(d.per_user_limit.map(i64::from));
    let q = if new { q.int(d.created_at.0) } else { q };
    Ok(q.int(d.updated_at.0).run_in(writer, "put_drop").await? == 1)
}

/// One drop.
pub async fn drop_by_id<DB: Engine>(
    reader: &Pool<DB>,
    id: &DropId,
) -> PortResult<Option<DropEvent>> {
    let sql = format!("SELECT {DROP_COLS} FROM drops d WHERE d.id = $1");
    find(reader, &sql, id.as_str(), drop_event).await
}

/// A page of sales matching the browse.
pub async fn browse_sales<DB: Engine>(reader: &Pool<DB>, b: &Browse) -> PortResult<Vec<Sale>> {
    let mut q = Browsing::new(concat!("SELECT ", sale_cols!(), " FROM sales s WHERE 1 = 1").into());
    q.common::<DB>("sales", "s", b);
    if let Some(drop) = &b.drop_id {
        q.and("s", "drop_id =", Arg::String(drop.as_str().to_owned()));
    }
    q.statuses("s", true, b);
    q.page("s", b);
    q.rows(reader).await?.iter().map(rows::sale).collect()
}

/// A page of drops matching the browse.
pub async fn browse_drops<DB: Engine>(reader: &Pool<DB>, b: &Browse) -> PortResult<Vec<DropEvent>> {
    let mut q = Browsing::new(format!("SELECT {DROP_COLS} FROM drops d WHERE 1 = 1"));
    q.common::<DB>("drops", "d", b);
    q.statuses("d", false, b);
    q.page("d", b);
    q.rows(reader).await?.iter().map(drop_event).collect()
}

/// A page of products matching the browse.
pub async fn browse_products<DB: Engine>(
    reader: &Pool<DB>,
    b: &Browse,
) -> PortResult<Vec<Product>> {
    let mut q = Browsing::new(format!("SELECT {PRODUCT_COLS} FROM products p WHERE 1 = 1"));
    q.common::<DB>("products", "p", b);
    if !b.product_statuses.is_empty() {
        let statuses: Vec<String> = b
            .product_statuses
            .iter()
            .map(|s| q.arg(Arg::Text(s.as_str())))
            .collect();
        let _ = write!(q.sql, " AND p.status IN ({})", statuses.join(", "));
    }
    q.page("p", b);
    q.rows(reader).await?.iter().map(product).collect()
}

/// A browse statement as it is built: its text, and its arguments in placeholder order.
struct Browsing {
    sql: String,
    args: Vec<Arg<'static>>,
}

impl Browsing {
    fn new(sql: String) -> Self {
        Self {
            sql,
            args: Vec::new(),
        }
    }

    /// Takes an argument; its placeholder (`$N`).
    fn arg(&mut self, arg: Arg<'static>) -> String {
        self.args.push(arg);
        format!("${}", self.args.len())
    }

    /// `AND` the condition `left` on the row `alias`, followed by the argument `arg`.
    fn and(&mut self, alias: &str, left: &str, arg: Arg<'static>) {
        let p = self.arg(arg);
        let _ = write!(self.sql, " AND {alias}.{left} {p}");
    }

    /// `AND` the conditions every browse shares: category, name, cursor.
    fn common<DB: Engine>(&mut self, table: &str, alias: &str, b: &Browse) {
        if let Some(category) = &b.category {
            self.and(alias, "category =", Arg::String(category.clone()));
        }
        if !b.words.is_empty() {
            let param = self.arg(Arg::String(DB::search_query(&b.words)));
            let _ = write!(
                self.sql,
                " AND {}",
                DB::search_condition(table, alias, &param)
            );
        }
        if let Some(after) = &b.after {
            self.and(alias, "id >", Arg::String(after.clone()));
        }
    }

    /// `ORDER BY` the id and `LIMIT` the page.
    fn page(&mut self, alias: &str, b: &Browse) {
        let p = self.arg(Arg::Int(i64::from(b.limit)));
        let _ = write!(self.sql, " ORDER BY {alias}.id LIMIT {p}");
    }

    /// `AND (…)` true when the schedule (and, for sales, the admin's control) gives one of
    /// the statuses at `b.now` (see the module documentation); nothing when any will do.
    fn statuses(&mut self, a: &str, with_control: bool, b: &Browse) {
        if b.statuses.is_empty() {
            return;
        }
        // A drop is never paused: that condition alone takes no time argument.
        let now = if with_control || b.statuses.iter().any(|s| *s != SaleStatus::Paused) {
            self.arg(Arg::Int(b.now.0))
        } else {
            String::new()
        };
        let control = |condition: &str| match with_control {
            true => format!("{a}.control {condition} "),
            false => String::new(),
        };
        let live = format!("{a}.starts_at <= {now} AND {a}.ends_at > {now}");
        let conditions: Vec<String> = b
            .statuses
            .iter()
            .map(|status| match status {
                SaleStatus::Ended => format!("{}{a}.ends_at <= {now}", control("= 'stopped' OR")),
                SaleStatus::Scheduled => format!(
                    "{}{a}.starts_at > {now} AND {a}.ends_at > {now}",
                    control("<> 'stopped' AND")
                ),
                SaleStatus::Paused if !with_control => "1 = 0".to_owned(),
                SaleStatus::Paused => format!("({}{live})", control("= 'paused' AND")),
                SaleStatus::Live => format!("({}{live})", control("= 'running' AND")),
            })
            .collect();
        let _ = write!(self.sql, " AND ({})", conditions.join(" OR "));
    }

    /// Runs the statement on a connection of `reader`; every row.
    async fn rows<DB: Engine>(self, reader: &Pool<DB>) -> PortResult<Vec<DB::Row>> {
        let q = self
            .args
            .into_iter()
            .fold(statement::<DB>(&self.sql), Bind::arg);
        q.all_in(reader).await
    }
}
