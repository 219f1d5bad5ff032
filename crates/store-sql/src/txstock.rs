//! The stock a write transaction is working on: the `sales` rows and `user_units` rows it has
//! touched, read once, changed in memory through [`StockLevels`]' methods (so their debug
//! assertions fire on any bug) and written back once by [`TxStock::flush`] before the commit.
//!
//! This is what lets a group-commit batch of hundreds of reservations on one sale read and
//! write that sale's row once. Invariants:
//! * a value is read inside the transaction that will write it back, so nobody else can change
//!   it in between: on SQLite the single writer connection excludes every other writer; on
//!   PostgreSQL every `sales` row is read `FOR NO KEY UPDATE` ([`Judging::LOCK`], the row lock
//!   an `UPDATE` of non-key columns takes; it excludes every other judge but not the
//!   `FOR KEY SHARE` of a foreign-key check, so checkouts inserting order items never queue
//!   behind a batch), and the `user_units` rows of that sale are only ever read and written
//!   under the sale's lock;
//! * on PostgreSQL a transaction that touches several sales locks them up front with
//!   [`TxStock::lock_sales`], in sale id order, so two nodes can never deadlock on each
//!   other's sale rows;
//! * `flush` refuses to write counters that do not balance or per-buyer units below zero
//!   (release builds too), so a bug aborts the transaction instead of committing an oversell;
//! * dropping a `TxStock` without flushing discards every change (used by the all-or-nothing
//!   payment path).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use stampede_app::ports::PortResult;
use stampede_core::judge::{judge_reserve_in_drop, DropUnits, Refusal};
use stampede_core::{DropId, Sale, SaleId, StockLevels, Timestamp, UserId};

use crate::engine::{statement, values_list, Bind, Conn, Run};
use crate::judging::{exactly_one, Judging};
use crate::rows::{self, col};
use crate::{internal, sale_cols};

/// A value read in this transaction; `dirty` once changed in memory.
#[derive(Clone)]
struct Cached<T> {
    value: T,
    dirty: bool,
}

impl<T> Cached<T> {
    fn clean(value: T) -> Self {
        Self {
            value,
            dirty: false,
        }
    }
}

/// The sales and per-buyer units one transaction has read, with its pending changes. A clone
/// is a checkpoint: putting it back undoes every change since.
#[derive(Default, Clone)]
pub struct TxStock {
    /// `None`: looked up and not found (so a batch does not look again).
    sales: BTreeMap<SaleId, Option<Cached<Sale>>>,
    units: BTreeMap<(SaleId, UserId), Cached<i64>>,
    /// A drop's per-buyer limit and its sales; `None`: missing, or without a limit.
    drops: BTreeMap<DropId, Option<(u32, Vec<SaleId>)>>,
}

/// Rows per multi-row `user_units` write: well under SQLite's limit on bound parameters.
const UNITS_PER_STATEMENT: usize = 300;

impl TxStock {
    /// Locks and loads every sale in `ids` not loaded yet and, if `with_drops`, every other
    /// sale of the drops they belong to, in one statement and in id order (the deadlock-free
    /// order every multi-sale transaction uses). Missing sales are remembered as missing. A
    /// drop's limit spans its sales, so judging a reservation needs the buyer's units in all
    /// of them to stay put until the commit (call it as the transaction's first lock on sales
    /// then). Nothing to do on an engine without row locks: sales are read when first needed.
    pub async fn lock_sales<DB: Judging>(
        &mut self,
        conn: &mut impl Conn<DB>,
        ids: &[&SaleId],
        with_drops: bool,
    ) -> PortResult<()> {
        let wanted: BTreeSet<&SaleId> = ids
            .iter()
            .copied()
            .filter(|id| !self.sales.contains_key(*id))
            .collect();
        if !DB::locks_rows() || (wanted.is_empty() && !with_drops) {
            return Ok(());
        }
        let ids_in = format!("id IN ({})", DB::JSON_TEXTS);
        let siblings = match with_drops {
            true => format!(" OR drop_id IN (SELECT drop_id FROM sales WHERE {ids_in})"),
            false => String::new(),
        };
        let sql = format!(
            concat!(
                "SELECT ",
                sale_cols!(),
                " FROM sales WHERE {}{} ORDER BY id{}"
            ),
            ids_in,
            siblings,
            DB::LOCK
        );
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        let json = serde_json::to_string(&ids).map_err(internal)?;
        for row in &statement::<DB>(&sql).string(json).all(conn).await? {
            let sale = rows::sale(row)?;
            // A sale loaded before may carry changes not yet flushed: keep those.
            self.sales
                .entry(sale.id.clone())
                .or_insert(Some(Cached::clean(sale)));
        }
        for id in wanted {
            self.sales.entry(id.clone()).or_insert(None);
        }
        Ok(())
    }

    /// What `user` holds or owns across the drop `sale` belongs to, with the drop's limit, as
    /// this transaction sees it (pending changes included); `None` if the sale is in no drop
    /// or its drop has no limit. With row locks, every sale of the drop must be locked by this
    /// transaction ([`TxStock::lock_sales`] with its drops); if one is not, this refuses
    /// (`Internal`) rather than judge on units another node could be changing. SQLite's one
    /// writer connection: nobody else can change these units before the commit.
    pub async fn drop_units<DB: Judging>(
        &mut self,
        conn: &mut impl Conn<DB>,
        sale: &SaleId,
        user: &UserId,
    ) -> PortResult<Option<DropUnits>> {
        let Some((drop, limit, sales)) = self.limited_drop(conn, sale).await? else {
            return Ok(None);
        };
        if DB::locks_rows() {
            if let Some(unlocked) = sales.iter().find(|s| !self.sales.contains_key(*s)) {
                return Err(internal(format!(
                    "sale {unlocked} of drop {drop} judged without its lock"
                )));
            }
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
    pub async fn load_drop_units<DB: Judging>(
        &mut self,
        conn: &mut impl Conn<DB>,
        pairs: &[(&SaleId, &UserId)],
    ) -> PortResult<()> {
        let mut wanted: Vec<(SaleId, UserId)> = Vec::new();
        for (sale, user) in pairs {
            if let Some((_, _, sales)) = self.limited_drop(conn, sale).await? {
                wanted.extend(sales.into_iter().map(|s| (s, (*user).clone())));
            }
        }
        let refs: Vec<(&SaleId, &UserId)> = wanted.iter().map(|(s, u)| (s, u)).collect();
        self.load_units(conn, &refs).await
    }

    /// The drop `sale` belongs to, its per-buyer limit and its sales (each drop read once per
    /// transaction); `None` if the sale is in no drop or its drop has no limit.
    async fn limited_drop<DB: Judging>(
        &mut self,
        conn: &mut impl Conn<DB>,
        sale: &SaleId,
    ) -> PortResult<Option<(DropId, u32, Vec<SaleId>)>> {
        let Some(drop) = self.sale(conn, sale).await?.and_then(|s| s.drop_id.clone()) else {
            return Ok(None);
        };
        if !self.drops.contains_key(&drop) {
            let sql = "SELECT d.per_user_limit, s.id FROM drops d JOIN sales s \
                 ON s.drop_id = d.id WHERE d.id = $1 ORDER BY s.id";
            let rows = statement::<DB>(sql).text(drop.as_str()).all(conn).await?;
            let limit: Option<Option<i64>> =
                rows.first().map(|r| col(r, "per_user_limit")).transpose()?;
            let limit = limit.flatten().and_then(|l| u32::try_from(l).ok());
            let sales = rows.iter().map(|r| col(r, "id").map(SaleId::from_trusted));
            let sales = sales.collect::<PortResult<Vec<_>>>()?;
            self.drops.insert(drop.clone(), limit.map(|l| (l, sales)));
        }
        let found = self.drops.get(&drop).cloned().flatten();
        Ok(found.map(|(limit, sales)| (drop, limit, sales)))
    }

    /// Loads the units of many `(sale, user)` pairs not yet cached, in a constant number of
    /// statements instead of one per buyer (missing rows are 0). With row locks, call with the
    /// sales already locked.
    pub async fn load_units<DB: Judging>(
        &mut self,
        conn: &mut impl Conn<DB>,
        pairs: &[(&SaleId, &UserId)],
    ) -> PortResult<()> {
        let mut wanted = Vec::new();
        for (sale, user) in pairs {
            let key = ((*sale).clone(), (*user).clone());
            if let Entry::Vacant(slot) = self.units.entry(key) {
                slot.insert(Cached::clean(0));
                wanted.push((sale.as_str().to_owned(), user.as_str().to_owned()));
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "SELECT sale_id, user_id, units FROM user_units WHERE (sale_id, user_id) IN ({})",
            DB::JSON_PAIRS
        );
        let json = serde_json::to_string(&wanted).map_err(internal)?;
        for row in statement::<DB>(&sql).string(json).all(conn).await? {
            let sale = SaleId::from_trusted(col(&row, "sale_id")?);
            let key = (sale, UserId::from_trusted(col(&row, "user_id")?));
            if let Some(c) = self.units.get_mut(&key) {
                c.value = col(&row, "units")?;
            }
        }
        Ok(())
    }

    /// The sale as this transaction sees it (its counters include the pending changes), locked
    /// on first read.
    pub async fn sale<DB: Judging>(
        &mut self,
        conn: &mut impl Conn<DB>,
        id: &SaleId,
    ) -> PortResult<Option<&Sale>> {
        if !self.sales.contains_key(id) {
            let sql = format!(
                concat!("SELECT ", sale_cols!(), " FROM sales WHERE id = $1{}"),
                DB::LOCK
            );
            let row = statement::<DB>(&sql).text(id.as_str()).first(conn).await?;
            let loaded = row.map(|r| rows::sale(&r)).transpose()?;
            self.sales.insert(id.clone(), loaded.map(Cached::clean));
        }
        Ok(self
            .sales
            .get(id)
            .and_then(Option::as_ref)
            .map(|c| &c.value))
    }

    /// Units `user` holds or owns in `sale`, as this transaction sees them.
    pub async fn units<DB: Judging>(
        &mut self,
        conn: &mut impl Conn<DB>,
        sale: &SaleId,
        user: &UserId,
    ) -> PortResult<i64> {
        self.load_units(conn, &[(sale, user)]).await?;
        self.units
            .get(&(sale.clone(), user.clone()))
            .map(|c| c.value)
            .ok_or_else(|| internal(format!("units of {user} in {sale} not loaded")))
    }

    /// The judge's verdict on `qty` more units of `sale` for `user` at `now`, on what this
    /// transaction sees (the drop's limit included); `None` if the sale does not exist.
    pub async fn judge_more<DB: Judging>(
        &mut self,
        conn: &mut impl Conn<DB>,
        sale: &SaleId,
        user: &UserId,
        qty: u32,
        now: Timestamp,
    ) -> PortResult<Option<Result<(), Refusal>>> {
        let Some(s) = self.sale(conn, sale).await? else {
            return Ok(None);
        };
        let (status, available, limit) = (s.status_at(now), s.stock.available, s.per_user_limit);
        let units = self.units(conn, sale, user).await?;
        let drop = self.drop_units(conn, sale, user).await?;
        Ok(Some(judge_reserve_in_drop(
            status, available, units, limit, drop, qty,
        )))
    }

    /// Loads the sale and the buyer's units so the synchronous moves below can apply. The sale
    /// must exist (every hold and order item references it by foreign key).
    pub async fn touch<DB: Judging>(
        &mut self,
        conn: &mut impl Conn<DB>,
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
        let c = self.sales.get_mut(sale).and_then(Option::as_mut);
        let c = c.ok_or_else(|| internal(format!("sale {sale} not loaded in this transaction")))?;
        c.dirty = true;
        Ok(&mut c.value.stock)
    }

    fn add_units(&mut self, sale: &SaleId, user: &UserId, delta: i64) -> PortResult<()> {
        let c = self
            .units
            .get_mut(&(sale.clone(), user.clone()))
            .ok_or_else(|| {
                internal(format!(
                    "units of {user} in {sale} not loaded in this transaction"
                ))
            })?;
        c.dirty = true;
        c.value += delta;
        Ok(())
    }

    /// A new or grown hold: available → held, the buyer's units up.
    pub fn reserve(&mut self, sale: &SaleId, user: &UserId, qty: u32) -> PortResult<()> {
        self.stock_mut(sale)?.reserve(i64::from(qty));
        self.add_units(sale, user, i64::from(qty))
    }

    /// A hold released, expired or shrunk: held → available, the buyer's units down.
    pub fn unhold(&mut self, sale: &SaleId, user: &UserId, qty: u32) -> PortResult<()> {
        self.stock_mut(sale)?.unhold(i64::from(qty));
        self.add_units(sale, user, -i64::from(qty))
    }

    /// A live hold paid for: held → sold; the buyer's units do not change.
    pub fn sell(&mut self, sale: &SaleId, qty: u32) -> PortResult<()> {
        self.stock_mut(sale)?.sell(i64::from(qty));
        Ok(())
    }

    /// A late payment takes the stock of a lapsed hold again: available → sold (through held,
    /// so both steps are checked), the buyer's units up.
    pub fn retake(&mut self, sale: &SaleId, user: &UserId, qty: u32) -> PortResult<()> {
        let stock = self.stock_mut(sale)?;
        stock.reserve(i64::from(qty));
        stock.sell(i64::from(qty));
        self.add_units(sale, user, i64::from(qty))
    }

    /// A paid order refunded: sold → available, the buyer's units down.
    pub fn refund(&mut self, sale: &SaleId, user: &UserId, qty: u32) -> PortResult<()> {
        self.stock_mut(sale)?.refund(i64::from(qty));
        self.add_units(sale, user, -i64::from(qty))
    }

    /// Writes every changed counter and per-buyer unit back, once each, after checking them:
    /// one statement per sale and one per [`UNITS_PER_STATEMENT`] buyers.
    pub async fn flush<DB: Judging>(self, conn: &mut impl Conn<DB>) -> PortResult<()> {
        for (id, cached) in self.sales {
            let Some(c) = cached.filter(|c| c.dirty) else {
                continue;
            };
            let s = c.value.stock;
            s.check()
                .map_err(|v| internal(format!("refusing to write sale {id}: {v}")))?;
            let done = statement::<DB>(
                "UPDATE sales SET available = $1, held = $2, sold = $3 \
                 WHERE id = $4 AND total_stock = $5",
            )
            .int(s.available)
            .int(s.held)
            .int(s.sold)
            .text(id.as_str())
            .int(s.total)
            .run(conn)
            .await?;
            exactly_one(
                done,
                format_args!("sale {id} changed under its transaction"),
            )?;
        }
        let dirty: Vec<((SaleId, UserId), i64)> = self
            .units
            .into_iter()
            .filter(|(_, c)| c.dirty)
            .map(|(k, c)| (k, c.value))
            .collect();
        if let Some(((sale, user), units)) = dirty.iter().find(|(_, n)| *n < 0) {
            return Err(internal(format!(
                "refusing to write {units} units for {user} in {sale}"
            )));
        }
        for chunk in dirty.chunks(UNITS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO user_units (sale_id, user_id, units) VALUES {} \
                 ON CONFLICT (sale_id, user_id) DO UPDATE SET units = excluded.units",
                values_list(chunk.len(), 3)
            );
            let mut q = statement::<DB>(&sql);
            for ((sale, user), units) in chunk {
                q = q.text(sale.as_str()).text(user.as_str()).int(*units);
            }
            q.run(conn).await?;
        }
        Ok(())
    }
}
