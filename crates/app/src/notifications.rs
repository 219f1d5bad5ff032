//! The buyer's in-app feed: what happened to their orders and payments. Each entry is the
//! effect of an outbox event the store wrote with the order change (see [`crate::outbox`]).

use crate::auth::Principal;
use crate::ports::Notification;
use crate::{App, AppError};

/// Most notifications one page returns.
pub const MAX_PAGE: u32 = 100;

impl App {
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
