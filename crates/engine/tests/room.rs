//! The in-memory waiting room against the shared room conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use stampede_app::ports::WaitingRoom;
use stampede_engine::MemoryRoom;

async fn memory_room() -> Option<Arc<dyn WaitingRoom>> {
    Some(Arc::new(MemoryRoom::new()))
}

stampede_testkit::room_conformance_tests!(memory_room);

/// The memory room behind the durable log (a log in memory) holds to the same suite.
mod durable {
    use super::*;
    use stampede_app::durable_room::DurableRoom;
    use stampede_testkit::room_log_conformance::MemoryRoomLog;

    async fn durable_memory_room() -> Option<Arc<dyn WaitingRoom>> {
        Some(DurableRoom::start(
            Arc::new(MemoryRoom::new()),
            Arc::new(MemoryRoomLog::default()),
        ))
    }

    stampede_testkit::room_conformance_tests!(durable_memory_room);
}

/// Lines lost with the process (a restart): a new, empty room.
mod rebuilt {
    use super::*;
    use stampede_core::SaleId;

    fn restart(
        _lost: Arc<dyn WaitingRoom>,
        _sale: SaleId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn WaitingRoom>> + Send>> {
        Box::pin(async { Arc::new(MemoryRoom::new()) as Arc<dyn WaitingRoom> })
    }

    stampede_testkit::durable_room_conformance_tests!(memory_room, restart);
}
