//! Running instances of an image (`fim-instance`). While its app runs, each launcher keeps
//! a record in the session's runtime directory (0600, in a 0700 directory): its pid and
//! start time, when it started, the command and its bubblewrap's pid. A record whose
//! launcher is gone (killed before it could remove it) is ignored and removed; the session
//! removes any left when it ends. `fim-instance exec` enters one instance's sandbox: its
//! user, mount, pid, network, ipc, uts and cgroup namespaces, root, working directory and
//! environment, so the program sees exactly what that instance sees, its private /tmp too.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};
use serde::{Deserialize, Serialize};

use crate::debug;

/// What a launcher records about its instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The launcher, as the host sees it.
    pub pid: i32,
    /// The launcher's start time (clock ticks after boot): a pid reused by another
    /// process does not match it.
    pub start_ticks: u64,
    /// When it started, in seconds since the epoch.
    pub started: u64,
    /// bubblewrap, whose child is the sandbox's first process.
    pub bwrap: i32,
    pub command: Vec<String>,
    /// The app runs under the seccomp filter of `noop_ids` (`fim-root` with one id), which
    /// a program entering it gets too.
    #[serde(default)]
    pub noop_ids: bool,
}

/// A registered instance; dropping it removes the record.
#[derive(Debug)]
pub struct Registration {
    path: PathBuf,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Records the calling launcher, whose sandbox is bubblewrap `bwrap`, under the lowest
/// free id in `dir`.
pub fn register(
    dir: &Path,
    bwrap: i32,
    command: &[OsString],
    noop_ids: bool,
) -> anyhow::Result<Registration> {
    let pid = std::process::id() as i32;
    let record = Record {
        pid,
        start_ticks: start_ticks(pid).context("cannot read this launcher's start time")?,
        started: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        bwrap,
        command: command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        noop_ids,
    };
    // Written whole under a private name, then linked under its id: a reader never sees
    // half a record, and two launchers never take one id.
    let draft = dir.join(format!(".draft-{pid}"));
    let _ = std::fs::remove_file(&draft);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&draft)
        .with_context(|| format!("cannot create {}", draft.display()))?;
    file.write_all(&serde_json::to_vec(&record)?)
        .with_context(|| format!("cannot write {}", draft.display()))?;
    drop(file);
    let mut id = 0u32;
    let linked = loop {
        let path = dir.join(id.to_string());
        match std::fs::hard_link(&draft, &path) {
            Ok(()) => break Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if read(&path).is_none_or(|r| !alive(&r)) {
                    debug::log(format!("instance {id}: stale record removed"));
                    let _ = std::fs::remove_file(&path);
                } else {
                    id += 1;
                }
            }
            Err(e) => break Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
    };
    let _ = std::fs::remove_file(&draft);
    let path = linked?;
    debug::log(format!("registered as instance {id}"));
    Ok(Registration { path })
}

/// The live instances recorded in `dir`, by id.
pub fn list(dir: &Path) -> Vec<(u32, Record)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut live: Vec<(u32, Record)> = entries
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_str()?.parse().ok()?;
            let record = read(&e.path())?;
            alive(&record).then_some((id, record))
        })
        .collect();
    live.sort_by_key(|(id, _)| *id);
    live
}

fn read(path: &Path) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Whether the record's launcher still runs (the same process, not a reused pid).
fn alive(record: &Record) -> bool {
    start_ticks(record.pid).is_some_and(|t| t == record.start_ticks)
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks after boot.
fn start_ticks(pid: i32) -> Option<u64> {
    stat_field(pid, 19).and_then(|t| u64::try_from(t).ok())
}

/// Field `index` of `/proc/PID/stat` counted from the state (field 3) as 0: 1 is the
/// parent's pid, 19 the start time.
fn stat_field(pid: i32, index: usize) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name (field 2) is in parentheses and may hold anything, spaces included.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(index)?.parse().ok()
}

/// `seconds` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Runs `command` inside the sandbox of the instance `record` and waits for it.
pub fn exec(record: &Record, command: &[OsString]) -> anyhow::Result<ExitCode> {
    let init = sandbox_init(record)?;
    // Everything is read from /proc before entering: inside, /proc is the sandbox's.
    let root = open_proc(&format!("/proc/{init}/root"))?;
    let cwd = open_proc(&format!("/proc/{init}/cwd"))?;
    let environ = std::fs::read(format!("/proc/{init}/environ"))
        .context("cannot read the instance's environment")?;
    let env: Vec<(OsString, OsString)> = environ
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let at = entry.iter().position(|b| *b == b'=')?;
            Some((
                OsString::from_vec(entry[..at].to_vec()),
                OsString::from_vec(entry[at + 1..].to_vec()),
            ))
        })
        .collect();
    enter_namespaces(init)?;
    nix::unistd::fchdir(&root).context("cannot enter the instance's root")?;
    nix::unistd::chroot(".").context("cannot enter the instance's root")?;
    if nix::unistd::fchdir(&cwd).is_err() {
        let _ = std::env::set_current_dir("/");
    }

    let program = command[0].to_string_lossy().into_owned();
    let mut child = Command::new(&command[0]);
    child.args(&command[1..]).env_clear().envs(env);
    // Made before the fork: the child only hands it to the kernel.
    let filter = record
        .noop_ids
        .then(super::noop_ids::Filter::new)
        .transpose()?;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        child.pre_exec(move || {
            // As the instance's app: no new privileges, its filter, gone with this launcher.
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                || filter.as_ref().is_some_and(|f| !f.install())
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match child.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("fim: {program}: not found in the instance");
            return Ok(ExitCode::from(127));
        }
        Err(e) => bail!("cannot run {program} in the instance: {e}"),
    };
    // The terminal's Ctrl-C reaches the program directly; the launcher waits for it.
    // SAFETY: setting a signal to be ignored installs no handler.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let status = child.wait().context("waiting for the program")?;
    Ok(ExitCode::from(super::supervise::exit_code(status)))
}

/// Joins the namespaces of process `init` that differ from ours. A namespace can be
/// joined only from inside the user namespace that owns it (or one above), and a user
/// namespace grants nothing in its parent: so the user namespaces are entered from ours
/// down to the sandbox's (the session's, then bubblewrap's), and each of the others right
/// after the user namespace that owns it.
fn enter_namespaces(init: i32) -> anyhow::Result<()> {
    let ours = open_proc("/proc/self/ns/user")?;
    let mut chain = Vec::new();
    let mut user = open_proc(&format!("/proc/{init}/ns/user"))?;
    while inode(&user)? != inode(&ours)? {
        let parent = related(&user, libc::NS_GET_PARENT)
            .context("the instance's user namespace is not inside this one")?;
        chain.push(std::mem::replace(&mut user, parent));
    }
    chain.reverse();

    let mut others = Vec::new();
    for (kind, flag) in [
        ("mnt", CloneFlags::CLONE_NEWNS),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("net", CloneFlags::CLONE_NEWNET),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ] {
        let theirs = open_proc(&format!("/proc/{init}/ns/{kind}"))?;
        if inode(&theirs)? != inode(&open_proc(&format!("/proc/self/ns/{kind}"))?)? {
            let owner = related(&theirs, libc::NS_GET_USERNS).with_context(|| {
                format!("cannot find the owner of the instance's {kind} namespace")
            })?;
            others.push((kind, flag, theirs, inode(&owner)?));
        }
    }
    let join_owned_by = |owner: u64| -> anyhow::Result<()> {
        for (kind, flag, file, _) in others.iter().filter(|o| o.3 == owner) {
            setns(file, *flag)
                .with_context(|| format!("cannot join the instance's {kind} namespace"))?;
        }
        Ok(())
    };
    join_owned_by(inode(&ours)?)?;
    for user in &chain {
        setns(user, CloneFlags::CLONE_NEWUSER)
            .context("cannot join the instance's user namespace")?;
        join_owned_by(inode(user)?)?;
    }
    Ok(())
}

fn inode(file: &File) -> anyhow::Result<u64> {
    Ok(file.metadata().context("cannot inspect a namespace")?.ino())
}

/// The namespace an `ioctl` on namespace `file` returns: its owner or its parent.
fn related(file: &File, request: libc::Ioctl) -> anyhow::Result<File> {
    // SAFETY: the request returns a new descriptor or fails; nothing else is touched.
    let fd = unsafe { libc::ioctl(file.as_raw_fd(), request) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn open_proc(path: &str) -> anyhow::Result<File> {
    File::open(path).with_context(|| format!("cannot open {path}"))
}

/// The sandbox's first process: bubblewrap's only child. A launcher records itself right
/// after starting bubblewrap, so the child may take a moment to appear.
fn sandbox_init(record: &Record) -> anyhow::Result<i32> {
    // The recorded bubblewrap must still be the launcher's child, not a reused pid.
    if stat_field(record.bwrap, 1) != Some(i64::from(record.pid)) {
        bail!("the instance has no running sandbox (it is starting or ending)");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", record.bwrap))
                .unwrap_or_default();
        if let Some(init) = children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
        {
            return Ok(init);
        }
        if Instant::now() > deadline {
            bail!("the instance has no running sandbox (it is starting or ending)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn this_process_has_a_start_time_and_a_dead_pid_does_not() {
        let me = std::process::id() as i32;
        assert!(start_ticks(me).is_some());
        assert_eq!(start_ticks(i32::MAX), None);
    }

    #[test]
    fn the_parent_pid_is_read_from_stat() {
        let me = std::process::id() as i32;
        let parent = i64::from(nix::unistd::getppid().as_raw());
        assert_eq!(stat_field(me, 1), Some(parent));
    }

    fn record(pid: i32, start_ticks: u64) -> Record {
        Record {
            pid,
            start_ticks,
            started: 0,
            bwrap: 0,
            command: vec!["sh".into()],
            noop_ids: false,
        }
    }

    #[test]
    fn a_record_lives_while_its_launcher_does() {
        let me = std::process::id() as i32;
        let ticks = start_ticks(me).unwrap();
        assert!(alive(&record(me, ticks)));
        assert!(!alive(&record(me, ticks + 1)), "a reused pid");
        assert!(!alive(&record(i32::MAX, ticks)));
    }

    #[test]
    fn registration_takes_the_lowest_free_id_and_removes_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let first = register(dir.path(), 1, &["a".into()], false).unwrap();
        let second = register(dir.path(), 2, &["b".into()], false).unwrap();
        let ids: Vec<u32> = list(dir.path()).iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [0, 1]);
        drop(first);
        assert_eq!(list(dir.path())[0].1.bwrap, 2);
        let third = register(dir.path(), 3, &["c".into()], false).unwrap();
        assert_eq!(list(dir.path())[0], (0, read(&third.path).unwrap()));
        drop((second, third));
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn stale_records_are_ignored_and_their_id_reused() {
        let dir = tempfile::tempdir().unwrap();
        let stale = serde_json::to_vec(&record(i32::MAX, 1)).unwrap();
        std::fs::write(dir.path().join("0"), stale).unwrap();
        std::fs::write(dir.path().join("1"), b"garbage").unwrap();
        assert!(list(dir.path()).is_empty());
        let _me = register(dir.path(), 9, &[], false).unwrap();
        assert_eq!(list(dir.path())[0].0, 0);
    }
}
