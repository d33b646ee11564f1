//! Reading wire structs the way the hub has always read its wire formats: a
//! field of the wrong type reads as absent, an array item of the wrong shape as
//! an empty item. The codecs then say, in their own words, which field is
//! wrong, instead of passing on a deserializer's message; and an upstream's odd
//! field does not cost the client an answer.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// `value` as a `T`, or an empty `T` when it has another shape.
pub(crate) fn read_or_default<T: DeserializeOwned + Default>(value: Value) -> T {
    T::deserialize(value).unwrap_or_default()
}

/// `value` as a `T`, or `T`'s default when it is not one (a request body that
/// is not an object reads as one without fields).
pub(crate) fn read<T: DeserializeOwned + Default>(value: &Value) -> T {
    T::deserialize(value).unwrap_or_default()
}

/// For `#[serde(default, deserialize_with = "lenient")]`: a field of another
/// type (null included) reads as absent.
pub(crate) fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    Ok(T::deserialize(value).ok())
}

/// For `#[serde(default, deserialize_with = "present")]`: a field that is there
/// and not null, read as a `T` or, when it has another shape, an empty `T`.
pub(crate) fn present<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Null => None,
        value => Some(read_or_default(value)),
    })
}

/// For `#[serde(default, deserialize_with = "any_value")]`: the field as it
/// came, null included (a plain `Option<Value>` reads null as absent).
pub(crate) fn any_value<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// An array whose items of another shape read as empty items (a field that is
/// not an array fails, so that [`lenient`] reads it as absent).
#[derive(Debug, Default, Clone)]
pub(crate) struct Items<T>(pub(crate) Vec<T>);

impl<'de, T: DeserializeOwned + Default> Deserialize<'de> for Items<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let items = Vec::<Value>::deserialize(deserializer)?;
        Ok(Items(items.into_iter().map(read_or_default).collect()))
    }
}

impl<T> Items<T> {
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize, Default)]
    struct Sample {
        #[serde(default, deserialize_with = "lenient")]
        name: Option<String>,
        #[serde(default, deserialize_with = "present")]
        inner: Option<Inner>,
        #[serde(default, deserialize_with = "lenient")]
        items: Option<Items<Inner>>,
        #[serde(default, deserialize_with = "any_value")]
        raw: Option<Value>,
    }

    #[derive(Deserialize, Default)]
    struct Inner {
        #[serde(default, deserialize_with = "lenient")]
        n: Option<u64>,
    }

    #[test]
    fn fields_of_another_shape_read_as_absent_or_empty() {
        let s: Sample =
            read(&json!({"name": 5, "inner": "x", "items": [{"n": 1}, 2], "raw": null}));
        assert_eq!(s.name, None);
        assert_eq!(s.inner.map(|i| i.n), Some(None));
        let items = s.items.unwrap();
        assert_eq!(
            items.iter().map(|i| i.n).collect::<Vec<_>>(),
            [Some(1), None]
        );
        assert_eq!(s.raw, Some(Value::Null));
        let s: Sample = read(&json!({"inner": null, "items": "no"}));
        assert!(s.inner.is_none() && s.items.is_none() && s.raw.is_none());
        let s: Sample = read(&json!([1]));
        assert!(s.name.is_none());
    }
}
