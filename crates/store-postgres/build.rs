//! Rebuilds the crate when a migration changes: `sqlx::migrate!` embeds the SQL files at
//! compile time, and Cargo would otherwise not know they are inputs.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
