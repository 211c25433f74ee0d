//! How a stage's failures and its own log lines reach the proxy's log,
//! without letting a client (who can make a plugin fail on purpose) or a
//! plugin (which can log in a loop) flood it.
//!
//! - A failed call is one line: stage, reason and the plugin's own frame
//!   where it stopped; the whole wasm backtrace is logged at debug level.
//!   The same failure again within [`REPEAT_WINDOW`] is counted instead of
//!   logged, and the next line that is logged says how many it folded in.
//! - A plugin's log line is made one line (control characters escaped, so
//!   it cannot forge others) and cut at [`MAX_LINE`] bytes (marked as cut);
//!   each stage may log [`LINES_PER_SECOND`] lines a second (bursts up to
//!   [`BURST`]). Past that, lines are dropped: the first drop is announced
//!   and the next line let through says how many were dropped.

use std::sync::Mutex;

use crate::clock;

/// How long identical failures are folded into one line.
pub const REPEAT_WINDOW_MS: u64 = 10_000;
/// The same, as documentation shows it.
pub const REPEAT_WINDOW: std::time::Duration = std::time::Duration::from_millis(REPEAT_WINDOW_MS);
/// Longest plugin log line kept, in bytes.
pub const MAX_LINE: usize = 4096;
/// Plugin log lines per stage and second.
pub const LINES_PER_SECOND: u64 = 100;
/// Plugin log lines a stage may write at once after a quiet spell.
pub const BURST: u64 = 200;

/// Folds repeats of one stage's failures.
#[derive(Debug, Default)]
pub struct FailureLog {
    last: Mutex<Option<Last>>,
}

#[derive(Debug)]
struct Last {
    reason: String,
    logged_ms: u64,
    folded: u64,
}

/// What the caller should do with a failure.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// Log it; `folded` identical failures since the last line were not.
    Log {
        /// Failures counted but not logged since the last line.
        folded: u64,
    },
    /// Do not log it: it repeats the last one logged.
    Fold,
}

impl FailureLog {
    /// A failure with this one-line `reason` happened.
    pub fn failed(&self, reason: &str) -> Report {
        let now = clock::now_ms();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.as_mut() {
            Some(l) if l.reason == reason && now < l.logged_ms + REPEAT_WINDOW_MS => {
                l.folded += 1;
                Report::Fold
            }
            _ => {
                let folded = last.take().map_or(0, |l| l.folded);
                *last = Some(Last {
                    reason: reason.to_owned(),
                    logged_ms: now,
                    folded: 0,
                });
                Report::Log { folded }
            }
        }
    }
}

/// One stage's allowance of log lines: a token bucket.
#[derive(Debug)]
pub struct LogBudget {
    state: Mutex<Budget>,
}

#[derive(Debug)]
struct Budget {
    /// Lines allowed now, in thousandths.
    milli_tokens: u64,
    refilled_ms: u64,
    dropped: u64,
}

impl Default for LogBudget {
    fn default() -> LogBudget {
        LogBudget {
            state: Mutex::new(Budget {
                milli_tokens: BURST * 1000,
                refilled_ms: clock::now_ms(),
                dropped: 0,
            }),
        }
    }
}

/// What to do with one plugin log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Allowance {
    /// Log it; `dropped` lines were dropped since the last one logged.
    Log {
        /// Lines dropped just before this one.
        dropped: u64,
    },
    /// Drop it; `first` when it starts a run of drops (say so, once).
    Drop {
        /// Whether the lines before it were logged.
        first: bool,
    },
}

impl LogBudget {
    /// Whether one more line may be logged.
    pub fn take(&self) -> Allowance {
        let now = clock::now_ms();
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_sub(b.refilled_ms);
        b.milli_tokens = (b.milli_tokens + elapsed * LINES_PER_SECOND).min(BURST * 1000);
        b.refilled_ms = now;
        if b.milli_tokens < 1000 {
            b.dropped += 1;
            return Allowance::Drop {
                first: b.dropped == 1,
            };
        }
        b.milli_tokens -= 1000;
        Allowance::Log {
            dropped: std::mem::take(&mut b.dropped),
        }
    }
}

/// A plugin's log message as one line: control characters (a newline that
/// would start a forged log line, say) escaped, cut to [`MAX_LINE`] bytes on
/// a character boundary with a marker saying how much was cut.
pub fn capped(message: &str) -> std::borrow::Cow<'_, str> {
    let message: std::borrow::Cow<'_, str> = if message.chars().any(char::is_control) {
        message
            .chars()
            .map(|c| match c {
                '\n' => "\\n".to_owned(),
                c if c.is_control() => c.escape_default().to_string(),
                c => c.to_string(),
            })
            .collect::<String>()
            .into()
    } else {
        message.into()
    };
    if message.len() <= MAX_LINE {
        return message;
    }
    let mut end = MAX_LINE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… [cut: {} more bytes]",
        &message[..end],
        message.len() - end
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_failures_are_folded_and_the_next_line_counts_them() {
        let log = FailureLog::default();
        assert_eq!(log.failed("trap A"), Report::Log { folded: 0 });
        for _ in 0..5 {
            assert_eq!(log.failed("trap A"), Report::Fold);
        }
        assert_eq!(log.failed("trap B"), Report::Log { folded: 5 });
        assert_eq!(log.failed("trap A"), Report::Log { folded: 0 });
    }

    #[test]
    fn a_burst_of_log_lines_is_cut_to_the_budget_and_the_drop_counted() {
        let budget = LogBudget::default();
        let attempts = BURST * 10;
        let outcomes: Vec<Allowance> = (0..attempts).map(|_| budget.take()).collect();
        let let_through = outcomes
            .iter()
            .filter(|a| matches!(a, Allowance::Log { .. }))
            .count() as u64;
        // The burst, and what refills while the loop runs: far from all.
        assert!(
            (BURST..BURST * 2).contains(&let_through),
            "{let_through} of {attempts}"
        );
        // The first drop says so; the others do not.
        assert_eq!(outcomes[BURST as usize], Allowance::Drop { first: true });
        assert_eq!(
            outcomes
                .iter()
                .filter(|a| **a == Allowance::Drop { first: true })
                .count(),
            1
        );
        let started = std::time::Instant::now();
        let dropped = loop {
            if let Allowance::Log { dropped } = budget.take() {
                break dropped;
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert!(dropped >= attempts - let_through, "{dropped}");
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary_and_marked() {
        let long = "é".repeat(MAX_LINE);
        let cut = capped(&long);
        assert!(cut.len() < MAX_LINE + 40);
        assert!(cut.ends_with(&format!("[cut: {} more bytes]", long.len() - MAX_LINE)));
        assert_eq!(capped("short"), "short");
        assert_eq!(capped("panicked at x:\nasked"), "panicked at x:\\nasked");
        assert_eq!(capped("a\u{1b}[31mb"), "a\\u{1b}[31mb");
    }
}
