//! Human output: tables, instants, and progress on standard error.

use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use session_core::UserSession;

/// An instant to the second, in UTC (RFC 3339).
pub(crate) fn instant(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The rows of `list`: a header, then one row a session.
pub(crate) fn session_rows(sessions: &[UserSession]) -> Vec<Vec<String>> {
    let mut rows = vec![
        [
            "HANDLE",
            "CREATED",
            "LAST SEEN",
            "IDLE EXPIRES",
            "ABSOLUTE EXPIRES",
            "REMEMBER",
            "ROOT",
            "VERSION",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for s in sessions {
        rows.push(vec![
            s.handle.to_string(),
            instant(s.created_at),
            instant(s.last_seen_at),
            instant(s.idle_expires_at),
            instant(s.absolute_expires_at),
            yes_no(s.remember_me),
            yes_no(s.is_root),
            s.version.to_string(),
        ]);
    }
    rows
}

fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.to_owned()
}

/// `rows` as columns padded to their widest cell, two spaces apart.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[c].saturating_sub(cell.chars().count());
            if c + 1 < row.len() {
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Progress on standard error, drawn only when it is a terminal (indicatif hides it otherwise),
/// so scripts and pipes see none of it.
pub(crate) struct Progress(ProgressBar);

impl Progress {
    /// A walk of unknown length: the count, the rate and the time taken.
    pub(crate) fn walk(what: &'static str) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} {human_pos} sessions  {per_sec}  {elapsed_precise}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(what);
        bar.enable_steady_tick(Duration::from_millis(200));
        Self(bar)
    }

    /// Reading `size` bytes (when known): a bar with the rate and the time left.
    pub(crate) fn bytes(size: Option<u64>, what: &'static str) -> Self {
        let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
        let template = if size.is_some() {
            "{msg} [{bar:30}] {bytes}/{total_bytes}  {bytes_per_sec}  ETA {eta}"
        } else {
            "{spinner} {msg} {bytes}  {bytes_per_sec}  {elapsed_precise}"
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(what);
        bar.enable_steady_tick(Duration::from_millis(200));
        Self(bar)
    }

    /// Progress drawn nowhere.
    pub(crate) fn hidden() -> Self {
        Self(ProgressBar::hidden())
    }

    pub(crate) fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    /// A line on standard error that does not garble the bar.
    pub(crate) fn println(&self, line: &str) {
        if self.0.is_hidden() {
            eprintln!("{line}");
        } else {
            self.0.println(line);
        }
    }

    pub(crate) fn finish(&self) {
        self.0.finish_and_clear();
    }
}
