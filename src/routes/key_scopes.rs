//! A key's scopes on the wire: the fields a creation or `PATCH` body may carry,
//! and a key shown with its limits and what it has used of them now.
//!
//! A field that is absent stays as it is; `null` removes its limit; a value
//! sets it (docs/api.md, "Key scopes").

use crate::actors::{KeyState, ProjectState};
use crate::error::HubError;
use crate::hub::KeySpec;
use crate::routes::admin::parse_time;
use chrono::{DateTime, Utc};
use domain::tenant::{Budget, BudgetPeriod, ScopeUsage, Scopes, ScopesPatch};
use domain::{Credits, ProjectId, Role};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The scope fields of a body: `None` when absent, `Some(None)` for `null`,
/// `Some(Some(v))` for a value.
#[derive(Default)]
pub(crate) struct ScopeFields {
    models: Option<Option<Vec<String>>>,
    budget: Option<Option<BudgetBody>>,
    rpm: Option<Option<u32>>,
    tpm: Option<Option<u64>>,
    max_concurrent: Option<Option<u32>>,
    expires_at: Option<Option<String>>,
}

/// The names a body may use for scopes.
const SCOPE_FIELDS: &str = "models, budget, rpm, tpm, max_concurrent, expires_at";

/// `value` read as a `T`, or `null`; an error names `field`.
fn field<T: serde::de::DeserializeOwned>(
    field: &str,
    value: Value,
) -> Result<Option<Option<T>>, HubError> {
    serde_json::from_value::<Option<T>>(value)
        .map(Some)
        .map_err(|e| HubError::BadRequest(format!("{field}: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetBody {
    amount: String,
    period: String,
    #[serde(default)]
    timezone: Option<String>,
}

impl ScopeFields {
    /// The scope fields of a JSON object (every other field already taken out).
    pub(crate) fn from_object(object: Map<String, Value>) -> Result<ScopeFields, HubError> {
        let mut fields = ScopeFields::default();
        for (name, value) in object {
            match name.as_str() {
                "models" => fields.models = field("models", value)?,
                "budget" => fields.budget = field("budget", value)?,
                "rpm" => fields.rpm = field("rpm", value)?,
                "tpm" => fields.tpm = field("tpm", value)?,
                "max_concurrent" => fields.max_concurrent = field("max_concurrent", value)?,
                "expires_at" => fields.expires_at = field("expires_at", value)?,
                other => {
                    return Err(HubError::BadRequest(format!(
                        "unknown field {other:?}: a key takes name, role and its scopes ({SCOPE_FIELDS})"
                    )))
                }
            }
        }
        Ok(fields)
    }

    /// A `PATCH` body: a JSON object naming at least one scope field.
    pub(crate) fn patch_from_body(body: Value) -> Result<ScopesPatch, HubError> {
        let Value::Object(object) = body else {
            return Err(HubError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        };
        let patch = ScopeFields::from_object(object)?.into_patch()?;
        if patch.is_empty() {
            return Err(HubError::BadRequest(format!(
                "nothing to change: name at least one of {SCOPE_FIELDS}"
            )));
        }
        Ok(patch)
    }

    pub(crate) fn into_patch(self) -> Result<ScopesPatch, HubError> {
        let budget = match self.budget {
            None => None,
            Some(None) => Some(None),
            Some(Some(body)) => Some(Some(budget(body)?)),
        };
        let expires_at = match self.expires_at {
            None => None,
            Some(None) => Some(None),
            Some(Some(raw)) => Some(Some(parse_time("expires_at", &raw)?)),
        };
        Ok(ScopesPatch {
            models: self.models,
            budget,
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrent: self.max_concurrent,
            expires_at,
        })
    }
}

fn budget(body: BudgetBody) -> Result<Budget, HubError> {
    let amount = Credits::parse_positive(&body.amount)
        .map_err(|e| HubError::BadRequest(format!("budget.amount: {e}")))?;
    let period = match body.period.as_str() {
        "day" => BudgetPeriod::Day,
        "week" => BudgetPeriod::Week,
        "month" => BudgetPeriod::Month,
        "total" => BudgetPeriod::Total,
        other => {
            return Err(HubError::BadRequest(format!(
                "budget.period: {other:?} is not one of \"day\", \"week\", \"month\", \"total\""
            )))
        }
    };
    // The zone name is checked with the rest of the scopes, in the tenant's decision.
    Ok(Budget {
        amount,
        period,
        timezone: body.timezone,
    })
}

/// `{"name", "role"}` and, optionally, the key's scopes (`key_scopes.rs`).
pub(crate) fn issue_key_body(body: Value) -> Result<KeySpec, HubError> {
    let Value::Object(mut object) = body else {
        return Err(HubError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    };
    let mut text = |field: &str| match object.remove(field) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(HubError::BadRequest(format!(
            "{field}: a string is required"
        ))),
    };
    let name = text("name")?;
    let role: Role = text("role")?.parse().map_err(HubError::BadRequest)?;
    let project = match object.remove("project_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(raw)) => Some(project_id(&raw)?),
        Some(_) => {
            return Err(HubError::BadRequest(
                "project_id: a project id string is required".into(),
            ))
        }
    };
    let scopes = ScopeFields::from_object(object)?
        .into_patch()?
        .applied_to(&Scopes::default());
    Ok(KeySpec {
        name,
        role,
        scopes,
        project,
    })
}

/// A project id in a path or body: malformed is a project that does not exist.
pub(crate) fn project_id(raw: &str) -> Result<ProjectId, HubError> {
    raw.parse()
        .map_err(|_| HubError::NotFound(format!("project {raw:?} not found")))
}

/// Scopes with, for each limit, what the current period and minute used, as
/// of `at`: the fields a key or a project is shown with.
fn limits_json(
    scopes: &Scopes,
    usage: &ScopeUsage,
    held: Credits,
    in_flight: u32,
    at: DateTime<Utc>,
) -> Value {
    let (requests, tokens) = usage.in_minute(at);
    let budget = scopes.budget.as_ref().map(|b| {
        let spent = usage.spent_in_period(b, at);
        let remaining = (b.amount - spent - held).max(Credits::ZERO);
        json!({
            "amount": b.amount.to_decimal_string(),
            "period": b.period.as_str(),
            "timezone": b.timezone.as_deref().unwrap_or("UTC"),
            "period_start": b.period_start(at).map(|t| t.to_rfc3339()),
            "period_end": b.period_end(at).map(|t| t.to_rfc3339()),
            "spent": spent.to_decimal_string(),
            "held": held.to_decimal_string(),
            "remaining": remaining.to_decimal_string(),
        })
    });
    let limit = |value: Option<u64>, used: u64| value.map(|v| json!({"limit": v, "used": used}));
    json!({
        "models": scopes.models,
        "expires_at": scopes.expires_at.map(|t| t.to_rfc3339()),
        "budget": budget,
        "rpm": limit(scopes.rpm.map(u64::from), u64::from(requests)),
        "tpm": limit(scopes.tpm, tokens),
        "max_concurrent": limit(scopes.max_concurrent.map(u64::from), u64::from(in_flight)),
        "current_minute": {
            "start": domain::tenant::scopes::minute_of(at).to_rfc3339(),
            "requests": requests,
            "tokens": tokens,
        },
        "in_flight": in_flight,
        "held": held.to_decimal_string(),
    })
}

/// A key with its scopes and what it has used of them, as of `at`. Never the
/// secret or its hash.
pub(crate) fn key_json(key: &KeyState, at: DateTime<Utc>) -> Value {
    let record = &key.record;
    let mut body = limits_json(&record.scopes, &record.usage, key.held, key.in_flight, at);
    body["key_id"] = json!(key.key_id.to_string());
    body["name"] = json!(record.name);
    body["role"] = json!(record.role.as_str());
    body["revoked"] = json!(record.revoked);
    body["expired"] = json!(record.scopes.is_expired_at(at));
    body["project_id"] = json!(record.project.map(|p| p.to_string()));
    body
}

/// A project with its scopes, what they have used, and its live keys.
pub(crate) fn project_json(project: &ProjectState, at: DateTime<Utc>) -> Value {
    let record = &project.record;
    let mut body = limits_json(
        &record.scopes,
        &record.usage,
        project.held,
        project.in_flight,
        at,
    );
    body["project_id"] = json!(project.project_id.to_string());
    body["name"] = json!(record.name);
    body["keys"] = json!(project.keys);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(body: Value) -> Result<ScopesPatch, HubError> {
        let Value::Object(object) = body else {
            panic!("not an object")
        };
        ScopeFields::from_object(object)?.into_patch()
    }

    #[test]
    fn absent_null_and_values_are_three_different_changes() {
        let patch = fields(json!({"rpm": 5, "tpm": null})).unwrap();
        assert_eq!(patch.rpm, Some(Some(5)));
        assert_eq!(patch.tpm, Some(None));
        assert_eq!(patch.models, None);
        assert!(fields(json!({})).unwrap().is_empty());
    }

    #[test]
    fn bad_fields_are_named() {
        for (body, words) in [
            (json!({"rpm": "x"}), "rpm"),
            (json!({"colour": 1}), "colour"),
            (
                json!({"budget": {"amount": "0", "period": "day"}}),
                "budget.amount",
            ),
            (
                json!({"budget": {"amount": "1", "period": "year"}}),
                "budget.period",
            ),
            (json!({"expires_at": "tomorrow"}), "expires_at"),
        ] {
            let error = fields(body.clone()).unwrap_err().to_string();
            assert!(error.contains(words), "{body}: {error}");
        }
    }
}
