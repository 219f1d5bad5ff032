//! The waiting room: join, your place (polled or live over SSE), the proof-of-work challenge,
//! the published draws, and the admin's room view, rules and lottery.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use stampede_app::ports::RoomRules;
use stampede_app::waiting_room::{PowSolution, QueueStatus, QueueView, RoomControl, RoomReport};
use stampede_core::draw::{DrawPurpose, DrawRecord};

use crate::dto::rfc3339;
use crate::extract::{Admin, ApiJson, Auth};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// A solved proof of work (only when the sale asks for one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PowBody {
    pub challenge: String,
    pub nonce: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    /// The buyer's device (1–64 of letters, digits, `-_.:`); the admission token is bound to
    /// it and reserving sends it back as `X-Device-Id`.
    pub device_id: String,
    pub pow: Option<PowBody>,
}

/// A buyer's place in a waiting room.
#[derive(Debug, Serialize, ToSchema, PartialEq)]
pub struct QueueDto {
    /// Place in line, 1 = next; 0 once admitted.
    pub position: u64,
    pub eta_seconds: u64,
    /// `waiting | admitted | used | expired | lottery_won | lottery_lost | sold_out`.
    pub status: String,
    /// Send as `X-Admission-Token` (with `X-Device-Id`) when reserving; single use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admission_token: Option<String>,
    /// When the admission token lapses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admitted_until: Option<String>,
    /// Joined before the start: the place is provisional until the draw at the start.
    pub pre_queue: bool,
    /// The room will admit nobody again (all sold, or the sale ended).
    pub closed: bool,
    /// Admission is paused by the organiser: the place is kept, admission resumes in order.
    pub paused: bool,
    /// The organiser's latest message to everyone waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<RoomMessageDto>,
    /// With a join: a link (relative to the server) to a page that shows this place and
    /// refreshes itself, without logging in or JavaScript, for a day. It shows the place; it
    /// cannot buy. Keep it to yourself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub place_url: Option<String>,
    /// The sale sold out and the buyer is still in line: their place on the waitlist (1 = the
    /// next unit that comes back is offered to them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waitlist_position: Option<u64>,
    /// The admission is a waitlist offer: reserve before this, or it passes to the next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_deadline: Option<String>,
}

/// An operator's message to everyone waiting in a room.
#[derive(Debug, Serialize, ToSchema, PartialEq, Clone)]
pub struct RoomMessageDto {
    pub text: String,
    pub at: String,
}

impl From<stampede_app::room_ops::RoomMessage> for RoomMessageDto {
    fn from(m: stampede_app::room_ops::RoomMessage) -> Self {
        Self {
            text: m.text,
            at: rfc3339(m.at),
        }
    }
}

/// The queue's figures (see the README's definitions), as the node answering saw them.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueFiguresDto {
    /// Buyers who joined; `tracked` of them followed one by one.
    pub joined: u64,
    pub tracked: u64,
    pub admitted: u64,
    /// Time from join to admission.
    pub time_in_queue_p50_secs: f64,
    pub time_in_queue_p99_secs: f64,
    /// Left before admission: did not look at their place for 2 minutes while waiting.
    pub abandoned: u64,
    pub abandonment_rate: f64,
    /// Admitted, window over, nothing reserved.
    pub no_shows: u64,
    pub no_show_rate: f64,
    /// |admitted − ETA told at join|, median and 90th percentile.
    pub eta_error_p50_secs: f64,
    pub eta_error_p90_secs: f64,
    /// Mean of admitted − told (positive: later than told).
    pub eta_bias_secs: f64,
    /// Admissions in each of the last 10 minutes, oldest first.
    pub admissions_per_minute: Vec<u64>,
    pub max_admissions_in_a_minute: u64,
    /// The room's admissions-per-minute limit (0: none).
    pub admissions_per_minute_limit: u32,
}

impl From<stampede_core::queue_analytics::QueueFigures> for QueueFiguresDto {
    fn from(f: stampede_core::queue_analytics::QueueFigures) -> Self {
        Self {
            joined: f.joined,
            tracked: f.tracked,
            admitted: f.admitted,
            time_in_queue_p50_secs: f.time_in_queue_p50_secs,
            time_in_queue_p99_secs: f.time_in_queue_p99_secs,
            abandoned: f.abandoned,
            abandonment_rate: f.abandonment_rate,
            no_shows: f.no_shows,
            no_show_rate: f.no_show_rate,
            eta_error_p50_secs: f.eta_error_p50_secs,
            eta_error_p90_secs: f.eta_error_p90_secs,
            eta_bias_secs: f.eta_bias_secs,
            admissions_per_minute: f.admissions_per_minute,
            max_admissions_in_a_minute: f.max_admissions_in_a_minute,
            admissions_per_minute_limit: f.admissions_per_minute_limit,
        }
    }
}

/// The contract's word for a queue status.
pub fn status_word(s: QueueStatus) -> &'static str {
    match s {
        QueueStatus::Waiting => "waiting",
        QueueStatus::Admitted => "admitted",
        QueueStatus::Used => "used",
        QueueStatus::Expired => "expired",
        QueueStatus::LotteryWon => "lottery_won",
        QueueStatus::LotteryLost => "lottery_lost",
        QueueStatus::SoldOut => "sold_out",
    }
}

impl QueueDto {
    /// The DTO of `v` for `sale_id` (whose place link, if the view carries its key, it names).
    pub fn of(sale_id: &str, v: QueueView) -> Self {
        // A sale id that reached here parsed as a ULID, and the key is a compact JWT
        // (base64url and dots): both are URL-safe as they are.
        let place_url = v
            .place_ticket
            .as_ref()
            .map(|t| format!("/sales/{sale_id}/queue/place?ticket={t}"));
        Self {
            place_url,
            ..Self::from(v)
        }
    }
}

impl From<QueueView> for QueueDto {
    fn from(v: QueueView) -> Self {
        Self {
            message: v.message.map(RoomMessageDto::from),
            place_url: None,
            position: v.position,
            eta_seconds: v.eta_seconds,
            status: status_word(v.status).to_owned(),
            admission_token: v.admission_token,
            admitted_until: v.admitted_until.map(rfc3339),
            pre_queue: v.pre_queue,
            closed: v.closed,
            paused: v.paused,
            waitlist_position: v.waitlist_position,
            claim_deadline: v.claim_deadline.map(rfc3339),
        }
    }
}

/// Joins the sale's waiting room; joining again keeps the first place.
#[utoipa::path(operation_id = "join_queue", post, path = "/api/v1/sales/{sale_id}/queue", tag = "queue", request_body = JoinBody,
    params(("sale_id" = String, Path)),
    responses((status = 202, body = QueueDto), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "no waiting room, sale ended, or room closed (sold_out)"),
        (status = 422, body = Problem, description = "invalid_input (bad device id or proof of work), limit_exceeded (accounts per device)")),
    security(("bearer" = [])))]
pub async fn join(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(sale_id): Path<String>,
    ApiJson(body): ApiJson<JoinBody>,
) -> Result<(StatusCode, Json<QueueDto>), ApiError> {
    let pow = body.pow.map(|p| PowSolution {
        challenge: p.challenge,
        nonce: p.nonce,
    });
    let view = s
        .app
        .join_queue(&who, &sale_id, &body.device_id, pow.as_ref())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(QueueDto::of(&sale_id, view))))
}

/// The caller's place, ETA and (once admitted) admission token.
#[utoipa::path(operation_id = "get_queue_status", get, path = "/api/v1/sales/{sale_id}/queue/me", tag = "queue",
    params(("sale_id" = String, Path)),
    responses((status = 200, body = QueueDto), (status = 404, body = Problem, description = "not in this room")),
    security(("bearer" = [])))]
pub async fn me(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(sale_id): Path<String>,
) -> Result<Json<QueueDto>, ApiError> {
    Ok(Json(s.app.queue_status(&who, &sale_id).await?.into()))
}

/// The caller's place, live: a `queue` event now and whenever it changes (each admission
/// round), until the entry is settled (admitted, expired, lost, or the room closed).
#[utoipa::path(operation_id = "stream_queue_status", get, path = "/api/v1/sales/{sale_id}/queue/me/events", tag = "queue",
    params(("sale_id" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", description = "queue events (QueueDto)"),
        (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn me_events(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(sale_id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let first = s.app.queue_status(&who, &sale_id).await?;
    let ticks = s.app.queue_ticks();
    let app = s.app.clone();
    let first = QueueDto::from(first);
    let done = first.status != "waiting" && first.status != "sold_out" || first.closed;
    let first_event = queue_event(&first);
    // After each admission round: look again, send only what changed, end once settled.
    let live = stream::unfold(
        (ticks, Some(first), done),
        move |(mut ticks, last, done)| {
            let app = app.clone();
            let who = who.clone();
            let sale_id = sale_id.clone();
            async move {
                if done {
                    return None;
                }
                let mut last = last;
                loop {
                    ticks.changed().await.ok()?;
                    let Ok(view) = app.queue_status(&who, &sale_id).await else {
                        continue;
                    };
                    let dto = QueueDto::from(view);
                    if last.as_ref() == Some(&dto) {
                        continue;
                    }
                    let settled =
                        (dto.status != "waiting" && dto.status != "sold_out") || dto.closed;
                    let event = queue_event(&dto);
                    last = Some(dto);
                    return Some((Ok(event), (ticks, last, settled)));
                }
            }
        },
    );
    let stream = stream::iter([Ok(first_event)])
        .chain(live)
        .take_until(s.shutting_down());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn queue_event(dto: &QueueDto) -> SseEvent {
    SseEvent::default()
        .event("queue")
        .data(serde_json::to_string(dto).unwrap_or_default())
}

/// A proof-of-work challenge for joining (difficulty 0 when the sale asks none).
#[derive(Debug, Serialize, ToSchema)]
pub struct ChallengeDto {
    pub challenge: String,
    /// Find `nonce` with `SHA-256(challenge ":" nonce)` starting with this many zero bits.
    pub difficulty_bits: u8,
}

/// A proof-of-work challenge for joining this sale's room.
#[utoipa::path(operation_id = "get_queue_challenge", get, path = "/api/v1/sales/{sale_id}/queue/challenge", tag = "queue",
    params(("sale_id" = String, Path)),
    responses((status = 200, body = ChallengeDto), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn challenge(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(sale_id): Path<String>,
) -> Result<Json<ChallengeDto>, ApiError> {
    let c = s.app.queue_challenge(&who, &sale_id).await?;
    Ok(Json(ChallengeDto {
        challenge: c.challenge,
        difficulty_bits: c.difficulty_bits,
    }))
}

/// One draw, with all it takes to recompute it (`stampede verify-draw`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DrawDto {
    pub sale_id: String,
    /// `pre_queue` (the order of early arrivals) or `lottery`.
    pub purpose: String,
    /// Hex SHA-256 of the seed, published before the draw.
    pub seed_commitment: String,
    /// The seed (64 hex digits), revealed after the draw.
    pub seed: String,
    pub entrants: Vec<String>,
    pub winners_count: usize,
    pub winners: Vec<String>,
}

impl From<DrawRecord> for DrawDto {
    fn from(r: DrawRecord) -> Self {
        Self {
            sale_id: r.sale_id,
            purpose: match r.purpose {
                DrawPurpose::PreQueue => "pre_queue",
                DrawPurpose::Lottery => "lottery",
            }
            .to_owned(),
            seed_commitment: r.seed_commitment,
            seed: r.seed,
            entrants: r.entrants,
            winners_count: r.winners_count,
            winners: r.winners,
        }
    }
}

/// A draw still to come: only its seed's commitment is known.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommitmentDto {
    pub purpose: String,
    pub seed_commitment: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DrawsDto {
    pub commitments: Vec<CommitmentDto>,
    pub draws: Vec<DrawDto>,
}

/// The sale's published draws, and the commitments of those still to come.
#[utoipa::path(operation_id = "list_draws", get, path = "/api/v1/sales/{sale_id}/draws", tag = "queue",
    params(("sale_id" = String, Path)),
    responses((status = 200, body = DrawsDto), (status = 404, body = Problem)))]
pub async fn draws(
    State(s): State<AppState>,
    Path(sale_id): Path<String>,
) -> Result<Json<DrawsDto>, ApiError> {
    let (records, commitments) = s.app.draws(&sale_id).await?;
    Ok(Json(DrawsDto {
        commitments: commitments
            .into_iter()
            .map(|(purpose, seed_commitment)| CommitmentDto {
                purpose,
                seed_commitment,
            })
            .collect(),
        draws: records.into_iter().map(DrawDto::from).collect(),
    }))
}

/// The admin's view of a sale's room.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoomReportDto {
    pub queue_length: u64,
    pub pre_queue_length: u64,
    pub drawn: bool,
    pub admitted: u64,
    pub outstanding: u64,
    pub used: u64,
    pub expired: u64,
    pub lottery_lost: u64,
    pub admission_rate_per_sec: f64,
    pub sold_out: bool,
    pub closed: bool,
    pub sold_out_at: Option<String>,
    pub refusals: BTreeMap<String, u64>,
    pub fifo_inversions: u64,
    pub top_1pct_device_share: f64,
    pub rules: RoomRulesDto,
    /// Admission is paused by the organiser.
    pub admission_paused: bool,
    /// Time in queue, abandonment, no-shows, ETA error, admissions per minute against the
    /// limit.
    pub analytics: QueueFiguresDto,
    /// The organiser's latest message to everyone waiting.
    pub message: Option<RoomMessageDto>,
}

impl From<RoomReport> for RoomReportDto {
    fn from(r: RoomReport) -> Self {
        Self {
            queue_length: r.queue_length,
            pre_queue_length: r.pre_queue_length,
            drawn: r.drawn,
            admitted: r.admitted,
            outstanding: r.outstanding,
            used: r.used,
            expired: r.expired,
            lottery_lost: r.lottery_lost,
            admission_rate_per_sec: r.admission_rate_per_sec,
            sold_out: r.sold_out,
            closed: r.closed,
            sold_out_at: r.sold_out_at.map(rfc3339),
            refusals: r.refusals,
            fifo_inversions: r.fifo_inversions,
            top_1pct_device_share: r.top_1pct_device_share,
            admission_paused: r.rules.admission_paused,
            analytics: r.analytics.into(),
            message: r.message.map(RoomMessageDto::from),
            rules: r.rules.into(),
        }
    }
}

/// A room's rules (0 turns each off).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomRulesDto {
    /// Accounts that may join from one device.
    #[serde(default)]
    pub max_accounts_per_device: u32,
    /// Units one device may buy across its accounts.
    #[serde(default)]
    pub device_limit: u32,
    /// Proof-of-work difficulty at join, in leading zero bits (at most 24).
    #[serde(default)]
    pub pow_bits: u8,
    /// The sale is a draw: at the start a lottery among the pre-queue decides who may buy
    /// (winners: the stock), instead of first come, first served.
    #[serde(default)]
    pub lottery_at_start: bool,
    /// At most this many admissions in any minute (0: as fast as the stock allows).
    #[serde(default)]
    pub new_per_minute: u32,
    /// At most this many buyers admitted and shopping at once (0: no cap). An admission not
    /// used yet, or a hold bought with one until it is paid, released or lapses, takes a slot.
    #[serde(default)]
    pub max_active: u32,
}

impl From<RoomRules> for RoomRulesDto {
    fn from(r: RoomRules) -> Self {
        Self {
            max_accounts_per_device: r.max_accounts_per_device,
            device_limit: r.device_limit,
            pow_bits: r.pow_bits,
            lottery_at_start: r.lottery_at_start,
            new_per_minute: r.new_per_minute,
            max_active: r.max_active,
        }
    }
}

/// Queue length, admissions, refusals by reason and fairness figures of a sale's room.
#[utoipa::path(operation_id = "get_queue_report", get, path = "/api/v1/admin/sales/{sale_id}/queue", tag = "admin",
    params(("sale_id" = String, Path)),
    responses((status = 200, body = RoomReportDto), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn report(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(sale_id): Path<String>,
) -> Result<Json<RoomReportDto>, ApiError> {
    Ok(Json(s.app.room_report(&who, &sale_id).await?.into()))
}

/// Sets a room's rules: anti-abuse, the draw at the start, and the admission limits
/// (`new_per_minute`, `max_active`).
#[utoipa::path(operation_id = "set_queue_rules", put, path = "/api/v1/admin/sales/{sale_id}/queue/rules", tag = "admin",
    params(("sale_id" = String, Path)), request_body = RoomRulesDto,
    responses((status = 200, body = RoomRulesDto), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn set_rules(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(sale_id): Path<String>,
    ApiJson(b): ApiJson<RoomRulesDto>,
) -> Result<Json<RoomRulesDto>, ApiError> {
    let rules = RoomRules {
        max_accounts_per_device: b.max_accounts_per_device,
        device_limit: b.device_limit,
        pow_bits: b.pow_bits,
        lottery_at_start: b.lottery_at_start,
        new_per_minute: b.new_per_minute,
        max_active: b.max_active,
        // Kept as it is: pausing has its own audited calls.
        admission_paused: false,
    };
    Ok(Json(
        s.app.set_room_rules(&who, &sale_id, rules).await?.into(),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LotteryBody {
    /// How many to draw; default: the units still available.
    pub winners: Option<u64>,
}

/// Draws winners among everyone waiting with the sale's committed seed; the winners are
/// admitted, the others told they lost. The record is published on `/draws`.
#[utoipa::path(operation_id = "draw_lottery", post, path = "/api/v1/admin/sales/{sale_id}/lottery", tag = "admin",
    params(("sale_id" = String, Path)), request_body = LotteryBody,
    responses((status = 200, body = DrawDto), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn lottery(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(sale_id): Path<String>,
    ApiJson(b): ApiJson<LotteryBody>,
) -> Result<Json<DrawDto>, ApiError> {
    Ok(Json(
        s.app.run_lottery(&who, &sale_id, b.winners).await?.into(),
    ))
}

/// One public key of a JWKS (RFC 7517; Ed25519 as RFC 8037 has it).
#[derive(Debug, Serialize, ToSchema)]
pub struct JwkDto {
    /// `OKP`.
    pub kty: String,
    /// `Ed25519`.
    pub crv: String,
    /// The public key, base64url without padding.
    pub x: String,
    /// The key's RFC 7638 thumbprint: the `kid` in an admission token's header.
    pub kid: String,
    /// `EdDSA`.
    pub alg: String,
    /// `sig`.
    #[serde(rename = "use")]
    pub use_: String,
}

/// The keys admission tokens are signed with.
#[derive(Debug, Serialize, ToSchema)]
pub struct JwksDto {
    pub keys: Vec<JwkDto>,
}

/// The public keys that verify admission tokens (JWTs, `alg: EdDSA`, `iss: stampede`,
/// `aud: stampede-admission`), so a shop's backend or CDN worker can check an admission
/// (`sub` = user, `sale`, `device`, `exp`) without calling Stampede.
#[utoipa::path(operation_id = "get_admission_jwks", get, path = "/.well-known/jwks.json", tag = "queue",
    responses((status = 200, body = JwksDto)))]
pub async fn jwks(
    State(s): State<AppState>,
) -> Result<([(axum::http::HeaderName, &'static str); 1], Json<JwksDto>), ApiError> {
    let keys = s
        .app
        .admission_jwks()
        .await?
        .into_iter()
        .map(|k| JwkDto {
            kty: k.kty,
            crv: k.crv,
            x: k.x,
            kid: k.kid,
            alg: k.alg,
            use_: k.use_,
        })
        .collect();
    // The key changes only when a deployment loses it: verifiers may cache it a while.
    Ok((
        [(axum::http::header::CACHE_CONTROL, "public, max-age=300")],
        Json(JwksDto { keys }),
    ))
}

/// Why an operator acts on a room: kept in the audit log with who did it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomControlBody {
    /// Why (1–500 characters), for the audit log.
    pub reason: String,
}

/// A ceiling on the room's admission rate, and why.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdmissionCeilingBody {
    /// At most this many admissions in any minute (0 lifts the ceiling).
    pub per_minute: u32,
    /// Why (1–500 characters), for the audit log.
    pub reason: String,
}

async fn control(
    s: &AppState,
    who: &stampede_app::Principal,
    sale_id: &str,
    control: RoomControl,
    reason: &str,
) -> Result<Json<RoomReportDto>, ApiError> {
    Ok(Json(
        s.app
            .control_room(who, sale_id, control, reason)
            .await?
            .into(),
    ))
}

/// Pauses admission: nobody is admitted, everyone keeps their place, and waiters see
/// `paused: true` on `…/queue/me` and its live stream. Audited with the reason.
#[utoipa::path(operation_id = "pause_admission", post, path = "/api/v1/admin/sales/{sale_id}/queue/pause", tag = "admin",
    params(("sale_id" = String, Path)), request_body = RoomControlBody,
    responses((status = 200, body = RoomReportDto), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "no waiting room, or admission already paused")),
    security(("bearer" = [])))]
pub async fn pause_admission(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(sale_id): Path<String>,
    ApiJson(b): ApiJson<RoomControlBody>,
) -> Result<Json<RoomReportDto>, ApiError> {
    control(&s, &who, &sale_id, RoomControl::Pause, &b.reason).await
}

/// Resumes admission, in the original order. Audited with the reason.
#[utoipa::path(operation_id = "resume_admission", post, path = "/api/v1/admin/sales/{sale_id}/queue/resume", tag = "admin",
    params(("sale_id" = String, Path)), request_body = RoomControlBody,
    responses((status = 200, body = RoomReportDto), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "no waiting room, or admission not paused")),
    security(("bearer" = [])))]
pub async fn resume_admission(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(sale_id): Path<String>,
    ApiJson(b): ApiJson<RoomControlBody>,
) -> Result<Json<RoomReportDto>, ApiError> {
    control(&s, &who, &sale_id, RoomControl::Resume, &b.reason).await
}

/// Sets a ceiling on admissions per minute (the room rules' `new_per_minute`; 0 lifts it).
/// Audited with the reason.
#[utoipa::path(operation_id = "set_admission_ceiling", put, path = "/api/v1/admin/sales/{sale_id}/queue/ceiling", tag = "admin",
    params(("sale_id" = String, Path)), request_body = AdmissionCeilingBody,
    responses((status = 200, body = RoomReportDto), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn set_admission_ceiling(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(sale_id): Path<String>,
    ApiJson(b): ApiJson<AdmissionCeilingBody>,
) -> Result<Json<RoomReportDto>, ApiError> {
    let per_minute = b.per_minute;
    control(
        &s,
        &who,
        &sale_id,
        RoomControl::RateCeiling { per_minute },
        &b.reason,
    )
    .await
}

/// "Queue everyone": a sale that had no waiting room gets one, live; from now on reserving
/// needs an admission (holds already made stay). Audited with the reason.
#[utoipa::path(operation_id = "queue_everyone", post, path = "/api/v1/admin/sales/{sale_id}/queue/everyone", tag = "admin",
    params(("sale_id" = String, Path)), request_body = RoomControlBody,
    responses((status = 200, body = RoomReportDto), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the sale already has a waiting room, or has ended (sale_not_live)")),
    security(("bearer" = [])))]
pub async fn queue_everyone(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(sale_id): Path<String>,
    ApiJson(b): ApiJson<RoomControlBody>,
) -> Result<Json<RoomReportDto>, ApiError> {
    control(&s, &who, &sale_id, RoomControl::QueueEveryone, &b.reason).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BroadcastBody {
    /// 1–280 characters of plain text, shown to everyone waiting.
    pub message: String,
}

/// Sends a short message to everyone waiting in the sale's room: shown on `…/queue/me`, its
/// live stream and the queue pages from now on (the latest replaces the one before). Audited
/// as `room.broadcast`.
#[utoipa::path(operation_id = "broadcast_to_queue", post, path = "/api/v1/admin/sales/{sale_id}/queue/broadcast", tag = "admin",
    params(("sale_id" = String, Path)), request_body = BroadcastBody,
    responses((status = 200, body = RoomMessageDto), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the sale has no waiting room"), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn broadcast(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(sale_id): Path<String>,
    ApiJson(b): ApiJson<BroadcastBody>,
) -> Result<Json<RoomMessageDto>, ApiError> {
    let message = s.app.broadcast_to_room(&who, &sale_id, &b.message).await?;
    Ok(Json(message.into()))
}
