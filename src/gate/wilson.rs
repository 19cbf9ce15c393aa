//! The Wilson score interval's lower bound: how low the true pass rate could
//! still be, at a stated confidence, after `successes` out of `trials`.
//!
//! With `p̂ = successes / n` and `z = Φ⁻¹(1 − (1 − c)/2)` for a two-sided
//! confidence `c`:
//!
//! ```text
//! lcb = (p̂ + z²/2n − z·sqrt(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n)
//! ```
//!
//! Unlike the normal approximation it stays inside `[0, 1]` and does not
//! collapse to `p̂` when every trial passed: 10 passes out of 10 at 95 % give
//! about 0.72, not 1. That is why a gate on "LCB ≥ 0.95" needs enough trials:
//! all-pass trials reach it from 73 on ([`runs_needed`]).

use statrs::distribution::{ContinuousCDF, Normal};
use thiserror::Error;

/// The confidence the gate uses unless told otherwise.
pub const DEFAULT_CONFIDENCE: f64 = 0.95;

/// Why a bound cannot be computed. The gate treats each as a failure.
#[derive(Debug, Clone, Copy, PartialEq, Error)]
pub enum WilsonError {
    #[error("no trials: a lower bound needs at least one")]
    NoTrials,
    #[error("{successes} successes out of {trials} trials")]
    SuccessesExceedTrials { successes: u64, trials: u64 },
    #[error("confidence {0} is not strictly between 0 and 1")]
    Confidence(f64),
}

impl WilsonError {
    /// A stable code for reports and evidence.
    pub fn code(&self) -> &'static str {
        match self {
            WilsonError::NoTrials => "GATE_NO_TRIALS",
            WilsonError::SuccessesExceedTrials { .. } => "GATE_BAD_COUNTS",
            WilsonError::Confidence(_) => "GATE_BAD_CONFIDENCE",
        }
    }
}

/// `z = Φ⁻¹(1 − (1 − c)/2)`, the standard normal quantile for a two-sided
/// confidence `c` (1.959963984540054 for 0.95).
pub fn z_score(confidence: f64) -> Result<f64, WilsonError> {
    if !(confidence.is_finite() && confidence > 0.0 && confidence < 1.0) {
        return Err(WilsonError::Confidence(confidence));
    }
    Ok(Normal::standard().inverse_cdf(1.0 - (1.0 - confidence) / 2.0))
}

/// The Wilson lower bound for `successes` out of `trials` at a two-sided
/// `confidence`. Never NaN: no trials is an error.
pub fn lower_bound(successes: u64, trials: u64, confidence: f64) -> Result<f64, WilsonError> {
    lower_bound_z(successes, trials, z_score(confidence)?)
}

/// [`lower_bound`] with the quantile `z` already computed.
pub fn lower_bound_z(successes: u64, trials: u64, z: f64) -> Result<f64, WilsonError> {
    if trials == 0 {
        return Err(WilsonError::NoTrials);
    }
    if successes > trials {
        return Err(WilsonError::SuccessesExceedTrials { successes, trials });
    }
    let n = trials as f64;
    let p = successes as f64 / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let lcb = (centre - spread) / (1.0 + z2 / n);
    // At p̂ = 0 the two terms cancel exactly in theory; rounding can leave -1e-17.
    Ok(lcb.clamp(0.0, p))
}

/// The smallest number of runs of `tests_per_run` tests whose trials, all
/// passing, give a lower bound of at least `threshold`. `None` when no number
/// of runs can (a threshold of 1 or more, no tests, a confidence outside
/// (0, 1)) or when it would take more than `u32::MAX` runs.
pub fn runs_needed(threshold: f64, tests_per_run: u32, confidence: f64) -> Option<u32> {
    let z = z_score(confidence).ok()?;
    if !threshold.is_finite() || threshold >= 1.0 || tests_per_run == 0 {
        return None;
    }
    let per_run = u64::from(tests_per_run);
    let reaches = |runs: u64| lower_bound_z(runs * per_run, runs * per_run, z).is_ok_and(|lcb| lcb >= threshold);
    // All passing, lcb = n / (n + z²); so n ≥ threshold·z² / (1 − threshold).
    let trials = (threshold.max(0.0) * z * z / (1.0 - threshold)).ceil();
    if trials > (u64::from(u32::MAX) * per_run) as f64 {
        return None;
    }
    let mut runs = (trials as u64).div_ceil(per_run).max(1);
    // The closed form can be off by one either way through rounding; settle it
    // against the bound the gate will actually compute.
    while !reaches(runs) {
        runs += 1;
    }
    while runs > 1 && reaches(runs - 1) {
        runs -= 1;
    }
    u32::try_from(runs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Φ⁻¹(0.975), from published tables, not from statrs.
    const Z95: f64 = 1.959_963_984_540_054;
    /// Φ⁻¹(0.95) and Φ⁻¹(0.995).
    const Z90: f64 = 1.644_853_626_951_472_2;
    const Z99: f64 = 2.575_829_303_548_901;

    /// The formula written out again, independently of the module, with a
    /// hand-entered quantile.
    fn by_hand(s: f64, n: f64, z: f64) -> f64 {
        let p = s / n;
        (p + z * z / (2.0 * n) - z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt()) / (1.0 + z * z / n)
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn p1_t_exit_05_z_matches_published_quantiles() {
        assert!(close(z_score(0.95).unwrap(), Z95, 1e-9));
        assert!(close(z_score(0.90).unwrap(), Z90, 1e-9));
        assert!(close(z_score(0.99).unwrap(), Z99, 1e-9));
    }

    #[test]
    fn p1_t_exit_05_lcb_matches_published_values() {
        // (successes, trials, confidence, z, published lower bound)
        let cases = [
            (10, 10, 0.95, Z95, 0.7225),  // n / (n + z²) = 10 / 13.8415
            (0, 10, 0.95, Z95, 0.0),      // upper bound 0.2775; lower bound 0
            (95, 100, 0.95, Z95, 0.8882), // 0.95 observed, 0.8882..0.9785
            (5, 10, 0.95, Z95, 0.2366),   // 0.5 observed, 0.2366..0.7634
            (73, 73, 0.95, Z95, 0.9500),  // the least all-pass count at 0.95
            (10, 10, 0.90, Z90, 0.7871),
            (10, 10, 0.99, Z99, 0.6011),
        ];
        for (s, n, c, z, published) in cases {
            let lcb = lower_bound(s, n, c).unwrap();
            assert!(close(lcb, published, 5e-5), "{s}/{n} at {c}: {lcb}, published {published}");
            assert!(close(lcb, by_hand(s as f64, n as f64, z), 1e-9), "{s}/{n} at {c}: {lcb} vs by hand");
        }
    }

    #[test]
    fn p1_t_exit_05_no_trials_is_an_error_not_nan() {
        assert_eq!(lower_bound(0, 0, 0.95), Err(WilsonError::NoTrials));
        assert_eq!(lower_bound(0, 0, 0.95).unwrap_err().code(), "GATE_NO_TRIALS");
        assert!(matches!(lower_bound(3, 2, 0.95), Err(WilsonError::SuccessesExceedTrials { .. })));
        for c in [0.0, 1.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
            assert!(matches!(lower_bound(1, 2, c), Err(WilsonError::Confidence(_))), "{c}");
        }
    }

    #[test]
    fn p1_t_exit_05_lcb_is_monotone_in_successes_and_below_the_rate() {
        for n in 1..=200u64 {
            let mut previous = -1.0;
            for s in 0..=n {
                let lcb = lower_bound(s, n, 0.95).unwrap();
                let rate = s as f64 / n as f64;
                assert!(lcb.is_finite() && (0.0..=1.0).contains(&lcb), "{s}/{n}: {lcb}");
                assert!(lcb <= rate, "{s}/{n}: {lcb} > {rate}");
                assert!(lcb > previous || (s == 0 && lcb == 0.0), "{s}/{n}: {lcb} after {previous}");
                previous = lcb;
            }
        }
    }

    #[test]
    fn p1_t_exit_05_lcb_approaches_the_rate_as_trials_grow() {
        let mut gap = f64::INFINITY;
        for n in [10u64, 100, 1_000, 10_000, 100_000, 1_000_000] {
            let lcb = lower_bound(n * 9 / 10, n, 0.95).unwrap();
            let new_gap = 0.9 - lcb;
            assert!(new_gap > 0.0 && new_gap < gap, "n={n}: gap {new_gap} after {gap}");
            gap = new_gap;
        }
        assert!(gap < 1e-3, "{gap}");
    }

    #[test]
    fn p1_t_exit_05_higher_confidence_lowers_the_bound() {
        let b90 = lower_bound(45, 50, 0.90).unwrap();
        let b95 = lower_bound(45, 50, 0.95).unwrap();
        let b99 = lower_bound(45, 50, 0.99).unwrap();
        assert!(b90 > b95 && b95 > b99);
    }

    #[test]
    fn p1_t_exit_05_runs_needed_is_the_least_that_reaches() {
        // 73 all-pass trials reach 0.95 at 95 %, 72 do not.
        assert!(lower_bound(72, 72, 0.95).unwrap() < 0.95);
        assert!(lower_bound(73, 73, 0.95).unwrap() >= 0.95);
        assert_eq!(runs_needed(0.95, 73, 0.95), Some(1));
        assert_eq!(runs_needed(0.95, 25, 0.95), Some(3));
        assert_eq!(runs_needed(0.95, 24, 0.95), Some(4));
        assert_eq!(runs_needed(0.95, 1, 0.95), Some(73));
        assert_eq!(runs_needed(0.0, 1, 0.95), Some(1));
        for t in 1..=60u32 {
            for threshold in [0.5, 0.8, 0.9, 0.95, 0.99] {
                let r = runs_needed(threshold, t, 0.95).unwrap();
                let n = u64::from(r) * u64::from(t);
                assert!(lower_bound(n, n, 0.95).unwrap() >= threshold, "{threshold} {t}: {r}");
                if r > 1 {
                    let fewer = n - u64::from(t);
                    assert!(lower_bound(fewer, fewer, 0.95).unwrap() < threshold, "{threshold} {t}: {r}");
                }
            }
        }
    }

    #[test]
    fn p1_t_exit_05_runs_needed_none_when_impossible() {
        assert_eq!(runs_needed(1.0, 100, 0.95), None);
        assert_eq!(runs_needed(1.5, 100, 0.95), None);
        assert_eq!(runs_needed(f64::NAN, 100, 0.95), None);
        assert_eq!(runs_needed(0.95, 0, 0.95), None);
        assert_eq!(runs_needed(0.95, 10, 1.0), None);
        // Reachable in principle, but not within u32::MAX runs of one test.
        assert_eq!(runs_needed(1.0 - 1e-12, 1, 0.95), None);
    }
}
