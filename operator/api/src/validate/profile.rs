//! Rules for a FunctionProfile.

use std::collections::BTreeSet;

use super::{
    Problems, params,
    workflow::{check_gpu, positive_quantity},
};
use crate::{FunctionProfile, ParamType, Quantity};

/// Every problem with a FunctionProfile.
pub fn validate_profile(profile: &FunctionProfile) -> Vec<super::Problem> {
    let mut p = Problems::default();
    let spec = &profile.spec;
    if spec.image.trim().is_empty() {
        p.add("spec.image", "must name a container image");
    }
    if spec.command.first().is_none_or(|c| c.trim().is_empty()) {
        p.add("spec.command", "must name the program to run");
    }
    if !(1..=1000).contains(&spec.concurrency) {
        p.add(
            "spec.concurrency",
            format!("{} is not between 1 and 1000", spec.concurrency),
        );
    }
    positive_quantity(&mut p, "spec.resources.cpu", Some(&spec.resources.cpu));
    positive_quantity(
        &mut p,
        "spec.resources.memory",
        Some(&spec.resources.memory),
    );
    if spec.resources.scratch.is_some() {
        positive_quantity(
            &mut p,
            "spec.resources.scratch",
            spec.resources.scratch.as_ref(),
        );
    }
    if let Some(gpu) = spec.resources.gpu {
        check_gpu(&mut p, "spec.resources.gpu", gpu);
    }
    if let Some(b) = &spec.bounds {
        check_bounds(
            &mut p,
            "cpu",
            "Cpu",
            &spec.resources.cpu,
            b.min_cpu.as_ref(),
            b.max_cpu.as_ref(),
        );
        check_bounds(
            &mut p,
            "memory",
            "Memory",
            &spec.resources.memory,
            b.min_memory.as_ref(),
            b.max_memory.as_ref(),
        );
    }
    let mut names = BTreeSet::new();
    for (i, param) in spec.params.iter().enumerate() {
        let at = format!("spec.params[{i}]");
        if !names.insert(&param.name) {
            p.add(
                format!("{at}.name"),
                format!("duplicate parameter {:?}", param.name),
            );
        }
        let numeric = matches!(param.type_, ParamType::Integer | ParamType::Number);
        if !numeric && (param.minimum.is_some() || param.maximum.is_some()) {
            p.add(
                &at,
                "minimum and maximum only apply to Integer and Number parameters",
            );
        }
        if let (Some(min), Some(max)) = (param.minimum, param.maximum)
            && min > max
        {
            p.add(
                format!("{at}.minimum"),
                format!("minimum {min} is above maximum {max}"),
            );
        }
        if !param.enum_values.is_empty() && param.type_ != ParamType::String {
            p.add(
                format!("{at}.enum"),
                "allowed values only apply to String parameters",
            );
        }
        if let Some(default) = &param.default
            && let Err(msg) = params::check_value(param, default)
        {
            p.add(format!("{at}.default"), msg);
        }
    }
    if let Some(produces) = &spec.produces {
        let mut keys = BTreeSet::new();
        for (i, field) in produces.metadata.iter().enumerate() {
            if !keys.insert(&field.name) {
                p.add(
                    format!("spec.produces.metadata[{i}].name"),
                    format!("duplicate metadata key {:?}", field.name),
                );
            }
        }
    }
    p.into_vec()
}

fn check_bounds(
    p: &mut Problems,
    what: &str,
    field: &str,
    start: &Quantity,
    min: Option<&Quantity>,
    max: Option<&Quantity>,
) {
    positive_quantity(p, &format!("spec.bounds.min{field}"), min);
    positive_quantity(p, &format!("spec.bounds.max{field}"), max);
    fn value(q: Option<&Quantity>) -> Option<(&Quantity, f64)> {
        q.and_then(|q| q.value().ok().map(|v| (q, v)))
    }
    let (min, max, start_v) = (value(min), value(max), start.value().ok());
    if let (Some((lo, l)), Some((hi, h))) = (min, max)
        && l > h
    {
        p.add(
            format!("spec.bounds.min{field}"),
            format!("min{field} {lo} is above max{field} {hi}"),
        );
    }
    if let (Some((lo, l)), Some(s)) = (min, start_v)
        && s < l
    {
        p.add(
            format!("spec.resources.{what}"),
            format!("{start} is below bounds.min{field} {lo}"),
        );
    }
    if let (Some((hi, h)), Some(s)) = (max, start_v)
        && s > h
    {
        p.add(
            format!("spec.resources.{what}"),
            format!("{start} is above bounds.max{field} {hi}"),
        );
    }
}
