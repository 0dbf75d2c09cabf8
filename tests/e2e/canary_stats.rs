//! `rampart-canary`'s statistics against SciPy: the Mann-Whitney U test (`method="auto"`, every
//! alternative), the Hodges-Lehmann shift, Fisher's exact test, the two-proportion z-test and
//! the normal distribution underneath, over recorded and generated cases (seeded xorshift; ties,
//! all-equal samples, n < 5, unequal sizes; Fisher tables with zeros and large counts).
//!
//! SciPy runs once for all cases: the cases are written as JSON, one Python script computes
//! SciPy's answers, and they are compared here (relative tolerance 1e-9 for exact methods, 1e-6
//! for the normal approximation). SciPy comes from `target/scipy-venv`, created on first use under
//! a file lock (`tests/run.sh` creates it up front), or from `RAMPART_SCIPY_PYTHON` (a `python3`
//! that can `import scipy`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rampart_canary::stats::{
    Alternative, Method, erfc, fisher_exact, hodges_lehmann, mann_whitney_u, norm_ppf,
    two_proportion_z,
};
use rampart_tests::{XorShift, run_to_end};
use serde_json::{Value, json};

/// The SciPy the statistics were written against (its `auto` method choice is matched).
const SCIPY: &str = "scipy>=1.17,<1.18";
/// The one Python run over every case.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(300);

const EXACT_TOL: f64 = 1e-9;
const APPROX_TOL: f64 = 1e-6;

/// SciPy's answers for every case of the input file, written to the output file. Non-finite
/// numbers are written as strings ("nan", "inf"), which JSON cannot hold.
const SCRIPT: &str = r#"
import json, math, sys
import numpy as np
import scipy
from scipy import special, stats

def num(v):
    v = float(v)
    return v if math.isfinite(v) else str(v)

cases = json.load(open(sys.argv[1]))
out = {"version": scipy.__version__, "mwu": [], "hl": [], "fisher": [], "z": [], "erfc": [], "ndtri": []}
for c in cases["mwu"]:
    auto = stats.mannwhitneyu(c["x"], c["y"], alternative=c["alt"], method="auto")
    asym = stats.mannwhitneyu(c["x"], c["y"], alternative=c["alt"], method="asymptotic")
    out["mwu"].append([num(auto.statistic), num(auto.pvalue), num(asym.pvalue)])
for c in cases["hl"]:
    x = np.asarray(c["x"], dtype=float)
    y = np.asarray(c["y"], dtype=float)
    out["hl"].append(num(np.median(np.subtract.outer(x, y))))
for c in cases["fisher"]:
    a, b, cc, d = c["table"]
    r = stats.fisher_exact([[a, b], [cc, d]], alternative=c["alt"])
    out["fisher"].append(num(r.pvalue))
for ec, nc, eb, nb in cases["z"]:
    pool = (ec + eb) / (nc + nb)
    se = math.sqrt(pool * (1 - pool) * (1 / nc + 1 / nb))
    if se > 0:
        z = (ec / nc - eb / nb) / se
        out["z"].append([num(z), num(stats.norm.sf(z))])
    else:
        out["z"].append(None)
out["erfc"] = [num(special.erfc(x)) for x in cases["erfc"]]
out["ndtri"] = [num(special.ndtri(p)) for p in cases["ndtri"]]
json.dump(out, open(sys.argv[2], "w"))
"#;

/// The `python3` with SciPy: `RAMPART_SCIPY_PYTHON`, else `target/scipy-venv/bin/python`,
/// created on first use while holding `target/scipy-venv.lock` (two test processes may race).
fn scipy_python() -> PathBuf {
    if let Some(p) = std::env::var_os("RAMPART_SCIPY_PYTHON") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "RAMPART_SCIPY_PYTHON={} does not exist",
            p.display()
        );
        return p;
    }
    // The interpreter exists as soon as the venv does, so ask it for SciPy itself: a venv left
    // by an interrupted install is made again.
    let has_scipy = |venv: &Path| {
        let python = venv.join("bin/python");
        python.exists() && {
            let mut probe = Command::new(&python);
            probe.args(["-c", "import scipy"]);
            run_to_end(probe, SCRIPT_DEADLINE).code == 0
        }
    };
    rampart_tests::python_venv("scipy-venv", SCIPY, has_scipy).join("bin/python")
}

/// A number of the script's output (non-finite ones come as strings).
fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().expect("f64"),
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("not a number: {s}")),
        other => panic!("not a number: {other}"),
    }
}

fn rel_dev(ours: f64, theirs: f64) -> f64 {
    // SciPy flushes results below the smallest normal f64 to 0 (erfc(26.7) is 5e-312): values
    // that small are equal for any purpose here.
    if ours == theirs || (ours.abs() < f64::MIN_POSITIVE && theirs.abs() < f64::MIN_POSITIVE) {
        return 0.0;
    }
    (ours - theirs).abs() / theirs.abs().max(1e-300)
}

/// Uniform in [0, 1).
fn unit(r: &mut XorShift) -> f64 {
    (r.next() >> 11) as f64 / (1u64 << 53) as f64
}

fn sample(r: &mut XorShift, n: usize, shift: f64, ties: bool) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let v = 100.0 * unit(r) + shift;
            if ties { (v / 10.0).round() } else { v }
        })
        .collect()
}

const ALTS: [Alternative; 3] = [
    Alternative::Greater,
    Alternative::Less,
    Alternative::TwoSided,
];

/// All `C(8,4) = 70` splits of the ranks 1..=8 into two samples of 4.
fn splits_of_eight() -> Vec<(Vec<f64>, Vec<f64>)> {
    (0u32..256)
        .filter(|m| m.count_ones() == 4)
        .map(|m| {
            let (x, y): (Vec<u32>, Vec<u32>) = (0..8).partition(|i| m & (1 << i) != 0);
            let f = |v: Vec<u32>| v.into_iter().map(|i| f64::from(i + 1)).collect();
            (f(x), f(y))
        })
        .collect()
}

/// The Mann-Whitney sample pairs: recorded, generated (with and without ties), all-equal,
/// n < 5, unequal sizes.
fn mwu_pairs() -> Vec<(&'static str, Vec<f64>, Vec<f64>)> {
    let mut pairs: Vec<(&'static str, Vec<f64>, Vec<f64>)> = vec![
        // SciPy's documentation example (ages of males and females).
        (
            "recorded scipy doc",
            vec![19.0, 22.0, 16.0, 29.0, 24.0],
            vec![20.0, 11.0, 17.0, 12.0],
        ),
        // Per-step p95 latencies (ms) of a canary host and two baseline hosts.
        (
            "recorded p95",
            vec![
                236.1, 241.9, 229.4, 250.3, 262.8, 244.0, 238.7, 255.5, 247.2, 233.9, 259.6, 240.4,
            ],
            vec![
                221.3, 218.9, 230.2, 225.7, 219.4, 228.8, 216.1, 224.9, 231.6, 222.2, 227.5, 220.8,
                223.3, 229.9,
            ],
        ),
        ("recorded tiny", vec![1.5], vec![0.5]),
        ("recorded tie across", vec![1.0, 2.0, 3.0], vec![3.0, 4.0]),
        ("all equal", vec![7.0; 6], vec![7.0; 4]),
        ("all equal 1+1", vec![2.0], vec![2.0]),
        ("all equal large", vec![3.0; 40], vec![3.0; 35]),
        ("tied n=4 separated", vec![1.0; 4], vec![2.0; 4]),
        (
            "negative zero ties zero",
            vec![-0.0, 1.0, 2.0],
            vec![0.0, 3.0],
        ),
    ];
    let mut r = XorShift(0x5eed_ca4a_17d5_0001);
    let sizes = [
        (1, 1),
        (1, 4),
        (2, 3),
        (3, 3),
        (4, 4),
        (4, 2),
        (5, 5),
        (6, 8),
        (8, 8),
        (8, 9),
        (9, 8),
        (9, 9),
        (3, 40),
        (40, 3),
        (8, 200),
        (2, 1000),
        (12, 20),
        (30, 30),
        (50, 70),
        (200, 150),
    ];
    for &(n1, n2) in &sizes {
        for shift in [0.0, 15.0, 60.0] {
            pairs.push((
                "generated",
                sample(&mut r, n1, shift, false),
                sample(&mut r, n2, 0.0, false),
            ));
            pairs.push((
                "generated ties",
                sample(&mut r, n1, shift, true),
                sample(&mut r, n2, 0.0, true),
            ));
        }
    }
    for (x, y) in splits_of_eight() {
        pairs.push(("n=m=4 split", x, y));
    }
    pairs
}

fn fisher_tables() -> Vec<[u64; 4]> {
    let mut t = vec![
        [3, 1, 1, 3],
        [1, 9, 11, 3],
        [0, 5, 5, 0],
        [5, 0, 0, 5],
        [0, 0, 3, 4],
        [0, 10, 0, 10],
        [0, 1, 0, 0],
        [1, 0, 0, 0],
        [15, 985, 10, 1990],
        [25, 975, 10, 1990],
        [0, 1000, 5, 1995],
        [7, 0, 3, 12],
        [500, 999_500, 300, 1_999_700],
        [12_000, 988_000, 10_000, 990_000],
        [3, 1_000_000, 0, 2_000_000],
        [40, 60, 50, 50],
        [8, 2, 1, 5],
    ];
    let mut r = XorShift(0x5eed_f15e_0000_0002);
    for _ in 0..40 {
        let scale = [5, 30, 300, 5000][(r.next() % 4) as usize];
        t.push([
            r.next() % scale,
            r.next() % (scale * 10),
            r.next() % scale,
            r.next() % (scale * 10),
        ]);
    }
    t
}

fn z_cases() -> Vec<[u64; 4]> {
    let mut c = vec![
        [300, 10_000, 100, 10_000],
        [100, 10_000, 100, 10_000],
        [12_000, 1_000_000, 10_000, 1_000_000],
        [0, 5_000, 3, 20_000],
        [0, 5_000, 0, 20_000],
        [5_000, 5_000, 20_000, 20_000],
        [90, 1_000, 10, 1_000],
    ];
    let mut r = XorShift(0x5eed_2222_0000_0003);
    for _ in 0..30 {
        let (n_c, n_b) = (1 + r.next() % 100_000, 1 + r.next() % 100_000);
        c.push([
            r.next() % (n_c / 20 + 1),
            n_c,
            r.next() % (n_b / 20 + 1),
            n_b,
        ]);
    }
    c
}

#[test]
fn stats_match_scipy() {
    let python = scipy_python();
    let pairs = mwu_pairs();
    let mut mwu_cases = Vec::new();
    for (_, x, y) in &pairs {
        for alt in ALTS {
            mwu_cases.push(json!({"x": x, "y": y, "alt": alt.as_scipy()}));
        }
    }
    let hl_cases: Vec<Value> = pairs
        .iter()
        .map(|(_, x, y)| json!({"x": x, "y": y}))
        .collect();
    let tables = fisher_tables();
    let mut fisher_cases = Vec::new();
    for t in &tables {
        for alt in ALTS {
            fisher_cases.push(json!({"table": t, "alt": alt.as_scipy()}));
        }
    }
    let zs = z_cases();
    let erfc_x: Vec<f64> = (-60..=270).map(|i| f64::from(i) / 10.0).collect();
    let mut ndtri_p = vec![1e-300, 1e-100, 1e-20, 1e-10, 1e-5, 0.001, 0.01, 0.02, 0.025];
    ndtri_p.extend((1..20).map(|i| f64::from(i) / 20.0));
    ndtri_p.extend([0.975, 0.98, 0.99, 0.999, 1.0 - 1e-10]);

    let dir = tempfile::tempdir().expect("temp dir");
    let (input, output, script) = (
        dir.path().join("cases.json"),
        dir.path().join("scipy.json"),
        dir.path().join("scipy_cases.py"),
    );
    let cases = json!({
        "mwu": mwu_cases, "hl": hl_cases, "fisher": fisher_cases, "z": zs,
        "erfc": erfc_x, "ndtri": ndtri_p,
    });
    std::fs::write(&input, serde_json::to_vec(&cases).unwrap()).expect("write cases");
    std::fs::write(&script, SCRIPT).expect("write script");
    let mut py = Command::new(&python);
    py.arg(&script).arg(&input).arg(&output);
    let run = run_to_end(py, SCRIPT_DEADLINE);
    assert_eq!(run.code, 0, "the SciPy script failed: {}", run.stderr);
    let sp: Value = serde_json::from_slice(&std::fs::read(&output).expect("read SciPy's answers"))
        .expect("SciPy's answers are JSON");
    let version = sp["version"].as_str().unwrap_or("?").to_string();

    let mut failures: Vec<String> = Vec::new();
    let mut worst: Vec<(&str, f64, String)> = Vec::new();
    let mut note = |kind: &'static str, dev: f64, tol: f64, what: String| {
        if dev.is_nan() || dev > tol {
            failures.push(format!("{kind}: {what} (deviation {dev:e} > {tol:e})"));
        }
        match worst.iter_mut().find(|w| w.0 == kind) {
            Some(w) if w.1 >= dev => {}
            Some(w) => *w = (kind, dev, what),
            None => worst.push((kind, dev, what)),
        }
    };

    // Mann-Whitney U.
    let mut n4_min_scipy = f64::INFINITY;
    let mut n4_min_ours = f64::INFINITY;
    let answers = sp["mwu"].as_array().expect("mwu answers");
    assert_eq!(answers.len(), pairs.len() * ALTS.len());
    for (i, ((label, x, y), alt)) in pairs
        .iter()
        .flat_map(|p| ALTS.iter().map(move |a| (p, *a)))
        .enumerate()
    {
        let a = &answers[i];
        let (u_sp, p_sp, p_asym) = (num(&a[0]), num(&a[1]), num(&a[2]));
        let ours = mann_whitney_u(x, y, alt).expect("mann_whitney_u");
        let what = format!(
            "{label} n={}/{} {alt:?}: ours U={} p={:e} ({:?}), SciPy U={u_sp} p={p_sp:e}",
            x.len(),
            y.len(),
            ours.u,
            ours.p_value,
            ours.method
        );
        note("mwu U", rel_dev(ours.u, u_sp), 1e-12, what.clone());
        if label.starts_with("all equal") {
            // Documented: p = 1 here (SciPy 1.17 also says 1, through z = -inf; NaN would be
            // accepted as the documented difference).
            assert_eq!(ours.p_value, 1.0, "{what}");
            assert!(p_sp.is_nan() || p_sp == 1.0, "{what}");
            continue;
        }
        match ours.method {
            Method::Exact => {
                note(
                    "mwu exact p",
                    rel_dev(ours.p_value, p_sp),
                    EXACT_TOL,
                    what.clone(),
                );
            }
            Method::Asymptotic => {
                note(
                    "mwu asymptotic p",
                    rel_dev(ours.p_value, p_sp),
                    APPROX_TOL,
                    what.clone(),
                );
                // SciPy's `auto` chose the approximation too.
                note(
                    "mwu method choice",
                    rel_dev(p_sp, p_asym),
                    1e-14,
                    what.clone(),
                );
            }
        }
        if *label == "n=m=4 split" && alt == Alternative::TwoSided {
            n4_min_scipy = n4_min_scipy.min(p_sp);
            n4_min_ours = n4_min_ours.min(ours.p_value);
        }
        if *label == "tied n=4 separated" && alt == Alternative::TwoSided {
            // The n < 5 floor holds for untied data only: with ties the approximation goes
            // below 0.02 (SciPy too). The judge's floor of 5 samples covers both.
            assert!(p_sp < 0.02 && ours.p_value < 0.02, "{what}");
        }
    }
    // n = m = 4 without ties can never reach p ≤ 0.02 two-sided: the minimum is 2/70.
    assert!(
        (n4_min_ours - 2.0 / 70.0).abs() < 1e-15 && n4_min_scipy > 0.02,
        "n=m=4: smallest two-sided p ours {n4_min_ours}, SciPy {n4_min_scipy}"
    );

    // Hodges-Lehmann.
    for (i, (label, x, y)) in pairs.iter().enumerate() {
        let theirs = num(&sp["hl"][i]);
        let ours = hodges_lehmann(x, y).expect("hodges_lehmann");
        // Differences of values around 100: an absolute floor of 1e-12 for shifts near 0.
        let dev = (ours - theirs).abs() / theirs.abs().max(1.0);
        note(
            "hodges-lehmann",
            dev,
            1e-12,
            format!(
                "{label} n={}/{}: ours {ours}, NumPy {theirs}",
                x.len(),
                y.len()
            ),
        );
    }

    // Fisher's exact test.
    for (i, (t, alt)) in tables
        .iter()
        .flat_map(|t| ALTS.iter().map(move |a| (t, *a)))
        .enumerate()
    {
        let theirs = num(&sp["fisher"][i]);
        let ours = fisher_exact(t[0], t[1], t[2], t[3], alt).expect("fisher_exact");
        note(
            "fisher p",
            rel_dev(ours.p_value, theirs),
            EXACT_TOL,
            format!("{t:?} {alt:?}: ours {:e}, SciPy {theirs:e}", ours.p_value),
        );
    }

    // Two-proportion z.
    for (i, c) in zs.iter().enumerate() {
        let ours = two_proportion_z(c[0], c[1], c[2], c[3]).expect("two_proportion_z");
        let theirs = &sp["z"][i];
        if theirs.is_null() {
            assert_eq!((ours.z, ours.p_value), (None, 1.0), "{c:?}");
            continue;
        }
        let (z, p) = (num(&theirs[0]), num(&theirs[1]));
        let what = format!(
            "{c:?}: ours z={:?} p={:e}, SciPy z={z} p={p:e}",
            ours.z, ours.p_value
        );
        note(
            "z statistic",
            rel_dev(ours.z.unwrap_or(f64::NAN), z),
            1e-12,
            what.clone(),
        );
        note("z p", rel_dev(ours.p_value, p), EXACT_TOL, what);
    }

    // The normal distribution underneath.
    for (i, &x) in erfc_x.iter().enumerate() {
        let theirs = num(&sp["erfc"][i]);
        let ours = erfc(x);
        note(
            "erfc",
            rel_dev(ours, theirs),
            1e-12,
            format!("erfc({x}): ours {ours:e}, SciPy {theirs:e}"),
        );
    }
    for (i, &p) in ndtri_p.iter().enumerate() {
        let theirs = num(&sp["ndtri"][i]);
        let ours = norm_ppf(p);
        note(
            "ndtri",
            (ours - theirs).abs() / theirs.abs().max(1.0),
            1e-12,
            format!("ndtri({p}): ours {ours}, SciPy {theirs}"),
        );
    }

    println!("compared with SciPy {version}; worst relative deviations:");
    for (kind, dev, what) in &worst {
        println!("  {kind}: {dev:e} ({what})");
    }
    assert!(
        failures.is_empty(),
        "{} of the cases differ from SciPy {version}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// With n = m = 4 and no ties, no arrangement reaches a two-sided p ≤ 0.02 (the smallest is
/// 2/C(8,4) = 0.0286), so the judge's floor of 5 samples per side is needed (pure Rust).
#[test]
fn n4_can_never_reject_at_two_percent() {
    let splits = splits_of_eight();
    assert_eq!(splits.len(), 70);
    let min = splits
        .iter()
        .map(|(x, y)| {
            mann_whitney_u(x, y, Alternative::TwoSided)
                .expect("mann_whitney_u")
                .p_value
        })
        .fold(f64::INFINITY, f64::min);
    assert!((min - 2.0 / 70.0).abs() < 1e-15, "smallest p {min}");
    assert!(min > 0.02);
    // n = m = 5 can: 2/252.
    let p5 = mann_whitney_u(
        &[6.0, 7.0, 8.0, 9.0, 10.0],
        &[1.0, 2.0, 3.0, 4.0, 5.0],
        Alternative::TwoSided,
    )
    .expect("mann_whitney_u")
    .p_value;
    assert!((p5 - 2.0 / 252.0).abs() < 1e-15 && p5 < 0.02, "{p5}");
}
