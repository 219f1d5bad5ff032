//! Admission tokens: what the waiting room hands an admitted buyer, and what a reservation on a
//! `queue_required` sale must carry.
//!
//! A token is a compact JWT (RFC 7519) signed with Ed25519 (`alg: EdDSA`, RFC 8037), so that a
//! shop's own backend or CDN worker can check an admission with any JWT library and the public
//! key Stampede publishes at `GET /.well-known/jwks.json`, without calling Stampede. The
//! signature is checked first, so a forged token costs one signature check and no storage read.
//! The claims bind the token to one sale (`sale`), one user (`sub`), one device (`device`) and
//! one place in line (`ticket`), and carry an expiry (`exp`); single use is enforced by the
//! waiting room, which knows whether the entry behind the ticket has already spent its
//! admission (an outside verifier cannot know that: it checks who and until when, the
//! reservation spends it).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::Timestamp;

/// The longest token accepted: anything longer is refused before any work. A token with the
/// longest ids the room allows is about 650 characters.
pub const MAX_TOKEN_LEN: usize = 1024;

/// The `iss` claim of every admission token.
pub const ISSUER: &str = "stampede";

/// The `aud` claim of every admission token: a verifier that expects it cannot be handed some
/// other JWT this key might sign one day.
pub const AUDIENCE: &str = "stampede-admission";

/// The key admission tokens are signed with: an Ed25519 key made from a 32-byte seed (the one
/// every node of a deployment shares), named by its RFC 7638 thumbprint (`kid`).
#[derive(Clone)]
pub struct AdmissionKey {
    signing: SigningKey,
    verifying: VerifyingKey,
    kid: String,
    /// The header every token carries, encoded once.
    header_b64: String,
}

impl std::fmt::Debug for AdmissionKey {
    // Never print the private half.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// One public key as a JSON Web Key (RFC 8037: `kty: OKP`, `crv: Ed25519`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    /// The public key, base64url without padding.
    pub x: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// The claims as they travel (JWT names; times in seconds as RFC 7519 has them).
#[derive(Serialize, Deserialize)]
struct WireClaims {
    iss: String,
    aud: String,
    sub: String,
    sale: String,
    device: String,
    ticket: u64,
    iat: i64,
    exp: i64,
}

impl AdmissionKey {
    /// The key whose private half is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> AdmissionKey {
        let signing = SigningKey::from_bytes(seed);
        let verifying = signing.verifying_key();
        let x = URL_SAFE_NO_PAD.encode(verifying.as_bytes());
        // RFC 7638: the SHA-256 of the required members, in lexicographic order, no spaces.
        let thumbprint = Sha256::digest(format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#));
        let kid = URL_SAFE_NO_PAD.encode(thumbprint);
        let header = format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":"JWT"}}"#);
        AdmissionKey {
            signing,
            verifying,
            kid,
            header_b64: URL_SAFE_NO_PAD.encode(header),
        }
    }

    /// The key's id, as in every token's header and in the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half, as published.
    pub fn jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: URL_SAFE_NO_PAD.encode(self.verifying.as_bytes()),
            kid: self.kid.clone(),
            alg: "EdDSA".into(),
            use_: "sig".into(),
        }
    }
}

/// What an admission token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionClaims {
    pub sale_id: String,
    pub user_id: String,
    pub device_id: String,
    /// The entry's place in line when it was admitted: ties the token to that admission, so a
    /// token from an earlier, lapsed admission is worthless after a re-join.
    pub ticket: u64,
    /// When it was issued (whole seconds on the wire).
    pub issued_at: Timestamp,
    /// When it lapses. On the wire `exp` is in whole seconds, rounded down, so a token never
    /// outlives the admission it carries.
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

/// Ids inside a token are bounded, so a token stays under [`MAX_TOKEN_LEN`].
fn clean(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128
}

/// Seconds since the epoch, rounded down.
fn secs(t: Timestamp) -> i64 {
    t.millis().div_euclid(1000)
}

impl AdmissionClaims {
    /// Signs the claims with `key` as a compact JWT; `None` if an id is empty or too long.
    pub fn sign(&self, key: &AdmissionKey) -> Option<String> {
        if !(clean(&self.sale_id) && clean(&self.user_id) && clean(&self.device_id)) {
            return None;
        }
        let wire = WireClaims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: self.user_id.clone(),
            sale: self.sale_id.clone(),
            device: self.device_id.clone(),
            ticket: self.ticket,
            iat: secs(self.issued_at),
            exp: secs(self.expires_at),
        };
        let payload = serde_json::to_vec(&wire).ok()?;
        let signing_input = format!("{}.{}", key.header_b64, URL_SAFE_NO_PAD.encode(payload));
        let signature = key.signing.sign(signing_input.as_bytes());
        Some(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }

    /// Checks the header and the signature, then parses the claims and checks issuer and
    /// audience. Expiry and binding are the caller's ([`AdmissionClaims::admits`]) because they
    /// need "now" and the request.
    pub fn verify(key: &AdmissionKey, token: &str) -> Result<AdmissionClaims, TokenRefusal> {
        if token.is_empty() {
            return Err(TokenRefusal::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenRefusal::Malformed);
        }
        let (signing_input, signature_b64) =
            token.rsplit_once('.').ok_or(TokenRefusal::Malformed)?;
        let (header_b64, payload_b64) = signing_input
            .split_once('.')
            .ok_or(TokenRefusal::Malformed)?;
        let header: Header = URL_SAFE_NO_PAD
            .decode(header_b64)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(TokenRefusal::Malformed)?;
        // Only our algorithm and our key: `none`, HMAC with the public key as secret and the
        // like are refused before anything is trusted.
        if header.alg != "EdDSA" || header.kid != key.kid {
            return Err(TokenRefusal::Forged);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .ok()
            .and_then(|s| Signature::from_slice(&s).ok())
            .ok_or(TokenRefusal::Malformed)?;
        key.verifying
            .verify_strict(signing_input.as_bytes(), &signature)
            .map_err(|_| TokenRefusal::Forged)?;
        let wire: WireClaims = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(TokenRefusal::Malformed)?;
        if wire.iss != ISSUER || wire.aud != AUDIENCE {
            return Err(TokenRefusal::Forged);
        }
        Ok(AdmissionClaims {
            sale_id: wire.sale,
            user_id: wire.sub,
            device_id: wire.device,
            ticket: wire.ticket,
            issued_at: Timestamp(wire.iat.saturating_mul(1000)),
            expires_at: Timestamp(wire.exp.saturating_mul(1000)),
        })
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
            issued_at: Timestamp(2_000),
            expires_at: Timestamp(10_000),
        }
    }

    fn key() -> AdmissionKey {
        AdmissionKey::from_seed(&[9u8; 32])
    }

    fn part(token: &str, n: usize) -> serde_json::Value {
        let seg = token.split('.').nth(n).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).unwrap()).unwrap()
    }

    #[test]
    fn a_signed_token_verifies_and_admits_its_owner_only() {
        let token = claims().sign(&key()).unwrap();
        let back = AdmissionClaims::verify(&key(), &token).unwrap();
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
    fn the_token_is_a_jwt_with_the_published_claims() {
        let token = claims().sign(&key()).unwrap();
        assert_eq!(token.split('.').count(), 3);
        let header = part(&token, 0);
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["kid"], key().kid());
        let body = part(&token, 1);
        assert_eq!(body["iss"], ISSUER);
        assert_eq!(body["aud"], AUDIENCE);
        assert_eq!(body["sub"], "U1");
        assert_eq!(body["sale"], "S1");
        assert_eq!(body["device"], "phone-1");
        assert_eq!(body["ticket"], 42);
        assert_eq!(
            (body["iat"].as_i64(), body["exp"].as_i64()),
            (Some(2), Some(10))
        );
        // An expiry inside a second is rounded down: the token never outlives the admission.
        let mut c = claims();
        c.expires_at = Timestamp(10_999);
        let back = AdmissionClaims::verify(&key(), &c.sign(&key()).unwrap()).unwrap();
        assert_eq!(back.expires_at, Timestamp(10_000));
    }

    #[test]
    fn the_jwk_is_the_rfc_8037_public_key() {
        let jwk = key().jwk();
        assert_eq!((jwk.kty.as_str(), jwk.crv.as_str()), ("OKP", "Ed25519"));
        assert_eq!(URL_SAFE_NO_PAD.decode(&jwk.x).unwrap().len(), 32);
        assert_eq!(jwk.kid, key().kid());
        assert_ne!(
            AdmissionKey::from_seed(&[8u8; 32]).kid(),
            key().kid(),
            "each key its own id"
        );
        // RFC 8037, appendix A.1/A.3: the published key and thumbprint of a known seed.
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        let known = AdmissionKey::from_seed(&seed);
        assert_eq!(known.jwk().x, "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        assert_eq!(known.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn another_key_a_changed_byte_or_another_algorithm_is_refused() {
        let token = claims().sign(&key()).unwrap();
        let other = AdmissionKey::from_seed(&[8u8; 32]);
        assert_eq!(
            AdmissionClaims::verify(&other, &token),
            Err(TokenRefusal::Forged),
            "another key's id"
        );
        // Another user's claims under the old signature.
        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let mut body = part(&token, 1);
        body["sub"] = "U2".into();
        let swapped = URL_SAFE_NO_PAD.encode(body.to_string());
        assert_eq!(
            AdmissionClaims::verify(&key(), &format!("{head}.{swapped}.{sig}")),
            Err(TokenRefusal::Forged)
        );
        // `alg: none` with no signature, and HS256 keyed with the public key.
        for alg in ["none", "HS256"] {
            let h = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, key().kid()));
            let body = rest.split_once('.').unwrap().0;
            assert_eq!(
                AdmissionClaims::verify(&key(), &format!("{h}.{body}.")),
                Err(TokenRefusal::Forged),
                "{alg}"
            );
        }
        // A right signature over claims for another audience.
        let wire = WireClaims {
            iss: ISSUER.into(),
            aud: "somebody-else".into(),
            sub: "U1".into(),
            sale: "S1".into(),
            device: "phone-1".into(),
            ticket: 42,
            iat: 2,
            exp: 10,
        };
        let input = format!(
            "{}.{}",
            key().header_b64,
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wire).unwrap())
        );
        let sig = URL_SAFE_NO_PAD.encode(key().signing.sign(input.as_bytes()).to_bytes());
        assert_eq!(
            AdmissionClaims::verify(&key(), &format!("{input}.{sig}")),
            Err(TokenRefusal::Forged)
        );
        for junk in ["", ".", "a.b", "a.b.c", "%%%.%%%.%%%", &"x".repeat(1100)] {
            assert!(AdmissionClaims::verify(&key(), junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn empty_or_overlong_ids_are_not_signed() {
        let mut c = claims();
        c.device_id = String::new();
        assert_eq!(c.sign(&key()), None);
        c.device_id = "d".repeat(129);
        assert_eq!(c.sign(&key()), None);
        // The longest ids the room hands out still fit under the length cap.
        c.device_id = "d".repeat(128);
        c.user_id = "u".repeat(128);
        c.sale_id = "s".repeat(128);
        c.ticket = u64::MAX;
        c.expires_at = Timestamp(i64::MAX);
        let token = c.sign(&key()).unwrap();
        assert!(token.len() <= MAX_TOKEN_LEN, "{}", token.len());
        assert!(AdmissionClaims::verify(&key(), &token).is_ok());
    }
}
