//! Checks a manifest against the generated CRD schema, the way the API server would
//! (types, enums, ranges, patterns, required and unknown fields), so that the CLI and
//! the local mode refuse what `kubectl apply` refuses, with the same field paths.
//!
//! The CRD schema is OpenAPI v3 with Kubernetes extensions; it is turned into a JSON
//! Schema (draft 4, whose boolean `exclusiveMinimum` OpenAPI v3.0 shares) first.

use serde_json::{Map, Value, json};

use crate::{
    DURATION_PATTERN, QUANTITY_PATTERN, STAGE_NAME_PATTERN,
    validate::{Problem, did_you_mean},
};

/// A compiled check for one kind.
pub struct SchemaCheck {
    schema: Value,
    validator: jsonschema::Validator,
}

impl SchemaCheck {
    /// The check for `kind` (FunctionProfile, VideoWorkflow, VideoWorkflowRun), or None.
    pub fn for_kind(kind: &str) -> Option<SchemaCheck> {
        let crd = crate::crds()
            .into_iter()
            .find(|c| c.spec.names.kind == kind)?;
        let openapi = crd
            .spec
            .versions
            .first()?
            .schema
            .as_ref()?
            .open_api_v3_schema
            .as_ref()?;
        let mut schema = to_json_schema(&serde_json::to_value(openapi).ok()?);
        // The API server adds these to every kind; the CRD schema leaves them out.
        let props = schema.get_mut("properties")?.as_object_mut()?;
        props.insert("apiVersion".into(), json!({"type": "string"}));
        props.insert("kind".into(), json!({"type": "string"}));
        props.insert("metadata".into(), json!({"type": "object"}));
        let validator = jsonschema::draft4::new(&schema).ok()?;
        Some(SchemaCheck { schema, validator })
    }

    /// Every schema violation in `object`, with field paths like `spec.stages[0].name`.
    pub fn check(&self, object: &Value) -> Vec<Problem> {
        let mut problems: Vec<Problem> = Vec::new();
        for err in self.validator.iter_errors(object) {
            let pointer: Vec<String> = err
                .instance_path()
                .as_str()
                .split('/')
                .skip(1)
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect();
            let at = field_path(&pointer);
            use jsonschema::error::ValidationErrorKind as K;
            let instance = err.instance();
            match err.kind() {
                K::AdditionalProperties { unexpected } => {
                    let known = self.property_names(&pointer);
                    for name in unexpected {
                        problems.push(Problem {
                            path: join(&at, name),
                            message: format!(
                                "unknown field {name:?}{}",
                                did_you_mean(name, known.iter().map(String::as_str))
                            ),
                        });
                    }
                }
                K::Required { property } => problems.push(Problem {
                    path: join(&at, property.as_str().unwrap_or_default()),
                    message: "required field is missing".into(),
                }),
                kind => problems.push(Problem {
                    path: if at.is_empty() { "(object)".into() } else { at },
                    message: describe(kind, instance),
                }),
            }
        }
        problems.sort();
        problems.dedup();
        problems
    }

    fn property_names(&self, pointer: &[String]) -> Vec<String> {
        let mut node = &self.schema;
        for seg in pointer {
            node = if let Some(p) = node.get("properties").and_then(|p| p.get(seg)) {
                p
            } else if let Some(items) = node.get("items") {
                items
            } else if let Some(ap) = node.get("additionalProperties").filter(|a| a.is_object()) {
                ap
            } else {
                return Vec::new();
            };
        }
        node.get("properties")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}

fn describe(kind: &jsonschema::error::ValidationErrorKind, instance: &Value) -> String {
    use jsonschema::error::ValidationErrorKind as K;
    let shown = short(instance);
    match kind {
        K::Type { kind } => format!("must be {} (got {shown})", type_words(kind)),
        K::Enum { options } => {
            let opts: Vec<String> = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| v.as_str().map_or(v.to_string(), str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let hint = instance
                .as_str()
                .map(|s| did_you_mean(s, opts.iter().map(String::as_str)))
                .unwrap_or_default();
            format!("{shown} is not one of {}{hint}", opts.join(", "))
        }
        K::Pattern { pattern } => match pattern.as_str() {
            QUANTITY_PATTERN => {
                format!("{shown} is not a Kubernetes quantity (examples: 500m, 2, 512Mi, 1.5Gi)")
            }
            DURATION_PATTERN => {
                format!("{shown} is not a duration (examples: 250ms, 90s, 5m, 1h30m)")
            }
            STAGE_NAME_PATTERN => {
                format!("{shown} must be lowercase letters, digits and '-', starting with a letter")
            }
            p => format!("{shown} does not match {p}"),
        },
        K::Minimum { limit } => format!("{shown} is below the minimum {}", number(limit)),
        K::Maximum { limit } => format!("{shown} is above the maximum {}", number(limit)),
        K::ExclusiveMinimum { limit } => format!("{shown} must be more than {}", number(limit)),
        K::ExclusiveMaximum { limit } => format!("{shown} must be less than {}", number(limit)),
        K::MinLength { limit } => format!("must have at least {limit} characters"),
        K::MaxLength { limit } => format!("must have at most {limit} characters"),
        K::MinItems { limit } => format!("must have at least {limit} entries"),
        K::MaxItems { limit } => format!("must have at most {limit} entries"),
        K::MaxProperties { limit } => format!("must have at most {limit} entries"),
        K::UniqueItems => "lists the same value twice".into(),
        other => format!("{other:?}"),
    }
}

fn type_words(kind: &jsonschema::error::TypeKind) -> String {
    use jsonschema::error::TypeKind;
    let word = |t: &jsonschema::JsonType| match t.to_string().as_str() {
        "integer" => "a whole number".to_string(),
        "number" => "a number".to_string(),
        "string" => "a string".to_string(),
        "boolean" => "true or false".to_string(),
        "array" => "a list".to_string(),
        "object" => "a mapping".to_string(),
        "null" => "null".to_string(),
        other => other.to_string(),
    };
    match kind {
        TypeKind::Single(t) => word(t),
        TypeKind::Multiple(set) => set
            .iter()
            .filter(|t| t.to_string() != "null")
            .map(|t| word(&t))
            .collect::<Vec<_>>()
            .join(" or "),
    }
}

/// 1.0 as "1": schema limits are floats even where the field is an integer.
fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => v.to_string(),
    }
}

fn short(v: &Value) -> String {
    if v.is_number() {
        return number(v);
    }
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

/// `["spec", "stages", "2", "after", "0"]` -> `spec.stages[2].after[0]`.
pub fn field_path(pointer: &[String]) -> String {
    let mut out = String::new();
    for seg in pointer {
        if !seg.is_empty() && seg.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            out = join(&out, seg);
        }
    }
    out
}

fn join(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}.{name}")
    }
}

/// OpenAPI v3 (structural, with Kubernetes extensions) to JSON Schema draft 4.
pub fn to_json_schema(node: &Value) -> Value {
    let Some(obj) = node.as_object() else {
        return node.clone();
    };
    let mut out = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "properties" => {
                let props = v
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(name, s)| (name.clone(), to_json_schema(s)))
                            .collect()
                    })
                    .unwrap_or_default();
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" | "not" => {
                out.insert(k.clone(), to_json_schema(v));
            }
            "allOf" | "anyOf" | "oneOf" => {
                let list = v
                    .as_array()
                    .map(|a| a.iter().map(to_json_schema).collect())
                    .unwrap_or_default();
                out.insert(k.clone(), Value::Array(list));
            }
            "nullable" => {}
            key if key.starts_with("x-kubernetes-") => {}
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    let flag = |name: &str| obj.get(name).and_then(Value::as_bool).unwrap_or(false);
    if flag("x-kubernetes-int-or-string") {
        out.insert("type".into(), json!(["integer", "string"]));
    }
    if flag("nullable")
        && let Some(t) = out.get("type").cloned()
    {
        let mut types = match t {
            Value::Array(a) => a,
            other => vec![other],
        };
        types.push(json!("null"));
        out.insert("type".into(), Value::Array(types));
    }
    if obj.contains_key("properties")
        && !obj.contains_key("additionalProperties")
        && !flag("x-kubernetes-preserve-unknown-fields")
    {
        out.insert("additionalProperties".into(), json!(false));
    }
    Value::Object(out)
}
