//! The first program run inside the sandbox: the launcher itself, executed through a
//! descriptor (`/proc/self/fd/N`) so nothing is copied into the image. bubblewrap's outer
//! process must ignore the terminal's signals (dying, it would SIGKILL the app through
//! `--die-with-parent` before the app could handle Ctrl-C), and ignored signals are
//! inherited; the shim gives the app back the dispositions the launcher was started with,
//! and the cores (a new session keeps one for its read-ahead: `cores`), closes the
//! launcher's descriptors and executes the app.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};

/// `argv[1]` that makes the launcher act as the shim.
pub const SHIM_COMMAND: &str = "fim-internal-exec";

/// Signals the launcher relays to the app and bubblewrap ignores.
pub const RELAYED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Which relayed signals the launcher itself was started with ignored (`nohup`, a
/// background job of a script): the app must inherit that, as it would without us.
pub fn ignored_at_start() -> u32 {
    let mut mask = 0;
    for (bit, signal) in RELAYED.iter().enumerate() {
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only reads the current one.
        let rc = unsafe { libc::sigaction(*signal as libc::c_int, std::ptr::null(), &mut old) };
        if rc == 0 && old.sa_sigaction == libc::SIG_IGN {
            mask |= 1 << bit;
        }
    }
    mask
}

/// The sandbox command that runs `command` through the shim; `cores` is
/// [`crate::cores::original`].
pub fn command(
    exe_fd: i32,
    status_fd: i32,
    ignored: u32,
    cores: String,
    command: &[OsString],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        format!("/proc/self/fd/{exe_fd}").into(),
        SHIM_COMMAND.into(),
        ignored.to_string().into(),
        exe_fd.to_string().into(),
        status_fd.to_string().into(),
        cores.into(),
        "--".into(),
    ];
    args.extend(command.iter().cloned());
    args
}

/// Runs as the shim: `IGNORED EXE_FD STATUS_FD CORES -- PROGRAM ARGS...`. Returns only on
/// failure.
pub fn exec(args: &[OsString]) -> ExitCode {
    let fail = |code: u8, text: String| {
        eprintln!("fim: {text}");
        ExitCode::from(code)
    };
    let number = |i: usize| {
        args.get(i)
            .and_then(|a| a.to_str())
            .and_then(|a| a.parse::<i64>().ok())
    };
    let (Some(ignored), Some(exe_fd), Some(status_fd)) = (number(0), number(1), number(2)) else {
        return fail(125, format!("{SHIM_COMMAND} is internal to the launcher"));
    };
    let cores = |arg: &OsString| arg.to_str().map(crate::cores::restore);
    if args.get(4).is_none_or(|a| a != "--") || args.len() < 6 || cores(&args[3]) != Some(Ok(())) {
        return fail(125, format!("{SHIM_COMMAND} is internal to the launcher"));
    }
    for (bit, signal) in RELAYED.iter().enumerate() {
        let handler = if ignored & (1 << bit) != 0 {
            SigHandler::SigIgn
        } else {
            SigHandler::SigDfl
        };
        // SAFETY: installs no handler function, only a default or ignore disposition.
        let _ = unsafe { nix::sys::signal::signal(*signal, handler) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // SAFETY: these descriptors are the launcher's own, passed down for this purpose.
    unsafe {
        libc::close(status_fd as libc::c_int);
        libc::fcntl(exe_fd as libc::c_int, libc::F_SETFD, libc::FD_CLOEXEC);
    }

    let command = &args[5..];
    let Ok(argv) = command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
    else {
        return fail(125, "an argument contains a NUL byte".into());
    };
    let program = command[0].to_string_lossy();
    match nix::unistd::execvp(&argv[0], &argv) {
        Err(Errno::ENOENT) => fail(127, format!("{program}: not found in the image")),
        Err(e) => fail(126, format!("cannot run {program}: {}", e.desc())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shim_runs_from_the_descriptor_and_separates_the_command() {
        let args = command(
            9,
            8,
            5,
            "0,1".into(),
            &["sh".into(), "-c".into(), "--".into()],
        );
        let text: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            text,
            [
                "/proc/self/fd/9",
                SHIM_COMMAND,
                "5",
                "9",
                "8",
                "0,1",
                "--",
                "sh",
                "-c",
                "--"
            ]
        );
    }

    #[test]
    fn malformed_shim_arguments_are_refused() {
        for bad in [
            vec![],
            vec!["x", "1", "2", "-", "--", "sh"],
            vec!["0", "1", "2", "-", "sh"],
            vec!["0", "1", "2", "-", "--"],
            vec!["0", "1", "2", "--", "sh"],
            vec!["0", "1", "2", "0;1", "--", "sh"],
        ] {
            let args: Vec<OsString> = bad.iter().map(OsString::from).collect();
            assert_eq!(exec(&args), ExitCode::from(125), "{bad:?}");
        }
    }
}
