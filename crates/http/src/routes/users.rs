//! `/api/v1/admin/users`: find accounts, see one, and disable, ban or reinstate it.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use stampede_app::accounts::AccountDetail;
use stampede_app::ports::{UserAccount, UserStatus};

use crate::dto::{rfc3339, HoldDto, OrderDto};
use crate::extract::{Admin, ApiJson, ApiQuery};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// An account as an admin sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountDto {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub role: String,
    pub created_at: String,
    /// `active | disabled | banned`.
    pub status: String,
    /// Why it was disabled or banned (kept after it is lifted).
    pub status_reason: String,
}

impl From<&UserAccount> for AccountDto {
    fn from(a: &UserAccount) -> Self {
        Self {
            user_id: a.user.id.to_string(),
            email: a.user.email.clone(),
            name: a.user.name.clone(),
            role: a.user.role.as_str().to_owned(),
            created_at: rfc3339(a.user.created_at),
            status: a.status.as_str().to_owned(),
            status_reason: a.status_reason.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountsDto {
    pub users: Vec<AccountDto>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AccountsQuery {
    /// Part of an email or name (case-insensitive).
    pub q: Option<String>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<u32>,
}

/// Accounts whose email or name contains `q`, in id order.
#[utoipa::path(operation_id = "list_users", get, path = "/api/v1/admin/users", tag = "admin", params(AccountsQuery),
    responses((status = 200, body = AccountsDto), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    Admin(who): Admin,
    ApiQuery(q): ApiQuery<AccountsQuery>,
) -> Result<Json<AccountsDto>, ApiError> {
    let limit = crate::dto::page_limit(q.limit, 50, stampede_app::accounts::MAX_ACCOUNTS_PAGE)?;
    let found = s
        .app
        .admin_accounts(
            &who,
            q.q.as_deref().unwrap_or(""),
            q.after.as_deref(),
            limit,
        )
        .await?;
    let next = (found.len() as u32 >= limit)
        .then(|| found.last().map(|a| a.user.id.to_string()))
        .flatten();
    Ok(Json(AccountsDto {
        users: found.iter().map(AccountDto::from).collect(),
        next,
    }))
}

/// One account: its live holds, orders and refused reservations.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountDetailDto {
    pub account: AccountDto,
    pub live_holds: Vec<HoldDto>,
    pub orders: Vec<OrderDto>,
    /// Refused reservations by reason (this node's counts since it started).
    pub refusals: BTreeMap<String, u64>,
}

impl From<&AccountDetail> for AccountDetailDto {
    fn from(d: &AccountDetail) -> Self {
        Self {
            account: AccountDto::from(&d.account),
            live_holds: d.live_holds.iter().map(HoldDto::from).collect(),
            orders: d.orders.iter().map(OrderDto::from).collect(),
            refusals: d.refusals.clone(),
        }
    }
}

/// One account with its live holds, orders and refused attempts.
#[utoipa::path(operation_id = "get_user", get, path = "/api/v1/admin/users/{user_id}", tag = "admin", params(("user_id" = String, Path)),
    responses((status = 200, body = AccountDetailDto), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn detail(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(id): Path<String>,
) -> Result<Json<AccountDetailDto>, ApiError> {
    let d = s.app.admin_account(&who, &id).await?;
    Ok(Json(AccountDetailDto::from(&d)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusBody {
    /// `active | disabled | banned`.
    pub status: String,
    /// Why (required unless reinstating; kept with the account).
    #[serde(default)]
    pub reason: String,
}

/// Disables, bans or reinstates a buyer's account. Disabling or banning ends its sessions at
/// once (on every node) and releases its live holds.
#[utoipa::path(operation_id = "set_user_status", post, path = "/api/v1/admin/users/{user_id}/status", tag = "admin",
    params(("user_id" = String, Path)), request_body = StatusBody,
    responses((status = 200, body = AccountDto), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "an admin account"), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn set_status(
    State(s): State<AppState>,
    Admin(who): Admin,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<StatusBody>,
) -> Result<Json<AccountDto>, ApiError> {
    let status = UserStatus::parse(&b.status)
        .ok_or_else(|| ApiError::invalid("status must be active, disabled or banned"))?;
    let account = s
        .app
        .set_account_status(&who, &id, status, &b.reason)
        .await?;
    Ok(Json(AccountDto::from(&account)))
}
