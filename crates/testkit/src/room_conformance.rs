//! The `WaitingRoom` conformance suite: the in-memory room and the Redis room run the same
//! checks (the in-memory `WaitingLine` is the reference; the Redis scripts must agree with it).
//!
//! An adapter's test crate calls `room_conformance_tests!(make)` where `make` is an async
//! function returning `Option<Arc<dyn WaitingRoom>>` (`None`: the backing service is not there
//! and the suite is skipped with a message; the adapter decides whether that fails under CI).

use std::collections::HashSet;
use std::sync::Arc;

use stampede_app::ports::{RoomRules, WaitingRoom};
use stampede_core::draw::DrawPurpose;
use stampede_core::waiting_line::{ClaimRefusal, EntryState, JoinRefusal};
use stampede_core::{SaleId, UserId};

fn sale() -> SaleId {
    SaleId::generate(1, rand_u128())
}

pub(crate) fn rand_u128() -> u128 {
    use std::time::{SystemTime, UNIX_EPOCH};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    #[allow(clippy::disallowed_methods)] // test ids only need to differ between runs
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    t ^ (u128::from(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) << 64)
}

fn user(i: u64) -> UserId {
    UserId::generate(i as i64 + 1, u128::from(i) + (rand_u128() << 32))
}

/// 1,000 joins in random concurrent order: positions are a permutation of 1..=1000 that follows
/// the order the room took them in; joining again moves nobody.
pub async fn concurrent_joins_are_a_permutation(room: Arc<dyn WaitingRoom>) {
    let sale = sale();
    room.place_drawn(&sale, &[]).await.unwrap();
    let users: Vec<UserId> = (0..1000).map(user).collect();
    let mut tasks = Vec::new();
    // Interleave the spawn order so arrival order is not index order.
    for i in (0..1000).map(|i| (i * 7919) % 1000) {
        let room = room.clone();
        let sale = sale.clone();
        let u = users[i].clone();
        tasks.push(tokio::spawn(async move {
            room.join(&sale, &u, &format!("dev-{i}"), 0)
                .await
                .unwrap()
                .unwrap()
        }));
    }
    for t in tasks {
        let v = t.await.unwrap();
        assert_eq!(v.state, EntryState::Waiting);
    }
    let mut by_ticket = Vec::new();
    for u in &users {
        let v = room.view(&sale, u).await.unwrap().unwrap();
        by_ticket.push((v.ticket, v.position, u.clone()));
    }
    let positions: HashSet<u64> = by_ticket.iter().map(|t| t.1).collect();
    assert_eq!(
        positions,
        (1..=1000).collect::<HashSet<u64>>(),
        "a permutation of 1..=1000"
    );
    by_ticket.sort();
    for (i, (_, position, _)) in by_ticket.iter().enumerate() {
        assert_eq!(*position, i as u64 + 1, "positions follow the join order");
    }
    // Everyone joins again, concurrently, from another device: nobody moves.
    let mut tasks = Vec::new();
    for (_, position, u) in by_ticket.clone() {
        let room = room.clone();
        let sale = sale.clone();
        tasks.push(tokio::spawn(async move {
            let again = room.join(&sale, &u, "other", 0).await.unwrap().unwrap();
            assert_eq!(again.position, position, "re-joining moved someone");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The pre-queue is placed in the drawn order; later joins go to the back.
pub async fn pre_queue_is_placed_in_the_drawn_order(room: Arc<dyn WaitingRoom>) {
    let sale = sale();
    let (a, b, c, d) = (user(1), user(2), user(3), user(4));
    for u in [&a, &b, &c] {
        let v = room.join(&sale, u, "x", 0).await.unwrap().unwrap();
        assert!(v.pre_queue);
    }
    assert_eq!(
        room.admit(&sale, Some(10), 1, 1000, 0, 100).await.unwrap(),
        0,
        "no admission before the draw"
    );
    let pre = room.pre_queue(&sale).await.unwrap().unwrap();
    assert_eq!(pre, vec![a.to_string(), b.to_string(), c.to_string()]);
    room.place_drawn(&sale, &[c.to_string(), a.to_string()])
        .await
        .unwrap();
    room.place_drawn(&sale, &[b.to_string()]).await.unwrap(); // idempotent
    assert_eq!(room.view(&sale, &c).await.unwrap().unwrap().position, 1);
    assert_eq!(room.view(&sale, &a).await.unwrap().unwrap().position, 2);
    assert_eq!(room.view(&sale, &b).await.unwrap().unwrap().position, 3);
    let late = room.join(&sale, &d, "x", 0).await.unwrap().unwrap();
    assert_eq!((late.position, late.pre_queue), (4, false));
    assert!(room.pre_queue(&sale).await.unwrap().is_none());
}

/// Admission lets in at most the units minus outstanding admissions; a claim is single use;
/// a lapsed admission gives its claim on stock to the next in line.
pub async fn admission_is_stock_bounded_and_single_use(room: Arc<dyn WaitingRoom>) {
    let sale = sale();
    room.place_drawn(&sale, &[]).await.unwrap();
    let users: Vec<UserId> = (0..5).map(user).collect();
    for u in &users {
        room.join(&sale, u, "d", 0).await.unwrap().unwrap();
    }
    let now = 1_000_000;
    assert_eq!(
        room.admit(&sale, Some(2), 1, 1000, now, 100).await.unwrap(),
        2
    );
    assert_eq!(
        room.admit(&sale, Some(2), 1, 1000, now, 100).await.unwrap(),
        0,
        "two outstanding"
    );
    let first = room.view(&sale, &users[0]).await.unwrap().unwrap();
    assert_eq!((first.state, first.position), (EntryState::Admitted, 0));
    assert_eq!(first.admitted_until_ms, now + 1000);
    assert_eq!(
        room.view(&sale, &users[2]).await.unwrap().unwrap().position,
        1
    );
    let t = first.ticket;
    let claim = |u: usize, dev: &'static str, ticket: u64| {
        let room = room.clone();
        let sale = sale.clone();
        let user = users[u].clone();
        async move {
            room.claim(&sale, &user, dev, ticket, 1, 0, now + 1)
                .await
                .unwrap()
        }
    };
    assert_eq!(claim(0, "d", t + 1).await, Err(ClaimRefusal::Mismatch));
    assert_eq!(claim(0, "e", t).await, Err(ClaimRefusal::Mismatch));
    assert_eq!(claim(0, "d", t).await, Ok(()));
    assert_eq!(claim(0, "d", t).await, Err(ClaimRefusal::AlreadyUsed));
    room.settle(&sale, &users[0], 1, true, i64::MAX)
        .await
        .unwrap();
    assert_eq!(claim(0, "d", t).await, Err(ClaimRefusal::AlreadyUsed));
    assert_eq!(claim(2, "d", 2).await, Err(ClaimRefusal::NotAdmitted));
    // A refused reservation gives the admission back.
    let t1 = room.view(&sale, &users[1]).await.unwrap().unwrap().ticket;
    assert_eq!(claim(1, "d", t1).await, Ok(()));
    room.settle(&sale, &users[1], 1, false, i64::MAX)
        .await
        .unwrap();
    // ...but it lapses unused: its claim on stock goes to the next in line.
    assert_eq!(
        room.admit(&sale, Some(1), 1, 1000, now + 1000, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        room.view(&sale, &users[1]).await.unwrap().unwrap().state,
        EntryState::Expired
    );
    assert_eq!(
        room.view(&sale, &users[2]).await.unwrap().unwrap().state,
        EntryState::Admitted
    );
    let t1_claim = room
        .claim(&sale, &users[1], "d", t1, 1, 0, now + 1001)
        .await
        .unwrap();
    assert_eq!(t1_claim, Err(ClaimRefusal::Lapsed));
    // A lapsed entry may join again, at the back.
    let back = room.join(&sale, &users[1], "d", 0).await.unwrap().unwrap();
    assert_eq!((back.state, back.position), (EntryState::Waiting, 3));
    let stats = room.stats(&sale).await.unwrap();
    assert_eq!(
        (
            stats.admitted_total,
            stats.used_total,
            stats.expired_total,
            stats.outstanding,
            stats.waiting
        ),
        (3, 1, 1, 1, 3)
    );
    assert_eq!(stats.admission_ranks, vec![0, 1, 2]);
}

/// Accounts per device are capped at join; units per device are limited at claim.
pub async fn device_caps_and_limits(room: Arc<dyn WaitingRoom>) {
    let sale = sale();
    room.place_drawn(&sale, &[]).await.unwrap();
    let (a, b, c) = (user(1), user(2), user(3));
    room.join(&sale, &a, "phone", 2).await.unwrap().unwrap();
    room.join(&sale, &b, "phone", 2).await.unwrap().unwrap();
    assert_eq!(
        room.join(&sale, &c, "phone", 2).await.unwrap(),
        Err(JoinRefusal::DeviceAccountsCap)
    );
    room.admit(&sale, Some(10), 1, 1000, 0, 100).await.unwrap();
    let ta = room.view(&sale, &a).await.unwrap().unwrap().ticket;
    let tb = room.view(&sale, &b).await.unwrap().unwrap().ticket;
    assert_eq!(
        room.claim(&sale, &a, "phone", ta, 1, 1, 1).await.unwrap(),
        Ok(())
    );
    room.settle(&sale, &a, 1, true, i64::MAX).await.unwrap();
    assert_eq!(
        room.claim(&sale, &b, "phone", tb, 1, 1, 1).await.unwrap(),
        Err(ClaimRefusal::DeviceLimit)
    );
    assert_eq!(room.stats(&sale).await.unwrap().device_units, vec![1]);
}

/// Sold-out and closed show in every view; a closed room takes no one new.
pub async fn sold_out_and_closed(room: Arc<dyn WaitingRoom>) {
    let sale = sale();
    room.place_drawn(&sale, &[]).await.unwrap();
    let (a, b) = (user(1), user(2));
    room.join(&sale, &a, "d", 0).await.unwrap().unwrap();
    room.set_sold_out(&sale, true, false).await.unwrap();
    let v = room.view(&sale, &a).await.unwrap().unwrap();
    assert!(v.sold_out && !v.closed);
    room.set_sold_out(&sale, false, false).await.unwrap();
    assert!(!room.view(&sale, &a).await.unwrap().unwrap().sold_out);
    room.set_sold_out(&sale, true, true).await.unwrap();
    let v = room.view(&sale, &a).await.unwrap().unwrap();
    assert!(v.sold_out && v.closed);
    assert_eq!(
        room.join(&sale, &b, "d", 0).await.unwrap(),
        Err(JoinRefusal::Closed)
    );
    assert_eq!(
        room.admit(&sale, Some(10), 1, 1000, 0, 100).await.unwrap(),
        0
    );
}

/// A lottery admits its winners and ends everyone else's wait (pre-queue included).
pub async fn lottery_admits_winners_only(room: Arc<dyn WaitingRoom>) {
    let sale = sale();
    let users: Vec<UserId> = (0..4).map(user).collect();
    for u in &users {
        room.join(&sale, u, "d", 0).await.unwrap().unwrap();
    }
    let mut entrants = room.waiting_entrants(&sale).await.unwrap();
    entrants.sort();
    let mut want: Vec<String> = users.iter().map(|u| u.to_string()).collect();
    want.sort();
    assert_eq!(entrants, want);
    let winners = vec![users[1].to_string(), users[3].to_string()];
    // Someone joins after the entrant list was taken: the lottery does not decide for them.
    let late = user(99);
    room.join(&sale, &late, "d", 0).await.unwrap().unwrap();
    room.apply_lottery(&sale, &entrants, &winners, 1000, 0)
        .await
        .unwrap();
    let kept = room.view(&sale, &late).await.unwrap().unwrap();
    assert_eq!((kept.state, kept.position), (EntryState::Waiting, 1));
    let won = room.view(&sale, &users[1]).await.unwrap().unwrap();
    assert_eq!((won.state, won.lottery_won), (EntryState::Admitted, true));
    let lost = room.view(&sale, &users[0]).await.unwrap().unwrap();
    assert_eq!(lost.state, EntryState::LotteryLost);
    let stats = room.stats(&sale).await.unwrap();
    assert_eq!(
        (stats.waiting, stats.outstanding, stats.lottery_lost_total),
        (1, 2, 2)
    );
}

/// Seeds and the signing key are fixed by the first writer; rules and draws round-trip.
pub async fn seeds_keys_rules_and_draws(room: Arc<dyn WaitingRoom>) {
    let sale = sale();
    let (s1, created) = room
        .draw_seed(&sale, DrawPurpose::PreQueue, [1; 32])
        .await
        .unwrap();
    assert_eq!((s1, created), ([1; 32], true));
    let (s2, created) = room
        .draw_seed(&sale, DrawPurpose::PreQueue, [2; 32])
        .await
        .unwrap();
    assert_eq!((s2, created), ([1; 32], false));
    let (l, created) = room
        .draw_seed(&sale, DrawPurpose::Lottery, [3; 32])
        .await
        .unwrap();
    assert_eq!((l, created), ([3; 32], true));
    let k1 = room.signing_key([7; 32]).await.unwrap();
    let k2 = room.signing_key([8; 32]).await.unwrap();
    assert_eq!(k1, k2, "every caller signs with the first key");
    assert_eq!(room.rules(&sale).await.unwrap(), RoomRules::default());
    let rules = RoomRules {
        max_accounts_per_device: 3,
        device_limit: 2,
        pow_bits: 8,
        lottery_at_start: true,
        new_per_minute: 60,
        admission_paused: true,
        max_active: 7,
    };
    room.set_rules(&sale, rules).await.unwrap();
    assert_eq!(room.rules(&sale).await.unwrap(), rules);
    assert!(room.draws(&sale).await.unwrap().is_empty());
    room.publish_draw(&sale, "{\"a\":1}").await.unwrap();
    room.publish_draw(&sale, "{\"b\":2}").await.unwrap();
    assert_eq!(
        room.draws(&sale).await.unwrap(),
        vec!["{\"a\":1}", "{\"b\":2}"]
    );
    assert!(room.view(&sale, &user(9)).await.unwrap().is_none());
}

/// With real clock values: an admission counts at the buyer's limit against the units, and a
/// claim never settled (its node died mid-reservation) lapses as used, not as a second turn.
pub async fn units_per_admission_and_unsettled_claims(room: Arc<dyn WaitingRoom>) {
    let sale = sale();
    room.place_drawn(&sale, &[]).await.unwrap();
    let users: Vec<UserId> = (0..6).map(user).collect();
    for u in &users {
        room.join(&sale, u, "d", 0).await.unwrap().unwrap();
    }
    let now: i64 = 1_800_000_000_123;
    // Five units, two per buyer: two admissions (a third could find nothing left).
    assert_eq!(
        room.admit(&sale, Some(5), 2, 120_000, now, 100)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        room.admit(&sale, Some(5), 2, 120_000, now, 100)
            .await
            .unwrap(),
        0
    );
    let v = room.view(&sale, &users[0]).await.unwrap().unwrap();
    assert_eq!(v.admitted_until_ms, now + 120_000, "13-digit times survive");
    assert_eq!(
        room.claim(&sale, &users[0], "d", v.ticket, 2, 0, now + 1)
            .await
            .unwrap(),
        Ok(())
    );
    // Never settled: past the token and its grace it is used, and cannot join again.
    room.admit(&sale, Some(0), 2, 120_000, now + 120_000 + 60_001, 100)
        .await
        .unwrap();
    let after = room.view(&sale, &users[0]).await.unwrap().unwrap();
    assert_eq!(after.state, EntryState::Used);
    let again = room.join(&sale, &users[0], "d", 0).await.unwrap().unwrap();
    assert_eq!(
        again.state,
        EntryState::Used,
        "a used admission is not a new place"
    );
    // The other admission lapsed unused: expired, and may join again at the back.
    assert_eq!(
        room.view(&sale, &users[1]).await.unwrap().unwrap().state,
        EntryState::Expired
    );
    let stats = room.stats(&sale).await.unwrap();
    assert_eq!(
        (stats.used_total, stats.expired_total, stats.outstanding),
        (1, 1, 0)
    );
}

/// Paused by the organiser: nobody is admitted however much stock there is, everyone keeps
/// their place and sees the pause; resumed, admission goes on in the original order.
pub async fn a_paused_room_admits_nobody_and_keeps_places(room: Arc<dyn WaitingRoom>) {
    let sale = sale();
    room.place_drawn(&sale, &[]).await.unwrap();
    let users: Vec<UserId> = (0..6).map(user).collect();
    for u in &users {
        room.join(&sale, u, "d", 0).await.unwrap().unwrap();
    }
    let now = 1_000_000;
    assert_eq!(
        room.admit(&sale, Some(100), 1, 60_000, now, 2)
            .await
            .unwrap(),
        2
    );
    let paused = RoomRules {
        admission_paused: true,
        ..RoomRules::default()
    };
    room.set_rules(&sale, paused).await.unwrap();
    for round in 0..5 {
        assert_eq!(
            room.admit(&sale, Some(100), 1, 60_000, now + round, 100)
                .await
                .unwrap(),
            0,
            "admitted while paused"
        );
    }
    for (i, u) in users.iter().enumerate().skip(2) {
        let v = room.view(&sale, u).await.unwrap().unwrap();
        assert_eq!(
            (v.state, v.position, v.paused),
            (EntryState::Waiting, i as u64 - 1, true)
        );
    }
    // An admission made before the pause still lapses on time.
    assert_eq!(
        room.admit(&sale, Some(100), 1, 60_000, now + 60_000, 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(room.stats(&sale).await.unwrap().expired_total, 2);
    room.set_rules(&sale, RoomRules::default()).await.unwrap();
    assert!(!room.view(&sale, &users[2]).await.unwrap().unwrap().paused);
    assert_eq!(
        room.admit(&sale, Some(100), 1, 60_000, now + 60_001, 2)
            .await
            .unwrap(),
        2
    );
    for (i, u) in users.iter().enumerate() {
        let v = room.view(&sale, u).await.unwrap().unwrap();
        match i {
            0 | 1 => assert_eq!(v.state, EntryState::Expired),
            2 | 3 => assert_eq!(v.state, EntryState::Admitted, "next in the original order"),
            _ => assert_eq!((v.state, v.position), (EntryState::Waiting, i as u64 - 3)),
        }
    }
}

/// `new_per_minute`: no 60 s window admits more than the ceiling, whatever the stock, the
/// batch size or the number of rounds; the next window admits again.
pub async fn admissions_per_minute_are_capped(room: Arc<dyn WaitingRoom>) {
    let sale = sale();
    room.place_drawn(&sale, &[]).await.unwrap();
    for i in 0..50 {
        room.join(&sale, &user(i), "d", 0).await.unwrap().unwrap();
    }
    // Before the ceiling: 4 admitted at t0 (they count toward the window once it is set).
    let t0 = 5_000_000;
    assert_eq!(
        room.admit(&sale, Some(1000), 1, 600_000, t0, 4)
            .await
            .unwrap(),
        4
    );
    let rules = RoomRules {
        new_per_minute: 10,
        ..RoomRules::default()
    };
    room.set_rules(&sale, rules).await.unwrap();
    let mut times = vec![t0; 4];
    // One round every 5 s for three minutes, each allowed a batch of 3.
    for step in 1..=36 {
        let now = t0 + step * 5_000;
        let n = room
            .admit(&sale, Some(1000), 1, 600_000, now, 3)
            .await
            .unwrap();
        times.extend(std::iter::repeat_n(now, n as usize));
    }
    for &start in &times {
        let in_window = times
            .iter()
            .filter(|&&t| t >= start && t < start + 60_000)
            .count();
        assert!(
            in_window <= 10,
            "{in_window} admissions in the minute from {start}"
        );
    }
    assert!(
        times.len() >= 28,
        "the ceiling still admits: {}",
        times.len()
    );
    assert_eq!(
        room.stats(&sale).await.unwrap().admitted_total,
        times.len() as u64
    );
}

/// `max_active`: an admission not used yet, or a hold bought with one until it is paid,
/// released or lapses, takes a slot; the next in line gets in only when one frees.
pub async fn max_active_counts_the_admitted_and_the_shopping(room: Arc<dyn WaitingRoom>) {
    let sale = sale();
    room.place_drawn(&sale, &[]).await.unwrap();
    let users: Vec<UserId> = (0..8).map(user).collect();
    let mut tickets = Vec::new();
    for u in &users {
        tickets.push(room.join(&sale, u, "d", 0).await.unwrap().unwrap().ticket);
    }
    let rules = RoomRules {
        max_active: 3,
        ..RoomRules::default()
    };
    room.set_rules(&sale, rules).await.unwrap();
    let now = 9_000_000;
    let ttl = 10_000;
    assert_eq!(
        room.admit(&sale, Some(100), 1, ttl, now, 100)
            .await
            .unwrap(),
        3
    );
    // Two of the three buy: they are shopping now, still taking their slots.
    for i in 0..2 {
        room.claim(&sale, &users[i], "d", tickets[i], 1, 0, now)
            .await
            .unwrap()
            .unwrap();
        room.settle(&sale, &users[i], 1, true, now + 300_000)
            .await
            .unwrap();
    }
    assert_eq!(
        room.admit(&sale, Some(100), 1, ttl, now + 1, 100)
            .await
            .unwrap(),
        0
    );
    // One pays (or releases, or the hold lapses): the next in line, and only they, get in.
    room.shopping_ended(&sale, &users[0]).await.unwrap();
    assert_eq!(
        room.admit(&sale, Some(100), 1, ttl, now + 2, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        room.view(&sale, &users[3]).await.unwrap().unwrap().state,
        EntryState::Admitted
    );
    assert_eq!(
        room.view(&sale, &users[4]).await.unwrap().unwrap().position,
        1
    );
    // Ending twice, or for someone not shopping, frees nothing more.
    room.shopping_ended(&sale, &users[0]).await.unwrap();
    room.shopping_ended(&sale, &users[5]).await.unwrap();
    assert_eq!(
        room.admit(&sale, Some(100), 1, ttl, now + 3, 100)
            .await
            .unwrap(),
        0
    );
    // Unused admissions lapse (users 2 and 3): two slots free.
    assert_eq!(
        room.admit(&sale, Some(100), 1, ttl, now + ttl + 2, 100)
            .await
            .unwrap(),
        2
    );
    // A hold never heard of again stops counting once it is surely over.
    assert_eq!(
        room.admit(&sale, Some(100), 1, ttl, now + 300_001, 100)
            .await
            .unwrap(),
        2
    );
    let admitted: Vec<bool> = {
        let mut v = Vec::new();
        for u in &users {
            let st = room.view(&sale, u).await.unwrap().unwrap().state;
            v.push(st != EntryState::Waiting);
        }
        v
    };
    assert_eq!(admitted, vec![true; 8], "everyone in, in order");
}

/// A named admission says who was let in and at which place, in line order, and several
/// callers admitting at once never name the same buyer twice (each is told once).
pub async fn admissions_are_named_once_in_line_order(room: Arc<dyn WaitingRoom>) {
    let sale = sale();
    room.place_drawn(&sale, &[]).await.unwrap();
    let users: Vec<UserId> = (0..30).map(user).collect();
    for u in &users {
        room.join(&sale, u, "d", 0).await.unwrap().unwrap();
    }
    let first = room
        .admit_named(&sale, Some(3), 1, 60_000, 1_000, 100)
        .await
        .unwrap();
    let named: Vec<(String, u64)> = first
        .iter()
        .map(|a| (a.user_id.clone(), a.ticket))
        .collect();
    assert_eq!(
        named,
        vec![
            (users[0].to_string(), 0),
            (users[1].to_string(), 1),
            (users[2].to_string(), 2)
        ]
    );
    // The rest, admitted by eight callers at once, a few at a time.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (room, sale) = (room.clone(), sale.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for round in 0..10 {
                got.extend(
                    room.admit_named(&sale, Some(1_000), 1, 60_000, 2_000 + round, 2)
                        .await
                        .unwrap(),
                );
            }
            got
        }));
    }
    let mut all: Vec<String> = first.into_iter().map(|a| a.user_id).collect();
    for t in tasks {
        all.extend(t.await.unwrap().into_iter().map(|a| a.user_id));
    }
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 30, "everyone admitted: {all:?}");
    assert_eq!(distinct.len(), 30, "nobody named twice");
    for u in &users {
        assert_eq!(
            room.view(&sale, u).await.unwrap().unwrap().state,
            EntryState::Admitted
        );
    }
}

/// Generates one `#[tokio::test]` per check for a room adapter.
#[macro_export]
macro_rules! room_conformance_tests {
    ($make:path) => {
        $crate::room_conformance_tests!(@each $make,
            concurrent_joins_are_a_permutation,
            pre_queue_is_placed_in_the_drawn_order,
            admission_is_stock_bounded_and_single_use,
            device_caps_and_limits,
            sold_out_and_closed,
            lottery_admits_winners_only,
            seeds_keys_rules_and_draws,
            units_per_admission_and_unsettled_claims,
            a_paused_room_admits_nobody_and_keeps_places,
            admissions_per_minute_are_capped,
            max_active_counts_the_admitted_and_the_shopping,
            admissions_are_named_once_in_line_order,
            after_sell_out_admissions_are_offers_that_pass_on
        );
    };
    (@each $make:path, $($check:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                if let Some(room) = $make().await {
                    $crate::room_conformance::$check(room).await;
                }
            }
        )*
    };
}

/// Once the room has said sold out it is a waitlist: an admission made after that (a unit
/// came back) is an offer; unclaimed by its deadline it lapses and the next round offers the
/// unit to the next in line. Admissions before the sell-out are not offers, and the room
/// stays a waitlist while units come and go.
pub async fn after_sell_out_admissions_are_offers_that_pass_on(room: Arc<dyn WaitingRoom>) {
    let sale = sale();
    room.place_drawn(&sale, &[]).await.unwrap();
    let users: Vec<UserId> = (0..4).map(user).collect();
    for u in &users {
        room.join(&sale, u, "d", 0).await.unwrap().unwrap();
    }
    let now = 5_000_000;
    assert_eq!(
        room.admit(&sale, Some(1), 1, 1000, now, 100).await.unwrap(),
        1
    );
    let first = room.view(&sale, &users[0]).await.unwrap().unwrap();
    assert_eq!((first.state, first.offered), (EntryState::Admitted, false));
    let t = first.ticket;
    room.claim(&sale, &users[0], "d", t, 1, 0, now + 1)
        .await
        .unwrap()
        .unwrap();
    room.settle(&sale, &users[0], 1, true, i64::MAX)
        .await
        .unwrap();
    room.set_sold_out(&sale, true, false).await.unwrap();
    // A unit comes back (and the flag with it): the next in line is offered it.
    assert_eq!(
        room.admit(&sale, Some(1), 1, 500, now + 10, 100)
            .await
            .unwrap(),
        1
    );
    room.set_sold_out(&sale, false, false).await.unwrap();
    let offer = room.view(&sale, &users[1]).await.unwrap().unwrap();
    assert_eq!(
        (offer.state, offer.offered, offer.admitted_until_ms),
        (EntryState::Admitted, true, now + 510)
    );
    assert!(!room.view(&sale, &users[0]).await.unwrap().unwrap().offered);
    let next = room.view(&sale, &users[2]).await.unwrap().unwrap();
    assert_eq!((next.position, next.offered), (1, false));
    // Unclaimed by the deadline: it lapses, and the unit goes to the next.
    assert_eq!(
        room.claim(&sale, &users[1], "d", offer.ticket, 1, 0, now + 510)
            .await
            .unwrap(),
        Err(ClaimRefusal::Lapsed)
    );
    assert_eq!(
        room.admit(&sale, Some(1), 1, 500, now + 510, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        room.view(&sale, &users[1]).await.unwrap().unwrap().state,
        EntryState::Expired
    );
    let passed = room.view(&sale, &users[2]).await.unwrap().unwrap();
    assert_eq!((passed.state, passed.offered), (EntryState::Admitted, true));
    // Claimed within its window, the offer buys.
    assert_eq!(
        room.claim(&sale, &users[2], "d", passed.ticket, 1, 0, now + 600)
            .await
            .unwrap(),
        Ok(())
    );
    // The lapsed buyer who joins again is waiting at the back, no offer in hand.
    let back = room.join(&sale, &users[1], "d", 0).await.unwrap().unwrap();
    assert_eq!(
        (back.state, back.position, back.offered),
        (EntryState::Waiting, 2, false)
    );
}

/// How a room loses its lines in a durable check: the memory room is replaced by an empty
/// one (a restart); Redis's keys for the sale are deleted (a flush). Returns the room to go
/// on with.
pub type LoseLines =
    fn(
        Arc<dyn WaitingRoom>,
        SaleId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn WaitingRoom>> + Send>>;

/// Every view of `users`, in order.
async fn views(
    room: &dyn WaitingRoom,
    sale: &SaleId,
    users: &[UserId],
) -> Vec<Option<stampede_core::waiting_line::EntryView>> {
    let mut out = Vec::with_capacity(users.len());
    for u in users {
        out.push(room.view(sale, u).await.unwrap());
    }
    out
}

/// A line with a drawn pre-queue, later joins, admissions used, lapsed and outstanding and a
/// buyer who joined again after a lapse is lost; the running node rebuilds it from the log
/// on its next use, and so does a node that starts afresh: every view is what it was, the
/// outstanding admissions still claim, and the next round admits the next in line.
pub async fn a_lost_line_is_rebuilt_with_every_place_and_admission(
    room: Arc<dyn WaitingRoom>,
    lose: LoseLines,
) {
    use stampede_app::durable_room::DurableRoom;
    use stampede_app::ports::RoomLog;
    let log: Arc<dyn RoomLog> = Arc::new(crate::room_log_conformance::MemoryRoomLog::default());
    let node = DurableRoom::start(room.clone(), log.clone());
    let sale = sale();
    let users: Vec<UserId> = (0..32).map(user).collect();
    for (i, u) in users[..12].iter().enumerate() {
        let v = node
            .join(&sale, u, &format!("d{}", i % 5), 0)
            .await
            .unwrap()
            .unwrap();
        assert!(v.pre_queue);
    }
    let order: Vec<String> = users[..12]
        .iter()
        .rev()
        .step_by(2)
        .map(ToString::to_string)
        .collect();
    assert!(node.place_drawn(&sale, &order).await.unwrap());
    for (i, u) in users[12..].iter().enumerate() {
        node.join(&sale, u, &format!("d{}", i % 7), 0)
            .await
            .unwrap()
            .unwrap();
    }
    let now = 1_000_000;
    assert_eq!(
        node.admit(&sale, Some(4), 1, 60_000, now, 100)
            .await
            .unwrap(),
        4
    );
    let admitted: Vec<UserId> = {
        let all = views(node.as_ref(), &sale, &users).await;
        users
            .iter()
            .zip(all)
            .filter(|(_, v)| v.as_ref().unwrap().state == EntryState::Admitted)
            .map(|(u, _)| u.clone())
            .collect()
    };
    assert_eq!(admitted.len(), 4);
    // One spends its admission; the other three let theirs lapse, and one joins again.
    let first = node.view(&sale, &admitted[0]).await.unwrap().unwrap();
    node.claim(
        &sale,
        &admitted[0],
        &first.device_id,
        first.ticket,
        1,
        0,
        now + 1,
    )
    .await
    .unwrap()
    .unwrap();
    node.settle(&sale, &admitted[0], 1, true, i64::MAX)
        .await
        .unwrap();
    assert_eq!(
        node.admit(&sale, Some(3), 1, 60_000, now + 60_000, 100)
            .await
            .unwrap(),
        3
    );
    let back = node
        .join(&sale, &admitted[1], "d0", 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.state, EntryState::Waiting);
    let before = views(node.as_ref(), &sale, &users).await;
    let stats = node.stats(&sale).await.unwrap();

    let lost = lose(room, sale.clone()).await;
    // The running node finds the line gone (Redis) or still there (its own memory). The log
    // keeps admissions, not their lapsing: the first round lapses them again (no units:
    // nobody admitted).
    assert_eq!(
        node.admit(&sale, Some(0), 1, 60_000, now + 60_000, 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(views(node.as_ref(), &sale, &users).await, before);
    // A node that starts afresh over an empty room (a restart) rebuilds it from the log.
    let lost = lose(lost, sale.clone()).await;
    let fresh = DurableRoom::start(lost, log);
    assert_eq!(
        fresh
            .admit(&sale, Some(0), 1, 60_000, now + 60_000, 100)
            .await
            .unwrap(),
        0
    );
    let after = views(fresh.as_ref(), &sale, &users).await;
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        assert_eq!(a, b, "buyer {i} after the rebuild");
    }
    let again = fresh.stats(&sale).await.unwrap();
    assert_eq!(
        (
            again.waiting,
            again.outstanding,
            again.used_total,
            again.drawn
        ),
        (
            stats.waiting,
            stats.outstanding,
            stats.used_total,
            stats.drawn
        )
    );
    // An outstanding admission claims with the ticket it was handed before.
    let out = users
        .iter()
        .zip(&after)
        .find(|(_, v)| v.as_ref().unwrap().state == EntryState::Admitted)
        .map(|(u, v)| (u.clone(), v.clone().unwrap()))
        .unwrap();
    assert_eq!(
        fresh
            .claim(
                &sale,
                &out.0,
                &out.1.device_id,
                out.1.ticket,
                1,
                0,
                now + 60_001
            )
            .await
            .unwrap(),
        Ok(())
    );
    // The next round admits the buyer who was first in line; a new join goes to the back.
    let next = users
        .iter()
        .zip(&before)
        .find(|(_, v)| v.as_ref().unwrap().position == 1)
        .map(|(u, _)| u.clone())
        .unwrap();
    assert_eq!(
        fresh
            .admit(&sale, Some(10), 1, 60_000, now + 60_001, 1)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        fresh.view(&sale, &next).await.unwrap().unwrap().state,
        EntryState::Admitted
    );
    let late = fresh
        .join(&sale, &user(99), "dz", 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(late.position, stats.waiting);
}

/// A pre-queue not drawn yet comes back in join order, with its seeds, rules and draws, and
/// is drawn after the rebuild exactly as it would have been.
pub async fn an_undrawn_pre_queue_comes_back_with_seeds_rules_and_draws(
    room: Arc<dyn WaitingRoom>,
    lose: LoseLines,
) {
    use stampede_app::durable_room::DurableRoom;
    use stampede_app::ports::RoomLog;
    let log: Arc<dyn RoomLog> = Arc::new(crate::room_log_conformance::MemoryRoomLog::default());
    let node = DurableRoom::start(room.clone(), log.clone());
    let sale = sale();
    let users: Vec<UserId> = (0..6).map(user).collect();
    for u in &users {
        node.join(&sale, u, "phone", 0).await.unwrap().unwrap();
    }
    let (seed, created) = node
        .draw_seed(&sale, DrawPurpose::PreQueue, [7; 32])
        .await
        .unwrap();
    assert!(created);
    let rules = RoomRules {
        max_accounts_per_device: 9,
        device_limit: 2,
        pow_bits: 0,
        lottery_at_start: false,
        new_per_minute: 30,
        admission_paused: true,
        max_active: 4,
    };
    node.set_rules(&sale, rules).await.unwrap();
    node.publish_draw(&sale, "{\"first\":1}").await.unwrap();
    node.publish_draw(&sale, "{\"second\":2}").await.unwrap();
    let before = views(node.as_ref(), &sale, &users).await;

    let lost = lose(room, sale.clone()).await;
    let fresh = DurableRoom::start(lost, log);
    assert_eq!(views(fresh.as_ref(), &sale, &users).await, before);
    assert_eq!(
        fresh.pre_queue(&sale).await.unwrap().unwrap(),
        users.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
    assert_eq!(
        fresh
            .draw_seed(&sale, DrawPurpose::PreQueue, [9; 32])
            .await
            .unwrap(),
        (seed, false),
        "the committed seed survives"
    );
    assert_eq!(fresh.rules(&sale).await.unwrap(), rules);
    assert_eq!(
        fresh.draws(&sale).await.unwrap(),
        vec!["{\"first\":1}".to_owned(), "{\"second\":2}".to_owned()]
    );
    assert!(
        before.iter().all(|v| v.as_ref().unwrap().paused),
        "paused before"
    );
    fresh
        .place_drawn(&sale, &[users[3].to_string()])
        .await
        .unwrap();
    assert_eq!(
        fresh
            .view(&sale, &users[3])
            .await
            .unwrap()
            .unwrap()
            .position,
        1
    );
    assert_eq!(
        fresh
            .view(&sale, &users[0])
            .await
            .unwrap()
            .unwrap()
            .position,
        2
    );
}

/// One test per durable check: `$make` gives a room (for Redis, the guarded one a durable
/// deployment uses), `$lose` makes it lose a sale's line.
#[macro_export]
macro_rules! durable_room_conformance_tests {
    ($make:path, $lose:path) => {
        $crate::durable_room_conformance_tests!(@each $make, $lose,
            a_lost_line_is_rebuilt_with_every_place_and_admission,
            an_undrawn_pre_queue_comes_back_with_seeds_rules_and_draws
        );
    };
    (@each $make:path, $lose:path, $($check:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                if let Some(room) = $make().await {
                    $crate::room_conformance::$check(room, $lose).await;
                }
            }
        )*
    };
}
