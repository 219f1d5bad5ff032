//! The denial-of-inventory guard at the judge: unpaid holds open at once per account and per
//! device, across every sale, counted inside the group commit's transaction (the shared
//! `stampede_store_sql::hold_cap`).
//!
//! SQLite has one writer, and the group commit's transaction is `BEGIN IMMEDIATE`: no other
//! write can open a hold between the count read here and the batch's commit, so the counts
//! (read once per batch, then kept up to date as the batch accepts holds) are exact and two
//! concurrent reserves cannot both pass the cap.

pub(crate) use stampede_store_sql::hold_cap::OpenHolds;
