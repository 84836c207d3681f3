//! Progress of long work on the command line: a bar or a spinner on
//! stderr, drawn only when stderr is a terminal (and `KILN_PROGRESS` is not
//! `off`), cleared when the work ends so that it leaves no trace in the
//! output. In pipes, files and tests nothing is drawn.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress indicator that may be hidden.
pub struct Progress(Option<ProgressBar>);

fn shown() -> bool {
    std::io::stderr().is_terminal()
        && std::env::var("KILN_PROGRESS").map_or(true, |v| v != "off" && v != "0")
}

impl Progress {
    /// A spinner with a message and the elapsed time.
    pub fn spinner(message: impl Into<String>) -> Progress {
        if !shown() {
            return Progress(None);
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(message.into());
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress(Some(bar))
    }

    /// A bar over `len` steps with a message.
    pub fn bar(len: u64, message: impl Into<String>) -> Progress {
        if !shown() {
            return Progress(None);
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) =
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed}, {eta} left)")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message.into());
        Progress(Some(bar))
    }

    /// Whether anything is drawn.
    pub fn is_shown(&self) -> bool {
        self.0.is_some()
    }

    /// One more step done.
    pub fn inc(&self) {
        if let Some(b) = &self.0 {
            b.inc(1);
        }
    }

    /// Replaces the message.
    pub fn set_message(&self, message: impl Into<String>) {
        if let Some(b) = &self.0 {
            b.set_message(message.into());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}
