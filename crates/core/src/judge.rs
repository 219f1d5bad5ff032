//! The judge's decisions, as pure functions over what the store has read inside its
//! transaction. Every store adapter calls these, so the rules that make overselling impossible
//! are written once and tested here, and the adapters only load and save.
//!
//! [`SaleLedger`] is the same rules applied to an in-memory sale: the reference model that
//! property tests and store conformance tests compare against.

use std::collections::{BTreeMap, HashMap};
#[cfg(feature = "test-faults")]
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::{HoldState, InvariantViolation, SaleStatus, StockLevels, Timestamp};

/// Why the judge refused a reservation, in the contract's order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    #[error("the sale is not live")]
    SaleNotLive,
    #[error("this would take you over the per-buyer limit")]
    LimitExceeded,
    #[error("sold out")]
    SoldOut,
    /// The buyer (account or device) already has as many unpaid holds open, across all
    /// sales, as the denial-of-inventory guard allows.
    #[error("too many unpaid holds open at once: pay for or release one first")]
    HoldCapReached,
}

/// The denial-of-inventory guard (OWASP OAT-021): at most this many unpaid holds open at once
/// per account and per device, across every sale (0: no cap). A hold is open while it is
/// active and its time has not run out; paying, releasing or letting it lapse closes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HoldCap {
    pub per_account: u32,
    pub per_device: u32,
}

impl HoldCap {
    /// No cap at all: the judge skips the count.
    pub fn is_off(&self) -> bool {
        self.per_account == 0 && self.per_device == 0
    }
}

/// May a buyer with `account_open` unpaid holds open (and `device_open` on the device they
/// reserve from, if it is known) open one more? Judged last, after liveness, the buyer's
/// limit and stock, so the answers the gate gives first stay the same at the judge.
pub fn judge_hold_cap(
    cap: HoldCap,
    account_open: i64,
    device_open: Option<i64>,
) -> Result<(), Refusal> {
    if cap.per_account > 0 && account_open >= i64::from(cap.per_account) {
        return Err(Refusal::HoldCapReached);
    }
    if let Some(open) = device_open {
        if cap.per_device > 0 && open >= i64::from(cap.per_device) {
            return Err(Refusal::HoldCapReached);
        }
    }
    Ok(())
}

/// A deliberately broken judge, for proving that the simulation's checker notices an oversell:
/// while on, [`judge_reserve`] skips its stock check. Exists only with the `test-faults`
/// feature (which nothing enables by default), and even then is off until a test turns it on,
/// so a build in which the feature got unified in still judges correctly.
#[cfg(feature = "test-faults")]
static SKIP_STOCK_CHECK: AtomicBool = AtomicBool::new(false);

/// Turns the broken judge on or off (see `SKIP_STOCK_CHECK`). Test use only: the process-wide
/// flag affects every judge in the process.
#[cfg(feature = "test-faults")]
#[doc(hidden)]
pub fn set_skip_stock_check_for_tests(on: bool) {
    SKIP_STOCK_CHECK.store(on, Ordering::SeqCst);
}

/// Whether a test has broken the judge on purpose; always `false` without `test-faults`.
#[inline]
fn stock_check_skipped() -> bool {
    #[cfg(feature = "test-faults")]
    {
        SKIP_STOCK_CHECK.load(Ordering::SeqCst)
    }
    #[cfg(not(feature = "test-faults"))]
    {
        false
    }
}

/// May a buyer who already holds or owns `user_units` of a sale reserve `quantity` more?
/// Checked in the contract's order: live, then the buyer's limit, then stock.
pub fn judge_reserve(
    status: SaleStatus,
    available: i64,
    user_units: i64,
    per_user_limit: u32,
    quantity: u32,
) -> Result<(), Refusal> {
    if status != SaleStatus::Live {
        return Err(Refusal::SaleNotLive);
    }
    if user_units + i64::from(quantity) > i64::from(per_user_limit) {
        return Err(Refusal::LimitExceeded);
    }
    if available < i64::from(quantity) && !stock_check_skipped() {
        return Err(Refusal::SoldOut);
    }
    Ok(())
}

/// What a buyer already holds or owns across a drop's sales, and the drop's limit: the limit
/// that spans several sales ("one pair per person, whatever the size").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropUnits {
    pub units: i64,
    pub per_user_limit: u32,
}

/// [`judge_reserve`] for a sale that may be one SKU of a drop: the drop's limit is one more
/// per-buyer limit, checked after liveness and before stock, like the sale's own.
pub fn judge_reserve_in_drop(
    status: SaleStatus,
    available: i64,
    user_units: i64,
    per_user_limit: u32,
    drop: Option<DropUnits>,
    quantity: u32,
) -> Result<(), Refusal> {
    if status != SaleStatus::Live {
        return Err(Refusal::SaleNotLive);
    }
    if let Some(drop) = drop {
        judge_drop_limit(drop, quantity)?;
    }
    judge_reserve(status, available, user_units, per_user_limit, quantity)
}

/// May a buyer take `quantity` more units of a drop's sales?
pub fn judge_drop_limit(drop: DropUnits, quantity: u32) -> Result<(), Refusal> {
    if drop.units + i64::from(quantity) > i64::from(drop.per_user_limit) {
        return Err(Refusal::LimitExceeded);
    }
    Ok(())
}

/// Can a hold of `current` units become `wanted` units? Shrinking always may (while the hold
/// lives); growing is a reservation of the difference, under the drop's limit too.
pub fn judge_resize(
    status: SaleStatus,
    available: i64,
    user_units: i64,
    per_user_limit: u32,
    drop: Option<DropUnits>,
    current: u32,
    wanted: u32,
) -> Result<(), Refusal> {
    if wanted <= current {
        return Ok(());
    }
    judge_reserve_in_drop(
        status,
        available,
        user_units,
        per_user_limit,
        drop,
        wanted - current,
    )
}

/// A hold in the reference model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerHold {
    pub user: u32,
    pub quantity: u32,
    pub state: HoldState,
    pub expires_at: Timestamp,
    /// Paid and not refunded: counts as sold.
    pub owned: bool,
}

/// Why a model operation did nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("no such hold")]
    NotFound,
    #[error("the hold is not live")]
    NotLive,
}

/// The reference model of one live sale: stock counters, holds and per-buyer units, changed
/// only through the judge functions above.
#[derive(Debug, Clone)]
pub struct SaleLedger {
    pub stock: StockLevels,
    pub per_user_limit: u32,
    pub hold_ms: i64,
    pub holds: BTreeMap<u64, LedgerHold>,
    next_id: u64,
    user_units: HashMap<u32, i64>,
}

impl SaleLedger {
    /// A live sale of `total` units.
    pub fn new(total: i64, per_user_limit: u32, hold_ms: i64) -> Self {
        Self {
            stock: StockLevels::fresh(total),
            per_user_limit,
            hold_ms,
            holds: BTreeMap::new(),
            next_id: 0,
            user_units: HashMap::new(),
        }
    }

    /// Units `user` holds or owns.
    pub fn units_of(&self, user: u32) -> i64 {
        self.user_units.get(&user).copied().unwrap_or(0)
    }

    /// Reserves, returning the new hold's id.
    pub fn reserve(
        &mut self,
        user: u32,
        quantity: u32,
        now: Timestamp,
    ) -> Result<u64, LedgerError> {
        judge_reserve(
            SaleStatus::Live,
            self.stock.available,
            self.units_of(user),
            self.per_user_limit,
            quantity,
        )?;
        self.stock.reserve(i64::from(quantity));
        *self.user_units.entry(user).or_default() += i64::from(quantity);
        self.next_id += 1;
        self.holds.insert(
            self.next_id,
            LedgerHold {
                user,
                quantity,
                state: HoldState::Active,
                expires_at: now.plus_millis(self.hold_ms),
                owned: false,
            },
        );
        Ok(self.next_id)
    }

    fn end_hold(&mut self, id: u64, to: HoldState, now: Timestamp) -> Result<(), LedgerError> {
        let hold = self.holds.get_mut(&id).ok_or(LedgerError::NotFound)?;
        let live = hold.state == HoldState::Active && now < hold.expires_at;
        // Expiry is the one ending allowed once the clock has passed; the others need a live hold.
        if !(live || (to == HoldState::Expired && hold.state == HoldState::Active)) {
            return Err(LedgerError::NotLive);
        }
        hold.state = hold.state.end(to).map_err(|_| LedgerError::NotLive)?;
        let qty = i64::from(hold.quantity);
        let user = hold.user;
        if to == HoldState::Converted {
            hold.owned = true;
            self.stock.sell(qty);
        } else {
            self.stock.unhold(qty);
            *self.user_units.entry(user).or_default() -= qty;
        }
        Ok(())
    }

    /// The buyer lets go of a live hold.
    pub fn release(&mut self, id: u64, now: Timestamp) -> Result<(), LedgerError> {
        self.end_hold(id, HoldState::Released, now)
    }

    /// The buyer pays for a live hold.
    pub fn pay(&mut self, id: u64, now: Timestamp) -> Result<(), LedgerError> {
        self.end_hold(id, HoldState::Converted, now)
    }

    /// The sweeper: every active hold past its expiry ends as expired. Returns how many.
    pub fn expire_due(&mut self, now: Timestamp) -> usize {
        let due: Vec<u64> = self
            .holds
            .iter()
            .filter(|(_, h)| h.state == HoldState::Active && h.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            // Due holds are active by the filter above, so this cannot fail.
            let _ = self.end_hold(*id, HoldState::Expired, now);
        }
        due.len()
    }

    /// The buyer cancels a paid hold: refunded, units available again.
    pub fn refund(&mut self, id: u64) -> Result<(), LedgerError> {
        let hold = self.holds.get_mut(&id).ok_or(LedgerError::NotFound)?;
        if !hold.owned {
            return Err(LedgerError::NotLive);
        }
        hold.owned = false;
        let qty = i64::from(hold.quantity);
        let user = hold.user;
        self.stock.refund(qty);
        *self.user_units.entry(user).or_default() -= qty;
        Ok(())
    }

    /// Every invariant, recomputed from the holds rather than trusted from the counters.
    pub fn check(&self) -> Result<(), InvariantViolation> {
        self.stock.check()?;
        let held: i64 = self
            .holds
            .values()
            .filter(|h| h.state == HoldState::Active)
            .map(|h| i64::from(h.quantity))
            .sum();
        let sold: i64 = self
            .holds
            .values()
            .filter(|h| h.owned)
            .map(|h| i64::from(h.quantity))
            .sum();
        if held != self.stock.held || sold != self.stock.sold {
            return Err(InvariantViolation::Unbalanced {
                total: self.stock.total,
                available: self.stock.available,
                held,
                sold,
            });
        }
        let mut per_user: HashMap<u32, i64> = HashMap::new();
        for h in self.holds.values() {
            if h.state == HoldState::Active || h.owned {
                *per_user.entry(h.user).or_default() += i64::from(h.quantity);
            }
        }
        for units in per_user.values() {
            if *units > i64::from(self.per_user_limit) {
                return Err(InvariantViolation::OverUserLimit {
                    units: *units,
                    limit: i64::from(self.per_user_limit),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_drop_limit_spans_its_sales_and_ranks_with_the_sale_limit() {
        let drop = |units| {
            Some(DropUnits {
                units,
                per_user_limit: 1,
            })
        };
        assert_eq!(
            judge_reserve_in_drop(SaleStatus::Live, 5, 0, 2, drop(0), 1),
            Ok(())
        );
        // One unit elsewhere in the drop: no more here, though this sale's own limit is 2.
        assert_eq!(
            judge_reserve_in_drop(SaleStatus::Live, 5, 0, 2, drop(1), 1),
            Err(Refusal::LimitExceeded)
        );
        // Limit beats stock; not live beats limit.
        assert_eq!(
            judge_reserve_in_drop(SaleStatus::Live, 0, 0, 2, drop(1), 1),
            Err(Refusal::LimitExceeded)
        );
        assert_eq!(
            judge_reserve_in_drop(SaleStatus::Ended, 5, 0, 2, drop(1), 1),
            Err(Refusal::SaleNotLive)
        );
        assert_eq!(
            judge_reserve_in_drop(SaleStatus::Live, 0, 0, 2, None, 1),
            Err(Refusal::SoldOut)
        );
        // Growing a hold is a reservation of the difference, under the drop's limit too.
        assert_eq!(
            judge_resize(SaleStatus::Live, 5, 1, 2, drop(1), 1, 2),
            Err(Refusal::LimitExceeded)
        );
        assert_eq!(
            judge_resize(SaleStatus::Live, 5, 1, 2, drop(1), 1, 1),
            Ok(())
        );
    }

    #[test]
    fn the_hold_cap_counts_account_and_device_and_zero_is_off() {
        let cap = HoldCap {
            per_account: 2,
            per_device: 3,
        };
        assert_eq!(judge_hold_cap(cap, 1, Some(2)), Ok(()));
        assert_eq!(
            judge_hold_cap(cap, 2, Some(0)),
            Err(Refusal::HoldCapReached)
        );
        assert_eq!(
            judge_hold_cap(cap, 0, Some(3)),
            Err(Refusal::HoldCapReached)
        );
        // An unknown device is judged by the account alone.
        assert_eq!(judge_hold_cap(cap, 1, None), Ok(()));
        assert!(HoldCap::default().is_off());
        assert_eq!(
            judge_hold_cap(HoldCap::default(), 1_000, Some(1_000)),
            Ok(())
        );
    }

    #[test]
    fn refusals_follow_the_contract_order() {
        // Not live beats everything.
        assert_eq!(
            judge_reserve(SaleStatus::Paused, 0, 5, 1, 3),
            Err(Refusal::SaleNotLive)
        );
        // Limit beats stock.
        assert_eq!(
            judge_reserve(SaleStatus::Live, 0, 2, 2, 1),
            Err(Refusal::LimitExceeded)
        );
        assert_eq!(
            judge_reserve(SaleStatus::Live, 0, 0, 2, 1),
            Err(Refusal::SoldOut)
        );
        assert_eq!(judge_reserve(SaleStatus::Live, 1, 1, 2, 1), Ok(()));
        assert_eq!(
            judge_reserve(SaleStatus::Live, 1, 0, 2, 2),
            Err(Refusal::SoldOut)
        );
    }

    #[test]
    fn resize_only_judges_growth() {
        assert_eq!(judge_resize(SaleStatus::Live, 0, 2, 2, None, 2, 1), Ok(()));
        assert_eq!(
            judge_resize(SaleStatus::Live, 0, 1, 2, None, 1, 2),
            Err(Refusal::SoldOut)
        );
        assert_eq!(
            judge_resize(SaleStatus::Live, 9, 2, 2, None, 2, 3),
            Err(Refusal::LimitExceeded)
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve { user: u32, qty: u32 },
        Release { pick: usize },
        Pay { pick: usize },
        Cancel { pick: usize },
        Tick { ms: i64 },
        Sweep,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0_u32..6, 1_u32..4).prop_map(|(user, qty)| Op::Reserve { user, qty }),
            1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
            2 => any::<usize>().prop_map(|pick| Op::Pay { pick }),
            1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
            2 => (0_i64..4_000).prop_map(|ms| Op::Tick { ms }),
            1 => Just(Op::Sweep),
        ]
    }

    proptest! {
        /// Any sequence of reserve / release / expire / pay / cancel keeps every invariant, and
        /// a hold that has ended never changes ending.
        #[test]
        fn hold_state_machine_keeps_the_invariants(
            total in 0_i64..20,
            limit in 1_u32..5,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let mut ledger = SaleLedger::new(total, limit, 3_000);
            let mut now = Timestamp(0);
            for op in ops {
                let before: BTreeMap<u64, HoldState> =
                    ledger.holds.iter().map(|(id, h)| (*id, h.state)).collect();
                let ids: Vec<u64> = ledger.holds.keys().copied().collect();
                let pick = |p: usize| ids.get(p % ids.len().max(1)).copied().unwrap_or(0);
                match op {
                    Op::Reserve { user, qty } => {
                        let available = ledger.stock.available;
                        let units = ledger.units_of(user);
                        match ledger.reserve(user, qty, now) {
                            Ok(_) => prop_assert!(available >= i64::from(qty)),
                            Err(LedgerError::Refused(Refusal::SoldOut)) => {
                                prop_assert!(available < i64::from(qty))
                            }
                            Err(LedgerError::Refused(Refusal::LimitExceeded)) => {
                                prop_assert!(units + i64::from(qty) > i64::from(limit))
                            }
                            Err(e) => prop_assert!(false, "unexpected {e:?}"),
                        }
                    }
                    Op::Release { pick: p } => { let _ = ledger.release(pick(p), now); }
                    Op::Pay { pick: p } => { let _ = ledger.pay(pick(p), now); }
                    Op::Cancel { pick: p } => { let _ = ledger.refund(pick(p)); }
                    Op::Tick { ms } => now = now.plus_millis(ms),
                    Op::Sweep => { ledger.expire_due(now); }
                }
                prop_assert_eq!(ledger.check(), Ok(()));
                for (id, state) in before {
                    if state != HoldState::Active {
                        prop_assert_eq!(ledger.holds[&id].state, state, "hold {} ended twice", id);
                    }
                }
            }
            // After the clock passes every expiry and the sweeper runs, nothing is held.
            ledger.expire_due(now.plus_millis(10_000));
            prop_assert_eq!(ledger.stock.held, 0);
            prop_assert_eq!(ledger.check(), Ok(()));
        }
    }
}
