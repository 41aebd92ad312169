//! Progress of long work (`ssmk verify --full`, `fuzz`, `bench`): a bar with `i/N`, elapsed and
//! ETA on a terminal (indicatif), plain `progress:` lines when stdout is not one
//! (CI logs, pipes), so that logs stay readable and diffable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes.
pub struct Progress {
    bar: Option<ProgressBar>,
    what: &'static str,
    total: u64,
    start: Instant,
    last_line: Instant,
    /// Plain mode: at most one line per this interval (and the last one).
    every: Duration,
}

impl Progress {
    /// `total` units of `what` (e.g. "problems", "cases"); a bar only when stdout
    /// is a terminal.
    pub fn new(what: &'static str, total: u64) -> Self {
        Self::with_terminal(what, total, std::io::stdout().is_terminal())
    }

    fn with_terminal(what: &'static str, total: u64, terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix} {bar:30} {pos}/{len} {msg} [{elapsed_precise}, ETA {eta_precise}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(what);
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            what,
            total,
            start: now,
            last_line: now,
            every: Duration::from_secs(10),
        }
    }

    /// Print a line of output above the bar (or plainly).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    /// `done` of the total units are finished; `note` goes beside the count.
    pub fn set(&mut self, done: u64, note: &str) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(note.to_string());
            return;
        }
        let finished = done >= self.total;
        if finished || self.last_line.elapsed() >= self.every {
            self.last_line = Instant::now();
            println!("{}", self.line(done, note));
        }
    }

    /// The plain line: `progress: 3/12 problems (note), 4.0 s elapsed, ETA 12 s`.
    fn line(&self, done: u64, note: &str) -> String {
        let elapsed = self.start.elapsed().as_secs_f64();
        let eta = if done == 0 {
            "ETA unknown".to_string()
        } else {
            let left = elapsed / done as f64 * self.total.saturating_sub(done) as f64;
            format!("ETA {left:.0} s")
        };
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(" ({note})")
        };
        format!(
            "progress: {done}/{} {}{note}, {elapsed:.1} s elapsed, {eta}",
            self.total, self.what
        )
    }

    /// Remove the bar (the final summary prints after it).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_count_and_estimate() {
        let p = Progress::with_terminal("problems", 4, false);
        assert!(p.bar.is_none());
        assert!(p.line(0, "").contains("0/4 problems, ") && p.line(0, "").ends_with("ETA unknown"));
        let l = p.line(2, "ssd");
        assert!(
            l.starts_with("progress: 2/4 problems (ssd), ") && l.contains("ETA "),
            "{l}"
        );
    }
}
