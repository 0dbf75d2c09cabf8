//! CPU time of one analysis evaluation's judge work at realistic sizes: the error-rate check
//! on both of its tests, the latency check on both Mann-Whitney paths, the fast path, and one
//! [`StageRun::record`]. The controller's own work around it (queries, JSON detail, audit) is
//! measured by `controller/benches/analysis_eval.rs`.
//!
//! Run: `cargo bench -p rampart-canary --bench judge_cpu`. Each row is the median (and p90)
//! over 101 batches of calls timed with `std::time::Instant`, a batch lasting ≥ 200 µs.

use std::hint::black_box;
use std::time::Duration;

use rampart_canary::judge::{
    self, Counts, Decision, ErrorRateCheck, FastPathCheck, LatencyCheck, TestKind, Verdict,
};
use rampart_canary::stats::alpha_per_metric;
use rampart_canary::window::{StageRun, WindowPolicy, window_limits};

#[path = "support/timing.rs"]
mod timing;

/// A batch lasts at least this long.
const BATCH_AT_LEAST: Duration = Duration::from_micros(200);

/// Median and p90 ns per call of `f`.
fn time_ns<T>(f: impl FnMut() -> T) -> (f64, f64) {
    timing::time_ns(BATCH_AT_LEAST, 1 << 24, f)
}

/// Log-normal p95-like samples (median `median` ms, σ 0.3 of the log), distinct values, from a
/// SplitMix64 stream seeded with `seed`.
fn samples(n: usize, median: f64, seed: u64) -> Vec<f64> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            // Box-Muller, one value per pair.
            let (u, v) = (next().max(1e-300), next());
            let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
            median * (0.3 * z).exp()
        })
        .collect()
}

fn test_name(d: &Decision) -> String {
    match d.test {
        Some(TestKind::FisherExact) => "fisher exact".into(),
        Some(TestKind::TwoProportionZ) => "two-proportion z".into(),
        Some(TestKind::MannWhitneyExact) => "mann-whitney exact".into(),
        Some(TestKind::MannWhitneyAsymptotic) => "mann-whitney asymptotic".into(),
        None => format!("no test ({:?})", d.verdict),
    }
}

fn row(what: &str, sizes: &str, path: &str, (median, p90): (f64, f64)) {
    println!("{what:<34} {sizes:<30} {path:<24} {median:>11.0} {p90:>11.0}");
}

fn main() {
    let alpha = alpha_per_metric(0.05, 2);
    let er = ErrorRateCheck {
        alpha,
        ..ErrorRateCheck::default()
    };
    let lat = LatencyCheck {
        alpha,
        ..LatencyCheck::default()
    };
    println!("## CPU per evaluation: the judge (rampart-canary), alpha {alpha} per check");
    println!(
        "{:<34} {:<30} {:<24} {:>11} {:>11}",
        "call", "sizes", "path", "median ns", "p90 ns"
    );

    let counts = [
        (
            "judge_error_rate, few errors",
            Counts {
                errors: 2,
                total: 1_000,
            },
            Counts {
                errors: 3,
                total: 5_000,
            },
        ),
        (
            "judge_error_rate, Fisher's bound",
            Counts {
                errors: 12,
                total: 3_000,
            },
            Counts {
                errors: 18,
                total: 15_000,
            },
        ),
        (
            "judge_error_rate, many errors",
            Counts {
                errors: 300,
                total: 30_000,
            },
            Counts {
                errors: 1_000,
                total: 150_000,
            },
        ),
    ];
    for (what, c, b) in counts {
        let d = judge::judge_error_rate(c, Some(b), &er);
        let sizes = format!("{}/{} vs {}/{}", c.errors, c.total, b.errors, b.total);
        row(
            what,
            &sizes,
            &test_name(&d),
            time_ns(|| judge::judge_error_rate(black_box(c), black_box(Some(b)), &er)),
        );
    }

    // Canary hosts × steps against baseline hosts × steps (p95 samples in ms).
    let latency = [
        ("1x8 vs 5x8", 8, 40, &lat),
        ("1x8 vs 5x100", 8, 500, &lat),
        ("1x100 vs 5x100", 100, 500, &lat),
        ("3x100 vs 3x100", 300, 300, &lat),
        ("5x100 vs 5x100", 500, 500, &lat),
    ];
    let small = LatencyCheck {
        min_samples: 5,
        ..lat.clone()
    };
    for (sizes, n_c, n_b, cfg) in latency {
        let cfg = if n_c < cfg.min_samples { &small } else { cfg };
        let c = samples(n_c, 46.0, 1 + n_c as u64);
        let b = samples(n_b, 45.0, 1000 + n_b as u64);
        let d = judge::judge_latency(&c, Some(&b), cfg);
        row(
            "judge_latency",
            &format!("{sizes} ({n_c} vs {n_b})"),
            &test_name(&d),
            time_ns(|| judge::judge_latency(black_box(&c), black_box(Some(&b)), cfg)),
        );
    }
    // Ties (histogram buckets repeat values): the exact path is refused.
    let c: Vec<f64> = samples(8, 46.0, 7).iter().map(|v| v.round()).collect();
    let b: Vec<f64> = samples(40, 45.0, 8).iter().map(|v| v.round()).collect();
    let d = judge::judge_latency(&c, Some(&b), &small);
    row(
        "judge_latency, tied (whole ms)",
        "1x8 vs 5x8 (8 vs 40)",
        &test_name(&d),
        time_ns(|| judge::judge_latency(black_box(&c), black_box(Some(&b)), &small)),
    );

    let fast = FastPathCheck::default();
    let c = Counts {
        errors: 10,
        total: 750,
    };
    row(
        "fast_path (one host)",
        "10/750",
        "threshold",
        time_ns(|| judge::fast_path(black_box(c), &fast)),
    );

    let policy = WindowPolicy {
        window: Duration::from_secs(300),
        max_window: Duration::from_secs(600),
    };
    let checks = vec![
        ("error_rate".to_string(), window_limits()),
        ("latency_p95".to_string(), window_limits()),
    ];
    let mut run = StageRun::new(policy, checks.clone()).expect("valid stage");
    let pass = [(Verdict::Pass, false), (Verdict::Pass, false)];
    row(
        "StageRun::record (2 checks)",
        "before the window's end",
        "running",
        time_ns(|| {
            run.record(black_box(Duration::from_secs(30)), &pass)
                .clone()
        }),
    );

    // One whole evaluation's judge work, 1 canary host vs 5 baseline hosts, 100 steps each
    // (the run stays before its window's end, so every call is a real record).
    let mut run = StageRun::new(policy, checks).expect("valid stage");
    let c_lat = samples(100, 46.0, 11);
    let b_lat = samples(500, 45.0, 12);
    let (c_err, b_err) = (
        Counts {
            errors: 60,
            total: 30_000,
        },
        Counts {
            errors: 300,
            total: 150_000,
        },
    );
    row(
        "one evaluation (both + record)",
        "1v5 hosts, 100 steps, 30k req",
        "z + mw asymptotic",
        time_ns(|| {
            let e = judge::judge_error_rate(c_err, Some(b_err), &er);
            let l = judge::judge_latency(&c_lat, Some(&b_lat), &lat);
            run.record(
                Duration::from_secs(30),
                &[(e.verdict, e.strong), (l.verdict, l.strong)],
            )
        }),
    );
}
