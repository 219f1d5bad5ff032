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
