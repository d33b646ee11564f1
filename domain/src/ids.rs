//! Identifier newtypes, so a tenant id can never be passed where a key id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A tenant: one customer of the hub, with its own keys, credit and event stream.
    TenantId
);
uuid_id!(
    /// A hub API key's public id (the secret part is never stored).
    KeyId
);
uuid_id!(
    /// A project of a tenant: keys grouped under shared scopes (a budget, rates).
    ProjectId
);
uuid_id!(
    /// One logical model request; the `x-request-id` of the response.
    RequestId
);
uuid_id!(
    /// One running hub process; holds remember which process placed them so that
    /// holds of a crashed process can be released.
    InstanceId
);

/// A model id as clients name it: `provider_name/upstream_model`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelId(String);

/// Why a model id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model id must look like `provider/model` (got {0:?})")]
pub struct InvalidModelId(pub String);

/// Longest model id accepted; upstream ids are far shorter, this only bounds input.
pub const MODEL_ID_MAX_BYTES: usize = 200;

impl ModelId {
    pub fn parse(raw: &str) -> Result<Self, InvalidModelId> {
        let bad = || InvalidModelId(raw.chars().take(MODEL_ID_MAX_BYTES).collect());
        if raw.len() > MODEL_ID_MAX_BYTES
            || raw.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad());
        }
        match raw.split_once('/') {
            Some((provider, model)) if !provider.is_empty() && !model.is_empty() => {
                Ok(Self(raw.to_string()))
            }
            _ => Err(bad()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The provider's name (before the first `/`).
    pub fn provider(&self) -> &str {
        self.0.split_once('/').map(|(p, _)| p).unwrap_or(&self.0)
    }

    /// The model name the upstream knows (after the first `/`).
    pub fn upstream_model(&self) -> &str {
        self.0.split_once('/').map(|(_, m)| m).unwrap_or("")
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_id_needs_provider_and_model() {
        let id = ModelId::parse("openai/gpt-4o-mini").unwrap();
        assert_eq!(id.provider(), "openai");
        assert_eq!(id.upstream_model(), "gpt-4o-mini");
        let nested = ModelId::parse("openrouter/meta/llama").unwrap();
        assert_eq!(nested.upstream_model(), "meta/llama");
        for bad in ["gpt-4o", "/x", "x/", "", "a b/c"] {
            assert!(ModelId::parse(bad).is_err(), "{bad}");
        }
    }
}
