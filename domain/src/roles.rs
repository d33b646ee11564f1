//! Roles of hub API keys and what each may do.

use serde::{Deserialize, Serialize};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything a tenant can do with its own data.
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
}

impl Role {
    pub fn allows(self, permission: Permission) -> bool {
        match permission {
            Permission::CallModels => matches!(self, Role::Admin | Role::Member),
            Permission::ReadBilling => matches!(self, Role::Admin | Role::Billing | Role::Auditor),
            Permission::ReadAudit => matches!(self, Role::Admin | Role::Auditor),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
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
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            "billing" => Ok(Role::Billing),
            "auditor" => Ok(Role::Auditor),
            other => Err(format!(
                "unknown role {other:?}: expected admin, member, billing or auditor"
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
}
