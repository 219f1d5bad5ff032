//! Property test of holds, orders and payments against the model of what clients were told:
//! proptest makes the sequences of steps (and shrinks a failing one to its shortest form),
//! the simulation runs them and checks every invariant after each.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use stampede_sim::gateway::{tokens, Hang};
use stampede_sim::step::Ending;
use stampede_sim::{run_steps, Shape, Step};

const SHAPE: Shape = Shape { users: 3, sales: 2 };

fn ending() -> impl Strategy<Value = Ending> {
    prop_oneof![5 => Just(Ending::Told), 1 => Just(Ending::CrashBeforeReply)]
}

fn token() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        3 => Just(tokens::OK),
        1 => Just(tokens::DECLINE),
        3 => Just(tokens::ASYNC_OK),
        1 => Just(tokens::ASYNC_FAIL),
        1 => Just(tokens::DOWN),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let user = 0..SHAPE.users;
    let sale = 0..SHAPE.sales;
    let pick = 0_usize..64;
    prop_oneof![
        5 => (user.clone(), sale.clone(), 1_i64..=2, ending())
            .prop_map(|(user, sale, qty, ending)| Step::Reserve { user, sale, qty, ending }),
        1 => (user.clone(), sale.clone(), 1_i64..=2)
            .prop_map(|(user, sale, qty)| Step::ReserveTwice { user, sale, qty }),
        1 => vec((user.clone(), sale.clone(), Just(1_i64)), 2..=4)
            .prop_map(|buyers| Step::Burst { buyers }),
        1 => (pick.clone(), ending()).prop_map(|(pick, ending)| Step::Release { pick, ending }),
        1 => (pick.clone(), 1_i64..=3).prop_map(|(pick, qty)| Step::Resize { pick, qty }),
        1 => (pick.clone(), token(), any::<bool>()).prop_map(|(pick, token, release_first)| {
            Step::ReleaseWhilePaying { pick, token, release_first }
        }),
        1 => pick.clone().prop_map(|pick| Step::SweepWhileWebhook { pick }),
        4 => (user.clone(), vec(pick.clone(), 1..=2), token(), option::of(0_u32..1000), ending())
            .prop_map(|(user, picks, token, key, ending)| Step::Checkout {
                user, picks, token, key, ending,
            }),
        1 => pick.clone().prop_map(|pick| Step::RetryCheckout { pick }),
        1 => pick.clone().prop_map(|pick| Step::ReuseKey { pick }),
        1 => (user.clone(), vec(pick.clone(), 1..=2), token())
            .prop_map(|(user, picks, token)| Step::DuplicateCheckout { user, picks, token }),
        1 => pick.clone().prop_map(|pick| Step::Cancel { pick }),
        2 => (pick.clone(), any::<bool>())
            .prop_map(|(pick, stale)| Step::DeliverWebhook { pick, stale }),
        1 => pick.clone().prop_map(|pick| Step::ReplayWebhook { pick }),
        3 => (1_i64..200_000).prop_map(|ms| Step::Advance { ms }),
        1 => (pick.clone(), -1_i64..=1)
            .prop_map(|(pick, offset_ms)| Step::ToExpiry { pick, offset_ms }),
        1 => Just(Step::Sweep),
        1 => (1_u32..10).prop_map(|steps| Step::StallSweeper { steps }),
        1 => Just(Step::Reconcile),
        1 => (sale.clone(), 1_i64..4).prop_map(|(sale, extra)| Step::GateDrift { sale, extra }),
        1 => any::<bool>().prop_map(|graceful| Step::Crash { graceful }),
        1 => (user.clone(), vec(pick.clone(), 1..=2), any::<bool>(), any::<bool>())
            .prop_map(|(user, picks, capture, graceful)| Step::CrashDuringPayment {
                user,
                picks,
                hang: if capture { Hang::Capture } else { Hang::Authorize },
                graceful,
            }),
        1 => (user, sale, 1_i64..=2, any::<bool>()).prop_map(|(user, sale, qty, graceful)| {
            Step::CrashMidReserve { user, sale, qty, graceful }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any sequence of buyer requests, webhooks, clock jumps, sweeps, gate faults and crashes
    /// keeps every invariant and every answer a client was given.
    #[test]
    fn any_sequence_of_steps_keeps_the_invariants(
        shop in 0_u64..1000,
        steps in vec(step(), 1..40),
    ) {
        let result = run_steps(shop, SHAPE, &steps);
        prop_assert!(result.is_ok(), "{}", result.err().map(|f| f.to_string()).unwrap_or_default());
    }
}
