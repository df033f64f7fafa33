//! How many functions ran at once on this instance, on average over one function's
//! run: the packing degree that run saw, from which the planner learns E(P).

use std::sync::Mutex;
use std::time::Instant;

/// The integral over time of the number of functions running.
pub struct Overlap {
    state: Mutex<State>,
    origin: Instant,
}

struct State {
    running: u32,
    /// Seconds since `origin` of the last change.
    at: f64,
    /// Function-seconds accumulated up to `at`.
    integral: f64,
}

/// A function's start, for [`Overlap::leave`].
pub struct Entered {
    at: f64,
    integral: f64,
}

impl Default for Overlap {
    fn default() -> Self {
        Self::new()
    }
}

impl Overlap {
    pub fn new() -> Self {
        Overlap {
            state: Mutex::new(State {
                running: 0,
                at: 0.0,
                integral: 0.0,
            }),
            origin: Instant::now(),
        }
    }

    fn advance(&self, s: &mut State) -> f64 {
        let now = self.origin.elapsed().as_secs_f64();
        s.integral += f64::from(s.running) * (now - s.at).max(0.0);
        s.at = now;
        now
    }

    /// A function starts.
    pub fn enter(&self) -> Entered {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.advance(&mut s);
        s.running += 1;
        Entered {
            at: s.at,
            integral: s.integral,
        }
    }

    /// The function that entered at `e` ended: the mean number of functions running
    /// (itself included) over its run.
    pub fn leave(&self, e: Entered) -> f64 {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.advance(&mut s);
        s.running = s.running.saturating_sub(1);
        let span = now - e.at;
        if span <= 0.0 {
            return f64::from(s.running + 1);
        }
        ((s.integral - e.integral) / span).max(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn alone_is_one_and_a_full_overlap_is_the_count() {
        let o = Overlap::new();
        let a = o.enter();
        std::thread::sleep(Duration::from_millis(20));
        assert!((o.leave(a) - 1.0).abs() < 0.01);
        // Two together for their whole runs.
        let a = o.enter();
        let b = o.enter();
        std::thread::sleep(Duration::from_millis(40));
        let mean_b = o.leave(b);
        let mean_a = o.leave(a);
        assert!((mean_b - 2.0).abs() < 0.05, "{mean_b}");
        assert!(mean_a > 1.9, "{mean_a}");
        // Half alone, half with one neighbour: 1.5.
        let a = o.enter();
        std::thread::sleep(Duration::from_millis(50));
        let b = o.enter();
        std::thread::sleep(Duration::from_millis(50));
        let mean_a = o.leave(a);
        o.leave(b);
        assert!((mean_a - 1.5).abs() < 0.1, "{mean_a}");
    }
}
