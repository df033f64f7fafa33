//! Kubernetes resource quantities ("500m", "2", "1.5Gi"), kept as the user wrote them
//! and parsed on demand. Our own type because manifests may carry a bare number
//! (`cpu: 2`), which k8s-openapi's `Quantity` does not deserialize.

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Non-negative quantities in Kubernetes' notation: a decimal number with an optional
/// binary (Ki..Ei), decimal (n, u, m, k, M..E) or exponent suffix.
pub const QUANTITY_PATTERN: &str =
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$";

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Quantity(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Kubernetes quantity (examples: 500m, 2, 512Mi, 1.5Gi)")]
pub struct QuantityError(String);

impl Quantity {
    /// The quantity as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value in base units (cores for CPU, bytes for memory).
    pub fn value(&self) -> Result<f64, QuantityError> {
        parse_quantity(&self.0).ok_or_else(|| QuantityError(self.0.clone()))
    }

    /// A CPU quantity from cores, rounded to whole millicores.
    pub fn from_cores(cores: f64) -> Self {
        let milli = (cores * 1000.0).round().max(0.0) as u64;
        if milli.is_multiple_of(1000) {
            Quantity((milli / 1000).to_string())
        } else {
            Quantity(format!("{milli}m"))
        }
    }

    /// A memory quantity from bytes, rounded up to whole MiB.
    pub fn from_bytes(bytes: f64) -> Self {
        let mib = (bytes / (1024.0 * 1024.0)).ceil().max(0.0) as u64;
        Quantity(format!("{mib}Mi"))
    }

    pub fn to_k8s(&self) -> k8s_openapi::apimachinery::pkg::api::resource::Quantity {
        k8s_openapi::apimachinery::pkg::api::resource::Quantity(self.0.clone())
    }
}

fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number == "." {
        return None;
    }
    let base: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    Some(base * factor)
}

impl FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_quantity(s)
            .map(|_| Quantity(s.to_string()))
            .ok_or_else(|| QuantityError(s.to_string()))
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Quantity({})", self.0)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a quantity such as 500m, 2 or 512Mi")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                if v < 0 {
                    return Err(E::custom(format!("{v} is negative; quantities are >= 0")));
                }
                Ok(Quantity(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(E::custom(format!("{v} is not a quantity >= 0")));
                }
                Ok(Quantity(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "pattern": QUANTITY_PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        let v = |s: &str| s.parse::<Quantity>().map(|q| q.value());
        assert_eq!(v("500m"), Ok(Ok(0.5)));
        assert_eq!(v("2"), Ok(Ok(2.0)));
        assert_eq!(v("512Mi"), Ok(Ok(512.0 * 1024.0 * 1024.0)));
        assert_eq!(v("1.5Gi"), Ok(Ok(1.5 * 1024f64.powi(3))));
        assert_eq!(v("1e3"), Ok(Ok(1000.0)));
        assert_eq!(v("2G"), Ok(Ok(2e9)));
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "abc", "-1", "1.5Xi", "Mi", "1 Gi", "."] {
            assert!(
                bad.parse::<Quantity>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn accepts_bare_numbers_from_yaml() {
        let q: Quantity = serde_json::from_value(serde_json::json!(2)).expect("number");
        assert_eq!(q.as_str(), "2");
        assert!(serde_json::from_value::<Quantity>(serde_json::json!(-1)).is_err());
    }

    #[test]
    fn formats_from_measurements() {
        assert_eq!(Quantity::from_cores(0.25).as_str(), "250m");
        assert_eq!(Quantity::from_cores(2.0).as_str(), "2");
        assert_eq!(
            Quantity::from_bytes(300.0 * 1024.0 * 1024.0 + 1.0).as_str(),
            "301Mi"
        );
    }

    #[test]
    fn pattern_agrees_with_parser_on_samples() {
        let re = jsonschema::validator_for(&serde_json::json!({"pattern": QUANTITY_PATTERN}))
            .expect("pattern compiles");
        for s in [
            "500m", "2", "512Mi", "1.5Gi", "1e3", ".5", "abc", "-1", "1.5Xi",
        ] {
            assert_eq!(
                re.is_valid(&serde_json::json!(s)),
                s.parse::<Quantity>().is_ok(),
                "pattern and parser disagree on {s:?}"
            );
        }
    }
}
