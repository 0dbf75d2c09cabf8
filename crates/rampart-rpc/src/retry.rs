//! One bounded retry loop for re-attaching to a stream or reconnecting to a peer: the CLI
//! re-attaching to an agent's or the controller's `Watch`, the controller finding an agent
//! again. Bounded in time (a deadline) and in count (one try per pause until the deadline,
//! plus one).

use std::future::Future;
use std::time::{Duration, Instant};

/// What one try gave.
#[derive(Debug)]
pub enum Attempt<T, E> {
    /// It worked.
    Done(T),
    /// It failed in a way worth another try (a broken connection); why, for the final message.
    Again(String),
    /// It was refused: stop now.
    Stop(E),
}

/// Why [`until`] stopped without a result.
#[derive(Debug, PartialEq, Eq)]
pub enum GaveUp<E> {
    /// A try was refused.
    Stopped(E),
    /// The deadline passed; the last reason a try gave (empty when none ran).
    TimedOut(String),
}

/// Tries `attempt` until it is done or refused, or `deadline` passes, `pause` apart. The first
/// try runs at once when `immediate`, else after one pause.
pub async fn until<T, E, F, Fut>(
    deadline: Instant,
    pause: Duration,
    immediate: bool,
    mut attempt: F,
) -> Result<T, GaveUp<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt<T, E>>,
{
    let pause = pause.max(Duration::from_millis(1));
    let span = deadline.saturating_duration_since(Instant::now());
    let max_tries = span.as_millis() / pause.as_millis() + 2;
    let mut last = String::new();
    let mut wait = !immediate;
    for _ in 0..max_tries {
        if wait {
            if Instant::now() + pause > deadline {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        wait = true;
        match attempt().await {
            Attempt::Done(v) => return Ok(v),
            Attempt::Again(why) => last = why,
            Attempt::Stop(e) => return Err(GaveUp::Stopped(e)),
        }
    }
    Err(GaveUp::TimedOut(last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn retries_until_done_then_stops_on_refusal_and_times_out() {
        let rt = rt();
        let tries = Cell::new(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let got: Result<u32, GaveUp<()>> =
            rt.block_on(until(deadline, Duration::from_millis(5), true, || {
                tries.set(tries.get() + 1);
                let n = tries.get();
                async move {
                    if n < 3 {
                        Attempt::Again(format!("try {n} broke"))
                    } else {
                        Attempt::Done(n)
                    }
                }
            }));
        assert_eq!(got, Ok(3));

        let refused: Result<(), GaveUp<&str>> =
            rt.block_on(until(deadline, Duration::from_millis(5), true, || async {
                Attempt::Stop("permission denied")
            }));
        assert_eq!(refused, Err(GaveUp::Stopped("permission denied")));

        let tries = Cell::new(0);
        let started = Instant::now();
        let timed_out: Result<(), GaveUp<()>> = rt.block_on(until(
            Instant::now() + Duration::from_millis(50),
            Duration::from_millis(10),
            false,
            || {
                tries.set(tries.get() + 1);
                async { Attempt::Again("unavailable".to_string()) }
            },
        ));
        assert_eq!(timed_out, Err(GaveUp::TimedOut("unavailable".into())));
        assert!(tries.get() >= 1 && tries.get() <= 7, "{}", tries.get());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
