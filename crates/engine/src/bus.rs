//! Events within one process: a broadcast channel. Subscribers that fall behind lose the
//! oldest events (live stock updates are superseded by the next one anyway); durable delivery
//! is the cluster bus's job.

use tokio::sync::broadcast;

use stampede_app::ports::{Event, EventBus};

/// An in-process [`EventBus`].
pub struct LocalBus {
    sender: broadcast::Sender<Event>,
}

impl LocalBus {
    /// A bus that buffers up to `capacity` events per slow subscriber.
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self { sender }
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl EventBus for LocalBus {
    fn publish(&self, event: Event) {
        // No subscriber is not an error: nobody is watching right now.
        let _ = self.sender.send(event);
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}
