//! The stock a write transaction is working on: the `sales` rows and `user_units` rows it has
//! touched, read once, changed in memory through [`StockLevels`]' methods (so their debug
//! assertions fire on any bug) and written back once by [`TxStock::flush`] before the commit.
//!
//! This is what lets a group-commit batch of hundreds of reservations on one sale read and
//! write that sale's row once. Invariants:
//! * a value is read inside the transaction that will write it back, on the single writer
//!   connection, so nobody else can change it in between;
//! * `flush` refuses to write counters that do not balance or per-buyer units below zero
//!   (release builds too), so a bug aborts the transaction instead of committing an oversell;
//! * dropping a `TxStock` without flushing discards every change (used by the all-or-nothing
//!   payment path).

use std::collections::BTreeMap;

use sqlx::SqliteConnection;

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

/// Rows per multi-row statement: well under SQLite's limit on bound parameters.
const PAIRS_PER_STATEMENT: usize = 300;

const SELECT_SALE: &str = concat!("SELECT ", sale_cols!(), " FROM sales WHERE id = ?1");

impl TxStock {
    /// The sale as this transaction sees it (its counters include the pending changes).
    pub(crate) async fn sale(
        &mut self,
        conn: &mut SqliteConnection,
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
        conn: &mut SqliteConnection,
        sale: &SaleId,
        user: &UserId,
    ) -> PortResult<i64> {
        let key = (sale.clone(), user.clone());
        if let Some(c) = self.units.get(&key) {
            return Ok(c.units);
        }
        let units: Option<i64> =
            sqlx::query_scalar("SELECT units FROM user_units WHERE sale_id = ?1 AND user_id = ?2")
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

    /// What `user` holds or owns across the drop `sale` belongs to, with the drop's limit, as
    /// this transaction sees it (pending changes included); `None` if the sale is in no drop
    /// or its drop has no limit. One writer connection: nobody else can change these units
    /// before the commit.
    pub(crate) async fn drop_units(
        &mut self,
        conn: &mut SqliteConnection,
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
    /// query per chunk, so judging a batch on a drop costs no statement per buyer.
    pub(crate) async fn preload_drop_units(
        &mut self,
        conn: &mut SqliteConnection,
        pairs: &[(SaleId, UserId)],
    ) -> PortResult<()> {
        let mut wanted = Vec::new();
        for (sale, user) in pairs {
            let Some(drop) = self.sale(conn, sale).await?.and_then(|s| s.drop_id.clone()) else {
                continue;
            };
            self.load_drop(conn, &drop).await?;
            if let Some(Some(d)) = self.drops.get(&drop) {
                if d.per_user_limit.is_some() {
                    wanted.extend(d.sales.iter().map(|s| (s.clone(), user.clone())));
                }
            }
        }
        self.preload_units(conn, &wanted).await
    }

    async fn load_drop(&mut self, conn: &mut SqliteConnection, drop: &DropId) -> PortResult<()> {
        if !self.drops.contains_key(drop) {
            let limit: Option<Option<i64>> =
                sqlx::query_scalar("SELECT per_user_limit FROM drops WHERE id = ?1")
                    .bind(drop.as_str())
                    .fetch_optional(&mut *conn)
                    .await
                    .port()?;
            let sales: Vec<String> =
                sqlx::query_scalar("SELECT id FROM sales WHERE drop_id = ?1 ORDER BY id")
                    .bind(drop.as_str())
                    .fetch_all(&mut *conn)
                    .await
                    .port()?;
            let cached = limit.map(|limit| CachedDrop {
                per_user_limit: limit.and_then(|l| u32::try_from(l).ok()),
                sales: sales.into_iter().map(SaleId::from_trusted).collect(),
            });
            self.drops.insert(drop.clone(), cached);
        }
        Ok(())
    }

    /// Loads the sale and the buyer's units so the synchronous moves below can apply. The sale
    /// must exist (every hold and order item references it by foreign key).
    /// Loads the units of every (sale, buyer) pair not yet cached, in one query per chunk
    /// instead of one per buyer: the group commit's statements per batch stay constant.
    pub(crate) async fn preload_units(
        &mut self,
        conn: &mut SqliteConnection,
        pairs: &[(SaleId, UserId)],
    ) -> PortResult<()> {
        let missing: Vec<&(SaleId, UserId)> = pairs
            .iter()
            .filter(|k| !self.units.contains_key(*k))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for chunk in missing.chunks(PAIRS_PER_STATEMENT) {
            let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "SELECT sale_id, user_id, units FROM user_units WHERE (sale_id, user_id) IN (VALUES ",
            );
            let mut list = qb.separated(", ");
            for (sale, user) in chunk {
                list.push("(")
                    .push_bind_unseparated(sale.as_str().to_owned())
                    .push_unseparated(", ")
                    .push_bind_unseparated(user.as_str().to_owned())
                    .push_unseparated(")");
            }
            qb.push(")");
            let found: Vec<(String, String, i64)> =
                qb.build_query_as().fetch_all(&mut *conn).await.port()?;
            let mut known: BTreeMap<(SaleId, UserId), i64> = found
                .into_iter()
                .map(|(s, u, n)| ((SaleId::from_trusted(s), UserId::from_trusted(u)), n))
                .collect();
            for key in chunk {
                let units = known.remove(*key).unwrap_or(0);
                self.units.insert(
                    (*key).clone(),
                    CachedUnits {
                        units,
                        dirty: false,
                    },
                );
            }
        }
        Ok(())
    }

    pub(crate) async fn touch(
        &mut self,
        conn: &mut SqliteConnection,
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
    pub(crate) async fn flush(self, conn: &mut SqliteConnection) -> PortResult<()> {
        for (id, cached) in self.sales {
            let Some(c) = cached.filter(|c| c.dirty) else {
                continue;
            };
            let s = c.sale.stock;
            s.check()
                .map_err(|v| internal(format!("refusing to write sale {id}: {v}")))?;
            let done = sqlx::query(
                "UPDATE sales SET available = ?1, held = ?2, sold = ?3 \
                 WHERE id = ?4 AND total_stock = ?5",
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
        let dirty: Vec<((SaleId, UserId), i64)> = self
            .units
            .into_iter()
            .filter(|(_, c)| c.dirty)
            .map(|(k, c)| (k, c.units))
            .collect();
        if let Some(((sale, user), units)) = dirty.iter().find(|(_, n)| *n < 0) {
            return Err(internal(format!(
                "refusing to write {units} units for {user} in {sale}"
            )));
        }
        for chunk in dirty.chunks(PAIRS_PER_STATEMENT) {
            let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO user_units (sale_id, user_id, units) ",
            );
            qb.push_values(chunk, |mut row, ((sale, user), units)| {
                row.push_bind(sale.as_str().to_owned())
                    .push_bind(user.as_str().to_owned())
                    .push_bind(*units);
            });
            qb.push(" ON CONFLICT (sale_id, user_id) DO UPDATE SET units = excluded.units");
            qb.build().execute(&mut *conn).await.port()?;
        }
        Ok(())
    }
}
