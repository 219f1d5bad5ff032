//! Crash points: places on the money path (`fail::fail_point!`) where a test build can make
//! the process die on the spot, as a kill -9 would, to prove that a restart and a retry
//! recover. They compile to nothing unless the `failpoints` feature is on, which only the
//! `stampede` crate's tests turn on.
//!
//! The checkout's points, in the order a checkout meets them: `checkout.before_authorize`
//! (its order committed, unpaid), `checkout.after_authorize` (the gateway said yes, nothing
//! recorded), `checkout.after_commit` (confirmed, capture owed), `checkout.after_capture`,
//! `checkout.before_respond` (the answer stored, not yet sent).

/// The environment variable naming the crash points to arm, comma-separated.
pub const CRASH_AT_ENV: &str = "STAMPEDE_CRASH_AT";

/// Arms the crash points named in [`CRASH_AT_ENV`]: each aborts the process when reached.
/// Without the `failpoints` feature, says so if any were asked for, and does nothing.
pub fn arm_from_env() {
    let Ok(names) = std::env::var(CRASH_AT_ENV) else {
        return;
    };
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        #[cfg(feature = "failpoints")]
        if let Err(e) = fail::cfg_callback(name, || std::process::abort()) {
            tracing::warn!(name, error = %e, "crash point not armed");
        }
        #[cfg(not(feature = "failpoints"))]
        tracing::warn!(name, "crash points are compiled only into test builds");
    }
}
