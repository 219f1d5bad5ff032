//! Admission tokens: what the waiting room hands an admitted buyer, and what a reservation on a
//! `queue_required` sale must carry.
//!
//! A token is `base64url(claims) "." base64url(HMAC-SHA256(key, claims))`. The signature is
//! checked first, in constant time, so a forged token costs one HMAC and no storage read. The
//! claims bind the token to one sale, one user, one device and one place in line (`ticket`), and
//! carry an expiry; single use is enforced by the waiting room, which knows whether the entry
//! behind the ticket has already spent its admission.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Timestamp;

/// The longest token accepted: anything longer is refused before any work.
pub const MAX_TOKEN_LEN: usize = 512;

/// What an admission token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionClaims {
    pub sale_id: String,
    pub user_id: String,
    pub device_id: String,
    /// The entry's place in line when it was admitted: ties the token to that admission, so a
    /// token from an earlier, lapsed admission is worthless after a re-join.
    pub ticket: u64,
    pub expires_at: Timestamp,
}

/// Why a token was refused. Every variant ends in 403 `not_admitted`, with this text as the
/// problem's detail (it names what failed, never whose the token is); the reason feeds metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("no admission token: join the waiting room, then send the token it gives as X-Admission-Token")]
    Missing,
    #[error("the X-Admission-Token is not an admission token")]
    Malformed,
    #[error("the admission token was not issued by this service")]
    Forged,
    #[error("the admission token has expired: join the waiting room again")]
    Expired,
    #[error("the admission token does not admit {0}")]
    Transferred(Binding),
    #[error("the admission token was already used")]
    Replayed,
}

/// What a token is bound to, named when it is used for something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Binding {
    #[error("this sale")]
    Sale,
    #[error("this account")]
    User,
    #[error("this device: send as X-Device-Id the device_id you joined with")]
    Device,
    #[error("your current place in line: it is from an earlier admission")]
    Admission,
}

impl TokenRefusal {
    /// A stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            TokenRefusal::Missing => "token_missing",
            TokenRefusal::Malformed => "token_malformed",
            TokenRefusal::Forged => "token_forged",
            TokenRefusal::Expired => "token_expired",
            TokenRefusal::Transferred(_) => "token_transferred",
            TokenRefusal::Replayed => "token_replayed",
        }
    }
}

/// Ids inside a token may not contain the separator.
fn clean(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.contains('|')
}

/// The MAC of `payload`; `None` only if the HMAC rejected the key, which it never does for
/// HMAC (any key length is valid), so callers treat `None` as "cannot sign / forged".
fn mac(key: &[u8], payload: &[u8]) -> Option<Hmac<Sha256>> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).ok()?;
    m.update(payload);
    Some(m)
}

impl AdmissionClaims {
    /// Signs the claims with `key`.
    pub fn sign(&self, key: &[u8]) -> Option<String> {
        if !(clean(&self.sale_id) && clean(&self.user_id) && clean(&self.device_id)) {
            return None;
        }
        let payload = format!(
            "v1|{}|{}|{}|{}|{}",
            self.sale_id,
            self.user_id,
            self.device_id,
            self.ticket,
            self.expires_at.millis()
        );
        let tag = mac(key, payload.as_bytes())?.finalize().into_bytes();
        Some(format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag)
        ))
    }

    /// Checks the signature, then parses the claims. Expiry and binding are the caller's
    /// ([`AdmissionClaims::admits`]) because they need "now" and the request.
    pub fn verify(key: &[u8], token: &str) -> Result<AdmissionClaims, TokenRefusal> {
        if token.is_empty() {
            return Err(TokenRefusal::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenRefusal::Malformed);
        }
        let (payload_b64, tag_b64) = token.split_once('.').ok_or(TokenRefusal::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenRefusal::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag_b64)
            .map_err(|_| TokenRefusal::Malformed)?;
        mac(key, &payload)
            .ok_or(TokenRefusal::Forged)?
            .verify_slice(&tag)
            .map_err(|_| TokenRefusal::Forged)?;
        let text = std::str::from_utf8(&payload).map_err(|_| TokenRefusal::Malformed)?;
        let parts: Vec<&str> = text.split('|').collect();
        match parts.as_slice() {
            ["v1", sale, user, device, ticket, exp] => Ok(AdmissionClaims {
                sale_id: (*sale).to_owned(),
                user_id: (*user).to_owned(),
                device_id: (*device).to_owned(),
                ticket: ticket.parse().map_err(|_| TokenRefusal::Malformed)?,
                expires_at: Timestamp(exp.parse().map_err(|_| TokenRefusal::Malformed)?),
            }),
            _ => Err(TokenRefusal::Malformed),
        }
    }

    /// Whether these (already verified) claims admit `user` on `device` to `sale` at `now`.
    pub fn admits(
        &self,
        sale_id: &str,
        user_id: &str,
        device_id: Option<&str>,
        now: Timestamp,
    ) -> Result<(), TokenRefusal> {
        if now >= self.expires_at {
            return Err(TokenRefusal::Expired);
        }
        if self.sale_id != sale_id {
            return Err(TokenRefusal::Transferred(Binding::Sale));
        }
        if self.user_id != user_id {
            return Err(TokenRefusal::Transferred(Binding::User));
        }
        if device_id != Some(&self.device_id) {
            return Err(TokenRefusal::Transferred(Binding::Device));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> AdmissionClaims {
        AdmissionClaims {
            sale_id: "S1".into(),
            user_id: "U1".into(),
            device_id: "phone-1".into(),
            ticket: 42,
            expires_at: Timestamp(10_000),
        }
    }

    #[test]
    fn a_signed_token_verifies_and_admits_its_owner_only() {
        let key = [9u8; 32];
        let token = claims().sign(&key).unwrap();
        let back = AdmissionClaims::verify(&key, &token).unwrap();
        assert_eq!(back, claims());
        assert_eq!(
            back.admits("S1", "U1", Some("phone-1"), Timestamp(9_999)),
            Ok(())
        );
        assert_eq!(
            back.admits("S1", "U1", Some("phone-1"), Timestamp(10_000)),
            Err(TokenRefusal::Expired)
        );
        assert_eq!(
            back.admits("S1", "U2", Some("phone-1"), Timestamp(1)),
            Err(TokenRefusal::Transferred(Binding::User))
        );
        assert_eq!(
            back.admits("S2", "U1", Some("phone-1"), Timestamp(1)),
            Err(TokenRefusal::Transferred(Binding::Sale))
        );
        assert_eq!(
            back.admits("S1", "U1", Some("phone-2"), Timestamp(1)),
            Err(TokenRefusal::Transferred(Binding::Device))
        );
        assert_eq!(
            back.admits("S1", "U1", None, Timestamp(1)),
            Err(TokenRefusal::Transferred(Binding::Device))
        );
    }

    #[test]
    fn another_key_or_a_changed_byte_is_forged() {
        let token = claims().sign(&[9u8; 32]).unwrap();
        assert_eq!(
            AdmissionClaims::verify(&[8u8; 32], &token),
            Err(TokenRefusal::Forged)
        );
        // Change the payload to another user, keep the old signature.
        let (_, tag) = token.split_once('.').unwrap();
        let other = URL_SAFE_NO_PAD.encode("v1|S1|U2|phone-1|42|10000");
        assert_eq!(
            AdmissionClaims::verify(&[9u8; 32], &format!("{other}.{tag}")),
            Err(TokenRefusal::Forged)
        );
        for junk in ["", ".", "a.b", "%%%.%%%", &"x".repeat(600)] {
            assert!(AdmissionClaims::verify(&[9u8; 32], junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn ids_with_the_separator_are_not_signed() {
        let mut c = claims();
        c.device_id = "a|b".into();
        assert_eq!(c.sign(&[1; 32]), None);
    }
}
