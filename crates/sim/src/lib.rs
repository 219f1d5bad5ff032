//! A seeded, deterministic simulation of Stampede's application layer over the embedded
//! adapters, checking the invariants of DESIGN.md after every step.
//!
//! Each seed builds a small shop (a few sales of a few units, a handful of buyers) on a fresh
//! SQLite file, wired as `stampede serve` wires embedded mode, with a [`ManualClock`] and a
//! gateway the simulation controls ([`gateway::SimGateway`]). A ChaCha RNG seeded from the
//! seed then picks the steps (see [`step::Step`]): reserves (single, a retry in flight beside
//! the original, bursts of buyers polled together in a seeded order), releases, resizes,
//! checkouts with and without `Idempotency-Key` (retried, reused with another body, sent twice
//! at once), cancellations, the gateway's webhooks delivered late, out of order, with a stale
//! signature or twice, clock jumps (to just before, at and just after a hold's expiry),
//! sweeper runs and stalls (and a sweep racing a payment webhook), a release racing a
//! checkout of the same hold, reconciliation, a gate gone wrong, and crashes: the application
//! dropped and started again over the same file (the gate rebuilt from the judge by the same
//! `App::start` the server uses), either right after a request finished but before its client
//! heard the answer, with a reserve queued for the judge (the writer draining its queue or
//! dying with it), or with a checkout waiting on the gateway's authorization or capture.
//!
//! A capture lost that way (the order confirmed, the money only authorized) is finished by the
//! money reconciliation the restart runs, and an authorization whose answer was lost is found
//! by its order id and voided: the checker fails on a confirmed order whose money is not
//! captured after the restart (`STAMPEDE_SIM_STRICT_CAPTURE=0` tolerates it, to compare), and
//! the run fails if any money is left in limbo at the end (`end: confirmed order never
//! captured`, `end: authorization neither captured nor voided`).
//!
//! After every step the checker reads the rows straight from the file and holds them to:
//! the stock balance and non-negativity per sale, counters equal to what the rows say, never
//! more held plus sold than the stock, the per-buyer limit, each hold ending once (and by
//! expiry only once its time has come, and surely after a sweep), orders moving only along
//! their state machine, one authorization per order, at most one capture per charge, money
//! captured exactly for confirmed orders and refunded exactly for refunded ones, the gate
//! equal to the judge unless it was broken on purpose, and — against a model of what each
//! client was told — every acknowledged hold and order still there after any crash and in a
//! state consistent with the answer; where an answer was lost, both outcomes are accepted
//! but nothing else (a hold or order no client asked for is a failure).
//!
//! Everything runs on one current-thread runtime per seed, and every choice comes from the
//! seed, so a seed replays the same run (`a_seed_runs_the_same_way_twice` holds this).
//!
//! `tests/broken_judge.rs` proves the checker has teeth: it turns off the judge's stock check
//! (`stampede_core::judge::set_skip_stock_check_for_tests`, compiled only with core's
//! `test-faults` feature and off until flipped) and requires a failing seed among the first
//! 1,000; the gate-drift step is what lets an oversell reach the broken judge.
//! `tests/model.rs` runs proptest-made sequences of the same steps, shrinking any failure.
//!
//! ```text
//! cargo test -p stampede-sim                                  # 1,000 seeds (CI)
//! STAMPEDE_SIM_SEED=1234 cargo test -p stampede-sim           # replay one seed
//! STAMPEDE_SIM_SEEDS=100000 cargo test -p stampede-sim --release   # a long run
//! STAMPEDE_SIM_FIRST_SEED=5000 STAMPEDE_SIM_SEEDS=1000 ...    # another range of seeds
//! STAMPEDE_SIM_STEPS=200 ...                                  # longer runs per seed
//! STAMPEDE_SIM_THREADS=1 ...                                  # threads (default: cores, max 2)
//! ```
//!
//! [`ManualClock`]: stampede_core::ManualClock

pub mod check;
pub mod gateway;
pub mod step;
mod world;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use step::{Shape, Step};

/// Steps per seed by default: long enough for holds to expire, orders to be paid late and the
/// app to crash a few times; short enough for 1,000 seeds in a CI run.
pub const DEFAULT_STEPS: usize = 60;

/// Seeds per run by default.
pub const DEFAULT_SEEDS: u64 = 1000;

/// Why a seed failed: the step, what broke, and the steps that led there.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    /// Steps the run was to take (the replay needs the same number).
    pub steps: usize,
    pub step: usize,
    pub message: String,
    pub trail: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "simulation seed {} failed at step {}: {}",
            self.seed, self.step, self.message
        )?;
        writeln!(f, "steps:")?;
        for line in &self.trail {
            writeln!(f, "  {line}")?;
        }
        let mut steps = if self.steps == DEFAULT_STEPS {
            String::new()
        } else {
            format!("STAMPEDE_SIM_STEPS={} ", self.steps)
        };
        if !strict_capture() {
            steps.push_str("STAMPEDE_SIM_STRICT_CAPTURE=0 ");
        }
        write!(
            f,
            "replay with: STAMPEDE_SIM_SEED={} {steps}cargo test -p stampede-sim",
            self.seed
        )
    }
}

/// The shop of a seed: a few sales and buyers, so stock and limits run out often.
pub fn shape_for(rng: &mut impl rand::Rng) -> Shape {
    Shape {
        users: rng.gen_range(3..=5),
        sales: rng.gen_range(1..=2),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))
}

/// Counts of what a run did, by kind (see the test output).
pub type Stats = std::collections::BTreeMap<&'static str, u64>;

/// Runs `steps` random steps from `seed`.
pub fn run_seed(seed: u64, steps: usize) -> Result<Stats, Failure> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let shape = shape_for(&mut rng);
    run_with(
        seed,
        &mut rng,
        shape,
        |rng, _| Some(step::random_step(rng, shape)),
        steps,
    )
}

/// Runs the given steps (from proptest, or a reduced failing case) on the shop of `shape`.
pub fn run_steps(seed: u64, shape: Shape, steps: &[Step]) -> Result<Stats, Failure> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    run_with(
        seed,
        &mut rng,
        shape,
        |_, i| steps.get(i).cloned(),
        steps.len(),
    )
}

fn run_with(
    seed: u64,
    rng: &mut ChaCha8Rng,
    shape: Shape,
    mut next: impl FnMut(&mut ChaCha8Rng, usize) -> Option<Step>,
    steps: usize,
) -> Result<Stats, Failure> {
    let mut trail: Vec<String> = Vec::new();
    let fail = |step: usize, message: String, trail: &[String]| Failure {
        seed,
        steps,
        step,
        message,
        trail: trail.to_vec(),
    };
    let rt = runtime().map_err(|m| fail(0, m, &[]))?;
    rt.block_on(async {
        let mut world = world::World::new(rng, shape)
            .await
            .map_err(|m| fail(0, format!("set-up: {m}"), &[]))?;
        for i in 0..steps {
            let Some(step) = next(rng, i) else { break };
            trail.push(format!("{:>3}: {step:?}", i + 1));
            if let Err(m) = world.run(rng, &step).await {
                return Err(fail(i + 1, m, &trail));
            }
        }
        Ok(world.shut_down().await)
    })
}

/// Whether a capture lost in a crash fails the run (the default; `STAMPEDE_SIM_STRICT_CAPTURE=0`
/// turns it off).
pub fn strict_capture() -> bool {
    env_number("STAMPEDE_SIM_STRICT_CAPTURE").unwrap_or(1) != 0
}

/// Reads a number from the environment.
pub fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The seeds a test run covers: `STAMPEDE_SIM_SEED` alone, or `STAMPEDE_SIM_SEEDS` (default
/// 1,000) from `STAMPEDE_SIM_FIRST_SEED` (default 0).
pub fn seeds_from_env() -> std::ops::Range<u64> {
    if let Some(one) = env_number("STAMPEDE_SIM_SEED") {
        return one..one.saturating_add(1);
    }
    let first = env_number("STAMPEDE_SIM_FIRST_SEED").unwrap_or(0);
    let n = env_number("STAMPEDE_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    first..first.saturating_add(n)
}

/// Steps per seed: `STAMPEDE_SIM_STEPS` or [`DEFAULT_STEPS`].
pub fn steps_from_env() -> usize {
    env_number("STAMPEDE_SIM_STEPS")
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(DEFAULT_STEPS)
}

/// Runs every seed in `seeds` on `threads` threads (each seed on its own current-thread
/// runtime, so each stays deterministic); returns the failures, lowest seed first, and the
/// stats of all runs added up.
pub fn run_seeds(
    seeds: std::ops::Range<u64>,
    steps: usize,
    threads: usize,
) -> (Vec<Failure>, Stats) {
    let threads = threads.max(1) as u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let seeds = seeds.clone();
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut stats = Stats::new();
                for seed in seeds.filter(|s| s % threads == t) {
                    match run_seed(seed, steps) {
                        Ok(s) => {
                            for (k, v) in s {
                                *stats.entry(k).or_default() += v;
                            }
                        }
                        Err(f) => failures.push(f),
                    }
                }
                (failures, stats)
            })
        })
        .collect();
    let mut failures = Vec::new();
    let mut stats = Stats::new();
    for handle in handles {
        match handle.join() {
            Ok((f, s)) => {
                failures.extend(f);
                for (k, v) in s {
                    *stats.entry(k).or_default() += v;
                }
            }
            Err(_) => failures.push(Failure {
                seed: seeds.start,
                steps,
                step: 0,
                message: "a simulation thread panicked".into(),
                trail: Vec::new(),
            }),
        }
    }
    failures.sort_by_key(|f| f.seed);
    (failures, stats)
}
