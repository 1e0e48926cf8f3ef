//! Runs bubblewrap as a child and stays with it: relays signals sent to the launcher to the
//! app, and exits with the app's status. The child gets `PDEATHSIG=SIGKILL`, so killing the
//! launcher kills bubblewrap, whose `--die-with-parent` then ends the whole sandbox.
//!
//! The same wait watches the launcher's connection to the session daemon: when the session
//! ends under the app (the daemon was killed, or its FUSE server or backend stopped, which
//! leaves the app on a dead root), the sandbox is killed and the run ends.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

use super::shim::RELAYED;
use crate::debug;
use crate::view::fuse_backend::{millis, pidfd_open};

/// `si_code` of a signal the kernel sent, e.g. the terminal's Ctrl-C to the whole
/// foreground process group, which the app received as well.
const SI_KERNEL: i32 = 0x80;

/// How the sandbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The app ran; this is its exit status (128+N when killed by signal N).
    Exited(u8),
    /// bubblewrap failed before starting the app (it printed why).
    SetupFailed,
    /// The session ended under the app, which was killed.
    SessionEnded,
}

/// How long the sandbox may take to vanish once killed.
const KILL_TIMEOUT: Duration = Duration::from_secs(1);

/// How long an app killed by a signal waits for the session to say it ended: an app whose
/// view died under it (a killed FUSE backend or daemon) gets SIGBUS or SIGSEGV, often
/// before the daemon has told its launchers why.
const VERDICT_TIMEOUT: Duration = Duration::from_millis(500);

/// Runs `bwrap ARGS` with `env`; `inherited` descriptors survive into it. `started` gets
/// bubblewrap's pid as soon as it runs. `session` becomes readable when the session ends
/// under the app.
pub fn run(
    bwrap: &Path,
    args: &[OsString],
    env: &[(OsString, OsString)],
    status: (OwnedFd, OwnedFd),
    inherited: &[i32],
    session: BorrowedFd<'_>,
    started: impl FnOnce(i32),
) -> anyhow::Result<Outcome> {
    let mut watched = SigSet::empty();
    for s in RELAYED {
        watched.add(s);
    }
    watched.add(Signal::SIGCHLD);
    watched.thread_block().context("cannot block signals")?;
    let signals = SignalFd::with_flags(&watched, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("cannot create a signalfd")?;

    let (status_read, status_write) = status;
    let mut keep: Vec<i32> = inherited.to_vec();
    keep.push(status_write.as_raw_fd());
    let parent = nix::unistd::getpid().as_raw();
    let mut command = Command::new(bwrap);
    // `bwrap` in `ps`, not the `N` of an embedded one's `/proc/self/fd/N`.
    command
        .arg0("bwrap")
        .args(args)
        .env_clear()
        .envs(env.iter().cloned());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            for fd in &keep {
                if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for s in RELAYED {
                libc::signal(s as libc::c_int, libc::SIG_IGN);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher died before the line above took effect.
            if libc::getppid() != parent {
                libc::_exit(125);
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run {}", bwrap.display()))?;
    started(child.id() as i32);
    drop(status_write);
    nix::fcntl::fcntl(&status_read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .context("cannot make the status pipe non-blocking")?;
    let mut supervisor = Supervisor {
        status: status_read,
        text: Vec::new(),
        sandbox_init: None,
        open: true,
    };
    supervisor.wait(&mut child, &signals, session)
}

struct Supervisor {
    status: OwnedFd,
    text: Vec<u8>,
    /// The sandbox's first process (bubblewrap's init), as the host sees it.
    sandbox_init: Option<i32>,
    open: bool,
}

impl Supervisor {
    fn wait(
        &mut self,
        child: &mut Child,
        signals: &SignalFd,
        session: BorrowedFd<'_>,
    ) -> anyhow::Result<Outcome> {
        loop {
            let (status_ready, signal_ready, session_ended) = {
                let mut fds = vec![
                    PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                    PollFd::new(session, PollFlags::POLLIN),
                ];
                if self.open {
                    fds.push(PollFd::new(self.status.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e).context("poll"),
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                (
                    fds.get(2).is_some_and(ready),
                    ready(&fds[0]),
                    ready(&fds[1]),
                )
            };
            if session_ended {
                // An app that has just ended on its own keeps its status; one that a signal
                // killed died with its view.
                if let Some(status) = child.try_wait().context("waiting for bubblewrap")? {
                    if killed_by_signal(status) {
                        return Ok(Outcome::SessionEnded);
                    }
                    return Ok(self.outcome(status));
                }
                self.kill(child);
                return Ok(Outcome::SessionEnded);
            }
            if status_ready {
                self.read_status();
            }
            if signal_ready {
                while let Ok(Some(info)) = signals.read_signal() {
                    let signo = info.ssi_signo as i32;
                    if signo == libc::SIGCHLD {
                        continue;
                    }
                    if info.ssi_code == SI_KERNEL {
                        debug::log(format!(
                            "signal {signo} from the terminal reached the app directly"
                        ));
                        continue;
                    }
                    self.relay(signo);
                }
                if let Some(status) = child.try_wait().context("waiting for bubblewrap")? {
                    // Whatever bubblewrap reported before exiting is in the pipe by now.
                    if self.open {
                        self.read_status();
                    }
                    if killed_by_signal(status) && readable_within(session, VERDICT_TIMEOUT) {
                        debug::log("the app was killed as its session ended");
                        return Ok(Outcome::SessionEnded);
                    }
                    return Ok(self.outcome(status));
                }
            }
        }
    }

    /// Kills the sandbox: its init (which takes every process of its pid namespace with
    /// it) and bubblewrap; returns once they are gone, or after [`KILL_TIMEOUT`].
    fn kill(&mut self, child: &mut Child) {
        if self.open && self.sandbox_init.is_none() {
            self.read_status();
        }
        let init = self.sandbox_init.and_then(|pid| {
            let pidfd = pidfd_open(pid as u32).ok()?;
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            Some(pidfd)
        });
        let _ = child.kill();
        let _ = child.wait();
        if let Some(pidfd) = init {
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            if !matches!(poll(&mut fds, millis(KILL_TIMEOUT)), Ok(n) if n > 0) {
                debug::log("the sandbox did not end within a second of being killed");
            }
        }
        debug::log("the session ended under the app; the sandbox was killed");
    }

    /// Reads what bubblewrap reported so far (the pipe does not block).
    fn read_status(&mut self) {
        let mut buf = [0u8; 512];
        loop {
            match nix::unistd::read(&self.status, &mut buf) {
                Ok(0) => self.open = false,
                Ok(n) => {
                    self.text.extend_from_slice(&buf[..n]);
                    continue;
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {}
                Err(_) => self.open = false,
            }
            break;
        }
        self.parse_status();
    }

    /// bubblewrap writes one JSON object per line: `{"child-pid": N}`, then `{"exit-code": N}`.
    fn parse_status(&mut self) {
        while let Some(end) = self.text.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.text.drain(..=end).collect();
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&line)
                && let Some(pid) = value.get("child-pid").and_then(|p| p.as_i64())
            {
                self.sandbox_init = i32::try_from(pid).ok();
            }
        }
    }

    /// Sends `signo` to the app: the child of the sandbox's init (which, as a pid
    /// namespace's init, ignores signals it has no handler for).
    fn relay(&mut self, signo: i32) {
        let Ok(signal) = Signal::try_from(signo) else {
            return;
        };
        let deadline = Instant::now() + Duration::from_millis(200);
        loop {
            if let Some(app) = self.sandbox_init.and_then(first_child) {
                debug::log(format!("relaying {signal} to the app (pid {app})"));
                let _ = kill(Pid::from_raw(app), signal);
                return;
            }
            // The app is being started: give it a moment rather than lose the signal.
            if Instant::now() > deadline {
                debug::log(format!("{signal} arrived before the app started; dropped"));
                return;
            }
            if self.open && self.sandbox_init.is_none() {
                self.read_status();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn outcome(&self, status: std::process::ExitStatus) -> Outcome {
        if self.sandbox_init.is_none() {
            return Outcome::SetupFailed;
        }
        Outcome::Exited(exit_code(status))
    }
}

/// A program's exit status as a shell reports it: its code, or 128+N when killed by
/// signal N.
pub fn exit_code(status: std::process::ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        _ => crate::RUNTIME_ERROR,
    }
}

/// The first child of `pid`, from `/proc/PID/task/PID/children`.
fn first_child(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> ExitCode {
        match o {
            Outcome::Exited(code) => ExitCode::from(code),
            Outcome::SetupFailed | Outcome::SessionEnded => ExitCode::from(crate::RUNTIME_ERROR),
        }
    }
}
/// Whether the app was killed by a signal: bubblewrap exits with 128+N for it.
fn killed_by_signal(status: std::process::ExitStatus) -> bool {
    status.signal().is_some() || status.code().is_some_and(|c| c > 128)
}

/// Whether `fd` becomes readable (or hangs up) within `limit`.
fn readable_within(fd: BorrowedFd<'_>, limit: Duration) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, millis(limit)), Ok(n) if n > 0)
}
