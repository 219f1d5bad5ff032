//! The waiting room: join, position and ETA, stock-aware admission, admission tokens,
//! the pre-queue draw and the lottery.
//!
//! - **Join** before the start lands in the pre-queue; at the first admission tick after the
//!   start it is put in the order of a seeded draw whose seed was committed (its hash in the
//!   audit log and on `GET /sales/{id}/draws`) when the room opened. After that: first come,
//!   first served.
//! - **Admission** runs every `admission_tick_ms` on every node: it lets in as many buyers as
//!   the gate has units, minus admissions not used yet, next in line first. When the gate has
//!   nothing left the room says "sold out" to everyone waiting (they keep their places: a
//!   lapsed hold or an unused admission gives stock back, and the next in line gets it); when
//!   nothing is held either, or the sale ends, the room closes.
//! - **Tokens** are Ed25519-signed JWTs ([`stampede_core::admission`]) whose public key is
//!   published as a JWKS, bound to user, sale, device and place in line, expire, and are used
//!   up by the reservation they allow.

use std::sync::Arc;

use serde::Serialize;

use stampede_core::admission::{AdmissionClaims, AdmissionKey, Binding, Jwk, TokenRefusal};
use stampede_core::draw::{draw_order, DrawPurpose, DrawRecord, Seed};
use stampede_core::waiting_line::{
    fifo_inversions, top_devices_share, ClaimRefusal, EntryState, EntryView, JoinRefusal,
};
use stampede_core::{Sale, SaleId, SaleStatus, Timestamp};

use crate::auth::Principal;
use crate::error::NotAdmitted;
use crate::ports::RoomRules;
use crate::{App, AppError};

/// What a buyer is told about their place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueStatus {
    Waiting,
    Admitted,
    /// The admission bought something.
    Used,
    Expired,
    LotteryWon,
    LotteryLost,
    /// Nothing left to admit against (returned stock re-opens admission unless `closed`).
    SoldOut,
}

/// A buyer's view of their entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueView {
    pub position: u64,
    pub eta_seconds: u64,
    pub status: QueueStatus,
    pub admission_token: Option<String>,
    /// Joined before the start: the place is provisional until the draw.
    pub pre_queue: bool,
    /// When the admission token lapses.
    pub admitted_until: Option<Timestamp>,
    /// The room will not admit anyone again.
    pub closed: bool,
    /// The organiser paused admission: places are kept, nobody is admitted until it resumes.
    pub paused: bool,
    /// The operator's latest message to everyone waiting, if any.
    pub message: Option<crate::room_ops::RoomMessage>,
    /// A signed link key to follow the place without logging in or JavaScript (the
    /// server-rendered place page); given with a join only.
    pub place_ticket: Option<String>,
    /// Sold out, still waiting: the place on the waitlist (1 = offered the next unit that
    /// comes back).
    pub waitlist_position: Option<u64>,
    /// The admission is a waitlist offer: reserve before this, or it passes to the next.
    pub claim_deadline: Option<Timestamp>,
}

/// A solved proof-of-work challenge sent with a join.
#[derive(Debug, Clone)]
pub struct PowSolution {
    pub challenge: String,
    pub nonce: String,
}

/// A challenge to solve before joining.
#[derive(Debug, Clone, Serialize)]
pub struct PowChallenge {
    pub challenge: String,
    pub difficulty_bits: u8,
}

/// The admin's view of a room.
#[derive(Debug, Clone, Serialize)]
pub struct RoomReport {
    pub queue_length: u64,
    pub pre_queue_length: u64,
    pub drawn: bool,
    pub admitted: u64,
    /// Admitted and not used or lapsed yet.
    pub outstanding: u64,
    pub used: u64,
    pub expired: u64,
    pub lottery_lost: u64,
    /// Buyers admitted per second, as this node last measured it.
    pub admission_rate_per_sec: f64,
    pub sold_out: bool,
    pub closed: bool,
    /// When this node first saw the stock gone.
    pub sold_out_at: Option<Timestamp>,
    /// Refused attempts on this sale by reason (this node's counts).
    pub refusals: std::collections::BTreeMap<String, u64>,
    /// Pairs of admitted buyers where the later in line got in first (0 unless a lottery).
    pub fifo_inversions: u64,
    /// Share of the units bought through the room that went to the top 1% of devices.
    pub top_1pct_device_share: f64,
    pub rules: RoomRules,
    /// Time in queue, abandonment, no-shows, ETA error and admissions per minute against the
    /// limit, as this node saw them ([`stampede_core::queue_analytics`]).
    pub analytics: stampede_core::queue_analytics::QueueFigures,
    /// The operator's latest message to everyone waiting, if any.
    pub message: Option<crate::room_ops::RoomMessage>,
}

/// Admission rate bookkeeping per sale on this node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateSample {
    at: Timestamp,
    admitted_total: u64,
    per_sec: f64,
}

/// An operator's control of a sale's waiting room (each audited with its reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomControl {
    /// Stop admitting; the line and everyone's place are kept, waiters are told.
    Pause,
    /// Admit again, in the original order.
    Resume,
    /// At most `per_minute` admissions in any minute (0 lifts the ceiling).
    RateCeiling { per_minute: u32 },
    /// Put a live sale that had no room behind one: new arrivals queue from now on.
    QueueEveryone,
}

/// The longest reason an operator may give.
pub const MAX_REASON: usize = 500;

/// Why an operator acted: required, so the audit log says it.
fn check_reason(reason: &str) -> Result<&str, AppError> {
    let trimmed = reason.trim();
    if trimmed.is_empty() || reason.chars().count() > MAX_REASON {
        return Err(AppError::invalid(
            "reason must say why, in 1 to 500 characters",
        ));
    }
    Ok(trimmed)
}

const MAX_DEVICE_ID: usize = 64;

/// A device id: 1 to 64 characters of letters, digits and `-_.:`.
pub fn check_device_id(device: &str) -> Result<&str, AppError> {
    let ok = !device.is_empty()
        && device.len() <= MAX_DEVICE_ID
        && device
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(device)
    } else {
        Err(AppError::invalid(
            "device_id must be 1 to 64 characters: letters, digits, '-', '_', '.', ':'",
        ))
    }
}

fn purpose_label(p: DrawPurpose) -> &'static str {
    match p {
        DrawPurpose::PreQueue => "pre_queue",
        DrawPurpose::Lottery => "lottery",
    }
}

impl App {
    fn refused(&self, sale: &SaleId, reason: &'static str) {
        metrics::counter!("stampede_refusals_total", "reason" => reason).increment(1);
        self.count_reserve_refusal(sale, reason);
    }

    /// Counts a refused reservation by reason for the room's admin view.
    pub(crate) fn count_reserve_refusal(&self, sale: &SaleId, reason: &'static str) {
        use std::sync::atomic::{AtomicU64, Ordering};
        if let Some(reasons) = self.queue_refusals.get(sale) {
            if let Some(n) = reasons.get(reason) {
                n.fetch_add(1, Ordering::Relaxed);
                return;
            }
            reasons
                .entry(reason)
                .or_insert_with(|| AtomicU64::new(0))
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.queue_refusals
            .entry(sale.clone())
            .or_default()
            .entry(reason)
            .or_insert_with(|| AtomicU64::new(0))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The deployment's admission key: its seed is kept where the room is (embedded: the data
    /// dir; cluster: Redis, shared by every node), the first node to ask fixes it.
    pub(crate) async fn signing_key(&self) -> Result<&AdmissionKey, AppError> {
        self.admission_key
            .get_or_try_init(|| async {
                let seed = self.room.signing_key(rand::random()).await?;
                Ok::<_, AppError>(AdmissionKey::from_seed(&seed))
            })
            .await
    }

    /// The public keys admission tokens verify with, as published at
    /// `/.well-known/jwks.json`: a shop checks an admission without calling us.
    pub async fn admission_jwks(&self) -> Result<Vec<Jwk>, AppError> {
        Ok(vec![self.signing_key().await?.jwk()])
    }

    /// The room's seed for `purpose`; the first node to fix it publishes its commitment.
    async fn seed(&self, sale: &SaleId, purpose: DrawPurpose) -> Result<Seed, AppError> {
        let (seed, created) = self.room.draw_seed(sale, purpose, rand::random()).await?;
        let seed = Seed(seed);
        if created {
            self.audit_as(
                "system",
                "draw.seed_committed",
                sale.as_str(),
                None::<&()>,
                Some(&serde_json::json!({
                    "purpose": purpose_label(purpose),
                    "seed_commitment": seed.commitment(),
                })),
            )
            .await;
        }
        Ok(seed)
    }

    async fn queue_sale(&self, sale_id: &str) -> Result<Arc<Sale>, AppError> {
        let id = SaleId::parse(sale_id).ok_or(AppError::NotFound)?;
        let sale = self.sale_config(&id).await?;
        if !sale.queue_required {
            return Err(AppError::Conflict(
                "this sale has no waiting room: reserve directly".into(),
            ));
        }
        Ok(sale)
    }

    /// A proof-of-work challenge for joining `sale_id` (difficulty 0 when the sale asks none).
    pub async fn queue_challenge(
        &self,
        who: &Principal,
        sale_id: &str,
    ) -> Result<PowChallenge, AppError> {
        let sale = self.queue_sale(sale_id).await?;
        let rules = self.room.rules(&sale.id).await?;
        let key = self.signing_key().await?;
        // A signed, expiring statement of who it is for: nothing to store.
        let claims = AdmissionClaims {
            sale_id: format!("pow-{}", sale.id.as_str()),
            user_id: who.user_id.as_str().to_owned(),
            device_id: "pow".into(),
            ticket: u64::from(rules.pow_bits),
            issued_at: self.clock.now(),
            expires_at: self.clock.now().plus_secs(300),
        };
        let challenge = claims
            .sign(key)
            .ok_or_else(|| AppError::Internal("cannot sign a challenge".into()))?;
        Ok(PowChallenge {
            challenge,
            difficulty_bits: rules.pow_bits,
        })
    }

    fn check_pow(
        &self,
        key: &AdmissionKey,
        who: &Principal,
        sale: &SaleId,
        bits: u8,
        pow: Option<&PowSolution>,
    ) -> Result<(), AppError> {
        if bits == 0 {
            return Ok(());
        }
        let pow = pow.ok_or_else(|| {
            AppError::invalid("this sale asks for a proof of work: GET .../queue/challenge first")
        })?;
        let claims = AdmissionClaims::verify(key, &pow.challenge)
            .map_err(|_| AppError::invalid("pow.challenge is not one this server issued"))?;
        let now = self.clock.now();
        let ours = claims.sale_id == format!("pow-{}", sale.as_str())
            && claims.user_id == who.user_id.as_str()
            && now < claims.expires_at
            && claims.ticket >= u64::from(bits);
        if !ours {
            return Err(AppError::invalid(
                "pow.challenge has expired or belongs to another buyer or sale",
            ));
        }
        if !stampede_core::pow::solves(&pow.challenge, &pow.nonce, bits) {
            return Err(AppError::invalid("pow.nonce does not solve the challenge"));
        }
        Ok(())
    }

    /// Joins the sale's waiting room (idempotent: joining again keeps the first place).
    pub async fn join_queue(
        &self,
        who: &Principal,
        sale_id: &str,
        device_id: &str,
        pow: Option<&PowSolution>,
    ) -> Result<QueueView, AppError> {
        let device = check_device_id(device_id)?;
        let sale = self.queue_sale(sale_id).await?;
        let now = self.clock.now();
        if sale.status_at(now) == SaleStatus::Ended {
            return Err(AppError::SaleNotLive);
        }
        let rules = self.room.rules(&sale.id).await?;
        if rules.pow_bits > 0 && self.room.view(&sale.id, &who.user_id).await?.is_none() {
            let key = self.signing_key().await?;
            if let Err(e) = self.check_pow(key, who, &sale.id, rules.pow_bits, pow) {
                self.refused(&sale.id, "pow_failed");
                return Err(e);
            }
        }
        // Commit the draws' seeds before anyone could know who joined.
        self.seed(&sale.id, DrawPurpose::PreQueue).await?;
        self.seed(&sale.id, DrawPurpose::Lottery).await?;
        // Once the sale has started, arrivals are first come, first served: the pre-queue
        // (if the admission round has not drawn it yet) is drawn before this join. A sale
        // marked as a draw leaves that to the admission round's lottery.
        if sale.status_at(now) != SaleStatus::Scheduled && !rules.lottery_at_start {
            self.draw_pre_queue_if_open(&sale).await?;
        }
        let entry = match self
            .room
            .join(
                &sale.id,
                &who.user_id,
                device,
                rules.max_accounts_per_device,
            )
            .await?
        {
            Ok(entry) => entry,
            Err(JoinRefusal::DeviceAccountsCap) => {
                self.refused(&sale.id, "device_accounts_cap");
                return Err(AppError::LimitExceeded);
            }
            Err(JoinRefusal::Closed) => {
                self.refused(&sale.id, "room_closed");
                return Err(AppError::SoldOut);
            }
        };
        metrics::counter!("stampede_queue_joins_total").increment(1);
        let mut view = self.view_for(who, &sale.id, entry).await?;
        self.analytics(&sale.id, |a| {
            a.joined(who.user_id.as_str(), now.millis(), view.eta_seconds)
        });
        view.place_ticket = self.place_ticket(who, &sale.id).await.ok();
        Ok(view)
    }

    /// The caller's place in the sale's waiting room (404 if they never joined).
    pub async fn queue_status(
        &self,
        who: &Principal,
        sale_id: &str,
    ) -> Result<QueueView, AppError> {
        let id = SaleId::parse(sale_id).ok_or(AppError::NotFound)?;
        let entry = self
            .room
            .view(&id, &who.user_id)
            .await?
            .ok_or(AppError::NotFound)?;
        self.view_for(who, &id, entry).await
    }

    pub(crate) async fn view_for(
        &self,
        who: &Principal,
        sale: &SaleId,
        entry: EntryView,
    ) -> Result<QueueView, AppError> {
        let status = match entry.state {
            EntryState::Waiting if entry.sold_out => QueueStatus::SoldOut,
            EntryState::Waiting => QueueStatus::Waiting,
            EntryState::Admitted | EntryState::Claimed if entry.lottery_won => {
                QueueStatus::LotteryWon
            }
            EntryState::Admitted | EntryState::Claimed => QueueStatus::Admitted,
            EntryState::Used => QueueStatus::Used,
            EntryState::Expired => QueueStatus::Expired,
            EntryState::LotteryLost => QueueStatus::LotteryLost,
        };
        let admission_token = if matches!(entry.state, EntryState::Admitted) {
            let key = self.signing_key().await?;
            AdmissionClaims {
                sale_id: sale.as_str().to_owned(),
                user_id: who.user_id.as_str().to_owned(),
                device_id: entry.device_id.clone(),
                ticket: entry.ticket,
                // The moment of admission, so every poll hands out the same token.
                issued_at: Timestamp(
                    entry
                        .admitted_until_ms
                        .saturating_sub(self.admission_ttl_ms(entry.offered))
                        .min(self.clock.now().millis()),
                ),
                expires_at: Timestamp(entry.admitted_until_ms),
            }
            .sign(key)
        } else {
            None
        };
        let eta_seconds = if status == QueueStatus::Waiting {
            let per_sec = self.queue_rates.get(sale).map(|r| r.per_sec).unwrap_or(0.0);
            if per_sec > 0.01 {
                (entry.position as f64 / per_sec).ceil() as u64
            } else {
                // No admissions measured yet: at least one tick per place.
                (entry.position * self.config.admission_tick_ms).div_ceil(1000)
            }
        } else {
            0
        };
        self.analytics(sale, |a| {
            a.seen(who.user_id.as_str(), self.clock.now().millis())
        });
        Ok(QueueView {
            place_ticket: None,
            message: self.room_message(sale).await,
            position: entry.position,
            eta_seconds,
            status,
            admission_token,
            pre_queue: entry.pre_queue,
            admitted_until: (entry.admitted_until_ms > 0
                && matches!(entry.state, EntryState::Admitted | EntryState::Claimed))
            .then_some(Timestamp(entry.admitted_until_ms)),
            closed: entry.closed,
            paused: entry.paused,
            // Once the sale sold out, everyone still waiting is on its waitlist (in line
            // for units that come back), whether or not one is back right now.
            waitlist_position: (entry.state == EntryState::Waiting
                && !entry.pre_queue
                && !entry.closed
                && (entry.sold_out || self.sold_out_at.contains_key(sale)))
            .then_some(entry.position),
            claim_deadline: (entry.offered
                && matches!(entry.state, EntryState::Admitted | EntryState::Claimed))
            .then_some(Timestamp(entry.admitted_until_ms)),
        })
    }

    /// How long an admission lasts: a waitlist offer (made once the sale sold out) has the
    /// claim window, any other the admission time.
    fn admission_ttl_ms(&self, offer: bool) -> i64 {
        let secs = if offer {
            self.config.waitlist_claim_secs
        } else {
            self.config.admission_ttl_secs
        };
        secs.saturating_mul(1000)
    }

    /// Checks a reservation's admission token and takes the admission it grants (single use):
    /// returns the device to settle with afterwards.
    pub(crate) async fn claim_admission(
        &self,
        who: &Principal,
        sale: &Sale,
        token: Option<&str>,
        device: Option<&str>,
        quantity: u32,
    ) -> Result<String, AppError> {
        let now = self.clock.now();
        let refuse = |reason: TokenRefusal| {
            self.refused(&sale.id, reason.label());
            AppError::NotAdmitted(NotAdmitted::Token(reason))
        };
        let token = token.ok_or(TokenRefusal::Missing).map_err(refuse)?;
        let key = self.signing_key().await?;
        let claims = AdmissionClaims::verify(key, token).map_err(refuse)?;
        claims
            .admits(sale.id.as_str(), who.user_id.as_str(), device, now)
            .map_err(refuse)?;
        let rules = self.room.rules(&sale.id).await?;
        let claimed = self
            .room
            .claim(
                &sale.id,
                &who.user_id,
                &claims.device_id,
                claims.ticket,
                u64::from(quantity),
                u64::from(rules.device_limit),
                now.millis(),
            )
            .await?;
        match claimed {
            Ok(()) => Ok(claims.device_id),
            Err(ClaimRefusal::DeviceLimit) => {
                self.refused(&sale.id, "device_limit");
                Err(AppError::LimitExceeded)
            }
            Err(ClaimRefusal::AlreadyUsed) => Err(refuse(TokenRefusal::Replayed)),
            Err(ClaimRefusal::Lapsed) => Err(refuse(TokenRefusal::Expired)),
            Err(ClaimRefusal::Mismatch) => {
                Err(refuse(TokenRefusal::Transferred(Binding::Admission)))
            }
            Err(ClaimRefusal::NotAdmitted) => Err(refuse(TokenRefusal::Forged)),
        }
    }

    /// Ends a claim taken by [`App::claim_admission`]: `hold_expires_at` is the expiry of the
    /// hold it bought, if it bought one. Until that hold ends the buyer counts among those
    /// shopping (the rules' `max_active`); a minute past its expiry at the latest, so a missed
    /// end notice cannot keep the slot.
    pub(crate) async fn settle_admission(
        &self,
        who: &Principal,
        sale: &SaleId,
        quantity: u32,
        hold_expires_at: Option<Timestamp>,
    ) {
        let shopping_until_ms = hold_expires_at.map_or(0, |t| t.plus_secs(60).millis());
        if hold_expires_at.is_some() {
            self.analytics(sale, |a| a.reserved(who.user_id.as_str()));
        }
        if let Err(e) = self
            .room
            .settle(
                sale,
                &who.user_id,
                u64::from(quantity),
                hold_expires_at.is_some(),
                shopping_until_ms,
            )
            .await
        {
            // A claim left open lapses with its token (plus a grace period): the buyer can
            // join again; nothing is oversold, since the gate and judge decided the units.
            tracing::warn!(error = %e, sale = %sale, "admission claim not settled");
        }
    }

    /// A hold on a waiting-room sale ended (paid, released or lapsed): the buyer's slot among
    /// those shopping at once is free for the next in line.
    pub(crate) async fn shopping_ended(&self, sale: &SaleId, user: &stampede_core::UserId) {
        if !self.sales.get(sale).is_some_and(|s| s.queue_required) {
            return;
        }
        if let Err(e) = self.room.shopping_ended(sale, user).await {
            // The slot frees itself a minute after the hold's expiry.
            tracing::warn!(error = %e, sale = %sale, "shopping slot not freed");
        }
    }

    /// One admission round over every live sale with a waiting room.
    pub async fn admission_tick(self: &Arc<Self>) -> Result<(), AppError> {
        // This node's sale configurations (kept current by sale-changed events and the
        // reconciler's reload), not a store read ten times a second.
        let sales = self.sales.all();
        let now = self.clock.now();
        for sale in sales.iter().filter(|s| s.queue_required) {
            if let Err(e) = self.admit_sale(sale, now).await {
                tracing::warn!(error = %e, sale = %sale.id, "admission round failed");
            }
        }
        self.queue_tick.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    async fn admit_sale(self: &Arc<Self>, sale: &Sale, now: Timestamp) -> Result<(), AppError> {
        // A closed room stays closed: nothing left to do for it.
        if self.closed_rooms.contains(&sale.id) {
            return Ok(());
        }
        match sale.status_at(now) {
            SaleStatus::Ended => {
                self.room.set_sold_out(&sale.id, true, true).await?;
                self.closed_rooms.insert(sale.id.clone());
                return Ok(());
            }
            SaleStatus::Live => {}
            SaleStatus::Scheduled | SaleStatus::Paused => return Ok(()),
        }
        let rules = self.room.rules(&sale.id).await?;
        if rules.lottery_at_start {
            self.lottery_at_start(sale, now).await?;
            // Until the lottery is published and applied, nobody is admitted first come,
            // first served.
            if !self.has_draw(&sale.id, DrawPurpose::Lottery).await?
                || self.room.pre_queue(&sale.id).await?.is_some()
            {
                return Ok(());
            }
        } else {
            self.draw_pre_queue_if_open(sale).await?;
        }
        let Some(available) = self.gate.available(&sale.id).await? else {
            return Ok(()); // the gate is being seeded; next tick
        };
        let available = u64::try_from(available).unwrap_or(0);
        // The room reads the gate's count itself, in the same atomic step as the admission.
        // Once the sale sold out, a unit that comes back is a waitlist offer: it lasts the
        // claim window.
        let offer = self.sold_out_at.contains_key(&sale.id);
        let ttl_ms = self.admission_ttl_ms(offer);
        let admitted = self
            .room
            .admit_named(
                &sale.id,
                None,
                u64::from(sale.per_user_limit),
                ttl_ms,
                now.millis(),
                self.config.admission_max_batch,
            )
            .await?;
        if !admitted.is_empty() {
            metrics::counter!("stampede_queue_admitted_total").increment(admitted.len() as u64);
            let users = admitted.into_iter().map(|a| a.user_id).collect();
            self.admitted_now(sale, users, now, now.plus_millis(ttl_ms), false);
        }
        let sold_out = available == 0;
        let close = if sold_out {
            self.sold_out_at.entry(sale.id.clone()).or_insert(now);
            // Closed for good only when nothing is held that could come back and nobody is
            // on the waitlist (a cancelled order's unit is offered to them).
            match self.store.sale(&sale.id).await? {
                Some(fresh) if fresh.stock.available == 0 && fresh.stock.held == 0 => {
                    self.room.stats(&sale.id).await?.waiting == 0
                }
                Some(_) => false,
                None => true,
            }
        } else {
            false
        };
        self.room.set_sold_out(&sale.id, sold_out, close).await?;
        if close {
            self.closed_rooms.insert(sale.id.clone());
        }
        // The rate (for ETAs) and the queue gauge, once a second rather than every round.
        let due = self
            .queue_rates
            .get(&sale.id)
            .is_none_or(|s| now.millis() - s.at.millis() >= 1000);
        if !due {
            return Ok(());
        }
        let stats = self.room.stats(&sale.id).await?;
        metrics::gauge!("stampede_queue_length", "sale_id" => sale.id.to_string())
            .set(stats.waiting as f64);
        let mut sample = self
            .queue_rates
            .entry(sale.id.clone())
            .or_insert(RateSample {
                at: now,
                admitted_total: stats.admitted_total,
                per_sec: 0.0,
            });
        let elapsed_ms = now.millis() - sample.at.millis();
        if elapsed_ms >= 1000 {
            let delta = stats.admitted_total.saturating_sub(sample.admitted_total);
            let current = delta as f64 * 1000.0 / elapsed_ms as f64;
            // Smooth over a few seconds so one quiet round does not make the ETA jump.
            sample.per_sec = 0.5 * sample.per_sec + 0.5 * current;
            sample.at = now;
            sample.admitted_total = stats.admitted_total;
        }
        Ok(())
    }

    /// Ends the pre-queue once the sale has started: draws its order and places it. One
    /// draw at a time on this node; across nodes the first placement wins and only it is
    /// published.
    async fn draw_pre_queue_if_open(&self, sale: &Sale) -> Result<(), AppError> {
        if self.room.pre_queue(&sale.id).await?.is_none() {
            return Ok(());
        }
        let _one_at_a_time = self.drawing.lock().await;
        let Some(entrants) = self.room.pre_queue(&sale.id).await? else {
            return Ok(());
        };
        let seed = self.seed(&sale.id, DrawPurpose::PreQueue).await?;
        let order = draw_order(&seed, DrawPurpose::PreQueue, &entrants);
        if !self.room.place_drawn(&sale.id, &order).await? {
            return Ok(());
        }
        let count = order.len();
        let record = DrawRecord::run(
            sale.id.as_str(),
            DrawPurpose::PreQueue,
            &seed,
            entrants,
            count,
        );
        self.publish_draw(&sale.id, &record).await
    }

    /// For a sale marked as a draw: at the first round after the start, everyone who joined
    /// before it enters a lottery for the units the gate has. One node does it (the room's
    /// pre-queue is placed by whoever gets there first; only that node publishes).
    async fn lottery_at_start(
        self: &Arc<Self>,
        sale: &Sale,
        now: Timestamp,
    ) -> Result<(), AppError> {
        if self.room.pre_queue(&sale.id).await?.is_none() {
            return Ok(());
        }
        let _one_at_a_time = self.drawing.lock().await;
        let Some(entrants) = self.room.pre_queue(&sale.id).await? else {
            return Ok(());
        };
        // Publish, then apply: the first published record is what every node applies (a
        // second node racing this one may publish its own, but applies the first), and a
        // failure between the two is finished by the next round from the published record.
        let record = match self.first_draw(&sale.id, DrawPurpose::Lottery).await? {
            Some(record) => record,
            None => {
                let Some(available) = self.gate.available(&sale.id).await? else {
                    return Ok(());
                };
                let seed = self.seed(&sale.id, DrawPurpose::Lottery).await?;
                let winners =
                    u64::try_from(available).unwrap_or(0) / u64::from(sale.per_user_limit.max(1));
                let record = DrawRecord::run(
                    sale.id.as_str(),
                    DrawPurpose::Lottery,
                    &seed,
                    entrants,
                    usize::try_from(winners).unwrap_or(0),
                );
                self.publish_draw(&sale.id, &record).await?;
                self.first_draw(&sale.id, DrawPurpose::Lottery)
                    .await?
                    .unwrap_or(record)
            }
        };
        let ttl_ms = self.config.admission_ttl_secs.saturating_mul(1000);
        self.room
            .apply_lottery(
                &sale.id,
                &record.entrants,
                &record.winners,
                ttl_ms,
                now.millis(),
            )
            .await?;
        // Every node that gets here applies the same published record: the winners' notices
        // carry ids fixed by the draw, so each is told once.
        self.admitted_now(
            sale,
            record.winners.clone(),
            now,
            now.plus_millis(ttl_ms),
            true,
        );
        Ok(())
    }

    /// The first published draw of this kind, if any.
    async fn first_draw(
        &self,
        sale: &SaleId,
        purpose: DrawPurpose,
    ) -> Result<Option<DrawRecord>, AppError> {
        Ok(self
            .room
            .draws(sale)
            .await?
            .iter()
            .filter_map(|j| serde_json::from_str::<DrawRecord>(j).ok())
            .find(|r| r.purpose == purpose))
    }

    async fn has_draw(&self, sale: &SaleId, purpose: DrawPurpose) -> Result<bool, AppError> {
        let key = (sale.clone(), purpose_label(purpose));
        if self.drawn_here.contains(&key) {
            return Ok(true);
        }
        let found = self
            .room
            .draws(sale)
            .await?
            .iter()
            .filter_map(|j| serde_json::from_str::<DrawRecord>(j).ok())
            .any(|r| r.purpose == purpose);
        if found {
            // Published draws are final: remember, so rounds need not re-read the records.
            self.drawn_here.insert(key);
        }
        Ok(found)
    }

    async fn publish_draw(&self, sale: &SaleId, record: &DrawRecord) -> Result<(), AppError> {
        let json = serde_json::to_string(record)
            .map_err(|e| AppError::Internal(format!("draw record: {e}")))?;
        self.room.publish_draw(sale, &json).await?;
        self.audit_as(
            "system",
            "draw.revealed",
            sale.as_str(),
            None::<&()>,
            Some(&serde_json::json!({
                "purpose": purpose_label(record.purpose),
                "seed": record.seed,
                "seed_commitment": record.seed_commitment,
                "entrants": record.entrants.len(),
                "winners": record.winners_count,
            })),
        )
        .await;
        Ok(())
    }

    /// Draws `winners` (default: the units the gate has) among everyone waiting; the winners
    /// are admitted, the rest told they lost. Admin only.
    pub async fn run_lottery(
        self: &Arc<Self>,
        who: &Principal,
        sale_id: &str,
        winners: Option<u64>,
    ) -> Result<DrawRecord, AppError> {
        self.require_admin(who)?;
        let sale = self.queue_sale(sale_id).await?;
        // Live, or paused (an admin may pause first-come admission to draw instead).
        if !matches!(
            sale.status_at(self.clock.now()),
            SaleStatus::Live | SaleStatus::Paused
        ) {
            return Err(AppError::SaleNotLive);
        }
        // One lottery per sale: its seed is public once it is drawn, and a second draw from a
        // known seed could be gamed (join only with the accounts that rank high).
        if self.has_draw(&sale.id, DrawPurpose::Lottery).await? {
            return Err(AppError::Conflict(
                "this sale's lottery has already been drawn".into(),
            ));
        }
        // Never more winners than the units left can serve, counting admissions outstanding.
        let available =
            u64::try_from(self.gate.available(&sale.id).await?.unwrap_or(0)).unwrap_or(0);
        let per = u64::from(sale.per_user_limit.max(1));
        let outstanding = self.room.stats(&sale.id).await?.outstanding;
        let cap = available.saturating_sub(outstanding * per) / per;
        let count = winners.unwrap_or(cap).min(cap);
        let seed = self.seed(&sale.id, DrawPurpose::Lottery).await?;
        let entrants = self.room.waiting_entrants(&sale.id).await?;
        let record = DrawRecord::run(
            sale.id.as_str(),
            DrawPurpose::Lottery,
            &seed,
            entrants,
            usize::try_from(count).unwrap_or(usize::MAX),
        );
        let now = self.clock.now();
        let ttl_ms = self.config.admission_ttl_secs.saturating_mul(1000);
        self.room
            .apply_lottery(
                &sale.id,
                &record.entrants,
                &record.winners,
                ttl_ms,
                now.millis(),
            )
            .await?;
        self.admitted_now(
            &sale,
            record.winners.clone(),
            now,
            now.plus_millis(ttl_ms),
            true,
        );
        self.publish_draw(&sale.id, &record).await?;
        self.audit(
            who,
            "sale.lottery",
            sale.id.as_str(),
            None::<&()>,
            Some(&count),
        )
        .await;
        self.queue_tick.send_modify(|n| *n = n.wrapping_add(1));
        Ok(record)
    }

    /// The sale's published draws and the commitments of draws still to come.
    pub async fn draws(
        &self,
        sale_id: &str,
    ) -> Result<(Vec<DrawRecord>, Vec<(String, String)>), AppError> {
        let sale = self.queue_sale(sale_id).await?;
        let records: Vec<DrawRecord> = self
            .room
            .draws(&sale.id)
            .await?
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect();
        let mut commitments = Vec::new();
        for purpose in [DrawPurpose::PreQueue, DrawPurpose::Lottery] {
            let seed = self.seed(&sale.id, purpose).await?;
            if !records.iter().any(|r| r.purpose == purpose) {
                commitments.push((purpose_label(purpose).to_owned(), seed.commitment()));
            }
        }
        Ok((records, commitments))
    }

    /// Sets a room's rules. Admin only.
    pub async fn set_room_rules(
        &self,
        who: &Principal,
        sale_id: &str,
        rules: RoomRules,
    ) -> Result<RoomRules, AppError> {
        self.require_admin(who)?;
        if rules.pow_bits > stampede_core::pow::MAX_POW_BITS {
            return Err(AppError::invalid(format!(
                "pow_bits must be at most {}",
                stampede_core::pow::MAX_POW_BITS
            )));
        }
        let sale = self.queue_sale(sale_id).await?;
        let before = self.room.rules(&sale.id).await?;
        // Pausing is an operator control with its own audited calls, not a rule.
        let rules = RoomRules {
            admission_paused: before.admission_paused,
            ..rules
        };
        self.room.set_rules(&sale.id, rules).await?;
        self.audit(
            who,
            "sale.room_rules",
            sale.id.as_str(),
            Some(&before),
            Some(&rules),
        )
        .await;
        Ok(rules)
    }

    /// An operator's control of a sale's room, applied and audited with who and why.
    pub async fn control_room(
        &self,
        who: &Principal,
        sale_id: &str,
        control: RoomControl,
        reason: &str,
    ) -> Result<RoomReport, AppError> {
        self.require_admin(who)?;
        let reason = check_reason(reason)?;
        if control == RoomControl::QueueEveryone {
            return self.queue_everyone(who, sale_id, reason).await;
        }
        let sale = self.queue_sale(sale_id).await?;
        let before = self.room.rules(&sale.id).await?;
        let (after, action) = match control {
            RoomControl::Pause if before.admission_paused => {
                return Err(AppError::Conflict("admission is already paused".into()))
            }
            RoomControl::Pause => (
                RoomRules {
                    admission_paused: true,
                    ..before
                },
                "room.pause_admission",
            ),
            RoomControl::Resume if !before.admission_paused => {
                return Err(AppError::Conflict("admission is not paused".into()))
            }
            RoomControl::Resume => (
                RoomRules {
                    admission_paused: false,
                    ..before
                },
                "room.resume_admission",
            ),
            RoomControl::RateCeiling { per_minute } => (
                RoomRules {
                    new_per_minute: per_minute,
                    ..before
                },
                "room.admission_ceiling",
            ),
            RoomControl::QueueEveryone => return self.queue_everyone(who, sale_id, reason).await,
        };
        self.room.set_rules(&sale.id, after).await?;
        self.audit(
            who,
            action,
            sale.id.as_str(),
            Some(&serde_json::json!({
                "admission_paused": before.admission_paused,
                "new_per_minute": before.new_per_minute,
            })),
            Some(&serde_json::json!({
                "admission_paused": after.admission_paused,
                "new_per_minute": after.new_per_minute,
                "reason": reason,
            })),
        )
        .await;
        // Waiters' live streams look again now, not at the next admission round.
        self.queue_tick.send_modify(|n| *n = n.wrapping_add(1));
        self.room_report(who, sale_id).await
    }

    /// "Queue everyone": a live (or scheduled) sale that had no waiting room gets one; new
    /// arrivals must go through it from now on (holds already made stay).
    async fn queue_everyone(
        &self,
        who: &Principal,
        sale_id: &str,
        reason: &str,
    ) -> Result<RoomReport, AppError> {
        let before = self.sale(sale_id).await?;
        if before.queue_required {
            return Err(AppError::Conflict(
                "this sale already sells through its waiting room".into(),
            ));
        }
        if before.status_at(self.clock.now()) == SaleStatus::Ended {
            return Err(AppError::SaleNotLive);
        }
        let mut sale = before.clone();
        sale.queue_required = true;
        sale.updated_at = self.clock.now();
        let saved = self
            .save_sale(who, "sale.queue_required", &before, sale)
            .await?;
        self.audit(
            who,
            "room.queue_everyone",
            saved.id.as_str(),
            Some(&serde_json::json!({ "queue_required": false })),
            Some(&serde_json::json!({ "queue_required": true, "reason": reason })),
        )
        .await;
        self.room_report(who, sale_id).await
    }

    /// The admin's view of a sale's room.
    pub async fn room_report(
        &self,
        who: &Principal,
        sale_id: &str,
    ) -> Result<RoomReport, AppError> {
        self.require_admin(who)?;
        let sale = self.queue_sale(sale_id).await?;
        let stats = self.room.stats(&sale.id).await?;
        let rules = self.room.rules(&sale.id).await?;
        let refusals = self
            .queue_refusals
            .get(&sale.id)
            .map(|reasons| {
                reasons
                    .iter()
                    .map(|e| {
                        (
                            (*e.key()).to_owned(),
                            e.value().load(std::sync::atomic::Ordering::Relaxed),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(RoomReport {
            queue_length: stats.waiting,
            pre_queue_length: stats.pre_queue,
            drawn: stats.drawn,
            admitted: stats.admitted_total,
            outstanding: stats.outstanding,
            used: stats.used_total,
            expired: stats.expired_total,
            lottery_lost: stats.lottery_lost_total,
            admission_rate_per_sec: self
                .queue_rates
                .get(&sale.id)
                .map(|r| r.per_sec)
                .unwrap_or(0.0),
            sold_out: stats.sold_out,
            closed: stats.closed,
            sold_out_at: self.sold_out_at.get(&sale.id).map(|t| *t),
            refusals,
            fifo_inversions: fifo_inversions(&stats.admission_ranks),
            top_1pct_device_share: top_devices_share(&stats.device_units, 1.0),
            analytics: self.queue_figures(&sale.id, self.clock.now(), rules.new_per_minute),
            message: self.room_message(&sale.id).await,
            rules,
        })
    }

    /// Wakes on every admission round (live queue updates).
    pub fn queue_ticks(&self) -> tokio::sync::watch::Receiver<u64> {
        self.queue_tick.subscribe()
    }
}
