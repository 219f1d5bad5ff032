//! The buyer's notifications: a paged feed and the same notifications pushed live.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures::stream::{Stream, StreamExt};
use tokio_stream::wrappers::BroadcastStream;

use stampede_app::notifications::MAX_PAGE;
use stampede_app::ports::Event;

use crate::dto::{NotificationDto, NotificationsDto, NotificationsQuery};
use crate::extract::{ApiQuery, Auth};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// The caller's notifications, oldest first, from a cursor.
#[utoipa::path(operation_id = "list_notifications", get, path = "/api/v1/notifications", tag = "notifications", params(NotificationsQuery),
    responses((status = 200, body = NotificationsDto), (status = 401, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    Auth(who): Auth,
    ApiQuery(q): ApiQuery<NotificationsQuery>,
) -> Result<Json<NotificationsDto>, ApiError> {
    let limit = crate::dto::page_limit(q.limit, 50, MAX_PAGE)?;
    let items = s.app.notifications(&who, q.after.as_deref(), limit).await?;
    // An empty page keeps the caller's cursor, so polling with `next` never re-reads.
    let next = items.last().map(|n| n.id.clone()).or(q.after);
    Ok(Json(NotificationsDto {
        notifications: items.into_iter().map(NotificationDto::from).collect(),
        next,
    }))
}

/// The caller's notifications as they happen (Server-Sent Events, event `notification`).
#[utoipa::path(operation_id = "stream_my_events", get, path = "/api/v1/me/events", tag = "notifications",
    responses((status = 200, content_type = "text/event-stream", description = "notification events"),
        (status = 401, body = Problem)), security(("bearer" = [])))]
pub async fn stream(
    State(s): State<AppState>,
    Auth(who): Auth,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let me = who.user_id;
    let live = BroadcastStream::new(s.app.bus.subscribe()).filter_map(move |ev| {
        let me = me.clone();
        async move {
            match ev {
                Ok(Event::Notified { notification }) if notification.user_id == me => {
                    let dto = NotificationDto::from(notification);
                    Some(Ok(SseEvent::default()
                        .event("notification")
                        .id(dto.id.clone())
                        .data(serde_json::to_string(&dto).unwrap_or_default())))
                }
                _ => None,
            }
        }
    });
    Sse::new(live.take_until(s.shutting_down()))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
