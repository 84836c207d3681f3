//! Time spent per rule, for `kiln explain`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

static SEARCH: Mutex<BTreeMap<&'static str, Duration>> = Mutex::new(BTreeMap::new());

/// Adds search time to a rule's total.
pub fn add_search_time(rule: &'static str, d: Duration) {
    if let Ok(mut m) = SEARCH.lock() {
        *m.entry(rule).or_default() += d;
    }
}

/// Takes and resets the per-rule search times.
pub fn take_search_times() -> BTreeMap<&'static str, Duration> {
    SEARCH
        .lock()
        .map(|mut m| std::mem::take(&mut *m))
        .unwrap_or_default()
}
