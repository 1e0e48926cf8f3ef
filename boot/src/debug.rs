//! `FIM_DEBUG=1` step logging: each step with how long it took. The launcher and the
//! session daemon it forks share one error output until the daemon turns to its log, so
//! each line goes out in one write: formatted in place, `eprintln!` writes its pieces one
//! by one, and another process's line could land between them.

use std::io::Write;
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
            say(format_args!("{} ({ms:.3} ms)", self.what));
        }
    }
}

/// Logs one line if `FIM_DEBUG` is set.
pub fn log(line: impl AsRef<str>) {
    if enabled() {
        say(format_args!("{}", line.as_ref()));
    }
}

/// Writes `fim: debug: LINE` to the error output in one write.
fn say(line: std::fmt::Arguments) {
    let line = format!("fim: debug: {line}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}
