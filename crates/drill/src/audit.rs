//! The audit at the end of a drill: the invariants of DESIGN.md checked against what the
//! admin API reports, what the store holds (when the drill can read it), and what the buyers
//! were told. A pure function of a [`Snapshot`], so it can be tested on doctored snapshots:
//! an audit that cannot fail proves nothing.

use crate::client::SaleMetrics;
use crate::stats::Admission;
use crate::store::StoreFacts;

/// Everything the audit looks at.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// From `GET /api/v1/admin/sales/{id}/metrics`.
    pub api: Option<SaleMetrics>,
    /// From the store itself, when the drill has access.
    pub store: Option<StoreFacts>,
    pub per_user_limit: i64,
    /// Reservations answered 201 during the drill.
    pub acked_holds: u64,
    /// Orders answered 201 `confirmed` during the drill.
    pub acked_confirmed_orders: u64,
    /// Units the buyers asked for.
    pub units_demanded: u64,
    /// Queue joiners seen admitted (empty when the server has no waiting room).
    pub admissions: Vec<Admission>,
    /// How far apart two admissions must be seen to count as out of order: the drill polls
    /// the queue, so it sees admissions only to within its polling interval.
    pub admission_tolerance_ms: u64,
}

/// One check and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// The audit's findings: every check, passed or not, plus figures that are not pass/fail.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    pub checks: Vec<Check>,
    pub units_sold: i64,
    pub units_demanded: u64,
    /// Pairs of admitted buyers admitted in the opposite order of their places in line.
    pub fifo_inversions: u64,
}

impl Audit {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    pub fn violations(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }

    fn check(&mut self, name: &'static str, ok: bool, detail: String) {
        self.checks.push(Check { name, ok, detail });
    }
}

/// Counts inversions: pairs (a, b) where a's join was answered before b's was sent (so a is
/// surely ahead in line) but a was seen admitted more than `tolerance_ms` after b. The drill
/// polls, so it sees admissions only to within its polling interval plus a round trip; the
/// tolerance covers that. O(n²) over admitted buyers (bounded by the stock).
pub fn fifo_inversions(admissions: &[Admission], tolerance_ms: u64) -> u64 {
    let tolerance = std::time::Duration::from_millis(tolerance_ms);
    let mut inversions = 0u64;
    for a in admissions {
        for b in admissions {
            if a.join_answered < b.join_sent && a.admitted_after > b.admitted_after + tolerance {
                inversions += 1;
            }
        }
    }
    inversions
}

/// Runs every check.
pub fn audit(s: &Snapshot) -> Audit {
    let mut a = Audit {
        units_demanded: s.units_demanded,
        ..Audit::default()
    };
    if let Some(m) = &s.api {
        a.units_sold = m.sold;
        let sum = m.available + m.held + m.sold;
        a.check(
            "api: available + held + sold == total_stock",
            sum == m.total_stock && m.available >= 0 && m.held >= 0 && m.sold >= 0,
            format!(
                "{} + {} + {} = {sum}, total {}",
                m.available, m.held, m.sold, m.total_stock
            ),
        );
        a.check(
            "api: invariant_ok",
            m.invariant_ok,
            format!("invariant_ok = {}", m.invariant_ok),
        );
        a.check(
            "api: acknowledged orders are all there",
            i64::try_from(s.acked_confirmed_orders).unwrap_or(i64::MAX) <= m.sold,
            format!(
                "{} confirmed to buyers, {} units sold",
                s.acked_confirmed_orders, m.sold
            ),
        );
    } else {
        a.check(
            "api: metrics readable",
            false,
            "the admin metrics could not be read".into(),
        );
    }
    if let Some(f) = &s.store {
        a.units_sold = f.sold;
        let sum = f.available + f.held + f.sold;
        a.check(
            "store: available + held + sold == total_stock",
            sum == f.total_stock && f.available >= 0 && f.held >= 0 && f.sold >= 0,
            format!(
                "{} + {} + {} = {sum}, total {}",
                f.available, f.held, f.sold, f.total_stock
            ),
        );
        a.check(
            "store: held == units in active holds",
            f.held == f.active_units,
            format!("held {}, active holds {}", f.held, f.active_units),
        );
        a.check(
            "store: sold == units in converted holds",
            f.sold == f.converted_units,
            format!("sold {}, converted holds {}", f.sold, f.converted_units),
        );
        a.check(
            "store: no buyer above the per-user limit",
            f.users_over_limit == 0 && f.user_units_over_limit == 0,
            format!(
                "{} buyers over {} by their holds, {} by their unit counters",
                f.users_over_limit, f.per_user_limit, f.user_units_over_limit
            ),
        );
        a.check(
            "store: every confirmed order has exactly one captured payment",
            f.confirmed_without_one_capture == 0 && f.captures_on_unconfirmed == 0,
            format!(
                "{} of {} confirmed orders without exactly one capture; {} captures on unconfirmed orders",
                f.confirmed_without_one_capture, f.confirmed_orders, f.captures_on_unconfirmed
            ),
        );
        a.check(
            "store: every hold ended exactly once",
            f.converted_without_one_order == 0
                && f.ended_holds_with_confirmed_order == 0
                && f.overdue_active_holds == 0,
            format!(
                "{} converted holds without exactly one confirmed order, {} released/expired holds paid for, {} active past their expiry (of {} holds)",
                f.converted_without_one_order, f.ended_holds_with_confirmed_order, f.overdue_active_holds, f.holds
            ),
        );
        a.check(
            "store: every acknowledged hold and order was kept",
            u64::try_from(f.holds).unwrap_or(0) >= s.acked_holds
                && u64::try_from(f.confirmed_orders).unwrap_or(0) >= s.acked_confirmed_orders,
            format!(
                "{} holds acknowledged, {} in the store; {} orders confirmed to buyers, {} in the store",
                s.acked_holds, f.holds, s.acked_confirmed_orders, f.confirmed_orders
            ),
        );
        if let Some(m) = &s.api {
            a.check(
                "api and store agree",
                (m.total_stock, m.available, m.held, m.sold)
                    == (f.total_stock, f.available, f.held, f.sold),
                format!(
                    "api {}/{}/{}/{}, store {}/{}/{}/{} (total/available/held/sold)",
                    m.total_stock,
                    m.available,
                    m.held,
                    m.sold,
                    f.total_stock,
                    f.available,
                    f.held,
                    f.sold
                ),
            );
        }
    }
    a.check(
        "no more units sold than stock",
        s.api.is_none_or(|m| m.sold <= m.total_stock),
        format!("{} sold", a.units_sold),
    );
    a.fifo_inversions = fifo_inversions(&s.admissions, s.admission_tolerance_ms);
    a.check(
        "waiting room: admitted first come, first served",
        a.fifo_inversions == 0,
        if s.admissions.is_empty() {
            "no admissions observed (no waiting room, or no queue joiners)".into()
        } else {
            format!(
                "{} inversions among {} admitted buyers",
                a.fifo_inversions,
                s.admissions.len()
            )
        },
    );
    a
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn clean() -> Snapshot {
        let api = SaleMetrics {
            total_stock: 100,
            available: 0,
            held: 10,
            sold: 90,
            orders: 90,
            holds_expired: 5,
            invariant_ok: true,
        };
        let store = StoreFacts {
            total_stock: 100,
            available: 0,
            held: 10,
            sold: 90,
            per_user_limit: 1,
            active_units: 10,
            converted_units: 90,
            holds: 105,
            confirmed_orders: 90,
            ..StoreFacts::default()
        };
        Snapshot {
            api: Some(api),
            store: Some(store),
            per_user_limit: 1,
            acked_holds: 105,
            acked_confirmed_orders: 90,
            units_demanded: 5000,
            admissions: vec![],
            admission_tolerance_ms: 300,
        }
    }

    #[test]
    fn a_clean_snapshot_passes() {
        let a = audit(&clean());
        assert!(a.passed(), "{:?}", a.violations().collect::<Vec<_>>());
        assert_eq!(a.units_sold, 90);
    }

    #[test]
    fn an_oversell_fails_the_audit() {
        let mut s = clean();
        if let Some(f) = s.store.as_mut() {
            f.sold = 91;
            f.converted_units = 91;
        }
        let a = audit(&s);
        assert!(!a.passed());
        let failed: Vec<_> = a.violations().map(|c| c.name).collect();
        assert!(
            failed.contains(&"store: available + held + sold == total_stock"),
            "{failed:?}"
        );
        assert!(failed.contains(&"api and store agree"), "{failed:?}");
    }

    /// A way to spoil a clean snapshot.
    type Doctor = fn(&mut Snapshot);

    #[test]
    fn each_kind_of_violation_is_caught() {
        let doctor: [(&str, Doctor); 8] = [
            ("store: no buyer above the per-user limit", |s| {
                if let Some(f) = s.store.as_mut() {
                    f.users_over_limit = 1;
                }
            }),
            (
                "store: every confirmed order has exactly one captured payment",
                |s| {
                    if let Some(f) = s.store.as_mut() {
                        f.confirmed_without_one_capture = 1;
                    }
                },
            ),
            ("store: every hold ended exactly once", |s| {
                if let Some(f) = s.store.as_mut() {
                    f.overdue_active_holds = 2;
                }
            }),
            ("store: every acknowledged hold and order was kept", |s| {
                s.acked_confirmed_orders = 91
            }),
            ("store: held == units in active holds", |s| {
                if let Some(f) = s.store.as_mut() {
                    f.active_units = 9;
                }
            }),
            ("api: invariant_ok", |s| {
                if let Some(m) = s.api.as_mut() {
                    m.invariant_ok = false;
                }
            }),
            ("api: available + held + sold == total_stock", |s| {
                if let Some(m) = s.api.as_mut() {
                    m.available = -1;
                }
            }),
            ("waiting room: admitted first come, first served", |s| {
                s.admissions = vec![
                    Admission {
                        join_sent: Duration::from_secs(0),
                        join_answered: Duration::from_secs(1),
                        admitted_after: Duration::from_secs(5),
                    },
                    Admission {
                        join_sent: Duration::from_secs(2),
                        join_answered: Duration::from_secs(3),
                        admitted_after: Duration::from_secs(4),
                    },
                ];
            }),
        ];
        for (name, f) in doctor {
            let mut s = clean();
            f(&mut s);
            let a = audit(&s);
            let failed: Vec<_> = a.violations().map(|c| c.name).collect();
            assert!(failed.contains(&name), "{name} not caught: {failed:?}");
        }
    }

    #[test]
    fn admissions_within_the_polling_tolerance_are_not_inversions() {
        let seen = [
            Admission {
                join_sent: Duration::from_millis(0),
                join_answered: Duration::from_millis(10),
                admitted_after: Duration::from_millis(1200),
            },
            Admission {
                join_sent: Duration::from_millis(20),
                join_answered: Duration::from_millis(30),
                admitted_after: Duration::from_millis(1000),
            },
            Admission {
                // Joined while the first join was in flight: not surely behind it.
                join_sent: Duration::from_millis(5),
                join_answered: Duration::from_millis(40),
                admitted_after: Duration::from_millis(300),
            },
        ];
        assert_eq!(fifo_inversions(&seen, 300), 0);
        assert_eq!(fifo_inversions(&seen, 100), 1);
    }
}
