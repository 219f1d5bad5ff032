//! The buyer's in-app feed: what happened to their orders and payments. Written after the
//! change it reports has committed; a failed write is logged and counted, never undoes the
//! change (durable delivery through an outbox comes with the cluster bus).

use stampede_core::UserId;

use crate::auth::Principal;
use crate::ports::{Event, Notification};
use crate::{App, AppError};

/// Most notifications one page returns.
pub const MAX_PAGE: u32 = 100;

impl App {
    /// Adds a notification to `user`'s feed and pushes it to their live stream.
    pub(crate) async fn notify(&self, user: &UserId, kind: &str, data: serde_json::Value) {
        let now = self.clock.now();
        let n = Notification {
            id: ulid::Ulid::from_parts(u64::try_from(now.millis()).unwrap_or(0), rand::random())
                .to_string(),
            user_id: user.clone(),
            kind: kind.to_owned(),
            created_at: now,
            data,
        };
        match self.store.append_notification(&n).await {
            Ok(_) => {
                metrics::counter!("stampede_notifications_total", "kind" => kind.to_owned())
                    .increment(1);
                self.bus.publish(Event::Notified { notification: n });
            }
            Err(e) => {
                metrics::counter!("stampede_notification_write_failures_total").increment(1);
                tracing::error!(error = %e, kind, "notification not written");
            }
        }
    }

    /// The caller's notifications after `after`, oldest first.
    pub async fn notifications(
        &self,
        who: &Principal,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Notification>, AppError> {
        Ok(self
            .store
            .notifications(&who.user_id, after, limit.clamp(1, MAX_PAGE))
            .await?)
    }
}
