//! Hand-written schema fragments for fields whose Rust type does not say enough for a
//! structural Kubernetes schema (free-form parameter values).

use schemars::{Schema, SchemaGenerator, json_schema};

/// A string, number or boolean. Structural schemas have no "one of these scalars", so
/// the value is left open here and checked by `validate()` against the function's
/// parameter list.
pub fn any_scalar(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"x-kubernetes-preserve-unknown-fields": true})
}

/// `name -> value` parameters of one stage.
pub fn param_map(g: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": any_scalar(g),
    })
}

/// `stage -> name -> value` parameters of a run.
pub fn stage_param_map(g: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": param_map(g),
    })
}
