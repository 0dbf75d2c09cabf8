//! The canary judge, simulated the way the controller runs it: what share of A/A windows (the
//! same release on both sides) it fails, and how long a regression takes to be rolled back.
//!
//! Run: `cargo bench -p rampart-canary --bench judge_sim` (add `-- --windows N` for more
//! simulated windows per row than the default 200). Deterministic: every row has its own seed.
//!
//! The model (what `controller/src/analysis/eval.rs` and the runner do, minus Prometheus):
//! - a canary of C hosts and a baseline of B hosts (1 vs 5, 3 vs 3), or at the last stage the
//!   same 3 hosts against their own window before the upgrade (a historical baseline; modelled
//!   as 3 independent host series on the old release, so it differs from a concurrent 3 vs 3
//!   only by the `weaker_evidence` flag — a real past window also differs by traffic drift,
//!   which this does not model);
//! - every host serves R requests each second (exactly R: no Poisson noise in the volume),
//!   each an error with probability p, each with a log-normal latency (median 20 ms, σ 0.5:
//!   a p95 of about 45.5 ms);
//! - per host and per non-overlapping step, one latency sample: the empirical p95 (nearest
//!   rank) of that step's requests, as `histogram_quantile` would give with fine buckets;
//! - every `interval` after the window opens, both default checks (`error_rate` then
//!   `latency_p95`) judge the cumulative data since the opening (pooled counts per side, every
//!   completed step's samples per side) and [`StageRun`] records the two verdicts, with the
//!   default counters ([`window_limits`]: indefinite, two Fails in a row or one strong Fail);
//! - the fast path polls every `fast_path_interval`: each canary host's counts over the last
//!   30 s (the runner's lookback), judged by [`judge::fast_path`] with its defaults;
//! - α = 0.05 family-wise, Bonferroni over the two statistical checks: 0.025 each.
//!
//! Two profiles of the controller's settings:
//! - `e2e`: the end-to-end test's (`tests/e2e/canary.rs`): interval 3 s, step 3 s, window 21 s
//!   (max 42 s, the default 2×), fast path every 1 s, `min_requests = 200`, `min_samples = 5`
//!   (the test's, so its short windows can decide);
//! - `default`: the controller's defaults: interval 30 s, step 15 s, fast path every 5 s, the
//!   judge's own `min_requests = 1000` and `min_samples = 30`, and the 5-minute window of the
//!   configuration's example (max 10 minutes).
//!
//! A regression starts when the window opens (the canary hosts served healthy traffic before;
//! it is in the fast path's 30 s lookback). Times are from that onset to the Fail decision.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rampart_canary::judge::{self, Counts, ErrorRateCheck, FastPathCheck, LatencyCheck, Verdict};
use rampart_canary::stats::alpha_per_metric;
use rampart_canary::window::{StageRun, StageState, WindowPolicy, alpha_per_look, window_limits};

/// The family-wise α of the controller's default analysis.
const FAMILY_ALPHA: f64 = 0.05;
/// The statistical checks of the default analysis (`error_rate`, `latency_p95`).
const STATISTICAL_CHECKS: usize = 2;
/// The runner's fast-path lookback (`FAST_PATH_LOOKBACK` in `deployment/runner.rs`).
const FAST_PATH_LOOKBACK: usize = 30;
/// Latency model: log-normal with this median (ms) and σ of the log.
const MEDIAN_MS: f64 = 20.0;
const SIGMA: f64 = 0.5;
/// The healthy error probabilities.
const P0: [f64; 3] = [0.0, 0.002, 0.01];
/// The healthy error probability under the regressions.
const P0_REGRESSION: f64 = 0.002;
const RATES: [u64; 2] = [25, 100];
const SEED: u64 = 0x5eed_0ca4_a4a1_2026;
const DEFAULT_WINDOWS: usize = 200;

// --- a small seeded PRNG: xoshiro256** seeded through SplitMix64 ---------------------------

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Rng {
    s: [u64; 4],
    spare: Option<f64>,
}

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut sm = seed;
        Rng {
            s: [
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
            ],
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Marsaglia's polar method).
    fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        loop {
            let u = 2.0 * self.uniform() - 1.0;
            let v = 2.0 * self.uniform() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let f = (-2.0 * s.ln() / s).sqrt();
                self.spare = Some(v * f);
                return u * f;
            }
        }
    }
}

// --- the scenarios ----------------------------------------------------------------------

/// The controller's analysis settings of one simulated stage (seconds).
#[derive(Clone, Copy)]
struct Profile {
    name: &'static str,
    interval: u64,
    step: u64,
    window: u64,
    max_window: u64,
    fast_path_interval: u64,
    min_requests: u64,
    min_samples: usize,
}

const PROFILES: [Profile; 2] = [
    Profile {
        name: "e2e",
        interval: 3,
        step: 3,
        window: 21,
        max_window: 42,
        fast_path_interval: 1,
        min_requests: 200,
        min_samples: 5,
    },
    Profile {
        name: "default",
        interval: 30,
        step: 15,
        window: 300,
        max_window: 600,
        fast_path_interval: 5,
        min_requests: 1000,
        min_samples: 30,
    },
];

#[derive(Clone, Copy)]
struct Topology {
    name: &'static str,
    canary: usize,
    baseline: usize,
}

const TOPOLOGIES: [Topology; 3] = [
    Topology {
        name: "1 vs 5",
        canary: 1,
        baseline: 5,
    },
    Topology {
        name: "3 vs 3",
        canary: 3,
        baseline: 3,
    },
    Topology {
        name: "3 vs own past",
        canary: 3,
        baseline: 3,
    },
];

/// What the canary does differently from the baseline, from the window's opening.
#[derive(Clone, Copy)]
enum Change {
    Nothing,
    /// Every canary request fails with this probability.
    Errors(f64),
    /// Every canary request takes this many ms more.
    AddMs(f64),
    /// Every canary request takes this factor longer.
    Slower(f64),
}

impl Change {
    fn name(self) -> String {
        match self {
            Change::Nothing => "none".into(),
            Change::Errors(p) => format!("{:.0} % errors", p * 100.0),
            Change::AddMs(ms) => format!("+{ms:.0} ms"),
            Change::Slower(f) => format!("+{:.0} % latency", (f - 1.0) * 100.0),
        }
    }
}

#[derive(Clone, Copy)]
struct Setup {
    profile: Profile,
    topology: Topology,
    rate: u64,
    p0: f64,
    change: Change,
    /// Poll the fast path.
    fast_path: bool,
    /// Run the windowed checks.
    analysis: bool,
    /// The canary hosts served 30 s of healthy traffic before the onset (in the fast path's
    /// lookback).
    healthy_history: bool,
    /// A rule changed for the what-if table (never the crate's defaults otherwise).
    variant: Variant,
}

/// The A/A what-if table's rule changes, each applied alone.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// The controller's rules as they are.
    AsIs,
    /// A statistical Fail never counts on its own (only a guardrail does): two in a row.
    NoStrongShortcut,
    /// Fisher's exact test whatever the counts (never the z-test).
    AlwaysFisher,
    /// The error-rate guardrail applies from 200 canary requests, not 50.
    GuardrailFrom200,
    /// The rule before α was split over the looks too: α per check only.
    AlphaPerCheckOnly,
    /// The judge's own `min_requests` (1000) in the e2e profile too.
    MinRequests1000,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::AsIs => "as is",
            Variant::NoStrongShortcut => "no strong p<a/10",
            Variant::AlwaysFisher => "always Fisher",
            Variant::GuardrailFrom200 => "guardrail >=200",
            Variant::AlphaPerCheckOnly => "alpha per check only",
            Variant::MinRequests1000 => "min_requests 1000",
        }
    }
}

// --- one simulated host -------------------------------------------------------------------

struct Host {
    p_err: f64,
    change: Change,
    total: u64,
    errors: u64,
    /// Per second (requests, errors), the last [`FAST_PATH_LOOKBACK`].
    recent: VecDeque<(u64, u64)>,
    step_latencies: Vec<f64>,
    p95: Vec<f64>,
}

impl Host {
    fn new(p_err: f64, change: Change) -> Host {
        Host {
            p_err,
            change,
            total: 0,
            errors: 0,
            recent: VecDeque::with_capacity(FAST_PATH_LOOKBACK + 1),
            step_latencies: Vec::new(),
            p95: Vec::new(),
        }
    }

    fn remember(&mut self, requests: u64, errors: u64) {
        if self.recent.len() == FAST_PATH_LOOKBACK {
            self.recent.pop_front();
        }
        self.recent.push_back((requests, errors));
    }

    /// One second of traffic.
    fn serve(&mut self, rng: &mut Rng, rate: u64) {
        let mut errors = 0;
        for _ in 0..rate {
            if self.p_err > 0.0 && rng.uniform() < self.p_err {
                errors += 1;
            }
            let ms = MEDIAN_MS * (SIGMA * rng.normal()).exp();
            self.step_latencies.push(match self.change {
                Change::AddMs(d) => ms + d,
                Change::Slower(f) => ms * f,
                Change::Nothing | Change::Errors(_) => ms,
            });
        }
        self.total += rate;
        self.errors += errors;
        self.remember(rate, errors);
    }

    /// Healthy seconds before the onset, for the fast path's lookback only.
    fn served_before(&mut self, rng: &mut Rng, rate: u64, p0: f64) {
        for _ in 0..FAST_PATH_LOOKBACK {
            let errors = (0..rate).filter(|_| p0 > 0.0 && rng.uniform() < p0).count();
            self.remember(rate, errors as u64);
        }
    }

    /// Ends a step: its p95 (nearest rank) becomes one sample.
    fn close_step(&mut self) {
        let v = &mut self.step_latencies;
        if v.is_empty() {
            return;
        }
        let k = ((0.95 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        let (_, p95, _) = v.select_nth_unstable_by(k, f64::total_cmp);
        self.p95.push(*p95);
        v.clear();
    }

    fn lookback(&self) -> Counts {
        let (total, errors) = self
            .recent
            .iter()
            .fold((0, 0), |(t, e), (r, x)| (t + r, e + x));
        Counts { errors, total }
    }
}

fn pooled(hosts: &[Host]) -> Counts {
    Counts {
        errors: hosts.iter().map(|h| h.errors).sum(),
        total: hosts.iter().map(|h| h.total).sum(),
    }
}

fn samples(hosts: &[Host]) -> Vec<f64> {
    hosts.iter().flat_map(|h| h.p95.iter().copied()).collect()
}

/// How one simulated window ended.
struct Outcome {
    /// `pass`, `fail`, `inconclusive`, `error`, or `none` (nothing decided by `max_window`:
    /// only when the windowed checks are off).
    verdict: &'static str,
    /// The deciding check (`fast_path`, `error_rate`, `latency_p95`), if any.
    check: String,
    /// Seconds from the opening to the decision.
    at: u64,
    /// For a Fail, what made it count: `guardrail`, `fast_path`, or the test and the rule
    /// (`z strong`, `fisher 2nd`: p < α/10 on its own, or the second Fail in a row).
    why: &'static str,
}

fn why(d: &judge::Decision) -> &'static str {
    use judge::TestKind as T;
    if d.reason.starts_with("guardrail") {
        return "guardrail";
    }
    match (d.test, d.strong) {
        (Some(T::FisherExact), true) => "fisher strong",
        (Some(T::FisherExact), false) => "fisher 2nd",
        (Some(T::TwoProportionZ), true) => "z strong",
        (Some(T::TwoProportionZ), false) => "z 2nd",
        (Some(T::MannWhitneyExact), true) => "mw-exact strong",
        (Some(T::MannWhitneyExact), false) => "mw-exact 2nd",
        (Some(T::MannWhitneyAsymptotic), true) => "mw strong",
        (Some(T::MannWhitneyAsymptotic), false) => "mw 2nd",
        _ => "other",
    }
}

fn checks(p: &Profile, variant: Variant) -> (ErrorRateCheck, LatencyCheck) {
    // The controller's rule: α split over the checks, then over the stage's looks.
    let per_check = alpha_per_metric(FAMILY_ALPHA, STATISTICAL_CHECKS);
    let alpha = if variant == Variant::AlphaPerCheckOnly {
        per_check
    } else {
        alpha_per_look(
            per_check,
            Duration::from_secs(p.max_window),
            Duration::from_secs(p.interval),
        )
    };
    let mut error_rate = ErrorRateCheck {
        min_requests: p.min_requests,
        ..ErrorRateCheck::default()
    };
    match variant {
        Variant::AsIs | Variant::NoStrongShortcut => {}
        Variant::AlwaysFisher => error_rate.fisher_below_expected = 1e12,
        Variant::GuardrailFrom200 => error_rate.guardrail_min_requests = 200,
        Variant::AlphaPerCheckOnly => {}
        Variant::MinRequests1000 => error_rate.min_requests = 1000,
    }
    error_rate.alpha = alpha;
    (
        error_rate,
        LatencyCheck {
            alpha,
            min_samples: p.min_samples,
            ..LatencyCheck::default()
        },
    )
}

fn simulate(s: &Setup, rng: &mut Rng) -> Outcome {
    let p = &s.profile;
    let canary_p = match s.change {
        Change::Errors(e) => e,
        _ => s.p0,
    };
    let mut canary: Vec<Host> = (0..s.topology.canary)
        .map(|_| Host::new(canary_p, s.change))
        .collect();
    let mut baseline: Vec<Host> = (0..s.topology.baseline)
        .map(|_| Host::new(s.p0, Change::Nothing))
        .collect();
    if s.healthy_history {
        for h in &mut canary {
            h.served_before(rng, s.rate, s.p0);
        }
    }
    let (error_rate, latency) = checks(p, s.variant);
    let fast = FastPathCheck::default();
    let mut run = StageRun::new(
        WindowPolicy {
            window: Duration::from_secs(p.window),
            max_window: Duration::from_secs(p.max_window),
        },
        vec![
            ("error_rate".into(), window_limits()),
            ("latency_p95".into(), window_limits()),
        ],
    )
    .expect("the simulated stage's policy is valid");
    for t in 1..=p.max_window {
        for h in canary.iter_mut().chain(baseline.iter_mut()) {
            h.serve(rng, s.rate);
        }
        if t % p.step == 0 {
            for h in canary.iter_mut().chain(baseline.iter_mut()) {
                h.close_step();
            }
        }
        // The runner polls the fast path before the evaluation due at the same moment.
        if s.fast_path && t % p.fast_path_interval == 0 {
            let failed = canary.iter().any(|h| {
                judge::fast_path(h.lookback(), &fast).is_some_and(|d| d.verdict == Verdict::Fail)
            });
            if failed {
                run.fail_now("fast_path");
                return Outcome {
                    verdict: "fail",
                    check: "fast_path".into(),
                    at: t,
                    why: "fast_path",
                };
            }
        }
        if s.analysis && t % p.interval == 0 {
            let e = judge::judge_error_rate(pooled(&canary), Some(pooled(&baseline)), &error_rate);
            let (cs, bs) = (samples(&canary), samples(&baseline));
            let l = judge::judge_latency(&cs, Some(&bs), &latency);
            let strong = |d: &judge::Decision| {
                d.strong
                    && (s.variant != Variant::NoStrongShortcut || d.reason.starts_with("guardrail"))
            };
            let verdicts = [(e.verdict, strong(&e)), (l.verdict, strong(&l))];
            if let StageState::Done(v) = run.record(Duration::from_secs(t), &verdicts) {
                let check = v.check().unwrap_or("").to_string();
                let why = match v.check() {
                    _ if v.name() != "fail" => "",
                    Some("error_rate") => why(&e),
                    _ => why(&l),
                };
                return Outcome {
                    verdict: v.name(),
                    check,
                    at: t,
                    why,
                };
            }
        }
    }
    debug_assert!(!s.analysis, "the stage decides by max_window");
    Outcome {
        verdict: "none",
        check: String::new(),
        at: p.max_window,
        why: "",
    }
}

/// `windows` simulated windows of `s`, seeded from `row`.
fn simulate_many(s: &Setup, row: u64, windows: usize) -> Vec<Outcome> {
    let mut seed = SEED ^ row.wrapping_mul(0xA24B_AED4_963E_E407);
    (0..windows)
        .map(|_| simulate(s, &mut Rng::new(splitmix64(&mut seed))))
        .collect()
}

/// The first evaluation (s) at which the error-rate check has its `min_requests`.
fn floor_error_rate(s: &Setup) -> Option<u64> {
    let p = &s.profile;
    (1..=p.max_window / p.interval)
        .map(|k| k * p.interval)
        .find(|t| s.topology.canary as u64 * s.rate * t >= p.min_requests)
}

/// The first evaluation (s) at which the latency check has `min_samples` on both sides.
fn floor_latency(s: &Setup) -> Option<u64> {
    let p = &s.profile;
    let fewer = s.topology.canary.min(s.topology.baseline);
    (1..=p.max_window / p.interval)
        .map(|k| k * p.interval)
        .find(|t| fewer * (*t / p.step) as usize >= p.min_samples)
}

// --- summaries ----------------------------------------------------------------------------

/// The nearest-rank `q` quantile of `v` (sorted here); `None` when empty.
fn quantile(v: &mut [u64], q: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let k = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[k])
}

fn share(outcomes: &[Outcome], f: impl Fn(&Outcome) -> bool) -> f64 {
    100.0 * outcomes.iter().filter(|o| f(o)).count() as f64 / outcomes.len().max(1) as f64
}

/// The exact (Clopper-Pearson) one-sided 95 % upper bound of a rate seen `k` times in `n`.
fn upper_bound_95(k: usize, n: usize) -> f64 {
    if k >= n {
        return 1.0;
    }
    let cdf = |p: f64| -> f64 {
        // P(X ≤ k), terms built in logs.
        let (lp, lq) = (p.ln(), (1.0 - p).ln());
        let mut ln_c = 0.0;
        let mut sum = 0.0;
        for i in 0..=k {
            if i > 0 {
                ln_c += ((n - i + 1) as f64).ln() - (i as f64).ln();
            }
            sum += (ln_c + i as f64 * lp + (n - i) as f64 * lq).exp();
        }
        sum
    };
    let (mut lo, mut hi) = (k as f64 / n as f64, 1.0);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if cdf(mid) > 0.05 { lo = mid } else { hi = mid }
    }
    hi
}

fn opt_s(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{s}"))
}

fn intervals(v: Option<u64>, interval: u64) -> String {
    v.map_or_else(
        || "-".into(),
        |s| format!("{:.1}", s as f64 / interval as f64),
    )
}

fn row_label(p: &Profile) -> String {
    format!("{} ({}s/{}s/{}s)", p.name, p.interval, p.step, p.window)
}

// --- the tables ---------------------------------------------------------------------------

fn a_a(windows: usize) {
    println!("\n## A/A: the same release on both sides, {windows} windows per row");
    println!(
        "profile = name (interval/step/window); windows extend to 2x when Inconclusive; p0 = per-request error probability on both sides"
    );
    println!(
        "{:<22} {:<14} {:>5} {:>6} | {:>6} {:>6} {:>6} {:>6} | {:>9} | fails: check and rule (count)",
        "profile", "hosts", "req/s", "p0", "fail%", "pass%", "inc%", "err%", "ends p50s"
    );
    let (mut fails, mut total, mut worst) = (0usize, 0usize, (0.0f64, String::new()));
    let mut row = 0u64;
    for profile in PROFILES {
        for topology in TOPOLOGIES {
            for rate in RATES {
                for p0 in P0 {
                    row += 1;
                    let s = Setup {
                        profile,
                        topology,
                        rate,
                        p0,
                        change: Change::Nothing,
                        fast_path: true,
                        analysis: true,
                        healthy_history: true,
                        variant: Variant::AsIs,
                    };
                    let out = simulate_many(&s, row, windows);
                    let fail = share(&out, |o| o.verdict == "fail");
                    let f = out.iter().filter(|o| o.verdict == "fail").count();
                    fails += f;
                    total += out.len();
                    let label = format!(
                        "{} {} {rate} req/s p0 {:.1} %",
                        profile.name,
                        topology.name,
                        p0 * 100.0
                    );
                    if fail > worst.0 || worst.1.is_empty() {
                        worst = (fail, label);
                    }
                    let by = tally(&out, fail_key);
                    let mut ends: Vec<u64> = out.iter().map(|o| o.at).collect();
                    println!(
                        "{:<22} {:<14} {:>5} {:>5.1}% | {:>6.1} {:>6.1} {:>6.1} {:>6.1} | {:>9} | {}",
                        row_label(&profile),
                        topology.name,
                        rate,
                        p0 * 100.0,
                        fail,
                        share(&out, |o| o.verdict == "pass"),
                        share(&out, |o| o.verdict == "inconclusive"),
                        share(&out, |o| o.verdict == "error"),
                        opt_s(quantile(&mut ends, 0.5)),
                        by,
                    );
                }
            }
        }
    }
    let pooled = 100.0 * fails as f64 / total as f64;
    let bound = 100.0 * upper_bound_95(fails, total);
    let row_bound = 100.0 * upper_bound_95(0, windows);
    println!(
        "verdict (goal: false-failure rate <= 1 %): {} — pooled {fails} of {total} windows failed ({pooled:.2} %, 95 % upper bound {bound:.2} %); worst row {:.1} % ({}); note one row of {windows} windows with 0 fails only bounds its own rate below {row_bound:.1} %",
        if worst.0 <= 1.0 && bound <= 1.0 {
            "MET"
        } else if worst.0 <= 1.0 {
            "met by every row, but the pooled bound is above 1 %"
        } else {
            "MISSED"
        },
        worst.0,
        worst.1,
    );
}

struct Decided {
    /// Seconds to the Fail decision, for the windows that failed.
    at: Vec<u64>,
    miss: f64,
    passed: f64,
    by: String,
}

/// `check rule` (`error_rate z 2nd`), or just `fast_path`.
fn fail_key(o: &Outcome) -> String {
    if o.why == o.check {
        o.check.clone()
    } else {
        format!("{} {}", o.check, o.why)
    }
}

/// The failed windows grouped by `key`, most frequent first: `"a 3, b 1"`, or `-`.
fn tally(out: &[Outcome], key: impl Fn(&Outcome) -> String) -> String {
    let mut by: Vec<(String, usize)> = Vec::new();
    for o in out.iter().filter(|o| o.verdict == "fail") {
        let k = key(o);
        match by.iter_mut().find(|(c, _)| *c == k) {
            Some((_, n)) => *n += 1,
            None => by.push((k, 1)),
        }
    }
    if by.is_empty() {
        return "-".into();
    }
    by.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    by.iter()
        .map(|(c, k)| format!("{c} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn decided(out: &[Outcome]) -> Decided {
    let at: Vec<u64> = out
        .iter()
        .filter(|o| o.verdict == "fail")
        .map(|o| o.at)
        .collect();
    Decided {
        miss: share(out, |o| o.verdict != "fail"),
        passed: share(out, |o| o.verdict == "pass"),
        by: tally(out, fail_key),
        at,
    }
}

/// The A/A rows that failed windows, again under each rule change alone.
fn what_if(windows: usize) {
    println!(
        "\n## A/A what-if: fail % of the A/A rows at p0 1 %, each rule changed alone (bench-only; the crate's defaults are unchanged), {windows} windows per row"
    );
    let variants = [
        Variant::AsIs,
        Variant::NoStrongShortcut,
        Variant::AlwaysFisher,
        Variant::GuardrailFrom200,
        Variant::AlphaPerCheckOnly,
        Variant::MinRequests1000,
    ];
    print!("{:<22} {:<14} {:>5} |", "profile", "hosts", "req/s");
    for v in variants {
        print!(" {:>17}", v.name());
    }
    println!();
    let mut row = 3000u64;
    for profile in PROFILES {
        for topology in TOPOLOGIES {
            for rate in RATES {
                row += 1;
                print!(
                    "{:<22} {:<14} {:>5} |",
                    row_label(&profile),
                    topology.name,
                    rate
                );
                for variant in variants {
                    let s = Setup {
                        profile,
                        topology,
                        rate,
                        p0: 0.01,
                        change: Change::Nothing,
                        fast_path: true,
                        analysis: true,
                        healthy_history: true,
                        variant,
                    };
                    let out = simulate_many(&s, row, windows);
                    print!(" {:>17.1}", share(&out, |o| o.verdict == "fail"));
                }
                println!();
            }
        }
    }
    println!(
        "(same seeds in every column, so the columns differ by the rule alone; `as is` splits alpha over the looks: 0.025 / 14 in e2e, 0.025 / 20 in default; `alpha per check only` is the rule before)"
    );
}

fn time_to_decision(windows: usize) {
    println!(
        "\n## Time to the Fail decision, windowed checks (+ fast path), regression from the window's opening, baseline p0 {:.1} %, {windows} windows per row",
        P0_REGRESSION * 100.0
    );
    println!(
        "floor = first evaluation with the check's min_requests (errors) or min_samples per side (latency); I = analysis intervals; from floor = evaluations from the floor's, inclusive (1: failed at the floor, 2: one later); median/p95 over the windows that failed"
    );
    println!(
        "{:<14} {:<22} {:<14} {:>5} | {:>6} {:>5} | {:>6} {:>6} {:>6} {:>6} | {:>6} {:>6} | {:>6} {:>6} | by",
        "regression",
        "profile",
        "hosts",
        "req/s",
        "floor",
        "I",
        "p50 s",
        "p95 s",
        "p50 I",
        "p95 I",
        "fl p50",
        "fl p95",
        "miss%",
        "pass%",
    );
    let mut row = 1000u64;
    let (mut onset_ok, mut floor_ok, mut rows, mut misses) = (0, 0, 0, Vec::new());
    for change in [
        Change::Errors(0.05),
        Change::AddMs(200.0),
        Change::Slower(1.5),
    ] {
        for profile in PROFILES {
            for topology in TOPOLOGIES {
                for rate in RATES {
                    row += 1;
                    let s = Setup {
                        profile,
                        topology,
                        rate,
                        p0: P0_REGRESSION,
                        change,
                        fast_path: true,
                        analysis: true,
                        healthy_history: true,
                        variant: Variant::AsIs,
                    };
                    let floor = match change {
                        Change::Errors(_) => floor_error_rate(&s),
                        _ => floor_latency(&s),
                    };
                    let out = simulate_many(&s, row, windows);
                    let mut d = decided(&out);
                    let i = profile.interval;
                    let p95 = quantile(&mut d.at, 0.95);
                    let p50 = quantile(&mut d.at, 0.5);
                    let from_floor = |t: Option<u64>| -> String {
                        match (t, floor) {
                            (Some(t), Some(f)) => {
                                format!("{:.0}", (t as f64 - f as f64) / i as f64 + 1.0)
                            }
                            _ => "-".into(),
                        }
                    };
                    rows += 1;
                    if p95.is_some_and(|t| t <= 2 * i) && d.miss == 0.0 {
                        onset_ok += 1;
                    }
                    if let (Some(t), Some(f)) = (p95, floor)
                        && t <= f + i
                        && d.miss == 0.0
                    {
                        floor_ok += 1;
                    }
                    if d.miss > 0.0 {
                        misses.push(format!(
                            "{} {} {} {rate} req/s: {:.1} %",
                            change.name(),
                            profile.name,
                            topology.name,
                            d.miss
                        ));
                    }
                    println!(
                        "{:<14} {:<22} {:<14} {:>5} | {:>6} {:>5} | {:>6} {:>6} {:>6} {:>6} | {:>6} {:>6} | {:>6.1} {:>6.1} | {}",
                        change.name(),
                        row_label(&profile),
                        topology.name,
                        rate,
                        opt_s(floor),
                        intervals(floor, i),
                        opt_s(p50),
                        opt_s(p95),
                        intervals(p50, i),
                        intervals(p95, i),
                        from_floor(p50),
                        from_floor(p95),
                        d.miss,
                        d.passed,
                        d.by,
                    );
                }
            }
        }
    }
    println!(
        "verdict (goal: <= 2 intervals from the onset): met (p95, no miss) in {onset_ok} of {rows} rows; once the data suffices (p95 within 2 evaluations from the floor's, no miss): met in {floor_ok} of {rows} rows"
    );
    if misses.is_empty() {
        println!("misses (never failed by max_window): none");
    } else {
        println!("misses (never failed by max_window): {}", misses.join("; "));
    }
}

fn fast_path_table(windows: usize) {
    println!(
        "\n## Fast path: 30 % errors on the canary from the window's opening, baseline p0 {:.1} %, {windows} windows per row",
        P0_REGRESSION * 100.0
    );
    println!(
        "fast path alone: polled every fast_path_interval over each canary host's last 30 s, with 30 s of healthy traffic before the onset in that lookback (hist) or none (fresh: the regression began with the host); stage: fast path and windowed checks together, as the runner does"
    );
    println!(
        "{:<22} {:<14} {:>5} {:>4} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>6} {:>6} | by",
        "profile",
        "hosts",
        "req/s",
        "fp s",
        "hist p50",
        "hist p95",
        "fresh p50",
        "stage p50",
        "stage p95",
        "p95 I",
        "miss%",
    );
    let mut row = 2000u64;
    let (mut ok, mut rows) = (0, 0);
    for profile in PROFILES {
        for topology in TOPOLOGIES {
            for rate in RATES {
                row += 1;
                let base = Setup {
                    profile,
                    topology,
                    rate,
                    p0: P0_REGRESSION,
                    change: Change::Errors(0.30),
                    fast_path: true,
                    analysis: false,
                    healthy_history: true,
                    variant: Variant::AsIs,
                };
                let mut hist = decided(&simulate_many(&base, row, windows));
                let fresh_setup = Setup {
                    healthy_history: false,
                    ..base
                };
                let mut fresh = decided(&simulate_many(&fresh_setup, row + 100, windows));
                let stage_setup = Setup {
                    analysis: true,
                    ..base
                };
                let mut stage = decided(&simulate_many(&stage_setup, row + 200, windows));
                let i = profile.interval;
                let p95 = quantile(&mut stage.at, 0.95);
                rows += 1;
                if p95.is_some_and(|t| t <= 2 * i) && stage.miss == 0.0 {
                    ok += 1;
                }
                println!(
                    "{:<22} {:<14} {:>5} {:>4} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>6} {:>6.1} | {}",
                    row_label(&profile),
                    topology.name,
                    rate,
                    profile.fast_path_interval,
                    opt_s(quantile(&mut hist.at, 0.5)),
                    opt_s(quantile(&mut hist.at, 0.95)),
                    opt_s(quantile(&mut fresh.at, 0.5)),
                    opt_s(quantile(&mut stage.at, 0.5)),
                    opt_s(p95),
                    intervals(p95, i),
                    stage.miss,
                    stage.by,
                );
            }
        }
    }
    println!(
        "verdict (goal: <= 2 intervals from the onset): met (stage p95, no miss) in {ok} of {rows} rows"
    );
}

fn main() {
    let mut windows = DEFAULT_WINDOWS;
    let mut args = std::env::args().skip(1);
    // `cargo bench` passes `--bench`; anything else unknown is ignored as well.
    while let Some(a) = args.next() {
        if a == "--windows" {
            windows = args
                .next()
                .and_then(|n| n.parse().ok())
                .filter(|n| *n > 0)
                .expect("--windows takes a positive number");
        }
    }
    let started = Instant::now();
    let (error_rate, latency) = checks(&PROFILES[0], Variant::AsIs);
    println!(
        "# judge_sim: canary of C hosts vs baseline of B hosts, log-normal latency (median {MEDIAN_MS} ms, sigma {SIGMA}), alpha {:.5} per check and look in the e2e profile (Bonferroni of {FAMILY_ALPHA} over {STATISTICAL_CHECKS} checks, then over the stage's looks), counters: window_limits() (two Fails in a row or one strong)",
        error_rate.alpha
    );
    println!(
        "error_rate: guardrail {:?}, min_requests e2e {} / default {}; latency_p95: guardrail {:?} ms, min_samples e2e {} / default {}, min shift max({} %, {} ms)",
        error_rate.max_rate,
        PROFILES[0].min_requests,
        PROFILES[1].min_requests,
        latency.max_ms,
        PROFILES[0].min_samples,
        PROFILES[1].min_samples,
        latency.min_shift_fraction * 100.0,
        latency.min_shift_ms,
    );
    a_a(windows);
    what_if(windows);
    time_to_decision(windows);
    fast_path_table(windows);
    println!("\n(simulated in {:.1} s)", started.elapsed().as_secs_f64());
}
