//! `FIM_DEBUG=1` step logging: each step with how long it took.

use std::sync::OnceLock;
use std::time::Instant;

pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FIM_DEBUG").is_some_and(|v| !v.is_empty() && v != "0"))
}

/// Logs a step when it ends, with its duration, if `FIM_DEBUG` is set.
pub struct Step {
    what: String,
    started: Instant,
}

impl Step {
    pub fn new(what: impl Into<String>) -> Self {
        Step {
            what: what.into(),
            started: Instant::now(),
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if enabled() {
            let ms = self.started.elapsed().as_secs_f64() * 1000.0;
            eprintln!("fim: debug: {} ({ms:.3} ms)", self.what);
        }
    }
}

/// Logs one line if `FIM_DEBUG` is set.
pub fn log(line: impl AsRef<str>) {
    if enabled() {
        eprintln!("fim: debug: {}", line.as_ref());
    }
}
