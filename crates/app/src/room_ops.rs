//! What operators of big sales ask of the waiting room beyond admitting people:
//!
//! * **Telling buyers it is their turn**, so they can leave the page while they wait: the
//!   node whose admission round let a buyer in (each admission is named to exactly one node)
//!   writes a `queue_admitted` notification to their feed, which is pushed on their live
//!   stream (`GET /api/v1/me/events`) and, when the shop configured a webhook, queued as a
//!   signed delivery to the shop (an e-mail or a push from there). The admission window starts
//!   at that moment and the notice states when it ends. Sent on its own task, so a slow store
//!   never holds up the admission rounds; the admission itself does not depend on it (the
//!   buyer's `…/queue/me` says `admitted` either way).
//! * **The operator's broadcast**: a short message to everyone waiting in a sale's room,
//!   audited (`room.broadcast`), shown on `…/queue/me`, its live stream and the queue pages.
//!   Every node keeps the latest per sale in memory, learns new ones from the bus, and reads
//!   the audit log once per sale when it has not heard of one (a node started after it).
//! * **Queue analytics** ([`stampede_core::queue_analytics`]) fed from the room's events as
//!   this node sees them: joins and looks at the place, admissions, reservations.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use stampede_core::queue_analytics::{QueueAnalytics, QueueFigures};
use stampede_core::{Sale, SaleId, Timestamp, UserId};

use crate::auth::Principal;
use crate::ports::{AuditFilter, Event, OutboxEvent};
use crate::{App, AppError};

/// How long a place link (the no-JavaScript place page's key) works.
pub const PLACE_LINK_SECS: i64 = 24 * 3600;

/// The longest broadcast an operator may send (characters).
pub const MAX_MESSAGE: usize = 280;

/// The operator's latest word to everyone waiting in a sale's room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMessage {
    pub text: String,
    pub at: Timestamp,
}

/// This node's room state for the features above.
#[derive(Default)]
pub struct RoomOps {
    analytics: dashmap::DashMap<SaleId, Mutex<QueueAnalytics>>,
    /// `None`: looked up, there is none.
    messages: dashmap::DashMap<SaleId, Option<RoomMessage>>,
}

/// The id of a lottery winner's notice: the same on every node (a ULID at the sale's start
/// whose random part is a hash of the sale and the winner).
fn lottery_notice_id(sale: &SaleId, user: &UserId, starts_at: Timestamp) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("lottery-notice|{sale}|{user}"));
    let mut random = [0_u8; 16];
    random.copy_from_slice(&digest[..16]);
    let ms = u64::try_from(starts_at.millis()).unwrap_or(0);
    ulid::Ulid::from_parts(ms, u128::from_be_bytes(random)).to_string()
}

/// Checks an operator's message: no control characters anywhere (it is shown as a line of
/// text on pages and streams), at most [`MAX_MESSAGE`] characters as sent, not blank.
fn check_message(text: &str) -> Result<&str, AppError> {
    let control = text.chars().any(char::is_control);
    let sent = text.chars().count();
    let text = text.trim();
    if control || text.is_empty() || sent > MAX_MESSAGE {
        return Err(AppError::invalid(format!(
            "message must be 1 to {MAX_MESSAGE} characters of text, without control characters"
        )));
    }
    Ok(text)
}

impl App {
    /// Feeds the sale's analytics.
    pub(crate) fn analytics(&self, sale: &SaleId, f: impl FnOnce(&mut QueueAnalytics)) {
        let entry = self.ops.analytics.entry(sale.clone()).or_default();
        let lock = entry.lock();
        if let Ok(mut a) = lock {
            f(&mut a);
        }
    }

    /// The sale's queue figures as this node saw them, at `now`.
    pub(crate) fn queue_figures(
        &self,
        sale: &SaleId,
        now: Timestamp,
        per_minute_limit: u32,
    ) -> QueueFigures {
        self.ops
            .analytics
            .get(sale)
            .and_then(|a| {
                a.lock()
                    .ok()
                    .map(|a| a.figures(now.millis(), per_minute_limit))
            })
            .unwrap_or_else(|| QueueAnalytics::default().figures(now.millis(), per_minute_limit))
    }

    /// Buyers were just admitted at `now` (their window ends at `until`): counted, and each
    /// told on its own task (see the module's doc). A lottery's winners may be applied by
    /// several nodes: their notices get ids fixed by the sale and the winner, so the feed and
    /// the shop's webhook take each once.
    pub(crate) fn admitted_now(
        self: &Arc<Self>,
        sale: &Sale,
        users: Vec<String>,
        now: Timestamp,
        until: Timestamp,
        lottery: bool,
    ) {
        if users.is_empty() {
            return;
        }
        self.analytics(&sale.id, |a| {
            for user in &users {
                a.admitted(user, now.millis(), until.millis());
            }
        });
        let app = self.clone();
        let (sale_id, name, starts_at) = (sale.id.clone(), sale.name.clone(), sale.starts_at);
        tokio::spawn(async move {
            for user in users {
                let Some(user) = UserId::parse(&user) else {
                    continue;
                };
                let mut event = OutboxEvent::queue_admitted(&user, &sale_id, &name, now, until);
                if lottery {
                    event.id = lottery_notice_id(&sale_id, &user, starts_at);
                }
                if let Err(e) = app.apply_outbox_event(&event).await {
                    metrics::counter!("stampede_background_errors_total", "job" => "turn notice")
                        .increment(1);
                    tracing::warn!(error = %e, sale = %sale_id, "a buyer was not told it is their turn");
                }
            }
        });
    }

    /// A place link key for `who` in `sale`'s room: a signed, expiring statement of whose
    /// place it shows (nothing to store), made with the admission key but for a pseudo-sale
    /// (`place-<sale>`), so it can never pass as an admission. It shows the place; it cannot
    /// buy.
    pub(crate) async fn place_ticket(
        &self,
        who: &Principal,
        sale: &SaleId,
    ) -> Result<String, AppError> {
        let key = self.signing_key().await?;
        let now = self.clock.now();
        stampede_core::admission::AdmissionClaims {
            sale_id: format!("place-{}", sale.as_str()),
            user_id: who.user_id.as_str().to_owned(),
            device_id: "place".into(),
            ticket: 0,
            issued_at: now,
            expires_at: now.plus_secs(PLACE_LINK_SECS),
        }
        .sign(key)
        .ok_or_else(|| AppError::Internal("cannot sign a place link".into()))
    }

    /// The place a place link shows, with its sale: 404 for a link that is not ours, is for
    /// another sale or has expired (the same answer for each, so a link cannot be probed).
    pub async fn queue_status_by_place_ticket(
        &self,
        sale_id: &str,
        ticket: &str,
    ) -> Result<(Arc<Sale>, crate::waiting_room::QueueView), AppError> {
        let id = SaleId::parse(sale_id).ok_or(AppError::NotFound)?;
        let key = self.signing_key().await?;
        let claims = stampede_core::admission::AdmissionClaims::verify(key, ticket)
            .map_err(|_| AppError::NotFound)?;
        let now = self.clock.now();
        if claims.sale_id != format!("place-{}", id.as_str()) || now >= claims.expires_at {
            return Err(AppError::NotFound);
        }
        let user = UserId::parse(&claims.user_id).ok_or(AppError::NotFound)?;
        let sale = self.sale_config(&id).await?;
        let entry = self
            .room
            .view(&id, &user)
            .await?
            .ok_or(AppError::NotFound)?;
        let who = Principal {
            user_id: user,
            role: crate::ports::Role::Buyer,
            expires_at: claims.expires_at,
            session_id: String::new(),
        };
        let mut view = self.view_for(&who, &id, entry).await?;
        // The page shows the place; the admission itself stays with the logged-in buyer.
        view.admission_token = None;
        Ok((sale, view))
    }

    /// Sends a short message to everyone waiting in the sale's room. Admin only; audited.
    pub async fn broadcast_to_room(
        &self,
        who: &Principal,
        sale_id: &str,
        text: &str,
    ) -> Result<RoomMessage, AppError> {
        self.require_admin(who)?;
        let text = check_message(text)?;
        let id = SaleId::parse(sale_id).ok_or(AppError::NotFound)?;
        let sale = self.sale_config(&id).await?;
        if !sale.queue_required {
            return Err(AppError::Conflict(
                "this sale has no waiting room: nobody is waiting to be told".into(),
            ));
        }
        let message = RoomMessage {
            text: text.to_owned(),
            at: self.clock.now(),
        };
        self.audit(
            who,
            "room.broadcast",
            sale.id.as_str(),
            None::<&()>,
            Some(&serde_json::json!({ "message": message.text })),
        )
        .await;
        self.room_message_heard(&sale.id, message.clone());
        self.bus.publish(Event::RoomMessage {
            sale_id: sale.id.clone(),
            text: message.text.clone(),
            at: message.at,
        });
        Ok(message)
    }

    /// A broadcast was sent (here or on another node): waiters see it at once.
    pub(crate) fn room_message_heard(&self, sale: &SaleId, message: RoomMessage) {
        let newer = self
            .ops
            .messages
            .get(sale)
            .and_then(|m| m.as_ref().map(|m| m.at))
            .is_none_or(|at| at <= message.at);
        if newer {
            self.ops.messages.insert(sale.clone(), Some(message));
            self.queue_tick.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The operator's latest message to the sale's room, if any.
    pub(crate) async fn room_message(&self, sale: &SaleId) -> Option<RoomMessage> {
        if let Some(known) = self.ops.messages.get(sale) {
            return known.clone();
        }
        // Not heard of here yet: the audit log has every broadcast (rare; read once per sale).
        let mut latest: Option<RoomMessage> = None;
        let mut after = None;
        loop {
            let page = match self
                .store
                .audit(&AuditFilter {
                    actor: None,
                    action: Some("room.broadcast".into()),
                    after: after.clone(),
                    limit: 500,
                })
                .await
            {
                Ok(page) => page,
                // Not remembered: the next look tries again.
                Err(_) => return None,
            };
            for entry in &page {
                if entry.target == sale.as_str() {
                    if let Some(text) = entry.after.as_ref().and_then(|a| a["message"].as_str()) {
                        latest = Some(RoomMessage {
                            text: text.to_owned(),
                            at: entry.at,
                        });
                    }
                }
            }
            if page.len() < 500 {
                break;
            }
            after = page.last().map(|e| e.id.clone());
        }
        self.ops
            .messages
            .entry(sale.clone())
            .or_insert(latest)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_short_plain_text() {
        assert_eq!(
            check_message("  Back in 5 minutes  ").ok(),
            Some("Back in 5 minutes")
        );
        assert!(check_message("   ").is_err());
        assert!(check_message("line\nbreak").is_err());
        assert!(check_message("\tindented").is_err());
        assert!(check_message(&"x".repeat(MAX_MESSAGE)).is_ok());
        assert!(check_message(&"x".repeat(MAX_MESSAGE + 1)).is_err());
    }
}
