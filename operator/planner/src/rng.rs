//! A small seeded generator (SplitMix64) and the distributions the planner samples.
//! Our own so that a seed gives the same numbers on every platform and release.

/// SplitMix64 (Steele, Lea, Flood 2014): 64 bits of state, passes BigCrush, and one
/// seed is enough, which is all a Monte Carlo estimate or a simulation needs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n); 0 when n is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Standard normal (Box-Muller; one of the pair is dropped to keep the state simple).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Exponential with the given rate (events per unit time).
    pub fn exponential(&mut self, rate: f64) -> f64 {
        if rate <= 0.0 {
            return f64::INFINITY;
        }
        -(1.0 - self.uniform()).ln() / rate
    }

    /// A child generator for an independent stream (one per run, per function, ...).
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }
}

/// z of the standard normal at 0.95: a p95 lies 1.645 sigma above the median.
pub const Z95: f64 = 1.644_853_626_951_472;

/// Log-normal given by its median and p95, the two figures a FunctionProfile records.
/// Execution and cold-start times are skewed to the right; a log-normal is the usual
/// two-parameter fit and needs nothing the profile does not have.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogNormal {
    pub median: f64,
    pub sigma: f64,
}

impl LogNormal {
    /// From p50 and p95; a p95 at or below the median gives a constant.
    pub fn from_p50_p95(p50: f64, p95: f64) -> Self {
        let median = p50.max(0.0);
        let sigma = if median > 0.0 && p95 > median {
            (p95 / median).ln() / Z95
        } else {
            0.0
        };
        LogNormal { median, sigma }
    }

    pub fn constant(value: f64) -> Self {
        LogNormal {
            median: value.max(0.0),
            sigma: 0.0,
        }
    }

    pub fn sample(&self, rng: &mut Rng) -> f64 {
        if self.sigma == 0.0 {
            return self.median;
        }
        self.median * (self.sigma * rng.normal()).exp()
    }

    pub fn mean(&self) -> f64 {
        self.median * (self.sigma * self.sigma / 2.0).exp()
    }

    pub fn p95(&self) -> f64 {
        self.median * (self.sigma * Z95).exp()
    }

    /// Standard deviation.
    pub fn std_dev(&self) -> f64 {
        let s2 = self.sigma * self.sigma;
        self.mean() * (s2.exp() - 1.0).sqrt()
    }
}

/// The q-quantile (0..=1) of values sorted ascending, by nearest rank; 0 when empty.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    vflow_contract::observations::nearest_rank(sorted, q)
}

/// Sorts a copy and takes the q-quantile.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    quantile_sorted(&v, q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::new(7).next_u64(), Rng::new(8).next_u64());
    }

    #[test]
    fn lognormal_matches_its_percentiles() {
        let d = LogNormal::from_p50_p95(2.0, 5.0);
        assert!((d.p95() - 5.0).abs() < 1e-9);
        let mut rng = Rng::new(1);
        let samples: Vec<f64> = (0..20_000).map(|_| d.sample(&mut rng)).collect();
        assert!((quantile(&samples, 0.5) - 2.0).abs() < 0.1);
        assert!((quantile(&samples, 0.95) - 5.0).abs() < 0.3);
    }

    #[test]
    fn uniform_and_below_stay_in_range() {
        let mut rng = Rng::new(3);
        for _ in 0..1000 {
            let u = rng.uniform();
            assert!((0.0..1.0).contains(&u));
            assert!(rng.below(5) < 5);
        }
        assert_eq!(rng.below(0), 0);
    }

    #[test]
    fn nearest_rank_quantile() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(quantile_sorted(&v, 0.5), 5.0);
        assert_eq!(quantile_sorted(&v, 0.95), 10.0);
        assert_eq!(quantile_sorted(&v, 0.0), 1.0);
        assert_eq!(quantile_sorted(&[], 0.5), 0.0);
    }
}
