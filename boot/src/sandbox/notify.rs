//! `fim-notify on`: a desktop notification when the app starts, as FlatImage sends one.
//! `notify-send` from the host's PATH does it, before the launcher enters any namespace
//! (the session bus checks who connects), detached so the start never waits for it. No
//! session bus or no `notify-send` means no notification, silently (a debug line says so).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork, setsid};

use super::environment::Env;
use crate::debug;
use crate::places::find_program;

/// Announces that `image` starts, if the host can show it.
pub fn announce(image: &Path, host: &Env) {
    let Some(program) = notifier(host) else {
        return;
    };
    let name = image
        .file_name()
        .map_or_else(|| image.to_string_lossy(), |n| n.to_string_lossy())
        .into_owned();
    let mut command = Command::new(program);
    command
        .args(["--app-name", "fim", &name, &format!("Starting {name}")])
        .env_clear()
        .envs(host.0.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Detached through an intermediate process that exits at once, so the launcher
    // neither waits for the notification nor keeps a zombie while the app runs.
    // SAFETY: the launcher is single-threaded here; the child only spawns and exits.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = setsid();
            let code = i32::from(command.spawn().is_err());
            // SAFETY: ends the intermediate process without running the launcher's
            // destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            let _ = waitpid(child, None);
            debug::log("notification sent");
        }
        Err(e) => debug::log(format!("notification skipped: cannot fork ({e})")),
    }
}

/// `notify-send`, when there is a session bus to carry its message.
fn notifier(host: &Env) -> Option<PathBuf> {
    let runtime_bus = host
        .get("XDG_RUNTIME_DIR")
        .map(|dir| Path::new(dir).join("bus"));
    let bus =
        host.get("DBUS_SESSION_BUS_ADDRESS").is_some() || runtime_bus.is_some_and(|b| b.exists());
    if !bus {
        debug::log("notification skipped: no session bus");
        return None;
    }
    let found = find_program("notify-send");
    if found.is_none() {
        debug::log("notification skipped: no notify-send (package libnotify-bin)");
    }
    found
}
