//! Accounts and sessions: argon2id password hashes computed off the async threads with a
//! bounded pool, and signed session tokens ([`stampede_core::session`]) that any node checks in
//! memory: a crowd of a million buyers this node has never seen costs no store or Redis read.
//!
//! What a signature cannot say is that a session ended early (logout, a ban). Every node keeps
//! the set of revoked session ids: the node that revokes adds the id at once, the others hear
//! it on the bus, and every node reloads the set from the store at start and every
//! `revocation_refresh_ms` (so a lost event still takes effect within that time).

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use stampede_core::session::{self, SessionClaims};
use stampede_core::{Timestamp, UserId};

use crate::config::Argon2Cost;
use crate::ports::{Role, Session, User};
use crate::{App, AppError};

/// Who is calling: what every authenticated use case receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: UserId,
    pub role: Role,
    pub expires_at: Timestamp,
    /// Names the session for logout and bans (the token itself is never kept).
    pub session_id: String,
}

/// What a successful login returns to the client.
#[derive(Debug, Clone)]
pub struct LoginGrant {
    /// The bearer token: shown once, never stored.
    pub token: String,
    pub expires_at: Timestamp,
    pub user_id: UserId,
    pub role: Role,
}

/// Hashes and verifies passwords on blocking threads, at most `concurrency` at once, so a
/// login storm cannot starve request handling.
#[derive(Clone)]
pub struct PasswordHashing {
    params: Params,
    permits: Arc<Semaphore>,
    /// A real hash of a random password: verified against when the email is unknown, so a
    /// login for a missing account costs the same time as one for an existing account.
    decoy: Arc<String>,
}

impl PasswordHashing {
    /// Builds the pool; fails only on invalid cost parameters.
    pub fn new(cost: Argon2Cost, concurrency: usize) -> Result<Self, AppError> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|e| AppError::Internal(format!("argon2 parameters: {e}")))?;
        let mut random = [0_u8; 16];
        rand::thread_rng().fill_bytes(&mut random);
        let decoy = hash_blocking(&params, &hex::encode(random))?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            decoy: Arc::new(decoy),
        })
    }

    /// The PHC string of `password`.
    pub async fn hash(&self, password: String) -> Result<String, AppError> {
        let _permit = self.permit().await?;
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || hash_blocking(&params, &password))
            .await
            .map_err(|e| AppError::Internal(format!("hash task: {e}")))?
    }

    /// Whether `password` matches `phc` (or, with `None`, burns the same time and says no).
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, AppError> {
        let _permit = self.permit().await?;
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.decoy.as_ref().clone());
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&phc)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .map_err(|e| AppError::Internal(format!("verify task: {e}")))?;
        Ok(ok && known)
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, AppError> {
        self.permits
            .acquire()
            .await
            .map_err(|_| AppError::Unavailable("password hashing is shutting down".into()))
    }
}

fn hash_blocking(params: &Params, password: &str) -> Result<String, AppError> {
    let salt = SaltString::generate(&mut rand::thread_rng());
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AppError::Internal(format!("argon2: {e}")))
}

/// SHA-256 of a secret, hex (for logs and keys that must not hold the secret itself).
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh signing key, hex: what the first node of a deployment stores as the shared one.
pub(crate) fn new_session_key() -> String {
    let mut bytes = [0_u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Parses a signing key given as 64 hex digits.
pub fn parse_session_key(hex_key: &str) -> Result<[u8; 32], AppError> {
    let mut key = [0_u8; 32];
    hex::decode_to_slice(hex_key.trim(), &mut key)
        .map_err(|_| AppError::Internal("the session key must be 64 hex digits".into()))?;
    Ok(key)
}

/// Session ids ended early, with the expiry of their tokens (after which the signature alone
/// refuses them and the entry can go). Empty in the common case, so the check is one hash
/// lookup that finds nothing.
#[derive(Default)]
pub struct Revocations {
    ids: dashmap::DashMap<String, Timestamp>,
}

impl Revocations {
    fn contains(&self, session_id: &str) -> bool {
        self.ids.contains_key(session_id)
    }

    fn add(&self, session_id: String, expires_at: Timestamp) {
        self.ids.insert(session_id, expires_at);
    }

    /// Forgets entries whose tokens have expired anyway.
    fn purge(&self, now: Timestamp) {
        self.ids.retain(|_, expires| *expires > now);
    }

    /// How many sessions are revoked and not yet expired (a gauge).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no session is revoked.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

fn normalize_email(email: &str) -> Result<String, AppError> {
    let sent_chars = email.chars().count();
    let email = email.trim().to_lowercase();
    let valid = sent_chars <= 254
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && !email.chars().any(char::is_whitespace);
    if valid {
        Ok(email)
    } else {
        Err(AppError::invalid("email must be a valid address"))
    }
}

fn check_password(password: &str) -> Result<(), AppError> {
    let n = password.chars().count();
    if !(8..=128).contains(&n) {
        return Err(AppError::invalid(
            "password must be between 8 and 128 characters",
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<String, AppError> {
    if name.trim().is_empty() || name.chars().count() > 100 {
        return Err(AppError::invalid("name must be 1 to 100 characters"));
    }
    let name = name.trim();
    if name.is_empty() {
        return Err(AppError::invalid("name must be 1 to 100 characters"));
    }
    Ok(name.to_owned())
}

impl App {
    /// Creates a buyer account.
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        name: &str,
    ) -> Result<UserId, AppError> {
        let email = normalize_email(email)?;
        check_password(password)?;
        let name = check_name(name)?;
        let hash = self.hashing.hash(password.to_owned()).await?;
        let now = self.clock.now();
        let user = User {
            id: UserId::generate(now.millis(), rand::random()),
            email,
            name,
            role: Role::Buyer,
            created_at: now,
        };
        if self.store.insert_user(&user, &hash).await? {
            metrics::counter!("stampede_users_registered_total").increment(1);
            Ok(user.id)
        } else {
            Err(AppError::EmailTaken)
        }
    }

    /// Creates or resets the admin named in the environment at start.
    pub async fn ensure_admin(&self, email: &str, password: &str) -> Result<User, AppError> {
        let email = normalize_email(email)?;
        check_password(password)?;
        let hash = self.hashing.hash(password.to_owned()).await?;
        let now = self.clock.now();
        let user = User {
            id: UserId::generate(now.millis(), rand::random()),
            email,
            name: "Administrator".into(),
            role: Role::Admin,
            created_at: now,
        };
        Ok(self.store.upsert_admin(&user, &hash).await?)
    }

    /// Checks a password and opens a session.
    pub async fn login(&self, email: &str, password: &str) -> Result<LoginGrant, AppError> {
        let email = email.trim().to_lowercase();
        if password.len() > 1024 {
            return Err(AppError::BadCredentials);
        }
        let creds = self.store.credentials_by_email(&email).await?;
        let phc = creds.as_ref().map(|c| c.password_hash.clone());
        if !self.hashing.verify(password.to_owned(), phc).await? {
            metrics::counter!("stampede_logins_total", "outcome" => "refused").increment(1);
            return Err(AppError::BadCredentials);
        }
        let user = creds.ok_or(AppError::BadCredentials)?.user;
        // Checked after the password, so a guesser learns nothing about the account.
        let status = self.store.account(&user.id).await?.map(|a| a.status);
        if status != Some(crate::ports::UserStatus::Active) {
            metrics::counter!("stampede_logins_total", "outcome" => "disabled").increment(1);
            return Err(AppError::Forbidden);
        }
        let now = self.clock.now();
        let session = Session {
            session_id: session::session_id(rand::random()),
            user_id: user.id.clone(),
            role: user.role,
            expires_at: now.plus_secs(self.config.token_ttl_secs),
        };
        // Refused if a ban landed since the status was read: the store decides both at once.
        if !self.store.insert_session(&session, now).await? {
            metrics::counter!("stampede_logins_total", "outcome" => "disabled").increment(1);
            return Err(AppError::Forbidden);
        }
        let token = session::sign(
            &self.session_key,
            &SessionClaims {
                user_id: session.user_id.clone(),
                admin: session.role == Role::Admin,
                session_id: session.session_id.clone(),
                expires_at: session.expires_at,
            },
        );
        metrics::counter!("stampede_logins_total", "outcome" => "ok").increment(1);
        Ok(LoginGrant {
            token,
            expires_at: session.expires_at,
            user_id: user.id,
            role: user.role,
        })
    }

    /// Who owns this bearer token: its signature, expiry and this node's revocation set, all in
    /// memory. No store or Redis read, whoever the buyer is.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AppError> {
        let claims = match session::verify(&self.session_key, token, self.clock.now()) {
            Ok(claims) => claims,
            Err(refusal) => {
                metrics::counter!("stampede_auth_refused_total", "reason" => refusal.label())
                    .increment(1);
                return Err(AppError::Unauthenticated);
            }
        };
        if self.revoked.contains(&claims.session_id) {
            metrics::counter!("stampede_auth_refused_total", "reason" => "revoked").increment(1);
            return Err(AppError::Unauthenticated);
        }
        Ok(Principal {
            user_id: claims.user_id,
            role: if claims.admin {
                Role::Admin
            } else {
                Role::Buyer
            },
            expires_at: claims.expires_at,
            session_id: claims.session_id,
        })
    }

    /// Ends the session: refused on this node at once (before the store is even asked), on the
    /// others as soon as they hear the event, and on any node that starts later (the store
    /// keeps the revocation until the token's expiry).
    pub async fn logout(&self, who: &Principal) -> Result<(), AppError> {
        self.revoke_session(who.session_id.clone(), who.expires_at);
        self.store.delete_session(&who.session_id).await?;
        self.bus.publish(crate::ports::Event::SessionRevoked {
            session_id: who.session_id.clone(),
            expires_at: who.expires_at,
        });
        Ok(())
    }

    /// Refuses a session on this node from now until its expiry.
    pub(crate) fn revoke_session(&self, session_id: String, expires_at: Timestamp) {
        self.revoked.add(session_id, expires_at);
    }

    /// Reloads the revoked sessions from the store (at start, and periodically in case an event
    /// was lost) and forgets the ones that expired.
    pub async fn refresh_revocations(&self) -> Result<usize, AppError> {
        let now = self.clock.now();
        for (id, expires_at) in self.store.revoked_sessions(now).await? {
            self.revoked.add(id, expires_at);
        }
        self.revoked.purge(now);
        let n = self.revoked.len();
        metrics::gauge!("stampede_sessions_revoked").set(n as f64);
        Ok(n)
    }

    /// The caller's own account.
    pub async fn me(&self, who: &Principal) -> Result<User, AppError> {
        self.store
            .user(&who.user_id)
            .await?
            .ok_or(AppError::Unauthenticated)
    }

    /// Refuses anyone but an admin.
    pub fn require_admin(&self, who: &Principal) -> Result<(), AppError> {
        if who.role == Role::Admin {
            Ok(())
        } else {
            Err(AppError::Forbidden)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(normalize_email(" A@B.io ").unwrap(), "a@b.io");
        assert!(normalize_email("nope").is_err());
        assert!(normalize_email("@b.io").is_err());
        assert!(normalize_email("a@b").is_err());
    }

    #[test]
    fn session_keys_parse_from_hex_only() {
        let key = new_session_key();
        assert_eq!(parse_session_key(&key).unwrap().len(), 32);
        assert!(parse_session_key("nope").is_err());
        assert!(parse_session_key(&key[..62]).is_err());
        assert_eq!(token_hash("a").len(), 64);
    }

    /// Passwords are stored as argon2id v1.3 at OWASP's recommended cost by default (19 MiB,
    /// two passes, one lane), and the stored PHC string says so, so a cost change is visible
    /// and old hashes still verify.
    #[tokio::test]
    async fn passwords_are_argon2id_at_the_recommended_cost() {
        let h = PasswordHashing::new(Argon2Cost::default(), 1).unwrap();
        let phc = h.hash("correct horse".into()).await.unwrap();
        assert!(
            phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "stored hash: {phc}"
        );
        assert!(h.verify("correct horse".into(), Some(phc)).await.unwrap());
    }

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_never_match() {
        let cheap = Argon2Cost {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let h = PasswordHashing::new(cheap, 1).unwrap();
        let phc = h.hash("correct horse".into()).await.unwrap();
        assert!(h
            .verify("correct horse".into(), Some(phc.clone()))
            .await
            .unwrap());
        assert!(!h.verify("wrong horse".into(), Some(phc)).await.unwrap());
        assert!(!h.verify("anything".into(), None).await.unwrap());
    }
}
