//! What resources cost: the planner weighs plans with it and a run's status estimates
//! its cost with it (operator/runs), so both speak of the same money.

use serde::{Deserialize, Serialize};

const GIB: f64 = (1u64 << 30) as f64;

/// Prices per second of one core, one GiB of memory and one whole GPU (a share costs
/// its fraction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Prices {
    pub cpu_core_second: f64,
    pub memory_gib_second: f64,
    pub gpu_second: f64,
    pub currency: String,
}

impl Default for Prices {
    /// Roughly on-demand cloud prices: $0.0405 per vCPU-hour, $0.00445 per GiB-hour
    /// (Fargate), $2.50 per GPU-hour.
    fn default() -> Self {
        Self {
            cpu_core_second: 0.04048 / 3600.0,
            memory_gib_second: 0.004445 / 3600.0,
            gpu_second: 2.5 / 3600.0,
            currency: "USD".into(),
        }
    }
}

impl Prices {
    /// What an instance with these requests costs per second.
    pub fn per_second(&self, cores: f64, memory_bytes: f64, gpu: f64) -> f64 {
        cores * self.cpu_core_second
            + memory_bytes / GIB * self.memory_gib_second
            + gpu * self.gpu_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_costs_the_sum_of_its_requests() {
        let p = Prices {
            cpu_core_second: 1.0,
            memory_gib_second: 0.5,
            gpu_second: 10.0,
            currency: "EUR".into(),
        };
        assert_eq!(p.per_second(2.0, 2.0 * GIB, 0.25), 2.0 + 1.0 + 2.5);
        let d = Prices::default();
        assert!((d.per_second(1.0, 0.0, 0.0) * 3600.0 - 0.04048).abs() < 1e-12);
    }
}
