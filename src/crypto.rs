//! Secrets at rest: provider keys sealed with AES-SIV.
//!
//! Each ciphertext is bound to the row it belongs to through associated data (the
//! provider id, and the tenant id for a tenant's own keys), so a ciphertext copied
//! into another row fails to open instead of leaking one tenant's key to another.
//! AES-SIV stays safe even if a random nonce ever repeats.

use aes_siv::aead::{Aead, KeyInit, Payload};
use aes_siv::{Aes256SivAead, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rand::RngCore;
use std::fmt;

/// AES-256-SIV takes a 512-bit key.
pub const MASTER_KEY_BYTES: usize = 64;
const NONCE_BYTES: usize = 16;
/// Longest secret accepted (provider keys are far shorter; bounds input).
pub const SECRET_MAX_BYTES: usize = 8 * 1024;

/// A secret string that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }
    /// The plaintext, for the one place that needs it (an upstream request header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Serialized only to be sealed (see `providers::Credential`); `Debug` never shows it.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("the master key must be {MASTER_KEY_BYTES} bytes, hex or base64 encoded")]
    BadMasterKey,
    #[error("a sealed secret could not be opened (wrong master key, or moved from another row)")]
    OpenFailed,
}

pub struct SecretBox {
    cipher: Aes256SivAead,
}

impl SecretBox {
    pub fn new(master_key: &[u8]) -> Result<Self, CryptoError> {
        if master_key.len() != MASTER_KEY_BYTES {
            return Err(CryptoError::BadMasterKey);
        }
        let cipher =
            Aes256SivAead::new_from_slice(master_key).map_err(|_| CryptoError::BadMasterKey)?;
        Ok(Self { cipher })
    }

    /// Parses a master key written as hex or base64.
    pub fn parse_master_key(text: &str) -> Result<Vec<u8>, CryptoError> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .or_else(|_| BASE64.decode(text))
            .map_err(|_| CryptoError::BadMasterKey)?;
        if bytes.len() != MASTER_KEY_BYTES {
            return Err(CryptoError::BadMasterKey);
        }
        Ok(bytes)
    }

    pub fn generate_master_key() -> Vec<u8> {
        let mut key = vec![0u8; MASTER_KEY_BYTES];
        rand::thread_rng().fill_bytes(&mut key);
        key
    }

    /// Seals `plaintext` bound to `associated_data`; returns base64(nonce || ciphertext).
    pub fn seal(&self, plaintext: &Secret, associated_data: &str) -> String {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.expose().as_bytes(),
                    aad: associated_data.as_bytes(),
                },
            )
            .expect("AES-SIV encryption cannot fail for in-memory input");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        BASE64.encode(out)
    }

    pub fn open(&self, sealed: &str, associated_data: &str) -> Result<Secret, CryptoError> {
        let bytes = BASE64.decode(sealed).map_err(|_| CryptoError::OpenFailed)?;
        if bytes.len() < NONCE_BYTES {
            return Err(CryptoError::OpenFailed);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: associated_data.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::OpenFailed)?;
        String::from_utf8(plain)
            .map(Secret)
            .map_err(|_| CryptoError::OpenFailed)
    }
}

/// The associated data that binds a provider credential to its row: its
/// provider, its own id, and the tenant for a tenant's own credentials.
pub fn credential_binding(
    provider_id: &str,
    credential_id: &str,
    tenant_id: Option<&str>,
) -> String {
    format!(
        "aigne-hub/provider-secret/v1;provider={provider_id};credential={credential_id};tenant={}",
        tenant_id.unwrap_or("-")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secret_opens_only_with_the_same_binding() {
        let b = SecretBox::new(&SecretBox::generate_master_key()).unwrap();
        let secret = Secret::new("sk-live-123".into());
        let sealed = b.seal(&secret, &credential_binding("p1", "c1", None));
        assert!(!sealed.contains("sk-live-123"));
        assert_eq!(
            b.open(&sealed, &credential_binding("p1", "c1", None))
                .unwrap(),
            secret
        );
        assert_eq!(
            b.open(&sealed, &credential_binding("p2", "c1", None)),
            Err(CryptoError::OpenFailed)
        );
        assert_eq!(
            b.open(&sealed, &credential_binding("p1", "c1", Some("t1"))),
            Err(CryptoError::OpenFailed)
        );
        // Random nonces: sealing twice never gives the same text.
        assert_ne!(
            sealed,
            b.seal(&secret, &credential_binding("p1", "c1", None))
        );
    }

    #[test]
    fn another_master_key_cannot_open() {
        let a = SecretBox::new(&SecretBox::generate_master_key()).unwrap();
        let b = SecretBox::new(&SecretBox::generate_master_key()).unwrap();
        let sealed = a.seal(&Secret::new("x".into()), "ad");
        assert_eq!(b.open(&sealed, "ad"), Err(CryptoError::OpenFailed));
        assert_eq!(format!("{:?}", Secret::new("x".into())), "Secret(***)");
    }
}
