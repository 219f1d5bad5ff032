//! `/api/v1/auth/*` and `/api/v1/me`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use crate::dto::{rfc3339, LoginBody, LoginDto, MeDto, RegisterBody, Registered};
use crate::extract::{ApiJson, Auth};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// Creates a buyer account.
#[utoipa::path(operation_id = "register", post, path = "/api/v1/auth/register", tag = "accounts", request_body = RegisterBody,
    responses((status = 201, body = Registered), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn register(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    let id = s
        .app
        .register(&body.email, &body.password, &body.name)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            user_id: id.to_string(),
        }),
    ))
}

/// Opens a session: returns a bearer token.
#[utoipa::path(operation_id = "login", post, path = "/api/v1/auth/login", tag = "accounts", request_body = LoginBody,
    responses((status = 200, body = LoginDto), (status = 401, body = Problem)))]
pub async fn login(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Json<LoginDto>, ApiError> {
    let grant = s.app.login(&body.email, &body.password).await?;
    Ok(Json(LoginDto {
        token: grant.token,
        expires_at: rfc3339(grant.expires_at),
        user_id: grant.user_id.to_string(),
        role: grant.role.as_str().to_owned(),
    }))
}

/// Ends the session; the token is dead at once.
#[utoipa::path(operation_id = "logout", post, path = "/api/v1/auth/logout", tag = "accounts",
    responses((status = 204), (status = 401, body = Problem)), security(("bearer" = [])))]
pub async fn logout(State(s): State<AppState>, Auth(who): Auth) -> Result<StatusCode, ApiError> {
    s.app.logout(&who).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's account.
#[utoipa::path(operation_id = "get_me", get, path = "/api/v1/me", tag = "accounts",
    responses((status = 200, body = MeDto), (status = 401, body = Problem)), security(("bearer" = [])))]
pub async fn me(State(s): State<AppState>, Auth(who): Auth) -> Result<Json<MeDto>, ApiError> {
    Ok(Json(s.app.me(&who).await?.into()))
}
