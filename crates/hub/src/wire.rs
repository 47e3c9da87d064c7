//! Wire-format helpers shared by every JSON type: one timestamp format, and optional fields
//! that tell `null` from absent.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// RFC 3339 in UTC with millisecond precision and a `Z`, the one timestamp format on the wire.
pub fn rfc3339_millis<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// Like [`rfc3339_millis`] for optional timestamps.
pub fn opt_rfc3339_millis<S: Serializer>(
    t: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339_millis(t, s),
        None => s.serialize_none(),
    }
}

/// Deserialize a field that may be absent (`None`), `null` (`Some(None)`) or a value, for
/// partial updates where `null` clears and absence keeps.
pub fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}
