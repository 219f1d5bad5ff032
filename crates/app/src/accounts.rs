//! Account administration: find accounts, see what one holds, owns and was refused, and
//! disable or ban it. A ban takes effect at once: the account's sessions are deleted with the
//! status change (one store transaction) and dropped from every node's token cache, its live
//! holds are released (their stock goes back at once), and the reason is kept.

use std::collections::BTreeMap;
use std::sync::Arc;

use stampede_core::{Hold, Order, UserId};

use crate::auth::Principal;
use crate::ports::{Event, Role, UserAccount, UserStatus};
use crate::{App, AppError};

/// Most accounts one page of a search returns.
pub const MAX_ACCOUNTS_PAGE: u32 = 200;

/// Everything an admin sees of one account.
#[derive(Debug, Clone)]
pub struct AccountDetail {
    pub account: UserAccount,
    pub live_holds: Vec<Hold>,
    pub orders: Vec<Order>,
    /// Refused reservations by reason, as this node counted them since it started.
    pub refusals: BTreeMap<String, u64>,
}

impl App {
    /// Counts a refused reservation for the buyer's account page (bounded: the busiest
    /// buyers of a sale day, not every one forever).
    pub(crate) fn count_user_refusal(&self, user: &UserId, reason: &'static str) {
        // A returning buyer's counts are found by the borrowed id (no clone of it).
        let counts = match self.user_refusals.get(user) {
            Some(counts) => counts,
            None => self.user_refusals.get_with(user.clone(), || {
                Arc::new(std::sync::Mutex::new(BTreeMap::new()))
            }),
        };
        let mut guard = match counts.lock() {
            Ok(guard) => guard,
            Err(_) => return,
        };
        *guard.entry(reason).or_insert(0) += 1;
    }

    /// Accounts whose email or name contains `query`, after the id `after`. Admin only.
    pub async fn admin_accounts(
        &self,
        who: &Principal,
        query: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserAccount>, AppError> {
        self.require_admin(who)?;
        if query.chars().count() > 200 {
            return Err(AppError::invalid("q must be at most 200 characters"));
        }
        let after = match after {
            Some(a) => {
                Some(UserId::parse(a).ok_or_else(|| AppError::invalid("after must be a user id"))?)
            }
            None => None,
        };
        let limit = limit.clamp(1, MAX_ACCOUNTS_PAGE);
        Ok(self
            .store
            .accounts(query.trim(), after.as_ref(), limit)
            .await?)
    }

    /// One account with its live holds, orders and refused attempts. Admin only.
    pub async fn admin_account(
        &self,
        who: &Principal,
        id: &str,
    ) -> Result<AccountDetail, AppError> {
        self.require_admin(who)?;
        let user = UserId::parse(id).ok_or(AppError::NotFound)?;
        let account = self.store.account(&user).await?.ok_or(AppError::NotFound)?;
        let live_holds = self.store.live_holds(&user, self.clock.now()).await?;
        let orders = self.store.orders(&user).await?;
        let refusals = self
            .user_refusals
            .get(&user)
            .and_then(|c| {
                c.lock()
                    .ok()
                    .map(|m| m.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect())
            })
            .unwrap_or_default();
        Ok(AccountDetail {
            account,
            live_holds,
            orders,
            refusals,
        })
    }

    /// Disables, bans or reinstates an account. Admin only; not for admin accounts.
    pub async fn set_account_status(
        self: &Arc<Self>,
        who: &Principal,
        id: &str,
        status: UserStatus,
        reason: &str,
    ) -> Result<UserAccount, AppError> {
        self.require_admin(who)?;
        let user = UserId::parse(id).ok_or(AppError::NotFound)?;
        let sent_chars = reason.chars().count();
        let reason = reason.trim();
        if sent_chars > 500 || (status != UserStatus::Active && reason.is_empty()) {
            return Err(AppError::invalid(
                "reason must be 1 to 500 characters (it is kept with the account)",
            ));
        }
        let before = self.store.account(&user).await?.ok_or(AppError::NotFound)?;
        if before.user.role == Role::Admin {
            return Err(AppError::Conflict(
                "an admin account cannot be disabled here".into(),
            ));
        }
        let ended = self
            .store
            .set_user_status(&user, status, reason)
            .await?
            .ok_or(AppError::NotFound)?;
        for (session_id, expires_at) in ended {
            self.revoke_session(session_id.clone(), expires_at);
            self.bus.publish(Event::SessionRevoked {
                session_id,
                expires_at,
            });
        }
        if status != UserStatus::Active {
            // Their live holds end now: the stock is for buyers in good standing.
            let now = self.clock.now();
            let holder = Principal {
                user_id: user.clone(),
                role: Role::Buyer,
                expires_at: now,
                session_id: String::new(),
            };
            for hold in self.store.live_holds(&user, now).await? {
                match self.release_hold(&holder, hold.id.as_str()).await {
                    Ok(()) | Err(AppError::NotFound) | Err(AppError::HoldExpired) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let after = self.store.account(&user).await?.ok_or(AppError::NotFound)?;
        self.audit(
            who,
            "user.status",
            user.as_str(),
            Some(&before),
            Some(&after),
        )
        .await;
        Ok(after)
    }
}

/// Most hoarders of each kind (accounts, devices) one listing returns.
pub const MAX_HOARDERS: u32 = 100;
/// Lapses that make an account or device a suspected hoarder unless the caller says otherwise.
pub const DEFAULT_MIN_LAPSED: u32 = 3;

/// An account or device whose holds lapsed unpaid again and again, with its accounts.
#[derive(Debug, Clone)]
pub struct Hoarder {
    /// The user id, or the device id.
    pub subject: String,
    pub lapsed: u64,
    pub last_lapsed_at: stampede_core::Timestamp,
    /// The accounts behind it (for an account: itself), with their status.
    pub accounts: Vec<UserAccount>,
}

/// The hoarders' list: the denial-of-inventory guard's second half. The cap stops one buyer
/// holding too much at once; this finds those who hold, let lapse and hold again.
#[derive(Debug, Clone, Default)]
pub struct Hoarders {
    pub min_lapsed: u32,
    pub accounts: Vec<Hoarder>,
    pub devices: Vec<Hoarder>,
}

/// Whom a one-click ban of a hoarder is aimed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoarderTarget {
    Account(String),
    /// Every account whose holds lapsed on this device.
    Device(String),
}

impl App {
    /// Accounts and devices with at least `min_lapsed` holds that lapsed unpaid, most first.
    /// Admin only.
    pub async fn hoarders(
        &self,
        who: &Principal,
        min_lapsed: Option<u32>,
        limit: u32,
    ) -> Result<Hoarders, AppError> {
        self.require_admin(who)?;
        let min_lapsed = min_lapsed.unwrap_or(DEFAULT_MIN_LAPSED);
        if min_lapsed == 0 {
            return Err(AppError::invalid("min_lapsed must be at least 1"));
        }
        let limit = limit.clamp(1, MAX_HOARDERS);
        let (accounts, devices) = self.store.lapsed_holders(min_lapsed, limit).await?;
        let mut known: std::collections::HashMap<UserId, UserAccount> =
            std::collections::HashMap::new();
        let mut out = Hoarders {
            min_lapsed,
            ..Hoarders::default()
        };
        for (from, into) in [(accounts, &mut out.accounts), (devices, &mut out.devices)] {
            for holder in from {
                let mut behind = Vec::with_capacity(holder.accounts.len());
                for user in &holder.accounts {
                    if let Some(account) = known.get(user) {
                        behind.push(account.clone());
                    } else if let Some(account) = self.store.account(user).await? {
                        known.insert(user.clone(), account.clone());
                        behind.push(account);
                    }
                }
                into.push(Hoarder {
                    subject: holder.subject,
                    lapsed: holder.lapsed,
                    last_lapsed_at: holder.last_lapsed_at,
                    accounts: behind,
                });
            }
        }
        Ok(out)
    }

    /// The one-click ban of a hoarder: bans the account (or every account whose holds lapsed
    /// on the device) through [`App::set_account_status`], which ends their sessions and
    /// returns their live holds' stock at once; audited as `hoarder.ban` as well as each
    /// `user.status`. Admin accounts are skipped. Returns the accounts banned.
    pub async fn ban_hoarder(
        self: &Arc<Self>,
        who: &Principal,
        target: HoarderTarget,
        reason: &str,
    ) -> Result<Vec<UserAccount>, AppError> {
        self.require_admin(who)?;
        let users: Vec<String> = match &target {
            HoarderTarget::Account(id) => vec![id.clone()],
            HoarderTarget::Device(device) => {
                let (_, devices) = self.store.lapsed_holders(1, MAX_HOARDERS * 10).await?;
                devices
                    .into_iter()
                    .find(|d| &d.subject == device)
                    .ok_or(AppError::NotFound)?
                    .accounts
                    .iter()
                    .map(|u| u.as_str().to_owned())
                    .collect()
            }
        };
        let mut banned = Vec::with_capacity(users.len());
        for user in &users {
            match self
                .set_account_status(who, user, UserStatus::Banned, reason)
                .await
            {
                Ok(account) => banned.push(account),
                // An admin account among a device's accounts is not banned from here.
                Err(AppError::Conflict(_)) if matches!(target, HoarderTarget::Device(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let (kind, subject) = match &target {
            HoarderTarget::Account(id) => ("account", id.as_str()),
            HoarderTarget::Device(device) => ("device", device.as_str()),
        };
        self.audit(
            who,
            "hoarder.ban",
            subject,
            None::<&()>,
            Some(&serde_json::json!({
                "kind": kind,
                "banned": banned.iter().map(|a| a.user.id.as_str()).collect::<Vec<_>>(),
                "reason": reason.trim(),
            })),
        )
        .await;
        Ok(banned)
    }
}
