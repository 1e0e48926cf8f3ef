//! Running commands and checking how they ended.

use std::ffi::OsStr;
use std::process::{Child, Command, ExitStatus};

use crate::bins::fim_path;

/// How a finished command ended, with its output (decoded lossily as UTF-8).
#[derive(Debug)]
pub struct Output {
    /// The command, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A child process killed (and reaped) when dropped, so that a failed check leaves
/// nothing running.
pub struct KilledOnDrop(pub Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Exit status of every failure of `fim` and of the launcher.
pub const FAILURE: i32 = 125;

impl Output {
    /// The exit code, `None` when killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics unless the command succeeded.
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(
            self.success(),
            "`{}` failed ({}):\nstdout: {}\nstderr: {}",
            self.command,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless the command failed the way every failure of `fim` and of the
    /// launcher must: exit status 125, exactly one line on stderr starting with
    /// `prefix`, and no panic message.
    #[track_caller]
    pub fn assert_clean_failure(&self, prefix: &str) -> &Self {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert!(
            self.code() == Some(FAILURE)
                && lines.len() == 1
                && lines[0].starts_with(prefix)
                && lines[0].len() > prefix.len()
                && !self.stderr.contains("panicked"),
            "`{}` should fail with status {FAILURE} and one line on stderr starting with \
             {prefix:?}; got {}:\nstdout: {}\nstderr: {}",
            self.command,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `cmd` to completion, capturing its output. A spawn that fails with `ETXTBSY` (an
/// executable we just wrote, briefly held open by a fork in another test thread) is
/// retried; any other spawn failure panics with the command.
pub fn run(cmd: &mut Command) -> Output {
    let command = format!("{cmd:?}");
    let out = retrying_busy(&command, || cmd.output());
    Output {
        command,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `spawn` that retries an `ETXTBSY` (see [`run`]) and panics on any other failure.
pub trait SpawnRetrying {
    fn spawn_retrying(&mut self) -> std::process::Child;

    /// Spawns the command with its stdout piped and waits for its first line, which must
    /// be `up` (a script that says when its app is running).
    fn spawn_until_up(&mut self) -> std::process::Child;
}

impl SpawnRetrying for Command {
    fn spawn_retrying(&mut self) -> std::process::Child {
        let command = format!("{self:?}");
        retrying_busy(&command, || self.spawn())
    }

    fn spawn_until_up(&mut self) -> std::process::Child {
        use std::io::BufRead;
        let mut child = self.stdout(std::process::Stdio::piped()).spawn_retrying();
        let mut line = String::new();
        if let Some(stdout) = child.stdout.as_mut() {
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .expect("read the first line");
        }
        assert_eq!(line, "up\n", "{self:?} did not start");
        child
    }
}

/// Calls `start` until it does not fail with `ETXTBSY` (at most 100 times, 10 ms apart);
/// panics, naming `command`, on any other failure.
fn retrying_busy<T>(command: &str, mut start: impl FnMut() -> std::io::Result<T>) -> T {
    let mut attempts = 0;
    loop {
        match start() {
            Ok(value) => return value,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("cannot run {command}: {e}"),
        }
    }
}

/// Runs `fim ARGS...` (the packer from [`fim_path`]).
pub fn fim<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new(fim_path()).args(args))
}
