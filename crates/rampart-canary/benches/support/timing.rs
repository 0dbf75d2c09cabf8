//! The timer of the table-printing benches (`judge_cpu`, and the controller's
//! `analysis_eval`, which includes this file by path): median and p90 ns per call.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Batches timed per row.
pub const BATCHES: usize = 101;

/// Median and p90 ns per call of `f` over [`BATCHES`] batches, each of as many calls as make
/// one batch last at least `at_least` (at most `max_calls`).
pub fn time_ns<T>(at_least: Duration, max_calls: u32, mut f: impl FnMut() -> T) -> (f64, f64) {
    let mut inner = 1u32;
    loop {
        let t = Instant::now();
        for _ in 0..inner {
            black_box(f());
        }
        if t.elapsed() >= at_least || inner >= max_calls {
            break;
        }
        inner *= 2;
    }
    let mut per_call: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..inner {
                black_box(f());
            }
            t.elapsed().as_nanos() as f64 / inner as f64
        })
        .collect();
    per_call.sort_by(f64::total_cmp);
    (per_call[BATCHES / 2], per_call[BATCHES * 9 / 10])
}
