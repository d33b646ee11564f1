//! Who made a change: recorded beside every event (in its metadata, which the
//! hash chain covers), so an auditor can tell an operator's grant from a payment
//! webhook's and a key's spending from the hub's own sweeps.

use crate::KeyId;
use serde::{Deserialize, Serialize};

/// The longest OS user name recorded for a CLI change, in characters; longer
/// names are cut (the name identifies, it does not authenticate).
pub const OS_USER_MAX_CHARS: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChangedBy {
    /// The operator, through the admin HTTP API (the operator token).
    OperatorApi,
    /// The operator, through the `aigne-hub` CLI on a machine with access to the
    /// store; `os_user` is the login name the OS reported, when it reported one.
    OperatorCli {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        os_user: Option<String>,
    },
    /// A tenant's API key: its model calls (holds, settlements, releases).
    Key { key_id: KeyId },
    /// A payment provider, through a signed webhook.
    PaymentWebhook,
    /// The hub itself: hold sweeps, credit expiry, releasing holds whose commit
    /// outcome was unknown.
    Hub,
}

impl ChangedBy {
    /// The CLI's actor, with the OS user name cut to [`OS_USER_MAX_CHARS`].
    pub fn operator_cli(os_user: Option<String>) -> ChangedBy {
        let os_user = os_user
            .map(|name| name.chars().take(OS_USER_MAX_CHARS).collect::<String>())
            .filter(|name| !name.is_empty());
        ChangedBy::OperatorCli { os_user }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_actor_is_stored_as_a_tagged_object() {
        let key_id = KeyId::new_random();
        let stored = serde_json::to_value(ChangedBy::Key { key_id }).unwrap();
        assert_eq!(stored, json!({"kind": "key", "key_id": key_id.to_string()}));
        assert_eq!(
            serde_json::to_value(ChangedBy::operator_cli(None)).unwrap(),
            json!({"kind": "operator_cli"})
        );
        let back: ChangedBy = serde_json::from_value(stored).unwrap();
        assert_eq!(back, ChangedBy::Key { key_id });
    }

    #[test]
    fn a_cli_user_name_is_bounded_and_never_empty() {
        let long = "u".repeat(OS_USER_MAX_CHARS + 10);
        let ChangedBy::OperatorCli { os_user } = ChangedBy::operator_cli(Some(long)) else {
            panic!("not a CLI actor");
        };
        assert_eq!(os_user.unwrap().chars().count(), OS_USER_MAX_CHARS);
        assert_eq!(
            ChangedBy::operator_cli(Some(String::new())),
            ChangedBy::OperatorCli { os_user: None }
        );
    }
}
