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

/// An account or device whose holds lapsed unpaid again and again.
#[derive(Debug, Serialize, ToSchema)]
pub struct HoarderDto {
    /// The user id (for an account) or the device id.
    pub subject: String,
    /// Holds that lapsed unpaid.
    pub lapsed: u64,
    pub last_lapsed_at: String,
    /// The accounts behind it (for an account: itself).
    pub accounts: Vec<AccountDto>,
}

impl From<&stampede_app::accounts::Hoarder> for HoarderDto {
    fn from(h: &stampede_app::accounts::Hoarder) -> Self {
        Self {
            subject: h.subject.clone(),
            lapsed: h.lapsed,
            last_lapsed_at: rfc3339(h.last_lapsed_at),
            accounts: h.accounts.iter().map(AccountDto::from).collect(),
        }
    }
}

/// Suspected hoarders (OWASP OAT-021, denial of inventory), most lapses first.
#[derive(Debug, Serialize, ToSchema)]
pub struct HoardersDto {
    /// The threshold applied: at least this many holds lapsed unpaid.
    pub min_lapsed: u32,
    pub accounts: Vec<HoarderDto>,
    pub devices: Vec<HoarderDto>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HoardersQuery {
    /// Lapsed holds that make a suspect, at least 1 (default 3).
    pub min_lapsed: Option<u32>,
    /// Most accounts and most devices listed, 1 to 100 (default 50).
    pub limit: Option<u32>,
}

/// Accounts and devices whose holds repeatedly lapsed unpaid: the hoarders' list.
#[utoipa::path(operation_id = "list_hoarders", get, path = "/api/v1/admin/hoarders", tag = "admin", params(HoardersQuery),
    responses((status = 200, body = HoardersDto), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn hoarders(
    State(s): State<AppState>,
    Admin(who): Admin,
    ApiQuery(q): ApiQuery<HoardersQuery>,
) -> Result<Json<HoardersDto>, ApiError> {
    let limit = crate::dto::page_limit(q.limit, 50, stampede_app::accounts::MAX_HOARDERS)?;
    let found = s.app.hoarders(&who, q.min_lapsed, limit).await?;
    Ok(Json(HoardersDto {
        min_lapsed: found.min_lapsed,
        accounts: found.accounts.iter().map(HoarderDto::from).collect(),
        devices: found.devices.iter().map(HoarderDto::from).collect(),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BanHoarderBody {
    /// The account to ban (give this or `device_id`).
    pub user_id: Option<String>,
    /// Ban every account whose holds lapsed on this device.
    pub device_id: Option<String>,
    /// Why (kept with each account and in the audit log).
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BannedDto {
    pub banned: Vec<AccountDto>,
}

/// The one-click ban of a hoarder: bans the account, or every account behind the device; their
/// sessions end and their live holds are released at once (stock back).
#[utoipa::path(operation_id = "ban_hoarder", post, path = "/api/v1/admin/hoarders/ban", tag = "admin",
    request_body = BanHoarderBody,
    responses((status = 200, body = BannedDto), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "an admin account"), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn ban_hoarder(
    State(s): State<AppState>,
    Admin(who): Admin,
    ApiJson(b): ApiJson<BanHoarderBody>,
) -> Result<Json<BannedDto>, ApiError> {
    use stampede_app::accounts::HoarderTarget;
    let target = match (b.user_id, b.device_id) {
        (Some(user), None) => HoarderTarget::Account(user),
        (None, Some(device)) if !device.is_empty() && device.chars().count() <= 128 => {
            HoarderTarget::Device(device)
        }
        _ => {
            return Err(ApiError::invalid(
                "give exactly one of user_id or device_id (at most 128 characters)",
            ))
        }
    };
    let banned = s.app.ban_hoarder(&who, target, &b.reason).await?;
    Ok(Json(BannedDto {
        banned: banned.iter().map(AccountDto::from).collect(),
    }))
}
