//! The simulation must notice a judge that no longer checks stock. Its own test binary, so
//! the process-wide switch cannot leak into the other simulation tests.

use stampede_sim::{run_seed, steps_from_env, DEFAULT_SEEDS};

#[test]
fn simulation_catches_a_judge_without_its_stock_check() {
    stampede_core::judge::set_skip_stock_check_for_tests(true);
    let steps = steps_from_env();
    let caught = (0..DEFAULT_SEEDS).find_map(|seed| run_seed(seed, steps).err());
    stampede_core::judge::set_skip_stock_check_for_tests(false);
    let failure = caught.expect("no seed among the first 1,000 caught the broken judge");
    eprintln!(
        "the broken judge was caught by seed {}:\n{failure}",
        failure.seed
    );
    // What the checker saw is the oversell itself: the counters going negative (a debug
    // build's assertion in the writer, or the store refusing to write them in release).
    assert!(
        failure.message.contains("broke stock")
            || failure.message.contains("refusing to write sale"),
        "seed {} failed for another reason: {failure}",
        failure.seed
    );
    // And with the judge mended, that very seed passes: it was the judge the checker caught.
    assert!(
        run_seed(failure.seed, steps).is_ok(),
        "seed {} fails even with a sound judge",
        failure.seed
    );
}
