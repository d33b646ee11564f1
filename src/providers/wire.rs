//! Field readers shared by the providers' wire structs.
//!
//! The translations used to read their JSON with `.get(..).and_then(Value::as_*)`,
//! where a field of the wrong type counted as absent. Requests come from clients
//! and answers from upstreams the hub does not control, so the typed structs keep
//! that tolerance: these readers turn a field of the wrong shape into "absent"
//! instead of failing the whole document.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// An optional field: `None` when absent, null or of the wrong type.
/// Use with `#[serde(default, deserialize_with = "lenient")]`.
pub(crate) fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let value = Value::deserialize(deserializer)?;
    Ok(T::deserialize(value).ok())
}

/// An optional list whose items are read one by one: an item of the wrong shape
/// reads as an empty item (every field absent) rather than dropping the list, so
/// the translation still reports what that item lacks. `None` when the field is
/// absent or not an array.
pub(crate) fn lenient_items<'de, D, T>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    Ok(match Value::deserialize(deserializer)? {
        Value::Array(items) => Some(
            items
                .into_iter()
                .map(|item| T::deserialize(item).unwrap_or_default())
                .collect(),
        ),
        _ => None,
    })
}

/// A field passed on as it came, even when it is `null` (a plain `Option<Value>`
/// would read `null` as absent and drop it). Use with `#[serde(default,
/// deserialize_with = "present")]`.
pub(crate) fn present<'de, D>(deserializer: D) -> Result<Option<Value>, D::Error>
where
    D: Deserializer<'de>,
{
    Value::deserialize(deserializer).map(Some)
}

/// A document read leniently, or an empty one when it has the wrong shape.
pub(crate) fn read_or_default<T: DeserializeOwned + Default>(value: &Value) -> T {
    T::deserialize(value).unwrap_or_default()
}
