//! The plan of a drill: who arrives when, and what each buyer does. Drawn from a seed, so the
//! same command gives the same crowd (the same arrivals and the same behaviours, in the same
//! order); only the server's answers and timings differ between runs.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How arrivals spread over the drill's duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arrival {
    /// Everyone at T-0: the doors open and the whole crowd pushes at once (the flash sale).
    T0,
    /// The arrival rate grows linearly from zero to its peak at the end of the duration (a
    /// sale announced and spreading).
    Ramp,
    /// A constant arrival rate over the duration (an open-model load at a fixed rate).
    Steady,
}

impl fmt::Display for Arrival {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arrival::T0 => "t0",
            Arrival::Ramp => "ramp",
            Arrival::Steady => "steady",
        })
    }
}

/// What one virtual buyer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Behaviour {
    /// Only reads the sale page, a few times (the refresh button under a countdown).
    Refresh,
    /// Joins the waiting room, waits for admission, then reserves and pays.
    Queue,
    /// Reserves one unit and pays with a card that succeeds (`tok_ok`).
    Pay,
    /// Reserves one unit and walks away: the hold lapses by itself.
    Abandon,
    /// Reserves one unit and pays with a card that is declined (`tok_decline`).
    Decline,
    /// Reserves one unit and stops there (for benchmarks of the reserve path alone).
    Reserve,
    /// Sends one bare `GET /healthz` (the HTTP floor, for benchmarks).
    Healthz,
}

impl Behaviour {
    /// Every behaviour, in the order reports list them.
    pub const ALL: [Behaviour; 7] = [
        Behaviour::Refresh,
        Behaviour::Queue,
        Behaviour::Pay,
        Behaviour::Abandon,
        Behaviour::Decline,
        Behaviour::Reserve,
        Behaviour::Healthz,
    ];

    /// The word used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Refresh => "refresh",
            Behaviour::Queue => "queue",
            Behaviour::Pay => "pay",
            Behaviour::Abandon => "abandon",
            Behaviour::Decline => "decline",
            Behaviour::Reserve => "reserve",
            Behaviour::Healthz => "healthz",
        }
    }

    /// Whether this buyer asks for a unit (counts towards units demanded).
    pub fn demands(self) -> bool {
        !matches!(self, Behaviour::Refresh | Behaviour::Healthz)
    }
}

/// The behaviour mix: relative weights, e.g. `refresh=20,queue=5,pay=55,abandon=10,decline=10`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    /// (behaviour, weight); weights need not add up to 100.
    pub weights: Vec<(Behaviour, u32)>,
}

/// A mix that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("bad --mix {0:?}: expected name=weight pairs separated by commas, names among refresh, queue, pay, abandon, decline, reserve, healthz, with a positive total")]
pub struct MixError(String);

impl FromStr for Mix {
    type Err = MixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MixError(s.to_owned());
        let mut weights = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').ok_or_else(bad)?;
            let behaviour = Behaviour::ALL
                .into_iter()
                .find(|b| b.name() == name.trim())
                .ok_or_else(bad)?;
            let weight: u32 = weight.trim().parse().map_err(|_| bad())?;
            if weight > 0 {
                weights.push((behaviour, weight));
            }
        }
        if weights.is_empty() {
            return Err(bad());
        }
        Ok(Mix { weights })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(b, w)| format!("{}={w}", b.name()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl Mix {
    fn total(&self) -> u64 {
        self.weights.iter().map(|(_, w)| u64::from(*w)).sum()
    }

    fn pick(&self, roll: u64) -> Behaviour {
        let mut left = roll % self.total().max(1);
        for (b, w) in &self.weights {
            if left < u64::from(*w) {
                return *b;
            }
            left -= u64::from(*w);
        }
        Behaviour::Refresh
    }
}

/// One virtual buyer of the plan.
#[derive(Debug, Clone, Copy)]
pub struct PlannedBuyer {
    /// Index into the drill's accounts.
    pub index: usize,
    /// When the buyer arrives, from T-0.
    pub at: Duration,
    pub behaviour: Behaviour,
}

/// The whole crowd, in arrival order.
pub fn plan(
    buyers: usize,
    arrival: Arrival,
    duration: Duration,
    mix: &Mix,
    seed: u64,
) -> Vec<PlannedBuyer> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = buyers.max(1) as f64;
    (0..buyers)
        .map(|index| {
            let frac = index as f64 / n;
            let at = match arrival {
                Arrival::T0 => Duration::ZERO,
                // Rate grows linearly: the cumulative arrivals go as t², so the i-th arrives
                // at D·sqrt(i/n).
                Arrival::Ramp => duration.mul_f64(frac.sqrt()),
                Arrival::Steady => duration.mul_f64(frac),
            };
            PlannedBuyer {
                index,
                at,
                behaviour: mix.pick(rng.gen()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mix_parses_and_prints_back() {
        let mix: Mix = "refresh=20,pay=80".parse().unwrap();
        assert_eq!(mix.to_string(), "refresh=20,pay=80");
        assert!("pay".parse::<Mix>().is_err());
        assert!("pay=0".parse::<Mix>().is_err());
        assert!("lurk=3".parse::<Mix>().is_err());
    }

    #[test]
    fn the_same_seed_gives_the_same_crowd() {
        let mix: Mix = "refresh=1,pay=1,abandon=1".parse().unwrap();
        let a = plan(1000, Arrival::Ramp, Duration::from_secs(10), &mix, 7);
        let b = plan(1000, Arrival::Ramp, Duration::from_secs(10), &mix, 7);
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.at == y.at && x.behaviour == y.behaviour));
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at), "arrival order");
        assert!(a.last().unwrap().at <= Duration::from_secs(10));
        let pays = a.iter().filter(|p| p.behaviour == Behaviour::Pay).count();
        assert!((250..420).contains(&pays), "about a third pay: {pays}");
    }
}
