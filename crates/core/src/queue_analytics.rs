//! What a waiting room did for its buyers, in figures an operator can act on: how long people
//! waited (p50, p99), how many left before their turn (abandonment), how many were let in and
//! never bought (no-shows), how wrong the ETA told at join was, and admissions per minute
//! against the limit.
//!
//! Pure bookkeeping over events the caller feeds in with their times (join, a look at the
//! place, admission, reservation): no clock of its own, so tests drive it with exact
//! timestamps. Definitions:
//!
//! * **time in queue**: from join to admission, over everyone admitted;
//! * **abandoned**: a buyer who stopped looking at their place (no poll, stream or join) for
//!   [`ABANDON_AFTER_MS`] before being admitted, or who is still waiting and has not looked
//!   for that long;
//! * **no-show**: admitted, the admission window over, and nothing reserved with it;
//! * **ETA error**: when admitted, minus when the ETA told at join said (positive: later than
//!   told), in seconds;
//! * **admissions per minute**: per wall-clock minute, the last [`MINUTES_KEPT`] minutes.
//!
//! Memory is bounded: at most [`MAX_TRACKED`] buyers per sale are followed one by one (the
//! first to join); later joins are only counted.

use std::collections::{BTreeMap, HashMap};

/// No look at the place for this long before admission counts as having left.
pub const ABANDON_AFTER_MS: i64 = 120_000;
/// Buyers followed one by one per sale.
pub const MAX_TRACKED: usize = 200_000;
/// Minutes of admissions kept for the per-minute series.
pub const MINUTES_KEPT: i64 = 60;

/// One buyer's way through the room.
#[derive(Debug, Clone, Copy)]
struct Track {
    joined_ms: i64,
    /// When the ETA told at join said they would be admitted.
    promised_ms: i64,
    last_seen_ms: i64,
    admitted_ms: Option<i64>,
    window_ends_ms: i64,
    reserved: bool,
    /// Looked at their place within [`ABANDON_AFTER_MS`] before being admitted.
    present_at_admission: bool,
}

/// One sale's room figures, fed event by event.
#[derive(Debug, Default, Clone)]
pub struct QueueAnalytics {
    tracks: HashMap<Box<str>, Track>,
    joins: u64,
    untracked_joins: u64,
    /// Admissions per minute (minute number since the epoch → count).
    per_minute: BTreeMap<i64, u64>,
}

/// The figures at one moment.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct QueueFigures {
    /// Buyers who joined (first joins only).
    pub joined: u64,
    /// Of them, followed one by one (the figures below are over these).
    pub tracked: u64,
    pub admitted: u64,
    pub time_in_queue_p50_secs: f64,
    pub time_in_queue_p99_secs: f64,
    /// Left before admission (see the module's definition).
    pub abandoned: u64,
    /// `abandoned` over everyone tracked.
    pub abandonment_rate: f64,
    /// Admitted, window over, nothing reserved.
    pub no_shows: u64,
    /// `no_shows` over the admitted whose window is over.
    pub no_show_rate: f64,
    /// Median of |actual − told| admission time, seconds.
    pub eta_error_p50_secs: f64,
    /// 90th percentile of |actual − told|, seconds.
    pub eta_error_p90_secs: f64,
    /// Mean of actual − told, seconds (positive: people got in later than told).
    pub eta_bias_secs: f64,
    /// Admissions in each of the last minutes, oldest first (the current minute last).
    pub admissions_per_minute: Vec<u64>,
    /// The most admitted in any one minute kept.
    pub max_admissions_in_a_minute: u64,
    /// The room's limit on admissions per minute (0: none).
    pub admissions_per_minute_limit: u32,
}

/// The `q` quantile (0..=1) of sorted values, nearest rank; 0 for none.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(60_000)
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

impl QueueAnalytics {
    /// A buyer joined at `now_ms` and was told `eta_secs`. Joining again changes nothing but
    /// counts as a look at the place.
    pub fn joined(&mut self, user: &str, now_ms: i64, eta_secs: u64) {
        if let Some(t) = self.tracks.get_mut(user) {
            t.last_seen_ms = t.last_seen_ms.max(now_ms);
            return;
        }
        self.joins += 1;
        if self.tracks.len() >= MAX_TRACKED {
            self.untracked_joins += 1;
            return;
        }
        let eta_ms = i64::try_from(eta_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        self.tracks.insert(
            user.into(),
            Track {
                joined_ms: now_ms,
                promised_ms: now_ms.saturating_add(eta_ms),
                last_seen_ms: now_ms,
                admitted_ms: None,
                window_ends_ms: 0,
                reserved: false,
                present_at_admission: false,
            },
        );
    }

    /// The buyer looked at their place (a poll, a live update, the page).
    pub fn seen(&mut self, user: &str, now_ms: i64) {
        if let Some(t) = self.tracks.get_mut(user) {
            t.last_seen_ms = t.last_seen_ms.max(now_ms);
        }
    }

    /// The buyer was admitted at `now_ms`, with a window until `window_ends_ms`.
    pub fn admitted(&mut self, user: &str, now_ms: i64, window_ends_ms: i64) {
        *self.per_minute.entry(minute_of(now_ms)).or_default() += 1;
        let oldest = minute_of(now_ms) - MINUTES_KEPT;
        while self
            .per_minute
            .first_key_value()
            .is_some_and(|(m, _)| *m <= oldest)
        {
            self.per_minute.pop_first();
        }
        if let Some(t) = self.tracks.get_mut(user) {
            if t.admitted_ms.is_none() {
                t.admitted_ms = Some(now_ms);
                t.window_ends_ms = window_ends_ms;
                t.present_at_admission = now_ms - t.last_seen_ms <= ABANDON_AFTER_MS;
            }
        }
    }

    /// The buyer reserved with their admission.
    pub fn reserved(&mut self, user: &str) {
        if let Some(t) = self.tracks.get_mut(user) {
            t.reserved = true;
        }
    }

    /// The figures at `now_ms`, with the room's admissions-per-minute limit.
    pub fn figures(&self, now_ms: i64, per_minute_limit: u32) -> QueueFigures {
        let mut waits = Vec::new();
        let mut eta_abs = Vec::new();
        let mut eta_sum = 0.0;
        let (mut abandoned, mut no_shows, mut windows_over) = (0_u64, 0_u64, 0_u64);
        for t in self.tracks.values() {
            match t.admitted_ms {
                Some(at) => {
                    waits.push(secs(at - t.joined_ms));
                    let err = secs(at - t.promised_ms);
                    eta_abs.push(err.abs());
                    eta_sum += err;
                    if !t.present_at_admission {
                        abandoned += 1;
                    }
                    if now_ms >= t.window_ends_ms {
                        windows_over += 1;
                        if !t.reserved {
                            no_shows += 1;
                        }
                    }
                }
                None if now_ms - t.last_seen_ms > ABANDON_AFTER_MS => abandoned += 1,
                None => {}
            }
        }
        let by = |a: &f64, b: &f64| a.total_cmp(b);
        waits.sort_by(by);
        eta_abs.sort_by(by);
        let tracked = self.tracks.len() as u64;
        let current = minute_of(now_ms);
        let admissions_per_minute: Vec<u64> = (current - 9..=current)
            .map(|m| self.per_minute.get(&m).copied().unwrap_or(0))
            .collect();
        let rate = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
        QueueFigures {
            joined: self.joins,
            tracked,
            admitted: waits.len() as u64,
            time_in_queue_p50_secs: quantile(&waits, 0.5),
            time_in_queue_p99_secs: quantile(&waits, 0.99),
            abandoned,
            abandonment_rate: rate(abandoned, tracked),
            no_shows,
            no_show_rate: rate(no_shows, windows_over),
            eta_error_p50_secs: quantile(&eta_abs, 0.5),
            eta_error_p90_secs: quantile(&eta_abs, 0.9),
            eta_bias_secs: if eta_abs.is_empty() {
                0.0
            } else {
                eta_sum / eta_abs.len() as f64
            },
            admissions_per_minute,
            max_admissions_in_a_minute: self.per_minute.values().copied().max().unwrap_or(0),
            admissions_per_minute_limit: per_minute_limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic clock: minutes and seconds from a fixed start.
    /// On a whole minute.
    const T0: i64 = 1_800_000_000_000;
    fn at(secs: i64) -> i64 {
        T0 + secs * 1000
    }

    #[test]
    fn waits_no_shows_eta_error_and_abandonment_follow_their_definitions() {
        let mut a = QueueAnalytics::default();
        // Four buyers join at 0 s, told 10, 20, 30 and 40 s.
        for (i, user) in ["a", "b", "c", "d"].iter().enumerate() {
            a.joined(user, at(0), 10 * (i as u64 + 1));
        }
        // A fifth joins later and keeps looking; a sixth joins and never looks again.
        a.joined("e", at(100), 5);
        a.joined("f", at(100), 5);
        // Joining again is not a second join.
        a.joined("a", at(1), 99);
        // a, b and c keep looking at their place; d stops after joining.
        for s in (0..=200).step_by(30) {
            for user in ["a", "b", "c", "e"] {
                a.seen(user, at(s));
            }
        }
        a.admitted("a", at(10), at(130)); // on time
        a.admitted("b", at(30), at(150)); // 10 s late
        a.admitted("c", at(25), at(145)); // 5 s early
        a.admitted("d", at(170), at(290)); // 130 s late, and not seen for 170 s: left
        a.reserved("a");
        a.reserved("c");

        let f = a.figures(at(200), 0);
        assert_eq!((f.joined, f.tracked, f.admitted), (6, 6, 4));
        // Waits 10, 25, 30, 170 s: p50 by nearest rank is 25 s, p99 the longest.
        assert_eq!(f.time_in_queue_p50_secs, 25.0);
        assert_eq!(f.time_in_queue_p99_secs, 170.0);
        // |errors| 0, 5, 10, 130: p50 5 s, p90 130 s; bias (0 + 10 - 5 + 130) / 4.
        assert_eq!(f.eta_error_p50_secs, 5.0);
        assert_eq!(f.eta_error_p90_secs, 130.0);
        assert_eq!(f.eta_bias_secs, 33.75);
        // d left before admission; f is waiting and has not looked for 100 s: not yet.
        assert_eq!(f.abandoned, 1);
        // b's window is over and it bought nothing; d's window is still open.
        assert_eq!(f.no_shows, 1);
        assert_eq!(f.no_show_rate, 1.0 / 3.0);

        // Later: e and f, still waiting, have not looked for over two minutes (left); d's
        // window closed unused.
        let f = a.figures(at(400), 0);
        assert_eq!(f.abandoned, 3);
        assert_eq!(f.no_shows, 2);
        assert_eq!(f.abandonment_rate, 3.0 / 6.0);
    }

    #[test]
    fn admissions_are_counted_per_minute_against_the_limit() {
        let mut a = QueueAnalytics::default();
        // 60 in the first minute, 30 in the third, none in between.
        for i in 0..60 {
            a.admitted(&format!("u{i}"), at(i), at(i + 120));
        }
        for i in 0..30 {
            a.admitted(&format!("v{i}"), at(120 + i), at(240 + i));
        }
        let f = a.figures(at(150), 60);
        assert_eq!(f.admissions_per_minute.len(), 10);
        assert_eq!(&f.admissions_per_minute[7..], &[60, 0, 30]);
        assert_eq!(f.max_admissions_in_a_minute, 60);
        assert_eq!(f.admissions_per_minute_limit, 60);
        // Nobody joined through this node: nothing tracked, rates are 0, not NaN.
        assert_eq!((f.joined, f.admitted, f.abandonment_rate), (0, 0, 0.0));
        // An hour on, the old minutes are dropped.
        a.admitted("w", at(3_800), at(3_920));
        let f = a.figures(at(3_800), 60);
        assert_eq!(f.max_admissions_in_a_minute, 1);
    }

    #[test]
    fn only_the_first_joins_are_followed_one_by_one() {
        let mut a = QueueAnalytics::default();
        for i in 0..MAX_TRACKED + 5 {
            a.joined(&format!("u{i}"), at(0), 1);
        }
        let f = a.figures(at(1), 0);
        assert_eq!(f.joined, MAX_TRACKED as u64 + 5);
        assert_eq!(f.tracked, MAX_TRACKED as u64);
    }
}
