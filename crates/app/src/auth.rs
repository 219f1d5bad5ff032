//! Accounts and sessions: argon2id password hashes computed off the async threads with a
//! bounded pool, opaque random tokens stored only as their SHA-256, and a token cache so the
//! hot path does not pay a store round trip per request. Logout removes the token from the
//! store and the cache at once.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

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
    /// Identifies the session for logout without keeping the token itself.
    pub token_hash: String,
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

/// SHA-256 of a token, hex: the only form in which tokens are stored or cached.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_token() -> String {
    let mut bytes = [0_u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Sessions already checked against the store, keyed by token hash. Bounded in size and
/// age, so a revoked-elsewhere token is forgotten soon; logout on this node removes it at once.
pub struct TokenCache {
    cache: moka::sync::Cache<String, Principal>,
}

impl TokenCache {
    /// A cache of at most `capacity` sessions, each re-checked after `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
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
        let token = new_token();
        let now = self.clock.now();
        let session = Session {
            token_hash: token_hash(&token),
            user_id: user.id.clone(),
            role: user.role,
            expires_at: now.plus_secs(self.config.token_ttl_secs),
        };
        self.store.insert_session(&session, now).await?;
        metrics::counter!("stampede_logins_total", "outcome" => "ok").increment(1);
        Ok(LoginGrant {
            token,
            expires_at: session.expires_at,
            user_id: user.id,
            role: user.role,
        })
    }

    /// Who owns this bearer token. Cached; a cache miss costs one store read.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AppError> {
        if token.is_empty() || token.len() > 256 {
            return Err(AppError::Unauthenticated);
        }
        let hash = token_hash(token);
        let now = self.clock.now();
        if let Some(p) = self.tokens.cache.get(&hash) {
            if now < p.expires_at {
                return Ok(p);
            }
            self.tokens.cache.invalidate(&hash);
            return Err(AppError::Unauthenticated);
        }
        let session = self
            .store
            .session(&hash)
            .await?
            .filter(|s| now < s.expires_at)
            .ok_or(AppError::Unauthenticated)?;
        let principal = Principal {
            user_id: session.user_id,
            role: session.role,
            expires_at: session.expires_at,
            token_hash: hash.clone(),
        };
        self.tokens.cache.insert(hash, principal.clone());
        Ok(principal)
    }

    /// Ends the session: the token is dead for every later request on this node at once, and
    /// on the other nodes as soon as they hear of it (their token caches drop it).
    pub async fn logout(&self, who: &Principal) -> Result<(), AppError> {
        self.tokens.cache.invalidate(&who.token_hash);
        self.store.delete_session(&who.token_hash).await?;
        self.tokens.cache.invalidate(&who.token_hash);
        self.bus.publish(crate::ports::Event::SessionRevoked {
            token_hash: who.token_hash.clone(),
        });
        Ok(())
    }

    /// Drops a session from this node's token cache (another node logged it out).
    pub(crate) fn forget_session(&self, token_hash: &str) {
        self.tokens.cache.invalidate(token_hash);
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
    fn tokens_are_random_and_hash_stably() {
        let a = new_token();
        assert_ne!(a, new_token());
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_eq!(token_hash(&a).len(), 64);
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
