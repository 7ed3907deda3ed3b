//! Log lines something outside can repeat at will (a plugin's output, a
//! client with a wrong token, descriptors running out) are limited: a
//! burst, then at most that many per window, the next line saying how many
//! were left out.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lines allowed per window, by default.
pub(crate) const BURST: u32 = 50;
/// The window.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// Counts one kind of log line.
pub(crate) struct Limiter {
    burst: u32,
    state: Mutex<State>,
}

struct State {
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl Limiter {
    /// [`BURST`] lines per [`WINDOW`].
    pub(crate) const fn new() -> Self {
        Self::with_burst(BURST)
    }

    /// `burst` lines per [`WINDOW`].
    pub(crate) const fn with_burst(burst: u32) -> Self {
        Self {
            burst,
            state: Mutex::new(State {
                window_start: None,
                used: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether to log this line: `Some(n)` with the lines left out since
    /// the last one logged, `None` to leave it out.
    pub(crate) fn admit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if state
            .window_start
            .is_none_or(|start| now.duration_since(start) >= WINDOW)
        {
            state.window_start = Some(now);
            state.used = 0;
        }
        if state.used >= self.burst {
            state.suppressed += 1;
            return None;
        }
        state.used += 1;
        Some(std::mem::take(&mut state.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_nothing_until_the_next_window_which_tells_the_count() {
        let limiter = Limiter::new();
        for _ in 0..BURST {
            assert_eq!(limiter.admit(), Some(0));
        }
        for _ in 0..7 {
            assert_eq!(limiter.admit(), None);
        }
        // The next window, as if it had come.
        limiter.state.lock().unwrap().window_start = Some(Instant::now() - WINDOW);
        assert_eq!(limiter.admit(), Some(7));
        assert_eq!(limiter.admit(), Some(0));
    }
}
