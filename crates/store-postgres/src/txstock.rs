//! The stock a write transaction is working on: the `sales` rows and `user_units` rows it has
//! touched, read once, changed in memory through [`StockLevels`]' methods (so their debug
//! assertions fire on any bug) and written back once by [`TxStock::flush`] before the commit.
//!
//! This is what lets a group-commit batch of hundreds of reservations on one sale read and
//! write that sale's row once. Invariants:
//! * every `sales` row is read `FOR NO KEY UPDATE` (the row lock an `UPDATE` of non-key columns
//!   takes; it excludes every other judge but not the `FOR KEY SHARE` of a foreign-key check,
//!   so checkouts inserting order items never queue behind a batch) inside the transaction
//!   that will write it back, so no other node's transaction can change it (or the
//!   `user_units` rows of that sale, which are only ever written under the sale's lock) in
//!   between;
//! * a transaction that touches several sales locks them up front with [`TxStock::lock_sales`],
//!   in sale id order, so two nodes can never deadlock on each other's sale rows;
//! * `flush` refuses to write counters that do not balance or per-buyer units below zero
//!   (release builds too), so a bug aborts the transaction instead of committing an oversell;
//! * dropping a `TxStock` without flushing discards every change (used by the all-or-nothing
//!   payment path).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use sqlx::PgConnection;

use stampede_app::ports::PortResult;
use stampede_core::judge::DropUnits;
use stampede_core::{DropId, Sale, SaleId, StockLevels, UserId};

use crate::error::{internal, OrPort};
use crate::rows::{self, sale_cols};

struct CachedSale {
    sale: Sale,
    dirty: bool,
}

struct CachedUnits {
    units: i64,
    dirty: bool,
}

/// A drop's limit and its sales, as this transaction read them.
struct CachedDrop {
    per_user_limit: Option<u32>,
    sales: Vec<SaleId>,
}

/// The sales and per-buyer units one transaction has read, with its pending changes.
#[derive(Default)]
pub(crate) struct TxStock {
    /// `None`: looked up and not found (so a batch does not look again).
    sales: BTreeMap<SaleId, Option<CachedSale>>,
    units: BTreeMap<(SaleId, UserId), CachedUnits>,
    drops: BTreeMap<DropId, Option<CachedDrop>>,
}

const SELECT_SALE: &str = concat!(
    "SELECT ",
    sale_cols!(),
    " FROM sales WHERE id = $1 FOR NO KEY UPDATE"
);

const SELECT_SALES: &str = concat!(
    "SELECT ",
    sale_cols!(),
    " FROM sales WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE"
);

impl TxStock {
    /// Locks and loads every sale in `ids` not loaded yet, in one statement and in id order
    /// (the deadlock-free order every multi-sale transaction uses). Missing sales are
    /// remembered as missing.
    pub(crate) async fn lock_sales(
        &mut self,
        conn: &mut PgConnection,
        ids: &[&SaleId],
    ) -> PortResult<()> {
        let mut wanted: Vec<String> = ids
            .iter()
            .filter(|id| !self.sales.contains_key(**id))
            .map(|id| id.as_str().to_owned())
            .collect();
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        let found = sqlx::query(SELECT_SALES)
            .bind(&wanted)
            .fetch_all(&mut *conn)
            .await
            .port()?;
        for row in &found {
            let sale = rows::sale(row)?;
            self.sales
                .insert(sale.id.clone(), Some(CachedSale { sale, dirty: false }));
        }
        for id in wanted {
            self.sales.entry(SaleId::from_trusted(id)).or_insert(None);
        }
        Ok(())
    }

    /// [`TxStock::lock_sales`] for `ids` and every other sale of the drops they belong to, in
    /// the same one id-ordered statement: a drop's limit spans its sales, so judging one needs
    /// the buyer's units in all of them to stay put until the commit. A sale's drop never
    /// changes after creation, so finding the siblings before locking is safe. Call it as the
    /// transaction's first lock on sales.
    pub(crate) async fn lock_sales_with_drops(
        &mut self,
        conn: &mut PgConnection,
        ids: &[&SaleId],
    ) -> PortResult<()> {
        let wanted: Vec<String> = ids.iter().map(|id| id.as_str().to_owned()).collect();
        let siblings: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM sales WHERE drop_id IN \
             (SELECT drop_id FROM sales WHERE id = ANY($1) AND drop_id IS NOT NULL)",
        )
        .bind(&wanted)
        .fetch_all(&mut *conn)
        .await
        .port()?;
        let siblings: Vec<SaleId> = siblings.into_iter().map(SaleId::from_trusted).collect();
        let all: Vec<&SaleId> = ids.iter().copied().chain(siblings.iter()).collect();
        self.lock_sales(conn, &all).await
    }

    /// What `user` holds or owns across the drop `sale` belongs to, with the drop's limit, as
    /// this transaction sees it (pending changes included); `None` if the sale is in no drop
    /// or its drop has no limit. Every sale of the drop must be locked by this transaction
    /// ([`TxStock::lock_sales_with_drops`]); if one is not, this refuses (`Internal`) rather
    /// than judge on units another node could be changing.
    pub(crate) async fn drop_units(
        &mut self,
        conn: &mut PgConnection,
        sale: &SaleId,
        user: &UserId,
    ) -> PortResult<Option<DropUnits>> {
        let Some(drop) = self.sale(conn, sale).await?.and_then(|s| s.drop_id.clone()) else {
            return Ok(None);
        };
        self.load_drop(conn, &drop).await?;
        let Some(Some(CachedDrop {
            per_user_limit: Some(limit),
            sales,
        })) = self.drops.get(&drop)
        else {
            return Ok(None);
        };
        let (limit, sales) = (*limit, sales.clone());
        if let Some(unlocked) = sales.iter().find(|s| !self.sales.contains_key(*s)) {
            return Err(internal(format!(
                "sale {unlocked} of drop {drop} judged without its lock"
            )));
        }
        let pairs: Vec<(&SaleId, &UserId)> = sales.iter().map(|s| (s, user)).collect();
        self.load_units(conn, &pairs).await?;
        let mut units = 0;
        for s in &sales {
            units += self.units(conn, s, user).await?;
        }
        Ok(Some(DropUnits {
            units,
            per_user_limit: limit,
        }))
    }

    /// Loads the buyers' units in every other sale of the drops their sales belong to, in one
    /// statement, so judging a batch on a drop costs no statement per buyer.
    pub(crate) async fn load_drop_units(
        &mut self,
        conn: &mut PgConnection,
        pairs: &[(&SaleId, &UserId)],
    ) -> PortResult<()> {
        let mut wanted: Vec<(SaleId, UserId)> = Vec::new();
        for (sale, user) in pairs {
            let Some(drop) = self.sale(conn, sale).await?.and_then(|s| s.drop_id.clone()) else {
                continue;
            };
            self.load_drop(conn, &drop).await?;
            if let Some(Some(d)) = self.drops.get(&drop) {
                if d.per_user_limit.is_some() {
                    wanted.extend(d.sales.iter().map(|s| (s.clone(), (*user).clone())));
                }
            }
        }
        let refs: Vec<(&SaleId, &UserId)> = wanted.iter().map(|(s, u)| (s, u)).collect();
        self.load_units(conn, &refs).await
    }

    async fn load_drop(&mut self, conn: &mut PgConnection, drop: &DropId) -> PortResult<()> {
        if self.drops.contains_key(drop) {
            return Ok(());
        }
        let limit: Option<Option<i64>> =
            sqlx::query_scalar("SELECT per_user_limit FROM drops WHERE id = $1")
                .bind(drop.as_str())
                .fetch_optional(&mut *conn)
                .await
                .port()?;
        let sales: Vec<String> =
            sqlx::query_scalar("SELECT id FROM sales WHERE drop_id = $1 ORDER BY id")
                .bind(drop.as_str())
                .fetch_all(&mut *conn)
                .await
                .port()?;
        let cached = limit.map(|limit| CachedDrop {
            per_user_limit: limit.and_then(|l| u32::try_from(l).ok()),
            sales: sales.into_iter().map(SaleId::from_trusted).collect(),
        });
        self.drops.insert(drop.clone(), cached);
        Ok(())
    }

    /// Loads the units of many `(sale, user)` pairs in one statement (missing rows are 0).
    /// Call with the sales already locked.
    pub(crate) async fn load_units(
        &mut self,
        conn: &mut PgConnection,
        pairs: &[(&SaleId, &UserId)],
    ) -> PortResult<()> {
        let mut sales = Vec::new();
        let mut users = Vec::new();
        for (sale, user) in pairs {
            let key = ((*sale).clone(), (*user).clone());
            if let Entry::Vacant(slot) = self.units.entry(key) {
                slot.insert(CachedUnits {
                    units: 0,
                    dirty: false,
                });
                sales.push(sale.as_str().to_owned());
                users.push(user.as_str().to_owned());
            }
        }
        if sales.is_empty() {
            return Ok(());
        }
        let found: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT u.sale_id, u.user_id, u.units FROM user_units u \
             JOIN UNNEST($1::text[], $2::text[]) AS k(sale_id, user_id) \
             ON u.sale_id = k.sale_id AND u.user_id = k.user_id",
        )
        .bind(&sales)
        .bind(&users)
        .fetch_all(&mut *conn)
        .await
        .port()?;
        for (sale, user, units) in found {
            let key = (SaleId::from_trusted(sale), UserId::from_trusted(user));
            if let Some(c) = self.units.get_mut(&key) {
                c.units = units;
            }
        }
        Ok(())
    }

    /// The sale as this transaction sees it (its counters include the pending changes), locked
    /// on first read.
    pub(crate) async fn sale(
        &mut self,
        conn: &mut PgConnection,
        id: &SaleId,
    ) -> PortResult<Option<&Sale>> {
        if !self.sales.contains_key(id) {
            let row = sqlx::query(SELECT_SALE)
                .bind(id.as_str())
                .fetch_optional(&mut *conn)
                .await
                .port()?;
            let loaded = row.map(|r| rows::sale(&r)).transpose()?;
            self.sales.insert(
                id.clone(),
                loaded.map(|sale| CachedSale { sale, dirty: false }),
            );
        }
        Ok(self.sales.get(id).and_then(Option::as_ref).map(|c| &c.sale))
    }

    /// Units `user` holds or owns in `sale`, as this transaction sees them.
    pub(crate) async fn units(
        &mut self,
        conn: &mut PgConnection,
        sale: &SaleId,
        user: &UserId,
    ) -> PortResult<i64> {
        let key = (sale.clone(), user.clone());
        if let Some(c) = self.units.get(&key) {
            return Ok(c.units);
        }
        let units: Option<i64> =
            sqlx::query_scalar("SELECT units FROM user_units WHERE sale_id = $1 AND user_id = $2")
                .bind(sale.as_str())
                .bind(user.as_str())
                .fetch_optional(&mut *conn)
                .await
                .port()?;
        let units = units.unwrap_or(0);
        self.units.insert(
            key,
            CachedUnits {
                units,
                dirty: false,
            },
        );
        Ok(units)
    }

    /// Loads the sale and the buyer's units so the synchronous moves below can apply. The sale
    /// must exist (every hold and order item references it by foreign key).
    pub(crate) async fn touch(
        &mut self,
        conn: &mut PgConnection,
        sale: &SaleId,
        user: &UserId,
    ) -> PortResult<()> {
        if self.sale(conn, sale).await?.is_none() {
            return Err(internal(format!("sale {sale} referenced but missing")));
        }
        self.units(conn, sale, user).await?;
        Ok(())
    }

    fn stock_mut(&mut self, sale: &SaleId) -> PortResult<&mut StockLevels> {
        match self.sales.get_mut(sale) {
            Some(Some(c)) => {
                c.dirty = true;
                Ok(&mut c.sale.stock)
            }
            _ => Err(internal(format!(
                "sale {sale} not loaded in this transaction"
            ))),
        }
    }

    fn add_units(&mut self, sale: &SaleId, user: &UserId, delta: i64) -> PortResult<()> {
        match self.units.get_mut(&(sale.clone(), user.clone())) {
            Some(c) => {
                c.dirty = true;
                c.units += delta;
                Ok(())
            }
            None => Err(internal(format!(
                "units of {user} in {sale} not loaded in this transaction"
            ))),
        }
    }

    /// A new or grown hold: available → held, the buyer's units up.
    pub(crate) fn reserve(&mut self, sale: &SaleId, user: &UserId, qty: u32) -> PortResult<()> {
        self.stock_mut(sale)?.reserve(i64::from(qty));
        self.add_units(sale, user, i64::from(qty))
    }

    /// A hold released, expired or shrunk: held → available, the buyer's units down.
    pub(crate) fn unhold(&mut self, sale: &SaleId, user: &UserId, qty: u32) -> PortResult<()> {
        self.stock_mut(sale)?.unhold(i64::from(qty));
        self.add_units(sale, user, -i64::from(qty))
    }

    /// A live hold paid for: held → sold; the buyer's units do not change.
    pub(crate) fn sell(&mut self, sale: &SaleId, qty: u32) -> PortResult<()> {
        self.stock_mut(sale)?.sell(i64::from(qty));
        Ok(())
    }

    /// A late payment takes the stock of a lapsed hold again: available → sold (through held,
    /// so both steps are checked), the buyer's units up.
    pub(crate) fn retake(&mut self, sale: &SaleId, user: &UserId, qty: u32) -> PortResult<()> {
        let stock = self.stock_mut(sale)?;
        stock.reserve(i64::from(qty));
        stock.sell(i64::from(qty));
        self.add_units(sale, user, i64::from(qty))
    }

    /// A paid order refunded: sold → available, the buyer's units down.
    pub(crate) fn refund(&mut self, sale: &SaleId, user: &UserId, qty: u32) -> PortResult<()> {
        self.stock_mut(sale)?.refund(i64::from(qty));
        self.add_units(sale, user, -i64::from(qty))
    }

    /// Writes every changed counter and per-buyer unit back, once each, after checking them.
    pub(crate) async fn flush(self, conn: &mut PgConnection) -> PortResult<()> {
        for (id, cached) in self.sales {
            let Some(c) = cached.filter(|c| c.dirty) else {
                continue;
            };
            let s = c.sale.stock;
            s.check()
                .map_err(|v| internal(format!("refusing to write sale {id}: {v}")))?;
            let done = sqlx::query(
                "UPDATE sales SET available = $1, held = $2, sold = $3 \
                 WHERE id = $4 AND total_stock = $5",
            )
            .bind(s.available)
            .bind(s.held)
            .bind(s.sold)
            .bind(id.as_str())
            .bind(s.total)
            .execute(&mut *conn)
            .await
            .port()?;
            if done.rows_affected() != 1 {
                return Err(internal(format!("sale {id} changed under its transaction")));
            }
        }
        for ((sale, user), c) in self.units {
            if !c.dirty {
                continue;
            }
            if c.units < 0 {
                return Err(internal(format!(
                    "refusing to write {} units for {user} in {sale}",
                    c.units
                )));
            }
            sqlx::query(
                "INSERT INTO user_units (sale_id, user_id, units) VALUES ($1, $2, $3) \
                 ON CONFLICT (sale_id, user_id) DO UPDATE SET units = excluded.units",
            )
            .bind(sale.as_str())
            .bind(user.as_str())
            .bind(c.units)
            .execute(&mut *conn)
            .await
            .port()?;
        }
        Ok(())
    }
}
