//! Roles of hub API keys and what each may do.

use serde::{Deserialize, Serialize};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything in the tenant, including its owner and admin keys.
    Owner,
    /// Everything a tenant can do with its own data, and its keys, except
    /// owner keys.
    Admin,
    /// Calls models.
    Member,
    /// Reads balances and usage.
    Billing,
    /// Reads everything, changes nothing.
    Auditor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    CallModels,
    ReadBilling,
    /// Export the event log with its hashes (`/v1/audit/events`).
    ReadAudit,
    /// Issue, change and revoke the tenant's keys (`/v1/keys`), never beyond
    /// the caller's own power (`Tenant::may_manage_key`).
    ManageKeys,
}

impl Role {
    pub fn allows(self, permission: Permission) -> bool {
        match permission {
            Permission::CallModels => matches!(self, Role::Owner | Role::Admin | Role::Member),
            Permission::ReadBilling => matches!(
                self,
                Role::Owner | Role::Admin | Role::Billing | Role::Auditor
            ),
            Permission::ReadAudit => matches!(self, Role::Owner | Role::Admin | Role::Auditor),
            Permission::ManageKeys => matches!(self, Role::Owner | Role::Admin),
        }
    }

    /// Whether a key of this role may issue, change or revoke a key of `other`:
    /// owners any, admins any but an owner's.
    pub fn may_manage(self, other: Role) -> bool {
        match self {
            Role::Owner => true,
            Role::Admin => other != Role::Owner,
            Role::Member | Role::Billing | Role::Auditor => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Billing => "billing",
            Role::Auditor => "auditor",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "owner" => Ok(Role::Owner),
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            "billing" => Ok(Role::Billing),
            "auditor" => Ok(Role::Auditor),
            other => Err(format!(
                "unknown role {other:?}: expected owner, admin, member, billing or auditor"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_admins_and_members_call_models() {
        assert!(Role::Member.allows(Permission::CallModels));
        assert!(Role::Admin.allows(Permission::CallModels));
        assert!(!Role::Billing.allows(Permission::CallModels));
        assert!(!Role::Auditor.allows(Permission::CallModels));
        assert!(!Role::Member.allows(Permission::ReadBilling));
        assert!(Role::Auditor.allows(Permission::ReadBilling));
    }

    #[test]
    fn owners_manage_every_key_and_admins_all_but_owners() {
        for role in [
            Role::Owner,
            Role::Admin,
            Role::Member,
            Role::Billing,
            Role::Auditor,
        ] {
            assert!(Role::Owner.may_manage(role));
            assert_eq!(Role::Admin.may_manage(role), role != Role::Owner);
            assert!(!Role::Member.may_manage(role));
            assert!(!Role::Auditor.may_manage(role));
        }
        assert!(Role::Owner.allows(Permission::ManageKeys));
        assert!(Role::Admin.allows(Permission::ManageKeys));
        assert!(!Role::Billing.allows(Permission::ManageKeys));
        assert!(Role::Owner.allows(Permission::ReadAudit));
        assert_eq!("owner".parse::<Role>(), Ok(Role::Owner));
    }
}
