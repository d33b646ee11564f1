//! Reading wire structs the way the hub has always read its wire formats: a
//! field of the wrong type reads as absent, an array item of the wrong shape as
//! an empty item. The codecs then say, in their own words, which field is
//! wrong, instead of passing on a deserializer's message; and an upstream's odd
//! field does not cost the client an answer.

use serde::de::{self, DeserializeOwned, Visitor};
use serde::{forward_to_deserialize_any, Deserialize, Deserializer};
use serde_json::Value;

/// `value` as a `T`, if it is one.
fn try_read<T: DeserializeOwned>(value: Value) -> Option<T> {
    T::deserialize(ObjectsOnly(value)).ok()
}

/// `value` as a `T`, or an empty `T` when it has another shape.
pub(crate) fn read_or_default<T: DeserializeOwned + Default>(value: Value) -> T {
    try_read(value).unwrap_or_default()
}

/// `value` as a `T`, or `T`'s default when it is not one (a request body that
/// is not an object reads as one without fields).
pub(crate) fn read<T: DeserializeOwned + Default>(value: &Value) -> T {
    if value.is_object() {
        // Read in place: only the fields `T` declares are copied out, not the
        // whole body (a chat request can carry megabytes of images). An object
        // reads the same through `&Value` as through `ObjectsOnly`.
        T::deserialize(value).unwrap_or_default()
    } else {
        read_or_default(value.clone())
    }
}

/// JSON text as a `T`, or `T`'s default when it is not JSON or not one.
pub(crate) fn parse<T: DeserializeOwned + Default>(json: &[u8]) -> T {
    serde_json::from_slice(json).map_or_else(|_| T::default(), read_or_default)
}

/// For `#[serde(default, deserialize_with = "lenient")]`: a field of another
/// type (null included) reads as absent.
pub(crate) fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    Ok(try_read(Value::deserialize(deserializer)?))
}

/// A field that is there: of its shape, or not.
#[derive(Debug)]
pub(crate) enum Shaped<T> {
    Is(T),
    Not,
}

impl<T> Shaped<T> {
    pub(crate) fn ok(self) -> Option<T> {
        match self {
            Shaped::Is(value) => Some(value),
            Shaped::Not => None,
        }
    }
}

/// As `Option<Shaped<T>>` (with `#[serde(default)]`), a field absent or null
/// is `None`.
impl<'de, T: DeserializeOwned> Deserialize<'de> for Shaped<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Ok(try_read(value).map_or(Shaped::Not, Shaped::Is))
    }
}

/// For `#[serde(default, deserialize_with = "shaped")]`: a field that is there,
/// null included (which then is `Shaped::Not` unless `T` takes null).
pub(crate) fn shaped<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    deserializer: D,
) -> Result<Option<Shaped<T>>, D::Error> {
    Shaped::deserialize(deserializer).map(Some)
}

/// A JSON value that fills a struct only if it is an object: serde would also
/// fill one from an array, field by field, where the hub has always read an
/// array as a value without those fields. (Nested values are read through the
/// functions above, so each level is checked.)
struct ObjectsOnly(Value);

impl<'de> Deserializer<'de> for ObjectsOnly {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_option(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        if !self.0.is_object() {
            return Err(de::Error::custom(format!("{name} must be an object")));
        }
        self.0.deserialize_struct(name, fields, visitor)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
        ignored_any
    }
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
        let s: Sample = parse(br#"["x"]"#);
        assert!(s.name.is_none());
        let s: Sample = parse(br#"{"name": "x"}"#);
        assert_eq!(s.name.as_deref(), Some("x"));
        // An array does not fill a struct field by field.
        let s: Sample = read(&json!({"inner": [5], "items": [[6]]}));
        assert_eq!(s.inner.map(|i| i.n), Some(None));
        assert_eq!(
            s.items.unwrap().iter().map(|i| i.n).collect::<Vec<_>>(),
            [None]
        );
    }
}
