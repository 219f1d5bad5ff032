//! The in-memory waiting room against the shared room conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use stampede_app::ports::WaitingRoom;
use stampede_engine::MemoryRoom;

async fn memory_room() -> Option<Arc<dyn WaitingRoom>> {
    Some(Arc::new(MemoryRoom::new()))
}

stampede_testkit::room_conformance_tests!(memory_room);
