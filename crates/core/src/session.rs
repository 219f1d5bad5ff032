//! Session tokens: the bearer token a login returns carries its own claims, signed, so any node
//! can check it in memory — no store or Redis read per request, even for a buyer the node has
//! never seen.
//!
//! A token is `s1.<user_id>.<role>.<session_id>.<expires_at_ms>.<mac>`, where `mac` is
//! base64url(HMAC-SHA256(key, everything before the last dot)). The claims are not secret
//! (ids and an expiry); only the key's holders can make them. The MAC is checked first, in
//! constant time, so a forged token costs one HMAC. Revocation (logout, a ban) is not in the
//! token: the caller keeps a set of revoked session ids and refuses those.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Timestamp, UserId};

/// The longest token accepted: anything longer is refused before any work.
pub const MAX_SESSION_TOKEN_LEN: usize = 256;

const VERSION: &str = "s1";

/// What a session token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionClaims {
    pub user_id: UserId,
    /// The role at login: `true` for an admin.
    pub admin: bool,
    /// Names the session for revocation (logout, a ban) without the token itself.
    pub session_id: String,
    pub expires_at: Timestamp,
}

/// Why a session token was refused (every reason ends in 401; the label feeds metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionRefusal {
    #[error("malformed session token")]
    Malformed,
    #[error("session token signature does not match")]
    Forged,
    #[error("session token has expired")]
    Expired,
}

impl SessionRefusal {
    /// A stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            SessionRefusal::Malformed => "malformed",
            SessionRefusal::Forged => "forged",
            SessionRefusal::Expired => "expired",
        }
    }
}

fn mac(key: &[u8; 32]) -> Hmac<Sha256> {
    // HMAC takes a key of any length: this cannot fail for 32 bytes.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts any key length"),
    }
}

/// A session id is printable and has no dot (it is one field of the token).
fn valid_session_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The token for `claims`, signed with `key`.
pub fn sign(key: &[u8; 32], claims: &SessionClaims) -> String {
    let role = if claims.admin { "admin" } else { "buyer" };
    let body = format!(
        "{VERSION}.{}.{role}.{}.{}",
        claims.user_id, claims.session_id, claims.expires_at.0
    );
    let mut m = mac(key);
    m.update(body.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{body}.{sig}")
}

/// The claims of a genuine, unexpired token (expiry judged at `now`, exclusive).
pub fn verify(
    key: &[u8; 32],
    token: &str,
    now: Timestamp,
) -> Result<SessionClaims, SessionRefusal> {
    if token.len() > MAX_SESSION_TOKEN_LEN {
        return Err(SessionRefusal::Malformed);
    }
    let (body, sig) = token.rsplit_once('.').ok_or(SessionRefusal::Malformed)?;
    let mut sig_bytes = [0_u8; 32];
    match URL_SAFE_NO_PAD.decode_slice(sig, &mut sig_bytes) {
        Ok(32) => {}
        _ => return Err(SessionRefusal::Malformed),
    }
    let mut m = mac(key);
    m.update(body.as_bytes());
    m.verify_slice(&sig_bytes)
        .map_err(|_| SessionRefusal::Forged)?;
    // Signed by us: the fields were written by `sign`, but parse them strictly anyway.
    let mut fields = body.split('.');
    let (Some(VERSION), Some(user), Some(role), Some(session), Some(expires), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(SessionRefusal::Malformed);
    };
    let user_id = UserId::parse(user).ok_or(SessionRefusal::Malformed)?;
    let admin = match role {
        "admin" => true,
        "buyer" => false,
        _ => return Err(SessionRefusal::Malformed),
    };
    if !valid_session_id(session) {
        return Err(SessionRefusal::Malformed);
    }
    let expires_at = Timestamp(expires.parse().map_err(|_| SessionRefusal::Malformed)?);
    if now >= expires_at {
        return Err(SessionRefusal::Expired);
    }
    Ok(SessionClaims {
        user_id,
        admin,
        session_id: session.to_owned(),
        expires_at,
    })
}

/// A fresh random-looking session id from 128 bits the caller drew (hex, 32 characters).
pub fn session_id(random: u128) -> String {
    format!("{random:032x}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn claims() -> SessionClaims {
        SessionClaims {
            user_id: UserId::generate(1_800_000_000_000, 7),
            admin: false,
            session_id: session_id(42),
            expires_at: Timestamp(1_800_000_060_000),
        }
    }

    #[test]
    fn a_signed_token_verifies_until_its_expiry() {
        let key = [9_u8; 32];
        let t = sign(&key, &claims());
        assert!(t.len() <= MAX_SESSION_TOKEN_LEN);
        assert_eq!(verify(&key, &t, Timestamp(1_800_000_059_999)), Ok(claims()));
        assert_eq!(
            verify(&key, &t, Timestamp(1_800_000_060_000)),
            Err(SessionRefusal::Expired)
        );
    }

    #[test]
    fn another_key_or_any_changed_byte_is_refused() {
        let key = [9_u8; 32];
        let t = sign(&key, &claims());
        let now = Timestamp(1_800_000_000_000);
        assert_eq!(verify(&[8; 32], &t, now), Err(SessionRefusal::Forged));
        for i in 0..t.len() {
            let mut bytes = t.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let Ok(changed) = String::from_utf8(bytes) else {
                continue;
            };
            if changed == t {
                continue;
            }
            assert!(verify(&key, &changed, now).is_err(), "byte {i} changed");
        }
        // A buyer cannot make themselves an admin.
        let forged = t.replacen(".buyer.", ".admin.", 1);
        assert_eq!(verify(&key, &forged, now), Err(SessionRefusal::Forged));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let key = [1_u8; 32];
        let now = Timestamp(0);
        for t in ["", ".", "a.b", "s1.x.y.z.w.v", &"x".repeat(300)] {
            assert!(verify(&key, t, now).is_err(), "{t}");
        }
    }
}
