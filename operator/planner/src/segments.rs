//! The segments a run's fan-out will write, estimated before the run from the input's
//! duration and the split stage's parameters: the packing model then counts the
//! invocations the run will have, with their lengths (the last one is usually shorter,
//! `multipleOf` cuts the last ones finer), instead of `expected_segments` equal ones.
//!
//! The model of `segment` (function-images/segment): with `cutAt: time`, a cut every
//! `seconds`, none in the last half segment (so no sliver at the end; a stream copy
//! cuts at the first keyframe after each time, which cannot be known here); with
//! `multipleOf: m`, the last (count mod m) segments are cut into m equal pieces.
//! `cutAt: scene` cuts where the shots change, which only the run finds out: no
//! estimate (None).

use std::collections::BTreeMap;

use vflow_api::{FunctionProfile, VideoWorkflow};

/// Segment lengths in seconds, or None where they cannot be told before the run.
pub fn estimate(
    workflow: &VideoWorkflow,
    profiles: &BTreeMap<String, FunctionProfile>,
    input_seconds: f64,
) -> Option<Vec<f64>> {
    if !(input_seconds.is_finite() && input_seconds > 0.0) {
        return None;
    }
    let stage = workflow.spec.stages.iter().find(|s| s.fan_out)?;
    let profile = profiles.get(&stage.function)?;
    let param = |name: &str| {
        stage.params.get(name).cloned().or_else(|| {
            profile
                .spec
                .params
                .iter()
                .find(|p| p.name == name)
                .and_then(|p| p.default.clone())
        })
    };
    let seconds = param("seconds")?.as_f64().filter(|s| *s > 0.0)?;
    if param("cutAt")
        .as_ref()
        .and_then(|v| v.as_str())
        .unwrap_or("time")
        != "time"
    {
        return None;
    }
    let multiple = param("multipleOf")
        .and_then(|v| v.as_u64())
        .unwrap_or(1)
        .max(1) as usize;
    Some(time_cuts(input_seconds, seconds, multiple))
}

/// Lengths of the segments of `total` seconds cut every `seconds` (none in the last
/// half segment), the last (count mod `multiple`) cut into `multiple` equal pieces.
pub fn time_cuts(total: f64, seconds: f64, multiple: usize) -> Vec<f64> {
    // Bounded like the function's own argument limit: far more segments than any
    // instance count would change nothing in the model.
    let last = total - seconds / 2.0;
    let mut starts = vec![0.0];
    let mut k = 1.0;
    while k * seconds < last && starts.len() < 100_000 {
        starts.push(k * seconds);
        k += 1.0;
    }
    let rest = starts.len() % multiple;
    if multiple > 1 && rest != 0 {
        let lo = starts[starts.len() - rest];
        starts.truncate(starts.len() - rest + 1);
        starts.extend((1..multiple).map(|i| lo + (total - lo) * i as f64 / multiple as f64));
    }
    let mut ends: Vec<f64> = starts[1..].to_vec();
    ends.push(total);
    starts.iter().zip(ends).map(|(a, b)| b - a).collect()
}

/// The time to run jobs of these sizes on `slots` workers, longest first, each on the
/// worker free soonest (LPT: within 4/3 of the best order; the run engine's order need
/// not be this one, so it is the model's figure, not a promise).
pub fn makespan(sizes: &[f64], slots: usize) -> f64 {
    if sizes.is_empty() {
        return 0.0;
    }
    let mut sorted: Vec<f64> = sizes.iter().map(|s| s.max(0.0)).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    if slots >= sorted.len() {
        return sorted[0];
    }
    // Loads are non-negative: their bit patterns order like the values.
    let mut loads: std::collections::BinaryHeap<std::cmp::Reverse<u64>> = (0..slots.max(1))
        .map(|_| std::cmp::Reverse(0f64.to_bits()))
        .collect();
    let mut longest = 0.0f64;
    for s in sorted {
        if let Some(std::cmp::Reverse(bits)) = loads.pop() {
            let load = f64::from_bits(bits) + s;
            longest = longest.max(load);
            loads.push(std::cmp::Reverse(load.to_bits()));
        }
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn time_cuts_leave_no_sliver_and_multiple_of_cuts_the_last_ones_finer() {
        // bench-local: 60 s every 4 s.
        assert!(close(&time_cuts(60.0, 4.0, 1), &[4.0; 15]));
        // 61 s: the last second joins the last segment (no cut in the last half).
        let c = time_cuts(61.0, 4.0, 1);
        assert_eq!(c.len(), 15);
        assert!((c[14] - 5.0).abs() < 1e-9);
        // 63 s: a cut at 60 (60 < 61) leaves a 3 s segment.
        assert!((time_cuts(63.0, 4.0, 1)[15] - 3.0).abs() < 1e-9);
        // multipleOf 2: the 15th segment becomes two of 2 s.
        let c = time_cuts(60.0, 4.0, 2);
        assert_eq!(c.len(), 16);
        assert!(close(&c[14..], &[2.0, 2.0]));
        assert!((c.iter().sum::<f64>() - 60.0).abs() < 1e-9);
        // Shorter than a segment: one.
        assert!(close(&time_cuts(1.5, 4.0, 1), &[1.5]));
    }

    #[test]
    fn makespan_is_longest_first_on_the_worker_free_soonest() {
        assert_eq!(makespan(&[], 2), 0.0);
        assert_eq!(makespan(&[3.0, 1.0], 4), 3.0);
        // 15 equal on 2: 8 rounds; 14 equal and 2 halves: 7.5.
        assert_eq!(makespan(&[1.0; 15], 2), 8.0);
        let mut halves = vec![1.0; 14];
        halves.extend([0.5, 0.5]);
        assert_eq!(makespan(&halves, 2), 7.5);
        // 5 and 4 start; 3 joins 4 (7), 3 joins 5 (8), 3 joins 7: 10 (the best order
        // makes 9: LPT is a model, within 4/3 of it).
        assert_eq!(makespan(&[3.0, 5.0, 3.0, 4.0, 3.0], 2), 10.0);
    }
}
