//! The statistics of canary analysis, written from the definitions (SciPy 1.17's documentation
//! and source were read for the conventions it uses, so the answers can be compared with it).
//!
//! - [`mann_whitney_u`]: the Mann-Whitney U test, exact or normal approximation, chosen as
//!   `scipy.stats.mannwhitneyu(method="auto")` chooses;
//! - [`hodges_lehmann`]: the median of all pairwise differences, exactly, without materialising
//!   the pairs;
//! - [`fisher_exact`] (and [`fisher_exact_greater`], [`fisher_exact_two_sided`]): Fisher's exact
//!   test on a 2×2 table, as `scipy.stats.fisher_exact`;
//! - [`two_proportion_z`]: the pooled one-sided two-proportion z-test;
//! - [`minimum_detectable_rate`] and [`minimum_detectable_shift_sd`]: what a comparison of the
//!   given size can detect at α with a given power;
//! - Bonferroni: [`alpha_per_metric`];
//! - the normal distribution underneath: [`erfc`], [`norm_sf`], [`norm_cdf`], [`norm_ppf`].
//!
//! Every function is total: bad input is an [`StatsError`], never a panic, and every loop has a
//! bound fixed by the input sizes (which are themselves bounded, [`MAX_SAMPLES`]).

use std::cmp::Ordering;

use serde::Serialize;

/// The most values one side of [`mann_whitney_u`] or [`hodges_lehmann`] may have. Both are
/// O(n log n) in memory and time, so this only keeps a caller's mistake from exhausting memory.
pub const MAX_SAMPLES: usize = 1_000_000;

/// The exact null distribution of U is computed only while `n1 * n2` is at most this (an array of
/// `n1 * n2 / 2 + 1` 128-bit counts, about 8 MB at the bound). SciPy's `auto` would still choose
/// the exact method beyond it (one side ≤ 8, the other above 125,000); this crate then uses the
/// normal approximation and says so in [`MannWhitney::method`].
pub const MAX_EXACT_PAIRS: u64 = 1_000_000;

/// The most table entries [`fisher_exact`] accepts in total (`a + b + c + d`).
pub const MAX_TABLE_TOTAL: u64 = 1_000_000_000_000;

/// The most probability terms one tail sum of [`fisher_exact`] adds before giving up with an
/// error. Terms are summed from the mode outwards and stop once negligible, so this is reached
/// only by tables far beyond what the judge sends (Fisher's test is used when expected errors
/// are below 10).
pub const MAX_FISHER_TERMS: u64 = 10_000_000;

/// What went wrong with the input of a statistic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    /// One side has no values.
    #[error("the {side} sample is empty: a test needs at least one value on each side")]
    Empty {
        /// `"x"` or `"y"` (the first or second argument).
        side: &'static str,
    },
    /// A value is NaN (Prometheus returns NaN for a ratio over no traffic: drop those steps).
    #[error("the {side} sample has NaN at index {index}: drop steps without data before testing")]
    NaN {
        /// `"x"` or `"y"`.
        side: &'static str,
        /// The index of the first NaN.
        index: usize,
    },
    /// A value is infinite where only finite values make sense.
    #[error("the {side} sample has an infinite value at index {index}")]
    Infinite {
        /// `"x"` or `"y"`.
        side: &'static str,
        /// The index of the first infinity.
        index: usize,
    },
    /// One side has more than [`MAX_SAMPLES`] values.
    #[error("the {side} sample has {len} values, more than the {max} allowed")]
    TooLarge {
        /// `"x"` or `"y"`.
        side: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Counts that cannot be: errors above the total, a zero total, a table too large.
    #[error("invalid counts: {0}")]
    Counts(String),
    /// A parameter out of its range (α, power).
    #[error("invalid parameter: {0}")]
    Parameter(String),
    /// A sum did not converge within its bound (see [`MAX_FISHER_TERMS`]).
    #[error("not computed: {0}")]
    Bound(String),
}

/// The alternative hypothesis of a test of `x` against `y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Alternative {
    /// `x` tends to be larger than `y` (for Fisher: the odds ratio is above one).
    Greater,
    /// `x` tends to be smaller than `y` (for Fisher: the odds ratio is below one).
    Less,
    /// Either.
    TwoSided,
}

impl Alternative {
    /// SciPy's spelling: `"greater"`, `"less"`, `"two-sided"`.
    pub fn as_scipy(self) -> &'static str {
        match self {
            Alternative::Greater => "greater",
            Alternative::Less => "less",
            Alternative::TwoSided => "two-sided",
        }
    }
}

/// How a Mann-Whitney p-value was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// From the exact null distribution of U (no ties).
    Exact,
    /// The normal approximation with tie and continuity correction.
    Asymptotic,
}

/// The result of [`mann_whitney_u`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MannWhitney {
    /// U of `x` (SciPy's `statistic`): the number of pairs with `x_i > y_j`, ties counting one
    /// half, whatever the alternative.
    pub u: f64,
    /// The p-value, in [0, 1].
    pub p_value: f64,
    /// How the p-value was computed.
    pub method: Method,
    /// The standardised statistic of the normal approximation (of the U the p-value is read
    /// from: U of x for `Greater`, U of y for `Less`, the larger for `TwoSided`); `None` for the
    /// exact method and when all values are equal.
    pub z: Option<f64>,
}

fn check_sample(v: &[f64], side: &'static str, finite: bool) -> Result<(), StatsError> {
    if v.is_empty() {
        return Err(StatsError::Empty { side });
    }
    if v.len() > MAX_SAMPLES {
        return Err(StatsError::TooLarge {
            side,
            len: v.len(),
            max: MAX_SAMPLES,
        });
    }
    if let Some(index) = v.iter().position(|a| a.is_nan()) {
        return Err(StatsError::NaN { side, index });
    }
    if finite && let Some(index) = v.iter().position(|a| a.is_infinite()) {
        return Err(StatsError::Infinite { side, index });
    }
    Ok(())
}

/// Ascending order of values known not to be NaN (`-0.0` and `0.0` are equal, so they tie).
fn cmp_f64(a: &f64, b: &f64) -> Ordering {
    a.partial_cmp(b).unwrap_or(Ordering::Equal)
}

/// The Mann-Whitney U test of `x` against `y`.
///
/// Input: two samples (each 1 to [`MAX_SAMPLES`] values, no NaN; infinities rank as the largest
/// or smallest values) and the alternative (`Greater`: `x` tends to be larger).
///
/// Output: U of `x`, the p-value and the method, matching
/// `scipy.stats.mannwhitneyu(x, y, alternative=…, use_continuity=True, method="auto")` of SciPy
/// 1.17:
/// - the exact null distribution of U when there are no ties (anywhere in `x ∪ y`) and at
///   least one side has at most 8 values (SciPy: asymptotic only when both sides exceed 8, or
///   when there are ties); the distribution is the coefficient list of the Gaussian binomial
///   `[n1+n2 choose n1]_q`, computed in exact 128-bit integers up to degree `n1·n2/2`
///   (symmetry gives the rest), while `n1·n2 ≤` [`MAX_EXACT_PAIRS`] (beyond that the normal
///   approximation is used, a deliberate difference from SciPy);
/// - otherwise the normal approximation: `z = (U − n1·n2/2 − 1/2) / σ` with
///   `σ² = n1·n2/12 · ((n+1) − Σ(t³−t)/(n(n−1)))` over the tie groups `t`, `p = P(Z ≥ z)`;
/// - two-sided: twice the upper tail of the larger U, capped at 1.
///
/// All values equal (both sides): σ = 0. SciPy 1.17 answers `p = 1` there too, but only
/// through `z = −0.5/0 = −∞` (and would give NaN should σ² round below zero); this returns
/// `p = 1` deliberately (nothing suggests a difference), with `z = None`.
pub fn mann_whitney_u(x: &[f64], y: &[f64], alt: Alternative) -> Result<MannWhitney, StatsError> {
    check_sample(x, "x", false)?;
    check_sample(y, "y", false)?;
    let (n1, n2) = (x.len(), y.len());
    let n = n1 + n2;
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|&v| (v, true))
        .chain(y.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|a, b| cmp_f64(&a.0, &b.0));
    // Average ranks (1-based) of x's values, and the tie groups.
    let mut r1 = 0.0f64;
    let mut tie_term = 0.0f64;
    let mut ties = false;
    let mut i = 0usize;
    while i < n {
        let mut j = i + 1;
        while j < n && all[j].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i) as f64;
        if j - i > 1 {
            ties = true;
            tie_term += t * t * t - t;
        }
        // Ranks i+1 ..= j, average (i + 1 + j) / 2.
        let rank = (i + 1 + j) as f64 / 2.0;
        let in_x = all[i..j].iter().filter(|e| e.1).count() as f64;
        r1 += rank * in_x;
        i = j;
    }
    let (f1, f2) = (n1 as f64, n2 as f64);
    let u1 = r1 - f1 * (f1 + 1.0) / 2.0;
    let u2 = f1 * f2 - u1;
    let (u, factor) = match alt {
        Alternative::Greater => (u1, 1.0),
        Alternative::Less => (u2, 1.0),
        Alternative::TwoSided => (u1.max(u2), 2.0),
    };
    let small = n1.min(n2) as u64;
    let large = n1.max(n2) as u64;
    if !ties && small <= 8 && small * large <= MAX_EXACT_PAIRS {
        // Without ties U is an integer.
        if let Some(sf) = exact_sf(u as u64, small, large) {
            return Ok(MannWhitney {
                u: u1,
                p_value: (sf * factor).clamp(0.0, 1.0),
                method: Method::Exact,
                z: None,
            });
        }
    }
    let nf = n as f64;
    let var = f1 * f2 / 12.0 * ((nf + 1.0) - tie_term / (nf * (nf - 1.0)));
    if var.is_nan() || var <= 0.0 || !var.is_finite() {
        // Every value is the same (or n = 1 + 1 tied): no evidence either way.
        return Ok(MannWhitney {
            u: u1,
            p_value: 1.0,
            method: Method::Asymptotic,
            z: None,
        });
    }
    let z = (u - f1 * f2 / 2.0 - 0.5) / var.sqrt();
    Ok(MannWhitney {
        u: u1,
        p_value: (norm_sf(z) * factor).clamp(0.0, 1.0),
        method: Method::Asymptotic,
        z: Some(z),
    })
}

/// `P(U ≥ u)` under the null for sample sizes `m ≤ n` without ties, or `None` when a count
/// would not fit 128 bits (not reached within [`MAX_EXACT_PAIRS`]).
fn exact_sf(u: u64, m: u64, n: u64) -> Option<f64> {
    let mn = m.checked_mul(n)?;
    if u == 0 {
        return Some(1.0);
    }
    if u > mn {
        return Some(0.0);
    }
    let d = (mn / 2) as usize;
    let counts = u_counts_low(m as usize, n as usize, d)?;
    let total = binomial_u128(m + n, m)?;
    // The distribution is symmetric: P(U ≥ u) = P(U ≤ mn − u).
    let k = mn - u;
    let p = if k as usize <= d {
        let s = counts[..=k as usize]
            .iter()
            .try_fold(0u128, |a, &c| a.checked_add(u128::try_from(c).ok()?))?;
        s as f64 / total as f64
    } else {
        // u − 1 < mn/2 here, within the computed half.
        let s = counts[..u as usize]
            .iter()
            .try_fold(0u128, |a, &c| a.checked_add(u128::try_from(c).ok()?))?;
        total.checked_sub(s)? as f64 / total as f64
    };
    Some(p)
}

/// The number of arrangements with `U = k` for `k ≤ d`: the low coefficients of the Gaussian
/// binomial `[m+n choose m]_q = Π_{i=1..m} (1 − q^{n+i}) / (1 − q^i)`, built one factor pair at a
/// time (after step `i` the list holds `[n+i choose i]_q`, whose coefficients are counts, so no
/// intermediate exceeds `C(m+n, m)`). Truncating at degree `d` is exact: multiplying or dividing
/// by `1 − q^j` changes a coefficient only from lower ones. O(m·d) time.
fn u_counts_low(m: usize, n: usize, d: usize) -> Option<Vec<i128>> {
    let mut c = vec![0i128; d + 1];
    c[0] = 1;
    for i in 1..=m {
        let up = n + i;
        if up <= d {
            for k in (up..=d).rev() {
                c[k] = c[k].checked_sub(c[k - up])?;
            }
        }
        for k in i..=d {
            c[k] = c[k].checked_add(c[k - i])?;
        }
    }
    Some(c)
}

/// `C(n, k)` exactly, or `None` on overflow.
fn binomial_u128(n: u64, k: u64) -> Option<u128> {
    let k = k.min(n.checked_sub(k)?);
    let mut c: u128 = 1;
    for i in 1..=k as u128 {
        // c · (n − k + i) is divisible by i (it is C(n − k + i, i) · i).
        c = c.checked_mul(n as u128 - k as u128 + i)? / i;
    }
    Some(c)
}

/// The Hodges-Lehmann estimate of the shift of `x` over `y`: the median of all `n1·n2`
/// differences `x_i − y_j` (positive: `x` is larger).
///
/// Input: two samples, each 1 to [`MAX_SAMPLES`] finite values. Output: the median (for an even
/// number of pairs, the mean of the two middle differences, as `numpy.median` does).
///
/// No pair is materialised, so there is no pair limit and no subsampling: the k-th smallest
/// difference is found exactly by bisection over the ordered bit patterns of `f64` (at most 64
/// steps plus a few), each step counting the pairs `x_i − y_j ≤ d` in O(n1 + n2) with two
/// pointers over the sorted samples. (Signature: a `Result`, because empty or non-finite input
/// has no estimate.)
pub fn hodges_lehmann(x: &[f64], y: &[f64]) -> Result<f64, StatsError> {
    check_sample(x, "x", true)?;
    check_sample(y, "y", true)?;
    let mut xs = x.to_vec();
    let mut ys = y.to_vec();
    xs.sort_by(cmp_f64);
    ys.sort_by(cmp_f64);
    let pairs = xs.len() as u64 * ys.len() as u64;
    if pairs % 2 == 1 {
        Ok(kth_difference(&xs, &ys, pairs / 2 + 1))
    } else {
        let lo = kth_difference(&xs, &ys, pairs / 2);
        let hi = kth_difference(&xs, &ys, pairs / 2 + 1);
        Ok(lo + (hi - lo) / 2.0)
    }
}

/// An order-preserving map of non-NaN `f64` to `u64` (and back, [`from_key`]).
fn key(v: f64) -> u64 {
    let b = v.to_bits();
    if b >> 63 == 1 { !b } else { b | (1 << 63) }
}

fn from_key(k: u64) -> f64 {
    if k >> 63 == 1 {
        f64::from_bits(k & !(1 << 63))
    } else {
        f64::from_bits(!k)
    }
}

/// The number of pairs with `fl(x_i − y_j) ≤ d` (`fl(x − y)` is monotone in both, so one pass).
fn count_le(xs: &[f64], ys: &[f64], d: f64) -> u64 {
    // For ascending x, the first j with x − y_j ≤ d only moves right.
    let mut j = 0usize;
    let mut count = 0u64;
    for &xi in xs {
        while j < ys.len() && xi - ys[j] > d {
            j += 1;
        }
        count += (ys.len() - j) as u64;
    }
    count
}

/// The k-th smallest (1-based) of the computed differences `x_i − y_j`, for sorted samples.
fn kth_difference(xs: &[f64], ys: &[f64], k: u64) -> f64 {
    let lo_v = xs[0] - ys[ys.len() - 1];
    let hi_v = xs[xs.len() - 1] - ys[0];
    if lo_v.is_nan() || hi_v.is_nan() {
        return f64::NAN;
    }
    // Smallest key whose value has count ≥ k; that value is a difference that occurs.
    let (mut lo, mut hi) = (key(lo_v), key(hi_v));
    // Invariant: count(from_key(hi)) ≥ k; the answer is in [lo, hi]. ≤ 65 halvings.
    for _ in 0..70 {
        if lo >= hi {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        let v = from_key(mid);
        if !v.is_nan() && count_le(xs, ys, v) >= k {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    from_key(hi)
}

/// The result of [`fisher_exact`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FisherExact {
    /// The sample odds ratio `a·d / (b·c)` (SciPy's `statistic`): infinite when `b·c = 0`, NaN
    /// when a row or column sums to zero.
    pub odds_ratio: f64,
    /// The p-value, in [0, 1].
    pub p_value: f64,
}

/// Fisher's exact test of the 2×2 table `[[a, b], [c, d]]`, as `scipy.stats.fisher_exact`.
///
/// For canary analysis the table is `[[canary_errors, canary_ok], [baseline_errors,
/// baseline_ok]]` and `Greater` means the canary's error odds are higher.
///
/// Conditioning on the margins, `a` is hypergeometric: `N = a+b+c+d` items, `a+b` of them in
/// the first row, `a+c` drawn. `Greater`: `P(X ≥ a)`; `Less`: `P(X ≤ a)`; `TwoSided`: the sum of
/// the probabilities of all tables no more likely than the observed one (with SciPy's relative
/// tolerance of 1e-14; 1 when the observed table is the mode). A row or column summing to zero
/// gives `p = 1`. Each probability is computed directly in log space with Loader's
/// saddle-point form of the binomial (accurate to ~1e-14 for any size, no factorial
/// differences); tails are summed from the observed table away from the mode, stopping once the
/// rest is below 1e-17 of the sum (at most [`MAX_FISHER_TERMS`] terms; beyond that an error).
///
/// Input bounds: `a + b + c + d ≤` [`MAX_TABLE_TOTAL`].
pub fn fisher_exact(
    a: u64,
    b: u64,
    c: u64,
    d: u64,
    alt: Alternative,
) -> Result<FisherExact, StatsError> {
    let total = [a, b, c, d]
        .iter()
        .try_fold(0u64, |s, &v| s.checked_add(v))
        .filter(|&t| t <= MAX_TABLE_TOTAL)
        .ok_or_else(|| {
            StatsError::Counts(format!(
                "a table totalling more than {MAX_TABLE_TOTAL} entries"
            ))
        })?;
    let _ = total;
    if a + b == 0 || c + d == 0 || a + c == 0 || b + d == 0 {
        return Ok(FisherExact {
            odds_ratio: f64::NAN,
            p_value: 1.0,
        });
    }
    let odds_ratio = if b > 0 && c > 0 {
        (a as f64 * d as f64) / (b as f64 * c as f64)
    } else {
        f64::INFINITY
    };
    let h = Hypergeom::new(a + b, c + d, a + c);
    let p = match alt {
        Alternative::Greater => h.sf_ge(a)?,
        Alternative::Less => h.cdf_le(a)?,
        Alternative::TwoSided => h.two_sided(a)?,
    };
    Ok(FisherExact {
        odds_ratio,
        p_value: p.clamp(0.0, 1.0),
    })
}

/// [`fisher_exact`] with `Greater`: the canary's error odds are higher.
pub fn fisher_exact_greater(a: u64, b: u64, c: u64, d: u64) -> Result<FisherExact, StatsError> {
    fisher_exact(a, b, c, d, Alternative::Greater)
}

/// [`fisher_exact`] with `TwoSided`.
pub fn fisher_exact_two_sided(a: u64, b: u64, c: u64, d: u64) -> Result<FisherExact, StatsError> {
    fisher_exact(a, b, c, d, Alternative::TwoSided)
}

/// The hypergeometric distribution of the number of first-row items among `draws` items drawn
/// from `r` first-row and `w` second-row items.
#[derive(Debug, Clone, Copy)]
struct Hypergeom {
    r: u64,
    w: u64,
    draws: u64,
    lo: u64,
    hi: u64,
    mode: u64,
}

impl Hypergeom {
    fn new(r: u64, w: u64, draws: u64) -> Hypergeom {
        let lo = draws.saturating_sub(w);
        let hi = draws.min(r);
        let mode = ((draws as u128 + 1) * (r as u128 + 1) / (r as u128 + w as u128 + 2)) as u64;
        Hypergeom {
            r,
            w,
            draws,
            lo,
            hi,
            mode: mode.clamp(lo, hi),
        }
    }

    fn ln_pmf(&self, k: u64) -> f64 {
        if k < self.lo || k > self.hi {
            return f64::NEG_INFINITY;
        }
        let (r, w, n) = (self.r as f64, self.w as f64, self.draws as f64);
        let total = r + w;
        let p = n / total;
        let q = (self.r + self.w - self.draws) as f64 / total;
        let k = k as f64;
        ln_binom_raw(k, r, p, q) + ln_binom_raw(n - k, w, p, q) - ln_binom_raw(n, total, p, q)
    }

    fn pmf(&self, k: u64) -> f64 {
        self.ln_pmf(k).exp()
    }

    /// Σ pmf over `from, from+step, …` while the terms (which must be decreasing) matter.
    fn tail_sum(&self, from: u64, up: bool) -> Result<f64, StatsError> {
        let mut sum = 0.0f64;
        let mut prev = f64::NAN;
        let mut k = from;
        for _ in 0..MAX_FISHER_TERMS {
            let t = self.pmf(k);
            sum += t;
            // The rest is at most t·r/(1−r) for the current ratio r < 1 of decreasing terms.
            let r = t / prev;
            if t == 0.0 || (r < 1.0 && t * r / (1.0 - r) < sum * 1e-17) {
                return Ok(sum);
            }
            prev = t;
            if up {
                if k >= self.hi {
                    return Ok(sum);
                }
                k += 1;
            } else {
                if k <= self.lo {
                    return Ok(sum);
                }
                k -= 1;
            }
        }
        Err(StatsError::Bound(format!(
            "a hypergeometric tail needed more than {MAX_FISHER_TERMS} terms"
        )))
    }

    /// `P(X ≥ a)`.
    fn sf_ge(&self, a: u64) -> Result<f64, StatsError> {
        if a <= self.lo {
            Ok(1.0)
        } else if a > self.hi {
            Ok(0.0)
        } else if a > self.mode {
            self.tail_sum(a, true)
        } else {
            Ok(1.0 - self.tail_sum(a - 1, false)?)
        }
    }

    /// `P(X ≤ a)`.
    fn cdf_le(&self, a: u64) -> Result<f64, StatsError> {
        if a >= self.hi {
            Ok(1.0)
        } else if a < self.lo {
            Ok(0.0)
        } else if a < self.mode {
            self.tail_sum(a, false)
        } else {
            Ok(1.0 - self.tail_sum(a + 1, true)?)
        }
    }

    /// The sum over tables no more likely than `a` (SciPy's definition and tolerance).
    fn two_sided(&self, a: u64) -> Result<f64, StatsError> {
        const EPS: f64 = 1e-14;
        let p_obs = self.pmf(a);
        let p_mode = self.pmf(self.mode);
        if (p_obs - p_mode).abs() / p_obs.max(p_mode) <= EPS {
            return Ok(1.0);
        }
        let limit = p_obs * (1.0 + EPS);
        if a < self.mode {
            let lower = self.cdf_le(a)?;
            if self.pmf(self.hi) > limit {
                return Ok(lower.min(1.0));
            }
            // First k in (mode, hi] with pmf(k) ≤ limit (pmf decreases there).
            let (mut l, mut h) = (self.mode, self.hi);
            for _ in 0..70 {
                if h - l <= 1 {
                    break;
                }
                let mid = l + (h - l) / 2;
                if self.pmf(mid) <= limit {
                    h = mid
                } else {
                    l = mid
                }
            }
            Ok((lower + self.sf_ge(h)?).min(1.0))
        } else {
            let upper = self.sf_ge(a)?;
            if self.pmf(self.lo) > limit {
                return Ok(upper.min(1.0));
            }
            // Last k in [lo, mode) with pmf(k) ≤ limit (pmf increases there).
            let (mut l, mut h) = (self.lo, self.mode);
            for _ in 0..70 {
                if h - l <= 1 {
                    break;
                }
                let mid = l + (h - l) / 2;
                if self.pmf(mid) <= limit {
                    l = mid
                } else {
                    h = mid
                }
            }
            Ok((upper + self.cdf_le(l)?).min(1.0))
        }
    }
}

/// `ln` of the binomial probability of `x` successes in `n` trials of probability `p`
/// (`q = 1 − p` passed separately, so it keeps its precision), after Loader (2000), "Fast and
/// accurate computation of binomial probabilities": `ln C(n,x) p^x q^(n−x)` as Stirling
/// remainders and deviance terms, none of which cancel catastrophically.
fn ln_binom_raw(x: f64, n: f64, p: f64, q: f64) -> f64 {
    if p == 0.0 {
        return if x == 0.0 { 0.0 } else { f64::NEG_INFINITY };
    }
    if q == 0.0 {
        return if x == n { 0.0 } else { f64::NEG_INFINITY };
    }
    if x == 0.0 {
        if n == 0.0 {
            return 0.0;
        }
        return if p < 0.1 {
            -bd0(n, n * q) - n * p
        } else {
            n * q.ln()
        };
    }
    if x == n {
        return if q < 0.1 {
            -bd0(n, n * p) - n * q
        } else {
            n * p.ln()
        };
    }
    if x < 0.0 || x > n {
        return f64::NEG_INFINITY;
    }
    let lc = stirlerr(n) - stirlerr(x) - stirlerr(n - x) - bd0(x, n * p) - bd0(n - x, n * q);
    let lf = (2.0 * std::f64::consts::PI).ln() + x.ln() + (-x / n).ln_1p();
    lc - 0.5 * lf
}

/// `ln(n!) − ln(√(2πn) (n/e)^n)` for an integer `n ≥ 1`.
fn stirlerr(n: f64) -> f64 {
    if n <= 15.0 {
        // ln(n!) summed directly (at most 15 terms), minus Stirling's approximation.
        let mut lf = 0.0f64;
        let mut k = 2.0f64;
        while k <= n {
            lf += k.ln();
            k += 1.0;
        }
        return lf - 0.5 * (2.0 * std::f64::consts::PI * n).ln() - n * n.ln() + n;
    }
    const S0: f64 = 1.0 / 12.0;
    const S1: f64 = 1.0 / 360.0;
    const S2: f64 = 1.0 / 1260.0;
    const S3: f64 = 1.0 / 1680.0;
    const S4: f64 = 1.0 / 1188.0;
    let nn = n * n;
    (S0 - (S1 - (S2 - (S3 - S4 / nn) / nn) / nn) / nn) / n
}

/// The deviance term `x ln(x/np) + np − x`, by its series when `x` is close to `np`.
fn bd0(x: f64, np: f64) -> f64 {
    if (x - np).abs() < 0.1 * (x + np) {
        let v = (x - np) / (x + np);
        let mut s = (x - np) * v;
        let mut ej = 2.0 * x * v;
        let v2 = v * v;
        // |v| < 0.05, so each term shrinks by 400×: a handful of iterations.
        for j in 1..100 {
            ej *= v2;
            let s1 = s + ej / (2 * j + 1) as f64;
            if s1 == s {
                return s1;
            }
            s = s1;
        }
        return s;
    }
    x * (x / np).ln() + np - x
}

/// The result of [`two_proportion_z`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TwoProportionZ {
    /// The canary's rate `errors_c / n_c`.
    pub rate_canary: f64,
    /// The baseline's rate `errors_b / n_b`.
    pub rate_baseline: f64,
    /// The pooled rate under the null.
    pub pooled: f64,
    /// `(rate_canary − rate_baseline) / se`, `None` when the pooled rate is 0 or 1 (no
    /// variance: both rates are equal).
    pub z: Option<f64>,
    /// One-sided p-value (canary greater): `P(Z ≥ z)`; 1 when `z` is `None`.
    pub p_value: f64,
}

/// The one-sided (canary rate greater) two-proportion z-test with pooled variance:
/// `z = (p_c − p_b) / √(p̄(1−p̄)(1/n_c + 1/n_b))`, `p̄ = (e_c + e_b)/(n_c + n_b)`,
/// `p = P(Z ≥ z)` from [`norm_sf`].
///
/// Input: errors and totals of each side (`errors ≤ total`, `total > 0`). Output:
/// [`TwoProportionZ`]. There is no continuity correction (as in the textbook test and
/// `statsmodels`' `proportions_ztest`).
pub fn two_proportion_z(
    errors_c: u64,
    n_c: u64,
    errors_b: u64,
    n_b: u64,
) -> Result<TwoProportionZ, StatsError> {
    if n_c == 0 || n_b == 0 {
        return Err(StatsError::Counts("a side with no requests".into()));
    }
    if errors_c > n_c || errors_b > n_b {
        return Err(StatsError::Counts("more errors than requests".into()));
    }
    let (ec, nc, eb, nb) = (errors_c as f64, n_c as f64, errors_b as f64, n_b as f64);
    let rate_canary = ec / nc;
    let rate_baseline = eb / nb;
    let pooled = (ec + eb) / (nc + nb);
    let se = (pooled * (1.0 - pooled) * (1.0 / nc + 1.0 / nb)).sqrt();
    if se.is_nan() || se <= 0.0 {
        return Ok(TwoProportionZ {
            rate_canary,
            rate_baseline,
            pooled,
            z: None,
            p_value: 1.0,
        });
    }
    let z = (rate_canary - rate_baseline) / se;
    Ok(TwoProportionZ {
        rate_canary,
        rate_baseline,
        pooled,
        z: Some(z),
        p_value: norm_sf(z),
    })
}

fn check_alpha_power(alpha: f64, power: f64) -> Result<(), StatsError> {
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(StatsError::Parameter(format!(
            "alpha {alpha} is not in (0, 1)"
        )));
    }
    if !(power > 0.0 && power < 1.0) {
        return Err(StatsError::Parameter(format!(
            "power {power} is not in (0, 1)"
        )));
    }
    Ok(())
}

/// The smallest canary error rate the one-sided pooled two-proportion z-test detects at level
/// `alpha` with probability `power`, given `n_c` canary and `n_b` baseline requests and the
/// baseline's rate `p0`.
///
/// Normal approximation: the smallest `p1 > p0` with
/// `p1 − p0 ≥ z_{1−α} √(p̄(1−p̄)(1/n_c + 1/n_b)) + z_{power} √(p1(1−p1)/n_c + p0(1−p0)/n_b)`,
/// `p̄ = (n_c p1 + n_b p0)/(n_c + n_b)`, found by bisection (100 steps). Output: `Ok(None)` when
/// even `p1 = 1` is not detectable (too few requests). Fisher's exact test, used for few
/// expected errors, is judged by the same approximation (it is slightly less powerful).
pub fn minimum_detectable_rate(
    alpha: f64,
    power: f64,
    n_c: u64,
    n_b: u64,
    p0: f64,
) -> Result<Option<f64>, StatsError> {
    check_alpha_power(alpha, power)?;
    if n_c == 0 || n_b == 0 {
        return Err(StatsError::Counts("a side with no requests".into()));
    }
    if !(0.0..=1.0).contains(&p0) {
        return Err(StatsError::Parameter(format!(
            "baseline rate {p0} is not in [0, 1]"
        )));
    }
    let (za, zb) = (norm_ppf(1.0 - alpha), norm_ppf(power));
    let (nc, nb) = (n_c as f64, n_b as f64);
    let margin = |p1: f64| {
        let pbar = (nc * p1 + nb * p0) / (nc + nb);
        let null_sd = (pbar * (1.0 - pbar) * (1.0 / nc + 1.0 / nb)).sqrt();
        let alt_sd = (p1 * (1.0 - p1) / nc + p0 * (1.0 - p0) / nb).sqrt();
        (p1 - p0) - za * null_sd - zb * alt_sd
    };
    if p0 >= 1.0 || margin(1.0) < 0.0 {
        return Ok(None);
    }
    let (mut lo, mut hi) = (p0, 1.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if margin(mid) >= 0.0 {
            hi = mid
        } else {
            lo = mid
        }
    }
    Ok(Some(hi))
}

/// The smallest location shift, in units of the (common) standard deviation of normally
/// distributed samples, that the one-sided Mann-Whitney test of `n_c` against `n_b` values
/// detects at level `alpha` with probability `power`.
///
/// Noether's normal approximation of the power: the test detects `P(X > Y) = π` when
/// `(π − 1/2) √(12 n_c n_b / (n_c + n_b + 1)) ≥ z_{1−α} + z_{power}`; for a normal shift `δ`
/// (in SDs), `π = Φ(δ/√2)`, so `δ = √2 Φ⁻¹(1/2 + (z_{1−α} + z_{power}) √((n_c + n_b + 1) /
/// (12 n_c n_b)))`. Output: `Ok(None)` when the needed `π` is ≥ 1 (too few samples). Multiply by
/// the pooled SD of the samples for a shift in their unit.
pub fn minimum_detectable_shift_sd(
    alpha: f64,
    power: f64,
    n_c: usize,
    n_b: usize,
) -> Result<Option<f64>, StatsError> {
    check_alpha_power(alpha, power)?;
    if n_c == 0 || n_b == 0 {
        return Err(StatsError::Counts("a side with no samples".into()));
    }
    let (nc, nb) = (n_c as f64, n_b as f64);
    let pi = 0.5
        + (norm_ppf(1.0 - alpha) + norm_ppf(power)) * ((nc + nb + 1.0) / (12.0 * nc * nb)).sqrt();
    if pi.is_nan() || pi >= 1.0 {
        return Ok(None);
    }
    Ok(Some(std::f64::consts::SQRT_2 * norm_ppf(pi)))
}

/// Bonferroni: the level for each of `metrics` tests so that the chance of any false Fail is at
/// most `alpha` (`alpha / metrics`; `metrics = 0` is treated as 1).
pub fn alpha_per_metric(alpha: f64, metrics: usize) -> f64 {
    alpha / metrics.max(1) as f64
}

/// The complementary error function `erfc(x) = 2/√π ∫_x^∞ e^{−t²} dt`, to about 1e-13 relative
/// for `x ≥ 0` (and far beyond the needs of a p-value; checked against `scipy.special.erfc`).
///
/// - `x < 0`: `2 − erfc(−x)`;
/// - `0 ≤ x < 2`: `1 − erf(x)` with the everywhere-positive series
///   `erf(x) = 2/√π e^{−x²} Σ_{k≥0} 2^k x^{2k+1} / (1·3·…·(2k+1))` (no cancellation inside;
///   `erfc ≥ 4.6e-3` here, so the final subtraction loses < 2 digits);
/// - `x ≥ 2`: the continued fraction `erfc(x) = e^{−x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x
///   + …))))`, evaluated by the modified Lentz method (at most 5,000 terms; about 100 at `x = 2`);
/// - `e^{−x²}` is computed as `e^{−h²} e^{−(x−h)(x+h)}` with `h` = `x` rounded to 1/64, so the
///   rounding of `x²` does not cost digits in the far tail. Underflows to 0 beyond `x ≈ 27.2`.
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x == f64::INFINITY || x > 40.0 {
        return 0.0;
    }
    let emx2 = exp_minus_square(x);
    let two_over_sqrt_pi = std::f64::consts::FRAC_2_SQRT_PI;
    if x < 2.0 {
        let x2 = 2.0 * x * x;
        let mut term = x;
        let mut sum = x;
        for k in 1..200 {
            term *= x2 / (2 * k + 1) as f64;
            sum += term;
            if term < sum * 1e-17 {
                break;
            }
        }
        return 1.0 - two_over_sqrt_pi * emx2 * sum;
    }
    // g = x + a1/(x + a2/(x + …)), a_k = k/2.
    const TINY: f64 = 1e-300;
    let mut f = x;
    let mut c = x;
    let mut d = 0.0f64;
    for k in 1..5000 {
        let a = k as f64 / 2.0;
        d = x + a * d;
        if d == 0.0 {
            d = TINY;
        }
        c = x + a / c;
        if c == 0.0 {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    // 1/√π = (2/√π)/2.
    two_over_sqrt_pi / 2.0 * emx2 / f
}

/// `e^{−x²}` without losing the digits of `x²`'s rounding (see [`erfc`]).
fn exp_minus_square(x: f64) -> f64 {
    let h = (x * 64.0).trunc() / 64.0;
    let l = x - h;
    (-(h * h)).exp() * (-(l * (x + h))).exp()
}

/// The upper tail of the standard normal distribution, `P(Z ≥ z) = erfc(z/√2)/2`.
pub fn norm_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The standard normal CDF, `P(Z ≤ z) = erfc(−z/√2)/2`.
pub fn norm_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// The standard normal quantile: the `z` with `P(Z ≤ z) = p` (`−∞` at 0, `∞` at 1, NaN
/// outside [0, 1]). Bisection on [`norm_cdf`] over [−40, 40] until the bracket stops shrinking
/// (at most 200 steps), so it is as accurate as `erfc`.
pub fn norm_ppf(p: f64) -> f64 {
    if !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let (mut lo, mut hi) = (-40.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        // Compare in the tail where the CDF keeps its relative precision.
        let below = if mid < 0.0 {
            norm_cdf(mid) < p
        } else {
            norm_sf(mid) > 1.0 - p
        };
        if below { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn exact_distribution_sums_to_one_and_is_symmetric() {
        for (m, n) in [(1, 1), (3, 5), (4, 4), (8, 8), (2, 30)] {
            let mn = m * n;
            let c = u_counts_low(m, n, mn).unwrap();
            let total: i128 = c.iter().sum();
            assert_eq!(
                total as u128,
                binomial_u128((m + n) as u64, m as u64).unwrap()
            );
            for k in 0..=mn {
                assert_eq!(c[k], c[mn - k], "symmetry at m={m} n={n} k={k}");
                assert!(c[k] >= 0);
            }
        }
    }

    #[test]
    fn exact_p_of_complete_separation() {
        // x all above y: U = 16 of 16, one arrangement in C(8,4) = 70.
        let r = mann_whitney_u(
            &[5.0, 6.0, 7.0, 8.0],
            &[1.0, 2.0, 3.0, 4.0],
            Alternative::Greater,
        )
        .unwrap();
        assert_eq!(r.method, Method::Exact);
        assert_eq!(r.u, 16.0);
        assert!(close(r.p_value, 1.0 / 70.0, 1e-15));
        let two = mann_whitney_u(
            &[5.0, 6.0, 7.0, 8.0],
            &[1.0, 2.0, 3.0, 4.0],
            Alternative::TwoSided,
        )
        .unwrap();
        assert!(close(two.p_value, 2.0 / 70.0, 1e-15));
        let less = mann_whitney_u(
            &[5.0, 6.0, 7.0, 8.0],
            &[1.0, 2.0, 3.0, 4.0],
            Alternative::Less,
        )
        .unwrap();
        assert!(close(less.p_value, 1.0, 1e-15));
    }

    #[test]
    fn ties_use_the_approximation_and_all_equal_is_one() {
        let r = mann_whitney_u(&[1.0, 2.0, 2.0], &[2.0, 3.0], Alternative::TwoSided).unwrap();
        assert_eq!(r.method, Method::Asymptotic);
        let same = mann_whitney_u(&[3.0; 5], &[3.0; 7], Alternative::Greater).unwrap();
        assert_eq!((same.p_value, same.z), (1.0, None));
        assert!(mann_whitney_u(&[], &[1.0], Alternative::Less).is_err());
        assert!(matches!(
            mann_whitney_u(&[1.0], &[f64::NAN], Alternative::Less),
            Err(StatsError::NaN {
                side: "y",
                index: 0
            })
        ));
    }

    #[test]
    fn hodges_lehmann_is_the_median_of_differences() {
        let x = [1.0, 4.0, 9.0];
        let y = [0.5, 2.0];
        let mut d: Vec<f64> = x
            .iter()
            .flat_map(|a| y.iter().map(move |b| a - b))
            .collect();
        d.sort_by(cmp_f64);
        assert_eq!(hodges_lehmann(&x, &y).unwrap(), (d[2] + d[3]) / 2.0);
        assert_eq!(hodges_lehmann(&[3.0], &[1.0]).unwrap(), 2.0);
        assert_eq!(hodges_lehmann(&[-1.0, 0.0, 5.0], &[0.0]).unwrap(), 0.0);
        assert!(hodges_lehmann(&[f64::INFINITY], &[1.0]).is_err());
    }

    #[test]
    fn fisher_small_tables() {
        // [[3, 1], [1, 3]]: P(X ≥ 3) = (16 + 1) / 70.
        let g = fisher_exact_greater(3, 1, 1, 3).unwrap();
        assert!(close(g.p_value, 17.0 / 70.0, 1e-13), "{g:?}");
        assert!(close(g.odds_ratio, 9.0, 1e-15));
        let t = fisher_exact_two_sided(3, 1, 1, 3).unwrap();
        assert!(close(t.p_value, 34.0 / 70.0, 1e-13), "{t:?}");
        assert_eq!(fisher_exact_greater(0, 0, 3, 4).unwrap().p_value, 1.0);
    }

    #[test]
    fn exact_beyond_the_bound_falls_back_to_the_approximation() {
        // 2 × 500,001 pairs is above MAX_EXACT_PAIRS: asymptotic, though SciPy would be exact.
        let y: Vec<f64> = (0..500_001).map(f64::from).collect();
        let r = mann_whitney_u(&[-1.0, 1e9], &y, Alternative::TwoSided).unwrap();
        assert_eq!(r.method, Method::Asymptotic);
        let r = mann_whitney_u(&[-1.0, 1e9], &y[..400_000], Alternative::TwoSided).unwrap();
        assert_eq!(r.method, Method::Exact);
        // U = 400,000 of 800,000: the centre, p = 1.
        assert_eq!(r.u, 400_000.0);
        assert!(close(r.p_value, 1.0, 1e-12), "{r:?}");
    }

    #[test]
    fn fisher_large_table_matches_high_precision() {
        // mpmath at 50 digits: 6.8017994017094267027e-42 (SciPy 1.17.1: 6.8017994038e-42).
        let t = fisher_exact_two_sided(12_000, 988_000, 10_000, 990_000).unwrap();
        assert!(close(t.p_value, 6.801_799_401_709_427e-42, 1e-12), "{t:?}");
    }

    #[test]
    fn normal_tail() {
        assert!(close(erfc(0.5), 0.4795001221869535, 1e-14));
        assert!(close(erfc(3.0), 2.2090496998585445e-05, 1e-13));
        assert!(close(erfc(10.0), 2.0884875837625446e-45, 1e-13));
        assert!(close(norm_ppf(0.975), 1.959963984540054, 1e-13));
        assert!(close(norm_ppf(0.8), 0.8416212335729143, 1e-13));
    }

    #[test]
    fn mde_matches_the_notes() {
        // Notes: p0 = 1 %, detecting 2 % at α = 0.02 and power 0.8 needs ~3,000 per side.
        let at_3000 = minimum_detectable_rate(0.02, 0.8, 3000, 3000, 0.01)
            .unwrap()
            .unwrap();
        assert!((0.018..0.021).contains(&at_3000), "{at_3000}");
        let at_1000 = minimum_detectable_rate(0.02, 0.8, 1000, 1000, 0.01)
            .unwrap()
            .unwrap();
        assert!(at_1000 > at_3000);
        assert_eq!(minimum_detectable_rate(0.01, 0.8, 1, 1, 0.5).unwrap(), None);
        // 30 per side at α = 0.02 detects about 0.9 SD (notes: 1 SD at 0.91 power two-sided).
        let d = minimum_detectable_shift_sd(0.02, 0.8, 30, 30)
            .unwrap()
            .unwrap();
        assert!((0.7..1.0).contains(&d), "{d}");
        assert_eq!(minimum_detectable_shift_sd(0.01, 0.8, 1, 1).unwrap(), None);
        assert_eq!(alpha_per_metric(0.05, 5), 0.01);
        assert_eq!(alpha_per_metric(0.05, 0), 0.05);
    }
}
