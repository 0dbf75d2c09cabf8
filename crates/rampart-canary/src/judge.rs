//! The decision for one evaluation of one check, and the counters over repeated evaluations.
//!
//! - [`judge_error_rate`]: pooled error counts of the canary against the baseline;
//! - [`judge_latency`]: per-host, per-step p95 samples of the canary against the baseline;
//! - [`fast_path`]: the immediate-rollback check on the canary's error ratio;
//! - [`Measurements`]: Argo Rollouts' counters (`count`, `failureLimit`, `inconclusiveLimit`,
//!   `consecutiveErrorLimit`) over a check's evaluations, giving its [`Phase`]; [`run_phase`]
//!   combines the checks' phases.
//!
//! Each evaluation is a [`Decision`] with one of four [`Verdict`]s, kept apart: `Pass` (the
//! canary is no worse by the check's standard), `Fail` (it is worse, statistically and
//! practically, or it breached a guardrail), `Inconclusive` (not enough data to say either;
//! never a Pass), `Error` (the input itself is unusable: bad counts, NaN samples, an invalid
//! configuration). The decision records what it was computed from, so it can be logged and
//! audited as it is (it serialises with serde).

use serde::{Deserialize, Serialize};

use crate::stats::{
    self, Alternative, Method, fisher_exact_greater, hodges_lehmann, mann_whitney_u,
    minimum_detectable_rate, minimum_detectable_shift_sd, two_proportion_z,
};

/// The power the minimum detectable effects are computed for.
pub const POWER: f64 = 0.8;

/// The fewest latency samples per side a configuration may ask for: with `n = m = 4` the
/// smallest exact two-sided Mann-Whitney p-value is `2/C(8,4) = 0.029`, so fewer than 5 samples
/// can never reject at α ≤ 0.02 (untied data).
pub const MIN_SAMPLES_FLOOR: usize = 5;

/// The outcome of one evaluation of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The canary is no worse than the baseline (or, without one, within the guardrail).
    Pass,
    /// The canary is worse: significant and practically large, or past a guardrail.
    Fail,
    /// Not enough data to decide; the caller extends the window. Never a Pass.
    Inconclusive,
    /// The input could not be judged (bad counts, NaN samples, invalid configuration).
    Error,
}

/// Which check a [`Decision`] is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// [`judge_error_rate`].
    ErrorRate,
    /// [`judge_latency`].
    Latency,
    /// [`fast_path`].
    FastPath,
}

/// The statistical test a [`Decision`] used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TestKind {
    /// [`stats::fisher_exact_greater`] (few expected errors).
    FisherExact,
    /// [`stats::two_proportion_z`].
    TwoProportionZ,
    /// [`stats::mann_whitney_u`], exact distribution.
    MannWhitneyExact,
    /// [`stats::mann_whitney_u`], normal approximation.
    MannWhitneyAsymptotic,
}

/// Error and request counts of one side over the window (`increase()` of the counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    /// Failed requests (e.g. 5xx).
    pub errors: u64,
    /// All requests; at least `errors`.
    pub total: u64,
}

impl Counts {
    /// `errors / total`, `None` without requests.
    pub fn rate(&self) -> Option<f64> {
        (self.total > 0).then(|| self.errors as f64 / self.total as f64)
    }
}

/// What a [`Decision`] saw of one side.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Side {
    /// Requests (error rate, fast path) or samples (latency).
    pub n: u64,
    /// Errors (error rate, fast path).
    pub errors: Option<u64>,
    /// The error rate (a fraction), or the median of the latency samples (ms).
    pub value: Option<f64>,
}

/// The size of the difference between canary and baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Effect {
    /// Error rate: canary rate − baseline rate (a fraction). Latency: the Hodges-Lehmann shift
    /// of canary over baseline (ms).
    pub difference: f64,
    /// Error rate: canary rate / baseline rate. Latency: the shift / baseline median. `None`
    /// when the denominator is zero.
    pub ratio: Option<f64>,
}

/// The thresholds a [`Decision`] applied.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// The significance level of the test.
    pub alpha: f64,
    /// The guardrail: the canary's highest allowed error rate (fraction), or its highest
    /// allowed median p95 (ms); `None`: no guardrail.
    pub guardrail: Option<f64>,
    /// Requests or samples the canary needs before the guardrail applies.
    pub guardrail_min: u64,
    /// Requests or samples needed before a statistical verdict.
    pub min_n: u64,
    /// The smallest difference that counts as a practical effect: a rate difference (fraction)
    /// or a latency shift (ms; `max(fraction × baseline median, min ms)`, known once the
    /// baseline is).
    pub min_difference: Option<f64>,
    /// The smallest canary / baseline rate ratio that counts as a practical effect.
    pub min_ratio: Option<f64>,
}

/// One evaluation of one check: the verdict and everything it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The check.
    pub check: CheckKind,
    /// The outcome.
    pub verdict: Verdict,
    /// Why, in words, with the numbers.
    pub reason: String,
    /// The canary side.
    pub canary: Side,
    /// The baseline side, if there was one.
    pub baseline: Option<Side>,
    /// The test used, if one ran.
    pub test: Option<TestKind>,
    /// The test's statistic: z (two-proportion), the odds ratio (Fisher), U of the canary
    /// (Mann-Whitney).
    pub statistic: Option<f64>,
    /// The one-sided (canary worse) p-value.
    pub p_value: Option<f64>,
    /// The effect size.
    pub effect: Option<Effect>,
    /// Error rate: the smallest canary error rate (fraction) detectable at α with power
    /// [`POWER`] given the sizes and the baseline rate. Latency: the smallest detectable
    /// shift in ms (the SD-unit effect of [`stats::minimum_detectable_shift_sd`] times the
    /// pooled SD of the samples). `None` when not computed or nothing is detectable.
    pub minimum_detectable_effect: Option<f64>,
    /// The thresholds applied.
    pub thresholds: Thresholds,
    /// No baseline was compared (the last wave): the verdict rests on thresholds only.
    pub weaker_evidence: bool,
    /// A Fail that stands on its own (a guardrail, the fast path, or p < α/10), for
    /// [`FailRule::ConsecutiveOrStrong`].
    pub strong: bool,
}

impl Decision {
    fn new(check: CheckKind, thresholds: Thresholds, canary: Side) -> Decision {
        Decision {
            check,
            verdict: Verdict::Inconclusive,
            reason: String::new(),
            canary,
            baseline: None,
            test: None,
            statistic: None,
            p_value: None,
            effect: None,
            minimum_detectable_effect: None,
            thresholds,
            weaker_evidence: false,
            strong: false,
        }
    }

    fn with(mut self, verdict: Verdict, reason: String) -> Decision {
        self.verdict = verdict;
        self.reason = reason;
        self
    }
}

fn check_alpha(alpha: f64) -> Result<(), String> {
    if !(alpha > 0.0 && alpha <= 0.5) {
        return Err(format!("alpha is {alpha}: set it in (0, 0.5], e.g. 0.01"));
    }
    Ok(())
}

fn pct(rate: f64) -> String {
    format!("{:.3}%", rate * 100.0)
}

/// The error-rate check's configuration. Unknown fields are refused; missing ones take the
/// defaults given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorRateCheck {
    /// The significance level (after Bonferroni, [`stats::alpha_per_metric`]). Default 0.01.
    pub alpha: f64,
    /// The guardrail: the canary fails at once when its error rate exceeds this fraction, once
    /// it has `guardrail_min_requests`. Default 0.05 (not 1 %: at 50 requests a single error is
    /// 2 %); `null` disables it.
    pub max_rate: Option<f64>,
    /// Canary requests before the guardrail applies. Default 50.
    pub guardrail_min_requests: u64,
    /// Canary requests before any statistical verdict; below it, Inconclusive. Default 1000.
    pub min_requests: u64,
    /// Errors the canary would have at the baseline's rate before any statistical verdict
    /// (`baseline rate × canary requests`); below it, Inconclusive. Default 5.
    pub min_expected_errors: f64,
    /// Fisher's exact test is used when the smaller expected error count under the pooled rate
    /// (`pooled rate × min(canary requests, baseline requests)`) is below this; otherwise the
    /// two-proportion z-test. Default 10.
    pub fisher_below_expected: f64,
    /// The practical effect, part 1: the canary rate must exceed the baseline's by at least this
    /// many **percentage points**. Default 0.5.
    pub min_points: f64,
    /// The practical effect, part 2: the canary rate must be at least this multiple of the
    /// baseline's. Default 1.5.
    pub min_ratio: f64,
}

impl Default for ErrorRateCheck {
    fn default() -> ErrorRateCheck {
        ErrorRateCheck {
            alpha: 0.01,
            max_rate: Some(0.05),
            guardrail_min_requests: 50,
            min_requests: 1000,
            min_expected_errors: 5.0,
            fisher_below_expected: 10.0,
            min_points: 0.5,
            min_ratio: 1.5,
        }
    }
}

impl ErrorRateCheck {
    /// `Ok` when every field is in range, else a message naming the field and what to set.
    pub fn validate(&self) -> Result<(), String> {
        check_alpha(self.alpha)?;
        if let Some(m) = self.max_rate
            && !(m > 0.0 && m <= 1.0)
        {
            return Err(format!(
                "max_rate is {m}: set a fraction in (0, 1], e.g. 0.05, or null"
            ));
        }
        if self.guardrail_min_requests == 0 {
            return Err("guardrail_min_requests is 0: set at least 1 (default 50)".into());
        }
        if self.min_requests == 0 {
            return Err("min_requests is 0: set at least 1 (default 1000)".into());
        }
        if !(self.min_expected_errors >= 0.0 && self.min_expected_errors.is_finite()) {
            return Err(format!(
                "min_expected_errors is {}: set a finite number ≥ 0 (default 5)",
                self.min_expected_errors
            ));
        }
        if !(self.fisher_below_expected >= 0.0 && self.fisher_below_expected.is_finite()) {
            return Err(format!(
                "fisher_below_expected is {}: set a finite number ≥ 0 (default 10)",
                self.fisher_below_expected
            ));
        }
        if !(0.0..=100.0).contains(&self.min_points) {
            return Err(format!(
                "min_points is {}: set percentage points in [0, 100] (default 0.5)",
                self.min_points
            ));
        }
        if !(self.min_ratio >= 1.0 && self.min_ratio.is_finite()) {
            return Err(format!(
                "min_ratio is {}: set a finite ratio ≥ 1 (default 1.5)",
                self.min_ratio
            ));
        }
        Ok(())
    }
}

/// Judges the canary's error rate over one window, against the baseline's over the same window
/// (`None`: no baseline, the last wave).
///
/// In order:
/// 1. `Error` if the configuration is invalid or a side has more errors than requests;
/// 2. the guardrail: `Fail` (strong) if the canary has ≥ `guardrail_min_requests` and its rate
///    is above `max_rate`;
/// 3. `Inconclusive` below `min_requests` canary requests;
/// 4. no baseline: `Pass` with `weaker_evidence` (thresholds only; `Inconclusive` if the
///    guardrail is disabled, as then nothing was checked);
/// 5. `Inconclusive` if the baseline has no requests;
/// 6. the test, one-sided (canary worse): Fisher's exact test when the smaller expected error
///    count is below `fisher_below_expected`, else the two-proportion z-test;
/// 7. `Fail` if `p < alpha` and the canary rate is ≥ baseline + `min_points` percentage points
///    and ≥ `min_ratio` × baseline (strong when `p < alpha/10`);
/// 8. `Inconclusive` if the canary's observed rate is that much worse but not significantly,
///    and it would expect fewer than `min_expected_errors` errors at the baseline's rate (it
///    looks bad and the data are too few to say); otherwise `Pass`.
///
/// Step 8 narrows the notes' low-traffic gate ("fewer than 5 expected errors: Inconclusive")
/// to the canaries that look worse: under that gate an error-free baseline (most healthy
/// services over a short window) left every canary Inconclusive, so a good release could never
/// pass. A canary whose observed rate is below the practical effect, over `min_requests`, is
/// no worse by the check's own standard; the decision still records the minimum detectable
/// rate, so a reader sees how small a regression the window could have caught.
///
/// The decision records the minimum detectable canary rate for the sizes (normal
/// approximation, power [`POWER`]).
pub fn judge_error_rate(
    canary: Counts,
    baseline: Option<Counts>,
    cfg: &ErrorRateCheck,
) -> Decision {
    let thresholds = Thresholds {
        alpha: cfg.alpha,
        guardrail: cfg.max_rate,
        guardrail_min: cfg.guardrail_min_requests,
        min_n: cfg.min_requests,
        min_difference: Some(cfg.min_points / 100.0),
        min_ratio: Some(cfg.min_ratio),
    };
    let side = |c: Counts| Side {
        n: c.total,
        errors: Some(c.errors),
        value: c.rate(),
    };
    let mut d = Decision::new(CheckKind::ErrorRate, thresholds, side(canary));
    d.baseline = baseline.map(side);
    if let Err(e) = cfg.validate() {
        return d.with(Verdict::Error, format!("invalid error-rate check: {e}"));
    }
    for (name, c) in [("canary", Some(canary)), ("baseline", baseline)] {
        if let Some(c) = c
            && c.errors > c.total
        {
            return d.with(
                Verdict::Error,
                format!(
                    "{name} counts are inconsistent: {} errors of {} requests",
                    c.errors, c.total
                ),
            );
        }
    }
    let n_c = canary.total;
    let rate_c = canary.rate().unwrap_or(0.0);
    if let Some(max) = cfg.max_rate
        && n_c >= cfg.guardrail_min_requests
        && rate_c > max
    {
        d.strong = true;
        return d.with(
            Verdict::Fail,
            format!(
                "guardrail: canary error rate {} ({} of {n_c}) is above the maximum {}",
                pct(rate_c),
                canary.errors,
                pct(max)
            ),
        );
    }
    if n_c < cfg.min_requests {
        return d.with(
            Verdict::Inconclusive,
            format!(
                "only {n_c} canary requests, {} needed for a verdict: extend the window",
                cfg.min_requests
            ),
        );
    }
    let Some(base) = baseline else {
        d.weaker_evidence = true;
        return match cfg.max_rate {
            Some(max) => d.with(
                Verdict::Pass,
                format!(
                    "no baseline: canary error rate {} over {n_c} requests is within the guardrail {} (thresholds only, weaker evidence)",
                    pct(rate_c),
                    pct(max)
                ),
            ),
            None => d.with(
                Verdict::Inconclusive,
                "no baseline and no guardrail (max_rate is null): nothing to judge against".into(),
            ),
        };
    };
    let Some(rate_b) = base.rate() else {
        return d.with(
            Verdict::Inconclusive,
            "the baseline had no requests in the window: nothing to compare with".into(),
        );
    };
    let n_b = base.total;
    d.minimum_detectable_effect = minimum_detectable_rate(cfg.alpha, POWER, n_c, n_b, rate_b)
        .ok()
        .flatten();
    let mde = d
        .minimum_detectable_effect
        .map_or_else(|| "none below 100%".to_string(), pct);
    d.effect = Some(Effect {
        difference: rate_c - rate_b,
        ratio: (rate_b > 0.0).then(|| rate_c / rate_b),
    });
    let expected = rate_b * n_c as f64;
    let pooled = (canary.errors + base.errors) as f64 / (n_c + n_b) as f64;
    let smallest_expected = pooled * n_c.min(n_b) as f64;
    let (test, statistic, p) = if smallest_expected < cfg.fisher_below_expected {
        match fisher_exact_greater(
            canary.errors,
            n_c - canary.errors,
            base.errors,
            n_b - base.errors,
        ) {
            Ok(f) => (TestKind::FisherExact, f.odds_ratio, f.p_value),
            Err(e) => return d.with(Verdict::Error, format!("Fisher's exact test: {e}")),
        }
    } else {
        match two_proportion_z(canary.errors, n_c, base.errors, n_b) {
            Ok(z) => (TestKind::TwoProportionZ, z.z.unwrap_or(0.0), z.p_value),
            Err(e) => return d.with(Verdict::Error, format!("two-proportion z-test: {e}")),
        }
    };
    d.test = Some(test);
    d.statistic = Some(statistic);
    d.p_value = Some(p);
    // A hair of slack so 1.5 % against 1.0 % + 0.5 points is not lost to rounding.
    const SLACK: f64 = 1e-12;
    let points_ok = rate_c - rate_b >= cfg.min_points / 100.0 - SLACK;
    let ratio_ok = rate_c >= cfg.min_ratio * rate_b - SLACK;
    let significant = p < cfg.alpha;
    let what = format!(
        "canary {} ({} of {n_c}) vs baseline {} ({} of {n_b}), p = {p:.3e} ({test:?}, α = {})",
        pct(rate_c),
        canary.errors,
        pct(rate_b),
        base.errors,
        cfg.alpha
    );
    if significant && points_ok && ratio_ok {
        d.strong = p < cfg.alpha / 10.0;
        d.with(
            Verdict::Fail,
            format!(
                "{what}: significantly higher, by at least {} points and {}×",
                cfg.min_points, cfg.min_ratio
            ),
        )
    } else if expected < cfg.min_expected_errors && points_ok && ratio_ok {
        // Worse by the practical standard but not significantly, with too few errors expected
        // at the baseline rate for the test to have power: neither a pass nor a fail yet. (A
        // clear fail above still counts: Fisher's exact test is valid at any count.)
        d.with(
            Verdict::Inconclusive,
            format!(
                "{what}: the canary would expect {expected:.2} errors at the baseline rate ({} needed to judge a rate this close); detectable canary rate {mde}",
                cfg.min_expected_errors
            ),
        )
    } else if significant {
        d.with(
            Verdict::Pass,
            format!(
                "{what}: significant but below the practical effect (+{} points and {}×)",
                cfg.min_points, cfg.min_ratio
            ),
        )
    } else {
        d.with(
            Verdict::Pass,
            format!("{what}: not significantly higher; detectable canary rate {mde}"),
        )
    }
}

/// The latency check's configuration. Unknown fields are refused; missing ones take the
/// defaults given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyCheck {
    /// The significance level (after Bonferroni). Default 0.01.
    pub alpha: f64,
    /// The guardrail: the canary fails at once when the **median** of its p95 samples is above
    /// this many ms (the median, not the maximum, so one slow step — a GC pause, a cold cache —
    /// does not roll back a release; a sustained breach does). Default 500; `null` disables.
    pub max_ms: Option<f64>,
    /// Canary samples before the guardrail applies. Default 5, at least 1.
    pub guardrail_min_samples: usize,
    /// The relative guardrail: the canary fails at once when the median of its p95 samples is
    /// above this multiple of the baseline's (both sides with ≥ `guardrail_min_samples`) and
    /// at least `min_shift_ms` above it — so a 1 ms service at 2.5 ms is not rolled back by
    /// the ratio alone. Default 2 (the common "p95 > 2× baseline" rule); `null` disables.
    pub max_ratio: Option<f64>,
    /// Samples needed on each side before a statistical verdict; below it, Inconclusive.
    /// Default 30; at least [`MIN_SAMPLES_FLOOR`] (5).
    pub min_samples: usize,
    /// The practical effect: the Hodges-Lehmann shift must be at least this fraction of the
    /// baseline median … Default 0.10.
    pub min_shift_fraction: f64,
    /// … and at least this many ms. Default 20.
    pub min_shift_ms: f64,
}

impl Default for LatencyCheck {
    fn default() -> LatencyCheck {
        LatencyCheck {
            alpha: 0.01,
            max_ms: Some(500.0),
            guardrail_min_samples: 5,
            max_ratio: Some(2.0),
            min_samples: 30,
            min_shift_fraction: 0.10,
            min_shift_ms: 20.0,
        }
    }
}

impl LatencyCheck {
    /// `Ok` when every field is in range, else a message naming the field and what to set.
    pub fn validate(&self) -> Result<(), String> {
        check_alpha(self.alpha)?;
        if let Some(m) = self.max_ms
            && !(m > 0.0 && m.is_finite())
        {
            return Err(format!(
                "max_ms is {m}: set a positive number of ms, e.g. 500, or null"
            ));
        }
        if self.guardrail_min_samples == 0 {
            return Err("guardrail_min_samples is 0: set at least 1 (default 5)".into());
        }
        if let Some(r) = self.max_ratio
            && !(r > 1.0 && r.is_finite())
        {
            return Err(format!(
                "max_ratio is {r}: set a finite multiple above 1, e.g. 2, or null"
            ));
        }
        if self.min_samples < MIN_SAMPLES_FLOOR {
            return Err(format!(
                "min_samples is {}: set at least {MIN_SAMPLES_FLOOR} (fewer can never reject at α ≤ 0.02; default 30)",
                self.min_samples
            ));
        }
        if self.min_samples > stats::MAX_SAMPLES {
            return Err(format!(
                "min_samples is {}: set at most {}",
                self.min_samples,
                stats::MAX_SAMPLES
            ));
        }
        if !(self.min_shift_fraction >= 0.0 && self.min_shift_fraction.is_finite()) {
            return Err(format!(
                "min_shift_fraction is {}: set a finite fraction ≥ 0 (default 0.10)",
                self.min_shift_fraction
            ));
        }
        if !(self.min_shift_ms >= 0.0 && self.min_shift_ms.is_finite()) {
            return Err(format!(
                "min_shift_ms is {}: set a finite number of ms ≥ 0 (default 20)",
                self.min_shift_ms
            ));
        }
        Ok(())
    }
}

/// The median of finite values (sorted copy); `None` when empty.
fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        s[n / 2 - 1] + (s[n / 2] - s[n / 2 - 1]) / 2.0
    })
}

/// The pooled standard deviation of two samples (each ≥ 2 values), `None` otherwise.
fn pooled_sd(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let ss = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>()
    };
    Some(((ss(a) + ss(b)) / (a.len() + b.len() - 2) as f64).sqrt())
}

fn bad_sample(v: &[f64]) -> Option<(usize, f64)> {
    v.iter()
        .enumerate()
        .find(|(_, x)| !x.is_finite() || **x < 0.0)
        .map(|(i, x)| (i, *x))
}

/// Judges the canary's latency over one window: `canary` and `baseline` are per-host, per-step
/// p95 latencies in ms over the same window (non-overlapping steps); `baseline` is `None` when
/// there is none (the last wave). An empty baseline slice is a baseline without data
/// (Inconclusive), not a missing one: the two are kept apart on purpose.
///
/// In order:
/// 1. `Error` if the configuration is invalid or a sample is NaN, infinite or negative (drop
///    steps without data before judging);
/// 2. the guardrail: `Fail` (strong) if the canary has ≥ `guardrail_min_samples` samples and
///    their median is above `max_ms`;
/// 3. `Inconclusive` if a side has fewer than `min_samples`;
/// 4. no baseline: `Pass` with `weaker_evidence` (`Inconclusive` if the guardrail is disabled);
/// 5. `Fail` if the one-sided Mann-Whitney test (canary greater) gives `p < alpha` and the
///    Hodges-Lehmann shift (canary − baseline) is ≥ `max(min_shift_fraction × baseline median,
///    min_shift_ms)` (strong when `p < alpha/10`); otherwise `Pass`.
///
/// The decision records the minimum detectable shift in ms (normal approximation of the
/// Mann-Whitney power, power [`POWER`], times the pooled SD).
pub fn judge_latency(canary: &[f64], baseline: Option<&[f64]>, cfg: &LatencyCheck) -> Decision {
    let thresholds = Thresholds {
        alpha: cfg.alpha,
        guardrail: cfg.max_ms,
        guardrail_min: cfg.guardrail_min_samples as u64,
        min_n: cfg.min_samples as u64,
        min_difference: None,
        min_ratio: None,
    };
    let side = |v: &[f64]| Side {
        n: v.len() as u64,
        errors: None,
        value: if bad_sample(v).is_none() {
            median(v)
        } else {
            None
        },
    };
    let mut d = Decision::new(CheckKind::Latency, thresholds, side(canary));
    d.baseline = baseline.map(side);
    if let Err(e) = cfg.validate() {
        return d.with(Verdict::Error, format!("invalid latency check: {e}"));
    }
    for (name, v) in [("canary", Some(canary)), ("baseline", baseline)] {
        if let Some(v) = v {
            if let Some((i, x)) = bad_sample(v) {
                return d.with(
                    Verdict::Error,
                    format!("{name} sample {i} is {x}: latencies must be finite and ≥ 0 (drop steps without data)"),
                );
            }
            if v.len() > stats::MAX_SAMPLES {
                return d.with(
                    Verdict::Error,
                    format!(
                        "{name} has {} samples, more than {}",
                        v.len(),
                        stats::MAX_SAMPLES
                    ),
                );
            }
        }
    }
    let n_c = canary.len();
    let med_c = median(canary);
    if let (Some(max), Some(m)) = (cfg.max_ms, med_c)
        && n_c >= cfg.guardrail_min_samples
        && m > max
    {
        d.strong = true;
        return d.with(
            Verdict::Fail,
            format!("guardrail: canary median p95 {m:.1} ms over {n_c} samples is above the maximum {max} ms"),
        );
    }
    if let (Some(ratio), Some(m), Some(b)) = (cfg.max_ratio, med_c, baseline)
        && n_c >= cfg.guardrail_min_samples
        && b.len() >= cfg.guardrail_min_samples
        && let Some(mb) = median(b)
        && m > ratio * mb
        && m - mb >= cfg.min_shift_ms
    {
        d.strong = true;
        d.effect = Some(Effect {
            difference: m - mb,
            ratio: (mb > 0.0).then(|| m / mb),
        });
        return d.with(
            Verdict::Fail,
            format!(
                "guardrail: canary median p95 {m:.1} ms over {n_c} samples is above {ratio}× the baseline's {mb:.1} ms"
            ),
        );
    }
    let short = |name: &str, n: usize| {
        format!(
            "only {n} {name} samples, {} needed per side for a verdict: extend the window",
            cfg.min_samples
        )
    };
    if n_c < cfg.min_samples {
        return d.with(Verdict::Inconclusive, short("canary", n_c));
    }
    let Some(base) = baseline else {
        d.weaker_evidence = true;
        let m = med_c.unwrap_or(0.0);
        return match cfg.max_ms {
            Some(max) => d.with(
                Verdict::Pass,
                format!("no baseline: canary median p95 {m:.1} ms is within the guardrail {max} ms (thresholds only, weaker evidence)"),
            ),
            None => d.with(
                Verdict::Inconclusive,
                "no baseline and no guardrail (max_ms is null): nothing to judge against".into(),
            ),
        };
    };
    if base.len() < cfg.min_samples {
        return d.with(Verdict::Inconclusive, short("baseline", base.len()));
    }
    let med_b = median(base).unwrap_or(0.0);
    let required = (cfg.min_shift_fraction * med_b).max(cfg.min_shift_ms);
    d.thresholds.min_difference = Some(required);
    let (mw, shift) = match (
        mann_whitney_u(canary, base, Alternative::Greater),
        hodges_lehmann(canary, base),
    ) {
        (Ok(mw), Ok(hl)) => (mw, hl),
        (Err(e), _) | (_, Err(e)) => {
            return d.with(Verdict::Error, format!("latency statistics: {e}"));
        }
    };
    d.test = Some(match mw.method {
        Method::Exact => TestKind::MannWhitneyExact,
        Method::Asymptotic => TestKind::MannWhitneyAsymptotic,
    });
    d.statistic = Some(mw.u);
    d.p_value = Some(mw.p_value);
    d.effect = Some(Effect {
        difference: shift,
        ratio: (med_b > 0.0).then(|| shift / med_b),
    });
    d.minimum_detectable_effect = minimum_detectable_shift_sd(cfg.alpha, POWER, n_c, base.len())
        .ok()
        .flatten()
        .zip(pooled_sd(canary, base))
        .map(|(sd_units, sd)| sd_units * sd);
    let mde = d
        .minimum_detectable_effect
        .map_or_else(|| "unknown".to_string(), |m| format!("{m:.1} ms"));
    let what = format!(
        "canary median p95 {:.1} ms ({n_c} samples) vs baseline {med_b:.1} ms ({} samples): shift {shift:.1} ms, p = {:.3e} (α = {})",
        med_c.unwrap_or(0.0),
        base.len(),
        mw.p_value,
        cfg.alpha
    );
    let significant = mw.p_value < cfg.alpha;
    if significant && shift >= required {
        d.strong = mw.p_value < cfg.alpha / 10.0;
        d.with(
            Verdict::Fail,
            format!("{what}: significantly slower, by at least {required:.1} ms"),
        )
    } else if significant {
        d.with(
            Verdict::Pass,
            format!("{what}: significant but the shift is below the practical {required:.1} ms"),
        )
    } else {
        d.with(
            Verdict::Pass,
            format!("{what}: not significantly slower; detectable shift {mde}"),
        )
    }
}

/// The fast path's configuration (polled every few seconds during a wave).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FastPathCheck {
    /// The canary's error rate at or above which it fails at once. Default 0.20.
    pub max_rate: f64,
    /// Canary requests before the fast path applies. Default 50.
    pub min_requests: u64,
    /// The canary also fails at once at this multiple of the baseline's error rate (the notes'
    /// "or 10× baseline"), when a baseline is given and has errors. Default 10; `null`
    /// disables.
    pub baseline_multiple: Option<f64>,
    /// ... and only at or above this error rate, so a baseline at 0.01 % does not turn a
    /// canary at 0.1 % into an immediate rollback (the windowed checks judge those). Default
    /// 0.05.
    pub baseline_multiple_min_rate: f64,
}

impl Default for FastPathCheck {
    fn default() -> FastPathCheck {
        FastPathCheck {
            max_rate: 0.20,
            min_requests: 50,
            baseline_multiple: Some(10.0),
            baseline_multiple_min_rate: 0.05,
        }
    }
}

impl FastPathCheck {
    /// `Ok` when every field is in range, else a message naming the field and what to set.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.max_rate > 0.0 && self.max_rate <= 1.0) {
            return Err(format!(
                "max_rate is {}: set a fraction in (0, 1] (default 0.20)",
                self.max_rate
            ));
        }
        if self.min_requests == 0 {
            return Err("min_requests is 0: set at least 1 (default 50)".into());
        }
        if let Some(m) = self.baseline_multiple
            && !(m > 1.0 && m.is_finite())
        {
            return Err(format!(
                "baseline_multiple is {m}: set a finite multiple above 1 (default 10), or null"
            ));
        }
        if !(self.baseline_multiple_min_rate > 0.0 && self.baseline_multiple_min_rate <= 1.0) {
            return Err(format!(
                "baseline_multiple_min_rate is {}: set a fraction in (0, 1] (default 0.05)",
                self.baseline_multiple_min_rate
            ));
        }
        Ok(())
    }
}

/// [`fast_path`] with the baseline's counts over the same look: the canary also fails at once
/// at `baseline_multiple` × the baseline's error rate (baseline with errors, canary at or
/// above `baseline_multiple_min_rate`, ≥ `min_requests`).
pub fn fast_path_against(
    canary: Counts,
    baseline: Option<Counts>,
    cfg: &FastPathCheck,
) -> Option<Decision> {
    if let Some(d) = fast_path(canary, cfg) {
        return Some(d);
    }
    let (m, base) = (cfg.baseline_multiple?, baseline?);
    let (rate, base_rate) = (canary.rate()?, base.rate()?);
    if base.errors > base.total || base_rate <= 0.0 {
        return None;
    }
    if canary.total >= cfg.min_requests
        && rate >= cfg.baseline_multiple_min_rate
        && rate >= m * base_rate
    {
        let thresholds = Thresholds {
            alpha: 0.0,
            guardrail: Some(m * base_rate),
            guardrail_min: cfg.min_requests,
            min_n: cfg.min_requests,
            min_difference: None,
            min_ratio: Some(m),
        };
        let side = |c: Counts| Side {
            n: c.total,
            errors: Some(c.errors),
            value: c.rate(),
        };
        let mut d = Decision::new(CheckKind::FastPath, thresholds, side(canary));
        d.baseline = Some(side(base));
        d.effect = Some(Effect {
            difference: rate - base_rate,
            ratio: Some(rate / base_rate),
        });
        let mut d = d.with(
            Verdict::Fail,
            format!(
                "fast path: canary error rate {} ({} of {}) is {:.1}× the baseline's {}: roll back now",
                pct(rate),
                canary.errors,
                canary.total,
                rate / base_rate,
                pct(base_rate)
            ),
        );
        d.strong = true;
        return Some(d);
    }
    None
}

/// The fast path: `Some(Fail)` (strong) when the canary has ≥ `min_requests` requests and an
/// error rate ≥ `max_rate` (roll back every upgraded host now, without analysis);
/// `Some(Error)` for an invalid configuration or errors above requests (so a broken fast path
/// is never silent); `None` otherwise (carry on with the analysis). The notes' "or 10× the
/// baseline" rule is [`fast_path_against`], which takes the baseline too.
pub fn fast_path(canary: Counts, cfg: &FastPathCheck) -> Option<Decision> {
    let thresholds = Thresholds {
        alpha: 0.0,
        guardrail: Some(cfg.max_rate),
        guardrail_min: cfg.min_requests,
        min_n: cfg.min_requests,
        min_difference: None,
        min_ratio: None,
    };
    let side = Side {
        n: canary.total,
        errors: Some(canary.errors),
        value: canary.rate(),
    };
    let d = Decision::new(CheckKind::FastPath, thresholds, side);
    if let Err(e) = cfg.validate() {
        return Some(d.with(Verdict::Error, format!("invalid fast path: {e}")));
    }
    if canary.errors > canary.total {
        return Some(d.with(
            Verdict::Error,
            format!(
                "canary counts are inconsistent: {} errors of {} requests",
                canary.errors, canary.total
            ),
        ));
    }
    let rate = canary.rate()?;
    if canary.total >= cfg.min_requests && rate >= cfg.max_rate {
        let mut d = d.with(
            Verdict::Fail,
            format!(
                "fast path: canary error rate {} ({} of {}) is at or above {}: roll back now",
                pct(rate),
                canary.errors,
                canary.total,
                pct(cfg.max_rate)
            ),
        );
        d.strong = true;
        return Some(d);
    }
    None
}

/// How Fail verdicts count as failures in [`Measurements`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FailRule {
    /// Argo Rollouts: every Fail evaluation is a failure.
    Each,
    /// The notes' rule, the default: a Fail is a failure only when it is strong (p < α/10, a
    /// guardrail) or the previous counted evaluation was a Fail too (Errors, which are not
    /// counted, do not break the run of Fails). A count that completes on an unconfirmed Fail is
    /// Inconclusive, not Successful.
    #[default]
    ConsecutiveOrStrong,
}

/// The limits of a check's repeated evaluations, as Argo Rollouts' metric fields. Unknown
/// fields are refused; missing ones take the defaults given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeasurementLimits {
    /// Evaluations (Pass, Fail, Inconclusive; Errors do not count) after which the check is
    /// complete. Default 1 (Argo's effective count without an interval); `null`: indefinite,
    /// until [`Measurements::terminate`].
    pub count: Option<u32>,
    /// The check fails when failures exceed this. Default 0 (the first failure); -1 disables.
    pub failure_limit: i64,
    /// The check is Inconclusive when Inconclusive evaluations exceed this. Default 0.
    pub inconclusive_limit: u32,
    /// The check is Error when consecutive Errors exceed this. Default 4 (the 5th in a row).
    pub consecutive_error_limit: u32,
    /// How Fail verdicts count. Default [`FailRule::ConsecutiveOrStrong`].
    pub fail_rule: FailRule,
}

impl Default for MeasurementLimits {
    fn default() -> MeasurementLimits {
        MeasurementLimits {
            count: Some(1),
            failure_limit: 0,
            inconclusive_limit: 0,
            consecutive_error_limit: 4,
            fail_rule: FailRule::ConsecutiveOrStrong,
        }
    }
}

/// The most evaluations `count` may ask for, and the most any counter holds (they saturate).
pub const MAX_COUNT: u32 = 1_000_000;

impl MeasurementLimits {
    /// `Ok` when every field is in range, else a message naming the field and what to set.
    pub fn validate(&self) -> Result<(), String> {
        match self.count {
            Some(0) => {
                return Err("count is 0: set at least 1, or null for an indefinite check".into());
            }
            Some(c) if c > MAX_COUNT => {
                return Err(format!("count is {c}: set at most {MAX_COUNT}"));
            }
            _ => {}
        }
        if self.failure_limit < -1 || self.failure_limit > MAX_COUNT as i64 {
            return Err(format!(
                "failure_limit is {}: set -1 (disabled) or 0 to {MAX_COUNT}",
                self.failure_limit
            ));
        }
        if self.inconclusive_limit > MAX_COUNT {
            return Err(format!(
                "inconclusive_limit is {}: set at most {MAX_COUNT}",
                self.inconclusive_limit
            ));
        }
        if self.consecutive_error_limit > MAX_COUNT {
            return Err(format!(
                "consecutive_error_limit is {}: set at most {MAX_COUNT}",
                self.consecutive_error_limit
            ));
        }
        if let Some(c) = self.count
            && self.failure_limit >= c as i64
        {
            return Err(format!(
                "failure_limit {} can never be exceeded within count {c}: set it below count, or -1 to disable",
                self.failure_limit
            ));
        }
        Ok(())
    }
}

/// The phase of a check (or of a run, [`run_phase`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Complete and good. (Declared first: the order is Argo's "worst" order.)
    Successful,
    /// Still evaluating.
    Running,
    /// Stopped: not enough evidence; the rollout pauses for an operator.
    Inconclusive,
    /// Stopped: too many consecutive Errors; the rollout pauses and alerts.
    Error,
    /// Stopped: the canary is worse; the rollout rolls back.
    Failed,
}

impl Phase {
    /// Whether the phase is final.
    pub fn is_done(self) -> bool {
        self != Phase::Running
    }
}

/// The counters of [`Measurements`] (read with [`Measurements::counters`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Counters {
    /// Counted evaluations (Pass, Fail, Inconclusive).
    pub count: u32,
    /// Pass evaluations.
    pub successful: u32,
    /// Failures (Fail evaluations that counted under the Fail rule).
    pub failed: u32,
    /// Fail evaluations not (yet) confirmed under [`FailRule::ConsecutiveOrStrong`].
    pub unconfirmed_failed: u32,
    /// Inconclusive evaluations.
    pub inconclusive: u32,
    /// Error evaluations.
    pub error: u32,
    /// Error evaluations since the last counted one.
    pub consecutive_error: u32,
}

/// Argo Rollouts' counters over a check's evaluations (`runMeasurements` and
/// `assessMetricStatus`), with the Fail rule of [`MeasurementLimits::fail_rule`].
///
/// - Pass, Fail and Inconclusive increment `count` and reset `consecutive_error`; Error
///   increments `error` and `consecutive_error` but not `count`.
/// - After each evaluation the phase is, checked in this order with each later one overriding
///   (so Error beats Inconclusive beats Failed): Failed if `failure_limit ≥ 0` and failures
///   `> failure_limit`; Inconclusive if inconclusive `> inconclusive_limit`; Error if
///   `consecutive_error > consecutive_error_limit`. Otherwise Successful once `count` is
///   reached (Inconclusive instead if it ends on an unconfirmed Fail), else Running.
/// - Once the phase is final, further evaluations are ignored.
/// - Deliberate difference from Argo: [`Measurements::terminate`] before any counted
///   evaluation gives Inconclusive, not Successful (no evidence is not a pass).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurements {
    limits: MeasurementLimits,
    counters: Counters,
    last_was_fail: bool,
    last_unconfirmed: bool,
    phase: Phase,
}

impl Measurements {
    /// New counters for `limits`, or the message of [`MeasurementLimits::validate`].
    pub fn new(limits: MeasurementLimits) -> Result<Measurements, String> {
        limits.validate()?;
        Ok(Measurements {
            limits,
            counters: Counters::default(),
            last_was_fail: false,
            last_unconfirmed: false,
            phase: Phase::Running,
        })
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The limits in force.
    pub fn limits(&self) -> &MeasurementLimits {
        &self.limits
    }

    /// Records one decision (its verdict and whether it is strong); returns the new phase.
    pub fn record(&mut self, d: &Decision) -> Phase {
        self.record_verdict(d.verdict, d.strong)
    }

    /// Records one evaluation's verdict (`strong`: see [`Decision::strong`]); returns the new
    /// phase. Ignored once the phase is final.
    pub fn record_verdict(&mut self, v: Verdict, strong: bool) -> Phase {
        if self.phase.is_done() {
            return self.phase;
        }
        let inc = |c: &mut u32| *c = c.saturating_add(1).min(MAX_COUNT);
        if v == Verdict::Error {
            inc(&mut self.counters.error);
            inc(&mut self.counters.consecutive_error);
        } else {
            inc(&mut self.counters.count);
            self.counters.consecutive_error = 0;
            self.last_unconfirmed = false;
            match v {
                Verdict::Pass => inc(&mut self.counters.successful),
                Verdict::Inconclusive => inc(&mut self.counters.inconclusive),
                Verdict::Fail => {
                    let confirmed = match self.limits.fail_rule {
                        FailRule::Each => true,
                        FailRule::ConsecutiveOrStrong => strong || self.last_was_fail,
                    };
                    if confirmed {
                        inc(&mut self.counters.failed);
                    } else {
                        inc(&mut self.counters.unconfirmed_failed);
                        self.last_unconfirmed = true;
                    }
                }
                Verdict::Error => {}
            }
            self.last_was_fail = v == Verdict::Fail;
        }
        self.phase = self.assess(false);
        self.phase
    }

    /// Ends an indefinite (or unfinished) check, e.g. at `max_duration`: its final phase
    /// (Successful if nothing stopped it and something was counted; Inconclusive if nothing
    /// was counted or it ends on an unconfirmed Fail). A final phase stays as it is.
    pub fn terminate(&mut self) -> Phase {
        if !self.phase.is_done() {
            self.phase = self.assess(true);
        }
        self.phase
    }

    fn assess(&self, terminating: bool) -> Phase {
        let l = &self.limits;
        let mut phase = None;
        if l.failure_limit >= 0 && i64::from(self.counters.failed) > l.failure_limit {
            phase = Some(Phase::Failed);
        }
        if self.counters.inconclusive > l.inconclusive_limit {
            phase = Some(Phase::Inconclusive);
        }
        if self.counters.consecutive_error > l.consecutive_error_limit {
            phase = Some(Phase::Error);
        }
        if let Some(p) = phase {
            return p;
        }
        let complete = terminating || l.count.is_some_and(|c| self.counters.count >= c);
        if !complete {
            Phase::Running
        } else if self.counters.count == 0 || (self.last_unconfirmed && l.failure_limit >= 0) {
            Phase::Inconclusive
        } else {
            Phase::Successful
        }
    }
}

/// The phase of a run from its checks' phases (Argo's `assessRunStatus`): any check that
/// stopped badly (Failed, Error, Inconclusive) ends the run with the worst phase in the order
/// Successful < Running < Inconclusive < Error < Failed; otherwise Running while any check runs;
/// otherwise Successful. Deliberate difference: a run with no checks is Inconclusive.
pub fn run_phase(phases: &[Phase]) -> Phase {
    let Some(&worst) = phases.iter().max() else {
        return Phase::Inconclusive;
    };
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(errors: u64, total: u64) -> Counts {
        Counts { errors, total }
    }

    #[test]
    fn error_rate_four_outcomes() {
        let cfg = ErrorRateCheck::default();
        // Fail: 3 % against 1 % over 10,000 each.
        let d = judge_error_rate(counts(300, 10_000), Some(counts(100, 10_000)), &cfg);
        assert_eq!(d.verdict, Verdict::Fail, "{}", d.reason);
        assert_eq!(d.test, Some(TestKind::TwoProportionZ));
        assert!(d.p_value.unwrap() < 1e-10 && d.strong);
        // Pass: the same rates.
        let d = judge_error_rate(counts(100, 10_000), Some(counts(100, 10_000)), &cfg);
        assert_eq!(d.verdict, Verdict::Pass, "{}", d.reason);
        assert!(d.minimum_detectable_effect.unwrap() > 0.01);
        // Inconclusive: too few canary requests, even with a bad-looking rate under the guardrail.
        let d = judge_error_rate(counts(20, 500), Some(counts(100, 10_000)), &cfg);
        assert_eq!(d.verdict, Verdict::Inconclusive, "{}", d.reason);
        // Inconclusive: enough requests, worse by the practical standard (0.75 % vs 0.1 %) but
        // not significantly, and the baseline rate predicts < 5 canary errors.
        let d = judge_error_rate(
            counts(3, 400),
            Some(counts(10, 10_000)),
            &ErrorRateCheck {
                min_requests: 400,
                ..cfg.clone()
            },
        );
        assert_eq!(d.verdict, Verdict::Inconclusive, "{}", d.reason);
        assert!(d.reason.contains("expect 0.40 errors"), "{}", d.reason);
        // The same few expected errors, the canary at the baseline's rate: no worse, a pass.
        let d = judge_error_rate(counts(2, 2_000), Some(counts(10, 10_000)), &cfg);
        assert_eq!(d.verdict, Verdict::Pass, "{}", d.reason);
        // A clear fail gets through that gate: 3 % against an error-free baseline.
        let d = judge_error_rate(counts(30, 1_000), Some(counts(0, 5_000)), &cfg);
        assert_eq!(d.verdict, Verdict::Fail, "{}", d.reason);
        assert_eq!(d.test, Some(TestKind::FisherExact));
        // No errors on either side over enough requests: a pass (an error-free service).
        let d = judge_error_rate(counts(0, 1_000), Some(counts(0, 5_000)), &cfg);
        assert_eq!(d.verdict, Verdict::Pass, "{}", d.reason);
        // ... and 0.4 % against an error-free baseline is below the practical effect (+0.5
        // points), so a pass too, whatever the p-value.
        let d = judge_error_rate(counts(4, 1_000), Some(counts(0, 5_000)), &cfg);
        assert_eq!(d.verdict, Verdict::Pass, "{}", d.reason);
        // Error: more errors than requests, and a bad config.
        let d = judge_error_rate(counts(5, 4), Some(counts(1, 10)), &cfg);
        assert_eq!(d.verdict, Verdict::Error);
        let bad = ErrorRateCheck {
            alpha: 0.7,
            ..cfg.clone()
        };
        let d = judge_error_rate(counts(1, 10_000), None, &bad);
        assert_eq!(d.verdict, Verdict::Error);
        assert!(d.reason.contains("alpha"), "{}", d.reason);
    }

    #[test]
    fn error_rate_guardrail_fisher_and_practical_effect() {
        let cfg = ErrorRateCheck::default();
        // Guardrail: 6 of 60 is 10 % > 5 %, at once, even below min_requests.
        let d = judge_error_rate(counts(6, 60), Some(counts(10, 10_000)), &cfg);
        assert_eq!((d.verdict, d.strong), (Verdict::Fail, true), "{}", d.reason);
        // ... but not below guardrail_min_requests.
        let d = judge_error_rate(counts(6, 40), Some(counts(10, 10_000)), &cfg);
        assert_eq!(d.verdict, Verdict::Inconclusive);
        // Few expected errors (pooled 25/3000 × 1000 = 8.3): Fisher. Baseline 0.5 % of 2,000;
        // canary 1.5 % of 1,000 (SciPy: p = 0.005423552701932174).
        let d = judge_error_rate(counts(15, 1_000), Some(counts(10, 2_000)), &cfg);
        assert!(
            (d.p_value.unwrap() - 0.005423552701932174).abs() < 1e-12,
            "{d:?}"
        );
        assert_eq!(d.test, Some(TestKind::FisherExact), "{}", d.reason);
        assert_eq!(d.verdict, Verdict::Fail, "{}", d.reason);
        // Significant but not practical: 1.2 % vs 1.0 % over a million each (ratio 1.2 < 1.5).
        let d = judge_error_rate(
            counts(12_000, 1_000_000),
            Some(counts(10_000, 1_000_000)),
            &cfg,
        );
        assert!(d.p_value.unwrap() < cfg.alpha);
        assert_eq!(d.verdict, Verdict::Pass, "{}", d.reason);
        assert!(d.reason.contains("below the practical effect"));
        // Ratio met but not the points: 0.3 % vs 0.1 % (3×, +0.2 points).
        let d = judge_error_rate(
            counts(3_000, 1_000_000),
            Some(counts(1_000, 1_000_000)),
            &cfg,
        );
        assert_eq!(d.verdict, Verdict::Pass, "{}", d.reason);
        // No baseline: thresholds only, flagged.
        let d = judge_error_rate(counts(10, 5_000), None, &cfg);
        assert_eq!((d.verdict, d.weaker_evidence), (Verdict::Pass, true));
        let no_guard = ErrorRateCheck {
            max_rate: None,
            ..cfg.clone()
        };
        assert_eq!(
            judge_error_rate(counts(10, 5_000), None, &no_guard).verdict,
            Verdict::Inconclusive
        );
        // Baseline without requests.
        let d = judge_error_rate(counts(10, 5_000), Some(counts(0, 0)), &cfg);
        assert_eq!(d.verdict, Verdict::Inconclusive);
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: ErrorRateCheck = serde_json::from_str("{}").unwrap();
        assert_eq!(c, ErrorRateCheck::default());
        assert_eq!(
            (
                c.min_requests,
                c.guardrail_min_requests,
                c.min_points,
                c.min_ratio
            ),
            (1000, 50, 0.5, 1.5)
        );
        assert!(serde_json::from_str::<ErrorRateCheck>(r#"{"min_point": 1}"#).is_err());
        let l: LatencyCheck = serde_json::from_str(r#"{"min_samples": 40}"#).unwrap();
        assert_eq!(
            (l.min_samples, l.min_shift_ms, l.min_shift_fraction),
            (40, 20.0, 0.10)
        );
        assert!(serde_json::from_str::<LatencyCheck>(r#"{"alpa": 0.1}"#).is_err());
        let low = LatencyCheck {
            min_samples: 4,
            ..LatencyCheck::default()
        };
        assert!(low.validate().unwrap_err().contains("at least 5"));
        let m: MeasurementLimits = serde_json::from_str(r#"{"count": null}"#).unwrap();
        assert_eq!(m.count, None);
        assert_eq!(
            serde_json::from_str::<MeasurementLimits>("{}")
                .unwrap()
                .count,
            Some(1)
        );
        assert!(
            serde_json::from_str::<MeasurementLimits>(r#"{"fail_rule": "each", "x": 1}"#).is_err()
        );
        assert!(
            MeasurementLimits {
                count: Some(0),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            MeasurementLimits {
                count: Some(3),
                failure_limit: 3,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            FastPathCheck {
                max_rate: 0.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }

    fn ramp(n: usize, start: f64, step: f64) -> Vec<f64> {
        (0..n).map(|i| start + step * i as f64).collect()
    }

    #[test]
    fn latency_four_outcomes() {
        let cfg = LatencyCheck::default();
        let base = ramp(40, 100.0, 1.0); // 100..139 ms, median 119.5
        // Fail: 60 ms slower throughout.
        let slow = ramp(40, 160.0, 1.0);
        let d = judge_latency(&slow, Some(&base), &cfg);
        assert_eq!(d.verdict, Verdict::Fail, "{}", d.reason);
        assert_eq!(d.effect.unwrap().difference, 60.0);
        assert_eq!(d.test, Some(TestKind::MannWhitneyAsymptotic));
        // Pass: significant (every canary value above) but only 10 ms (< max(11.95, 20)).
        let bit = ramp(40, 110.0, 1.0);
        let d = judge_latency(&bit, Some(&base), &cfg);
        assert!(d.p_value.unwrap() < cfg.alpha, "{}", d.reason);
        assert_eq!(d.verdict, Verdict::Pass, "{}", d.reason);
        assert_eq!(d.thresholds.min_difference, Some(20.0));
        // Pass: the same distribution.
        assert_eq!(
            judge_latency(&base, Some(&base), &cfg).verdict,
            Verdict::Pass
        );
        // Inconclusive: 29 samples on a side; an empty baseline is not a missing one.
        assert_eq!(
            judge_latency(&slow[..29], Some(&base), &cfg).verdict,
            Verdict::Inconclusive
        );
        assert_eq!(
            judge_latency(&slow, Some(&base[..29]), &cfg).verdict,
            Verdict::Inconclusive
        );
        assert_eq!(
            judge_latency(&slow, Some(&[]), &cfg).verdict,
            Verdict::Inconclusive
        );
        // No baseline: thresholds only.
        let d = judge_latency(&slow, None, &cfg);
        assert_eq!((d.verdict, d.weaker_evidence), (Verdict::Pass, true));
        // Error: NaN (a step without data) and a negative latency.
        let mut nan = slow.clone();
        nan[3] = f64::NAN;
        let d = judge_latency(&nan, Some(&base), &cfg);
        assert_eq!(d.verdict, Verdict::Error);
        assert!(d.reason.contains("sample 3"), "{}", d.reason);
        assert_eq!(
            judge_latency(&slow, Some(&[-1.0; 40]), &cfg).verdict,
            Verdict::Error
        );
    }

    #[test]
    fn latency_guardrail_uses_the_median() {
        let cfg = LatencyCheck::default();
        let base = ramp(40, 100.0, 1.0);
        // One 5-second step among 40 fast ones does not trip the 500 ms guardrail.
        let mut spike = ramp(40, 100.0, 1.0);
        spike[0] = 5_000.0;
        assert_ne!(
            judge_latency(&spike, Some(&base), &cfg).verdict,
            Verdict::Fail
        );
        // A median of 600 ms over 5 samples does, at once (below min_samples, without a baseline).
        let d = judge_latency(&[600.0; 5], None, &cfg);
        assert_eq!((d.verdict, d.strong), (Verdict::Fail, true), "{}", d.reason);
        // ... but not over 4.
        assert_eq!(
            judge_latency(&[600.0; 4], None, &cfg).verdict,
            Verdict::Inconclusive
        );
        // The shift threshold scales with the baseline: 10 % of 1,000 ms is 100 ms.
        let big = ramp(40, 950.0, 5.0);
        let cfg_no_guard = LatencyCheck {
            max_ms: None,
            ..cfg
        };
        let d = judge_latency(&ramp(40, 1_030.0, 5.0), Some(&big), &cfg_no_guard);
        assert_eq!(d.thresholds.min_difference, Some(0.1 * 1_047.5));
        assert_eq!(d.verdict, Verdict::Pass, "{}", d.reason);
    }

    #[test]
    fn latency_ratio_guardrail_needs_the_shift_too() {
        let cfg = LatencyCheck::default();
        // 2.5× the baseline's 100 ms over 5 samples each: at once, strong, before min_samples.
        let d = judge_latency(&[250.0; 5], Some(&[100.0; 5]), &cfg);
        assert_eq!((d.verdict, d.strong), (Verdict::Fail, true), "{}", d.reason);
        assert!(d.reason.contains("2× the baseline"), "{}", d.reason);
        // 2.5× of 1 ms is 1.5 ms more: under min_shift_ms (20), so not a guardrail breach.
        let d = judge_latency(&[2.5; 5], Some(&[1.0; 5]), &cfg);
        assert_eq!(d.verdict, Verdict::Inconclusive, "{}", d.reason);
        // 1.9×: no.
        let d = judge_latency(&[190.0; 5], Some(&[100.0; 5]), &cfg);
        assert_eq!(d.verdict, Verdict::Inconclusive, "{}", d.reason);
        // Disabled.
        let off = LatencyCheck {
            max_ratio: None,
            ..cfg.clone()
        };
        let d = judge_latency(&[250.0; 5], Some(&[100.0; 5]), &off);
        assert_eq!(d.verdict, Verdict::Inconclusive, "{}", d.reason);
        assert!(
            LatencyCheck {
                max_ratio: Some(0.5),
                ..cfg
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn fast_path_fires_only_with_enough_requests() {
        let cfg = FastPathCheck::default();
        assert_eq!(
            fast_path(counts(10, 50), &cfg).map(|d| d.verdict),
            Some(Verdict::Fail)
        );
        assert_eq!(fast_path(counts(9, 50), &cfg), None);
        assert_eq!(fast_path(counts(40, 49), &cfg), None);
        assert_eq!(fast_path(counts(0, 0), &cfg), None);
        assert_eq!(
            fast_path(counts(3, 2), &cfg).map(|d| d.verdict),
            Some(Verdict::Error)
        );
        // 10× the baseline: 6 % against 0.5 % fails at once; 6 % against 1 % does not (6×);
        // 0.9 % against 0.05 % is 18× but under the 5 % floor; a baseline without errors
        // gives no multiple.
        let f = |c, b| fast_path_against(c, Some(b), &cfg).map(|d| d.verdict);
        assert_eq!(f(counts(6, 100), counts(5, 1000)), Some(Verdict::Fail));
        assert_eq!(f(counts(6, 100), counts(10, 1000)), None);
        assert_eq!(f(counts(9, 1000), counts(1, 2000)), None);
        assert_eq!(f(counts(6, 100), counts(0, 1000)), None);
        assert_eq!(fast_path_against(counts(6, 100), None, &cfg), None);
        let d = fast_path_against(counts(6, 100), Some(counts(5, 1000)), &cfg).unwrap();
        assert!(d.reason.contains("12.0×"), "{}", d.reason);
        let off = FastPathCheck {
            baseline_multiple: None,
            ..cfg.clone()
        };
        assert_eq!(
            fast_path_against(counts(6, 100), Some(counts(5, 1000)), &off),
            None
        );
        assert!(
            FastPathCheck {
                baseline_multiple: Some(1.0),
                ..cfg.clone()
            }
            .validate()
            .is_err()
        );
    }

    fn limits(count: Option<u32>, rule: FailRule) -> MeasurementLimits {
        MeasurementLimits {
            count,
            fail_rule: rule,
            ..MeasurementLimits::default()
        }
    }

    #[test]
    fn counters_follow_argo() {
        use Verdict::*;
        // failure_limit 0: the first failure fails (rule Each).
        let mut m = Measurements::new(limits(Some(5), FailRule::Each)).unwrap();
        assert_eq!(m.record_verdict(Pass, false), Phase::Running);
        assert_eq!(m.record_verdict(Fail, false), Phase::Failed);
        // Ignored once final.
        assert_eq!(m.record_verdict(Pass, false), Phase::Failed);
        assert_eq!(m.counters.count, 2);
        // failure_limit 1: failed > 1 needed.
        let mut m = Measurements::new(MeasurementLimits {
            failure_limit: 1,
            ..limits(Some(5), FailRule::Each)
        })
        .unwrap();
        assert_eq!(m.record_verdict(Fail, false), Phase::Running);
        assert_eq!(m.record_verdict(Fail, false), Phase::Failed);
        // Errors do not count; the 5th consecutive Error is Error; a counted one resets them.
        let mut m = Measurements::new(limits(Some(2), FailRule::Each)).unwrap();
        for _ in 0..4 {
            assert_eq!(m.record_verdict(Error, false), Phase::Running);
        }
        assert_eq!(m.record_verdict(Pass, false), Phase::Running);
        assert_eq!(
            (
                m.counters.count,
                m.counters.error,
                m.counters.consecutive_error
            ),
            (1, 4, 0)
        );
        for _ in 0..4 {
            m.record_verdict(Error, false);
        }
        assert_eq!(m.record_verdict(Error, false), Phase::Error);
        // Count reached with passes: Successful.
        let mut m = Measurements::new(limits(Some(2), FailRule::Each)).unwrap();
        m.record_verdict(Pass, false);
        assert_eq!(m.record_verdict(Pass, false), Phase::Successful);
        // inconclusive_limit 0: the first Inconclusive stops it.
        let mut m = Measurements::new(limits(Some(3), FailRule::Each)).unwrap();
        assert_eq!(m.record_verdict(Inconclusive, false), Phase::Inconclusive);
    }

    #[test]
    fn counters_precedence_error_over_inconclusive_over_failed() {
        let mut m = Measurements::new(MeasurementLimits {
            count: Some(10),
            failure_limit: 0,
            inconclusive_limit: 5,
            consecutive_error_limit: 0,
            fail_rule: FailRule::Each,
        })
        .unwrap();
        // Records stop at the first final phase, so set the counters directly to see which
        // phase wins when several limits are exceeded at once.
        for _ in 0..6 {
            m.counters.inconclusive += 1;
        }
        m.counters.failed = 1;
        assert_eq!(m.assess(false), Phase::Inconclusive);
        m.counters.consecutive_error = 1;
        assert_eq!(m.assess(false), Phase::Error);
        m.counters.inconclusive = 0;
        m.counters.consecutive_error = 0;
        assert_eq!(m.assess(false), Phase::Failed);
    }

    #[test]
    fn consecutive_or_strong_rule() {
        use Verdict::*;
        let mut m = Measurements::new(limits(None, FailRule::ConsecutiveOrStrong)).unwrap();
        // One weak Fail, then a Pass: no failure.
        assert_eq!(m.record_verdict(Fail, false), Phase::Running);
        assert_eq!(m.record_verdict(Pass, false), Phase::Running);
        assert_eq!((m.counters.failed, m.counters.unconfirmed_failed), (0, 1));
        // Fail, Error (not counted), Fail: confirmed.
        m.record_verdict(Fail, false);
        m.record_verdict(Error, false);
        assert_eq!(m.record_verdict(Fail, false), Phase::Failed);
        // A strong Fail stands alone.
        let mut m = Measurements::new(limits(None, FailRule::ConsecutiveOrStrong)).unwrap();
        assert_eq!(m.record_verdict(Fail, true), Phase::Failed);
        // The last evaluation of a count is an unconfirmed Fail: Inconclusive, not Successful.
        let mut m = Measurements::new(limits(Some(2), FailRule::ConsecutiveOrStrong)).unwrap();
        m.record_verdict(Pass, false);
        assert_eq!(m.record_verdict(Fail, false), Phase::Inconclusive);
        // Terminating an indefinite check: Successful with passes, Inconclusive with nothing.
        let mut m = Measurements::new(limits(None, FailRule::ConsecutiveOrStrong)).unwrap();
        m.record_verdict(Pass, false);
        assert_eq!(m.terminate(), Phase::Successful);
        let mut m = Measurements::new(limits(None, FailRule::ConsecutiveOrStrong)).unwrap();
        m.record_verdict(Error, false);
        assert_eq!(m.terminate(), Phase::Inconclusive);
        // Decisions carry their strength.
        let mut m = Measurements::new(limits(None, FailRule::ConsecutiveOrStrong)).unwrap();
        let d = judge_error_rate(counts(6, 60), None, &ErrorRateCheck::default());
        assert_eq!(m.record(&d), Phase::Failed);
    }

    #[test]
    fn run_phase_takes_the_worst() {
        use Phase::*;
        assert_eq!(run_phase(&[Successful, Running]), Running);
        assert_eq!(run_phase(&[Successful, Successful]), Successful);
        assert_eq!(run_phase(&[Running, Inconclusive]), Inconclusive);
        assert_eq!(run_phase(&[Failed, Error, Inconclusive]), Failed);
        assert_eq!(run_phase(&[Error, Inconclusive, Successful]), Error);
        assert_eq!(run_phase(&[]), Inconclusive);
    }
}
