//! The launcher at the head of every image. It reads its own payload (trailer, reserved
//! block, layers) from `/proc/self/exe` and routes `argv[1]` through the command table.
//!
//! The tree, top to bottom; a folder uses the ones below it, never one above:
//!
//! ```text
//! commands/  one file per fim-* command, and the table that routes and explains them
//! sandbox/   one run: identity, environment, permissions, binds, bubblewrap, supervision
//! session/   the daemon per data directory, its greeting, namespaces and linger
//! commit/    the upper directory becomes a layer, exactly once (the session daemon
//!            finishes an interrupted one with its journal before it mounts)
//! view/      what the app sees as /: the layer stack, its FUSE server, the overlay backends
//! desktop/   the menu entry, icons and file types under $XDG_DATA_HOME, kept current by runs
//! locks, places, tools, durable, debug: small pieces every folder may use
//! ```

mod commands;
mod commit;
mod cores;
mod debug;
mod desktop;
mod durable;
mod locks;
mod places;
mod sandbox;
mod session;
mod tools;
mod view;

use std::process::ExitCode;

/// Exit status of the launcher's own failures, as FlatImage and `env(1)` use it.
pub const RUNTIME_ERROR: u8 = 125;

fn main() -> ExitCode {
    open_standard_descriptors();
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args
        .first()
        .is_some_and(|a| a == sandbox::shim::SHIM_COMMAND)
    {
        return sandbox::shim::exec(&args[1..]);
    }
    let outcome = commands::dispatch(&args);
    if debug::enabled() {
        // What a launch leaves open is leaked by it: the tests count this.
        let open: Vec<String> = std::fs::read_dir("/proc/self/fd")
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        let target = std::fs::read_link(e.path()).unwrap_or_default();
                        format!("{}={}", e.file_name().display(), target.display())
                    })
                    .collect()
            })
            .unwrap_or_default();
        debug::log(format!(
            "{} descriptors open at exit ({})",
            open.len(),
            open.join(" ")
        ));
        // And its peak memory: the tests check it stays flat over many launches.
        if let Some(peak) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .map(|v| v.trim().to_owned())
            })
        {
            debug::log(format!("peak memory at exit: {peak}"));
        }
    }
    match outcome {
        Ok(code) => code,
        Err(e) => {
            let program = std::env::args()
                .next()
                .and_then(|a| {
                    std::path::Path::new(&a)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                })
                .unwrap_or_else(|| "fim-boot".into());
            let line = format!("{e:#}");
            // A full disk (or quota) is named by the path in the line; the fix is the same
            // wherever it is (the data directory, TMPDIR, the extraction cache).
            let full = [libc::ENOSPC, libc::EDQUOT]
                .iter()
                .any(|n| line.contains(&format!("(os error {n})")));
            let fix = if full {
                "; free some space on that file system and run again"
            } else {
                ""
            };
            eprintln!("{program}: {line}{fix}");
            ExitCode::from(RUNTIME_ERROR)
        }
    }
}

/// Opens /dev/null on any of stdin, stdout and stderr that is closed, so no file the
/// launcher opens takes their place (and ends up written to, or closed, as one of them).
fn open_standard_descriptors() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: opening a constant path; the lowest free descriptor is `fd`.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}
