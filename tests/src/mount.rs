//! `fim mount` in the background, always stopped and unmounted at the end.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::bins::fim_path;

/// Whether `dir` is a mount point: its device differs from its parent's. A dead FUSE
/// server (stat fails with `ENOTCONN`) counts as mounted, since it still needs unmounting.
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(parent) = std::fs::metadata(dir.join("..")) else {
        return true;
    };
    match std::fs::metadata(dir) {
        Ok(meta) => meta.dev() != parent.dev(),
        Err(_) => true,
    }
}

/// A running `fim mount IMAGE DIR`. Dropping it sends SIGTERM, reaps the process and,
/// if the directory is still mounted, detaches it with `umount -l`.
pub struct Mount {
    child: Option<Child>,
    dir: PathBuf,
    log: File,
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: sends a signal to our own child, which we have not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

/// Waits up to `limit` for `child` to exit; `None` if it is still running.
fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

impl Mount {
    /// Starts `fim mount image dir` and waits (up to 10 s) until `dir` is mounted.
    /// Panics with fim's stderr if it exits first or never mounts.
    pub fn start(image: &Path, dir: &Path) -> Mount {
        let log = tempfile::tempfile().unwrap_or_else(|e| panic!("cannot create a log file: {e}"));
        let stderr = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone the log file: {e}"));
        let child = Command::new(fim_path())
            .arg("mount")
            .arg(image)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run fim mount: {e}"));
        let mut mount = Mount {
            child: Some(child),
            dir: dir.to_owned(),
            log,
        };
        let start = Instant::now();
        loop {
            if is_mounted(dir) {
                return mount;
            }
            if let Some(Ok(Some(status))) = mount.child.as_mut().map(Child::try_wait) {
                mount.child = None;
                panic!(
                    "fim mount {} {} exited ({status}) before mounting: {}",
                    image.display(),
                    dir.display(),
                    mount.log_text()
                );
            }
            if start.elapsed() > Duration::from_secs(10) {
                panic!(
                    "fim mount {} {}: not mounted after 10 s: {}",
                    image.display(),
                    dir.display(),
                    mount.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What `fim mount` wrote on stderr so far.
    pub fn log_text(&mut self) -> String {
        let mut text = String::new();
        let _ = self.log.seek(SeekFrom::Start(0));
        let _ = self.log.read_to_string(&mut text);
        text
    }

    /// Stops the mount with SIGTERM and checks it ends as documented: exit status 0 and
    /// the directory unmounted. Returns what `fim mount` wrote on stderr.
    pub fn stop(self) -> String {
        self.stop_with(libc::SIGTERM)
    }

    /// Like [`Mount::stop`], with signal `sig` (SIGINT, SIGTERM or SIGHUP).
    pub fn stop_with(mut self, sig: libc::c_int) -> String {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("fim mount already stopped"));
        signal(&child, sig);
        let status = wait_for(&mut child, Duration::from_secs(10));
        if status.is_none() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
        let log = self.log_text();
        assert!(
            status.is_some_and(|s| s.success()),
            "fim mount should exit 0 on signal {sig}, got {status:?}: {log}"
        );
        assert!(
            !is_mounted(&self.dir),
            "{} is still mounted after fim mount exited",
            self.dir.display()
        );
        log
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            if wait_for(&mut child, Duration::from_secs(10)).is_none() {
                signal(&child, libc::SIGKILL);
                let _ = child.wait();
            }
        }
        if is_mounted(&self.dir) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .stderr(Stdio::null())
                .status();
        }
    }
}
