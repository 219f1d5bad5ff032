//! Test support shared by Stampede's adapters. Its main part is the `Store` conformance suite:
//! every adapter (SQLite, PostgreSQL, …) runs the same checks, so "same behaviour in both modes"
//! is tested rather than hoped for. A dev-dependency of the adapters only, never of production
//! code.

// A test support crate: a failed unwrap is a failed test. (`allow-unwrap-in-tests` covers
// `#[test]` functions but not the helpers they share.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use async_trait::async_trait;
use stampede_app::ports::Store;

pub mod catalog_conformance;
pub mod room_conformance;
pub mod room_log_conformance;
pub mod store_conformance;

/// One fresh, migrated, empty store for one conformance check, plus whatever must outlive it
/// (a temporary directory, a scratch schema). Adapters implement this in their test crate.
#[async_trait]
pub trait StoreFixture: Send + Sync + 'static {
    /// The store under test.
    fn store(&self) -> Arc<dyn Store>;

    /// Best-effort cleanup after the check (passed or failed), e.g. dropping a scratch schema.
    async fn teardown(&self) {}
}

/// Runs one check against a fixture: the check runs in its own task so that a failure still
/// lets the fixture tear down, and is then re-raised as this test's failure.
pub async fn run_check<F, C, Fut>(fixture: F, check: C)
where
    F: StoreFixture,
    C: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let outcome = tokio::spawn(check(fixture.store())).await;
    fixture.teardown().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("conformance check did not finish: {e}"),
        }
    }
}

/// Expands to one `#[tokio::test]` per check of [`store_conformance`], each getting its own
/// fixture from `$make`: an expression (evaluated once per test) of type
/// `impl Future<Output = Option<impl StoreFixture>>`; `None` means "skip this test" (the
/// adapter has already said why). One test name per check, so a failure names the rule broken.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@each ($make)
            one_batch_sells_exactly_the_stock,
            per_user_limit_holds_inside_one_batch,
            refusals_follow_status_then_limit_then_stock,
            duplicate_hold_id_returns_the_same_hold_and_takes_stock_once,
            release_returns_stock_and_only_to_its_owner,
            expiry_returns_stock_and_ends_each_hold_once,
            resize_judges_growth_and_returns_shrinkage,
            concurrent_batches_never_oversell,
            the_hold_cap_counts_open_holds_per_account_and_device_across_sales,
            concurrent_batches_respect_the_hold_cap,
            lapsed_holds_list_accounts_and_devices,
            paid_order_sells_and_cancel_refunds,
            money_moves_are_owed_until_recorded_done,
            stuck_pending_orders_are_found_and_abandoned,
            orders_are_listed_newest_first_with_items_and_payment,
            checkout_refuses_foreign_expired_busy_and_mixed_holds,
            declined_payment_leaves_holds_for_another_try,
            late_authorization_without_retake_lapses_and_moves_no_stock,
            late_authorization_with_retake_takes_the_stock_again,
            a_retake_with_live_holds_is_a_plain_confirmation,
            retake_of_an_unswept_hold_expires_it_first,
            authorization_is_all_or_nothing_across_holds,
            users_sessions_and_admins,
            account_status_ends_sessions_and_accounts_are_searchable,
            update_sale_moves_available_with_total,
            idempotency_keys,
            checkout_steps_of_every_kind_share_a_batch,
            keyed_orders_create_their_order_only_under_a_new_claim,
            checkouts_and_answers_together_each_see_the_earlier_ones,
            webhook_events_are_seen_once,
            audit_log_filters_and_pages,
            payment_outcomes_write_one_outbox_event_each,
            outbox_claims_lease_events_until_delivered,
            released_outbox_events_are_claimed_again_at_once,
            concurrent_outbox_claims_never_share_an_event,
            relay_steps_among_checkout_steps_lease_and_deliver_in_order,
            notifications_are_appended_once_per_id,
            notifications_page_in_the_order_they_were_added,
            expiring_holds_are_warned_once_through_the_outbox,
            webhook_enqueue_is_idempotent_per_event,
            webhook_claims_lease_back_off_and_wait_until_due,
            delivered_webhooks_are_never_claimed_again,
            concurrent_webhook_claims_never_share_a_delivery,
            randomized_operations_match_the_reference_model,
            a_drop_limit_spans_its_sales,
            concurrent_batches_respect_a_drop_limit,
            browse_matches_the_model
        );
    };
    (@each ($make:expr) $($name:ident),+ $(,)?) => {
        $(
            #[::tokio::test]
            async fn $name() {
                if let Some(fixture) = $make.await {
                    $crate::run_check(fixture, $crate::store_conformance::$name).await;
                }
            }
        )+
    };
}
