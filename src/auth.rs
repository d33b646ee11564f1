//! Hub API keys and the operator token.
//!
//! A hub key reads `aih_<tenant id>_<key id>_<secret>`: the ids route the request
//! to its tenant's actor without any lookup table, and the actor, which holds the
//! only copy of the key's SHA-256, decides whether it is valid. The secret is 256
//! random bits and is shown once, when the key is issued.

use actix_web::HttpRequest;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use domain::tenant::KeyHash;
use domain::{KeyId, TenantId};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

const KEY_PREFIX: &str = "aih";
/// Longest bearer token looked at; real keys are about 120 bytes.
pub(crate) const BEARER_MAX_BYTES: usize = 512;

/// Why a request was not authenticated: each 401 says which, so a newcomer can
/// fix it. None of them shows any part of the presented token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthFailure {
    #[error("no Authorization header: send `Authorization: Bearer <hub API key>`")]
    MissingHeader,
    #[error("the Authorization header is not a Bearer token: send `Authorization: Bearer <hub API key>`")]
    NotBearer,
    #[error("the bearer token is not a hub API key (they read aih_<tenant>_<key id>_<secret>, as `aigne-hub key issue` prints them)")]
    MalformedKey,
    #[error("unknown API key: no such key, or its secret does not match")]
    UnknownKey,
    #[error("this API key was revoked; ask your administrator for a new one")]
    RevokedKey,
    #[error("the operator token only opens /admin; tenant routes take a tenant's API key (`aigne-hub key issue`)")]
    OperatorTokenOnTenantRoute,
    #[error("a tenant API key does not open /admin; use the operator token (AIGNE_HUB_OPERATOR_TOKEN or <data dir>/operator_token)")]
    TenantKeyOnAdmin,
    #[error("invalid operator token")]
    WrongOperatorToken,
}

pub(crate) fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A freshly issued key: the full text is returned to the caller once.
pub(crate) struct NewKey {
    pub key_id: KeyId,
    pub full_key: String,
    pub key_hash: KeyHash,
}

pub(crate) fn new_key(tenant_id: TenantId) -> NewKey {
    let key_id = KeyId::new_random();
    let secret = random_secret();
    NewKey {
        key_id,
        full_key: format!(
            "{KEY_PREFIX}_{}_{}_{secret}",
            tenant_id.0.simple(),
            key_id.0.simple()
        ),
        key_hash: KeyHash::of_secret(&secret),
    }
}

/// A presented key, parsed but not yet checked against its tenant.
#[derive(Clone, Debug)]
pub(crate) struct PresentedKey {
    pub tenant_id: TenantId,
    pub key_id: KeyId,
    pub key_hash: KeyHash,
}

pub(crate) fn parse_key(text: &str) -> Result<PresentedKey, AuthFailure> {
    let malformed = || AuthFailure::MalformedKey;
    let mut parts = text.splitn(4, '_');
    let (Some(KEY_PREFIX), Some(tenant), Some(key), Some(secret)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let tenant_id = Uuid::try_parse(tenant).map_err(|_| malformed())?;
    let key_id = Uuid::try_parse(key).map_err(|_| malformed())?;
    if secret.is_empty() {
        return Err(malformed());
    }
    Ok(PresentedKey {
        tenant_id: TenantId(tenant_id),
        key_id: KeyId(key_id),
        key_hash: KeyHash::of_secret(secret),
    })
}

/// The bearer token of a request, or why there is none.
pub(crate) fn bearer_token(req: &HttpRequest) -> Result<&str, AuthFailure> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or(AuthFailure::MissingHeader)?;
    let value = value.to_str().map_err(|_| AuthFailure::NotBearer)?;
    if value.len() > BEARER_MAX_BYTES {
        return Err(AuthFailure::MalformedKey);
    }
    let (scheme, token) = value.split_once(' ').ok_or(AuthFailure::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::NotBearer);
    }
    Ok(token.trim())
}

/// The bearer token of a request, if any.
pub(crate) fn bearer(req: &HttpRequest) -> Option<&str> {
    bearer_token(req).ok()
}

/// The hub key of a tenant route's request.
pub(crate) fn presented_key(req: &HttpRequest) -> Result<PresentedKey, AuthFailure> {
    let token = bearer_token(req)?;
    tenant_key(req, token)
}

/// The operator token as app data of the HTTP server, so that a tenant route can
/// tell a caller who presented it there what went wrong.
pub(crate) struct OperatorToken(pub String);

/// Parses `token` as a hub key; the operator token gets its own refusal, since
/// trying it on a tenant route is a common first mistake.
pub(crate) fn tenant_key(req: &HttpRequest, token: &str) -> Result<PresentedKey, AuthFailure> {
    parse_key(token).map_err(|e| {
        let operator = req
            .app_data::<actix_web::web::Data<OperatorToken>>()
            .is_some_and(|operator| same_secret(token, &operator.0));
        if operator {
            AuthFailure::OperatorTokenOnTenantRoute
        } else {
            e
        }
    })
}

/// Compares in constant time (on digests, so lengths leak nothing).
fn same_secret(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    diff == 0
}

/// Checks the operator token of an `/admin` request.
pub(crate) fn check_operator(req: &HttpRequest, expected_token: &str) -> Result<(), AuthFailure> {
    let presented = bearer_token(req)?;
    if same_secret(presented, expected_token) {
        return Ok(());
    }
    let failure = match parse_key(presented) {
        Ok(_) => AuthFailure::TenantKeyOnAdmin,
        Err(_) => AuthFailure::WrongOperatorToken,
    };
    Err(failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_key_parses_back_to_its_ids_and_hash() {
        let tenant = TenantId::new_random();
        let key = new_key(tenant);
        let parsed = parse_key(&key.full_key).unwrap();
        assert_eq!(parsed.tenant_id, tenant);
        assert_eq!(parsed.key_id, key.key_id);
        assert_eq!(parsed.key_hash, key.key_hash);
    }

    #[test]
    fn malformed_keys_are_unauthenticated() {
        for bad in [
            "",
            "sk-123",
            "aih_x_y_z",
            "aih__",
            &format!("aih_{}_{}_", Uuid::nil().simple(), Uuid::nil().simple()),
        ] {
            assert!(
                matches!(parse_key(bad), Err(AuthFailure::MalformedKey)),
                "{bad}"
            );
        }
    }
}
