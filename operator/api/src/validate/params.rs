//! Parameter values against a function's parameter list.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Problems, did_you_mean};
use crate::{ParamSpec, ParamType};

/// Checks `params` (at `path`) against `specs`; with `specs = None` (profile unknown)
/// only that each value is a scalar. `require` asks for every required parameter.
pub fn check_params(
    path: &str,
    params: &BTreeMap<String, Value>,
    specs: Option<&[ParamSpec]>,
    require: bool,
) -> Vec<super::Problem> {
    let mut problems = Problems::default();
    check_into(&mut problems, path, params, specs, require);
    problems.into_vec()
}

pub(crate) fn check_into(
    problems: &mut Problems,
    path: &str,
    params: &BTreeMap<String, Value>,
    specs: Option<&[ParamSpec]>,
    require: bool,
) {
    for (name, value) in params {
        let at = format!("{path}.{name}");
        if !matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            problems.add(&at, "must be a string, a number or a boolean");
            continue;
        }
        let Some(specs) = specs else { continue };
        match specs.iter().find(|s| &s.name == name) {
            None => problems.add(
                &at,
                format!(
                    "the function has no parameter {name:?}{}",
                    did_you_mean(name, specs.iter().map(|s| s.name.as_str()))
                ),
            ),
            Some(spec) => {
                if let Err(msg) = check_value(spec, value) {
                    problems.add(&at, msg);
                }
            }
        }
    }
    if let (Some(specs), true) = (specs, require) {
        for spec in specs.iter().filter(|s| s.required && s.default.is_none()) {
            if !params.contains_key(&spec.name) {
                problems.add(path, format!("missing required parameter {:?}", spec.name));
            }
        }
    }
}

/// Whether one value fits its parameter's type, range and allowed values.
pub(crate) fn check_value(spec: &ParamSpec, value: &Value) -> Result<(), String> {
    let number = match (spec.type_, value) {
        (ParamType::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => n.as_f64(),
        (ParamType::Integer, Value::Number(n)) => {
            return Err(format!("must be a whole number, not {n}"));
        }
        (ParamType::Number, Value::Number(n)) => n.as_f64(),
        (ParamType::String, Value::String(s)) => {
            if !spec.enum_values.is_empty() && !spec.enum_values.contains(s) {
                return Err(format!(
                    "{s:?} is not one of {}{}",
                    spec.enum_values.join(", "),
                    did_you_mean(s, spec.enum_values.iter().map(String::as_str))
                ));
            }
            None
        }
        (ParamType::Boolean, Value::Bool(_)) => None,
        (ty, v) => return Err(format!("must be {}, not {v}", type_phrase(ty))),
    };
    if let Some(n) = number {
        if let Some(min) = spec.minimum.filter(|min| n < *min) {
            return Err(format!("{n} is below the minimum {min}"));
        }
        if let Some(max) = spec.maximum.filter(|max| n > *max) {
            return Err(format!("{n} is above the maximum {max}"));
        }
    }
    Ok(())
}

pub(crate) fn type_phrase(ty: ParamType) -> &'static str {
    match ty {
        ParamType::Integer => "a whole number",
        ParamType::Number => "a number",
        ParamType::String => "a string",
        ParamType::Boolean => "true or false",
    }
}
