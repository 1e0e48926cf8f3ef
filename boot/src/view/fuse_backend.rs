//! A FUSE backend of the writable view (`fuse-overlayfs` or `unionfs -o cow`), run as a
//! child of the session daemon inside its namespaces. It dies with the daemon (parent-death
//! signal) and is waited for through a pidfd and the mount table's change notification,
//! never by polling on a timer; what it printed becomes the error if it fails to mount.

use std::ffi::OsString;
use std::fs::{DirBuilder, File};
use std::io::{Read, Seek};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fim_reserved::Overlay;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Isolation;
use super::overlay::{Branches, prepare_upper, tool};
use crate::debug;
use crate::places::Places;
use crate::tools::{Program, Tool};

/// How long a FUSE backend may take to appear in the mount table.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a FUSE backend may take to exit once its mount is detached.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a backend mounted in the host's mount namespace may take to exit on its own
/// once its mount is detached, before it is asked to.
const HOST_EXIT_GRACE: Duration = Duration::from_millis(500);

/// A FUSE backend's process.
pub struct Helper {
    name: &'static str,
    child: Child,
    /// Readable once the process has exited.
    pidfd: OwnedFd,
}

impl Helper {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Becomes readable when the backend exits.
    pub fn exited(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// How the backend ended, once [`Helper::exited`] is readable: `fuse-overlayfs (pid N)
    /// was killed by SIGKILL`, or `... exited with status N`.
    pub fn how_it_ended(&mut self) -> String {
        use std::os::unix::process::ExitStatusExt;
        let pid = self.child.id();
        let how = match self.child.try_wait() {
            Ok(Some(status)) => match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(signal)) => match nix::sys::signal::Signal::try_from(signal) {
                    Ok(signal) => format!("was killed by {signal}"),
                    Err(_) => format!("was killed by signal {signal}"),
                },
                _ => "ended".to_string(),
            },
            _ => "stopped".to_string(),
        };
        format!("{} (pid {pid}) {how}", self.name)
    }

    /// Waits for the backend, whose mount the caller detached, to exit; kills it if it
    /// lingers (a sandbox process may still hold the view).
    pub fn stop(mut self) {
        if !wait_readable(self.pidfd.as_fd(), EXIT_TIMEOUT) {
            debug::log(format!("daemon: {} did not exit; killing it", self.name));
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// As [`Helper::stop`], for a backend mounted in the host's mount namespace. There,
    /// a mount namespace another process made meanwhile holds a copy of the backend's mount
    /// (on a host whose mounts do not propagate, as in many containers), which keeps it
    /// serving after our detach until that namespace ends: after a short grace, it is
    /// asked to exit (SIGTERM: it leaves its loop and ends) instead of being waited out.
    pub fn stop_in_host(self) {
        if !wait_readable(self.pidfd.as_fd(), HOST_EXIT_GRACE) {
            debug::log(
                "daemon: the FUSE backend serves a copy of its mount made elsewhere; asking it to exit",
            );
            // Not yet waited for, so the pid (a pid_t the kernel gave) is still the backend's.
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        }
        self.stop();
    }
}

/// Who mounts a FUSE backend, and where.
#[derive(Debug, Clone, Copy)]
pub struct FuseContext {
    pub ids: (u32, u32),
    pub isolation: Isolation,
}

/// Starts the FUSE backend `overlay` over `branches` (the merged layers at `lower`,
/// lowest) on `places.root` and returns once it is mounted.
pub fn mount_fuse(
    places: &Places,
    branches: &Branches,
    lower: &Path,
    context: FuseContext,
    overlay: Overlay,
    program: &Program,
) -> anyhow::Result<Helper> {
    let (uid, gid) = context.ids;
    if branches.persistent {
        prepare_upper(places, lower, overlay)?;
    }
    let _step = debug::Step::new(format!("daemon: mount the overlay ({overlay})"));
    let name = tool(overlay).map_or("overlay", Tool::name);
    let mut args: Vec<OsString> = vec!["-f".into(), "-o".into()];
    match overlay {
        Overlay::Overlayfs => {
            let work = branches.cwd.join(&branches.fuse_work);
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&work)
                .with_context(|| format!("cannot create {}", work.display()))?;
            // A user is root in the session's namespace: show every file as theirs, as
            // the kernel overlay's FUSE layer does. In the host's namespace (through
            // fusermount3) they are themselves, and others may not look in.
            let extra = match (context.isolation, uid) {
                (Isolation::Host, _) => format!(",squash_to_uid={uid},squash_to_gid={gid}"),
                (Isolation::Namespaces, 0) => ",allow_other".into(),
                (Isolation::Namespaces, _) => ",allow_other,squash_to_uid=0,squash_to_gid=0".into(),
            };
            // No writeback cache: with it the kernel accepts a write into memory and a full
            // disk fails it only at fsync, so an app that does not sync loses it silently;
            // without it the write itself gets ENOSPC, as on any disk.
            args.push(
                format!(
                    "lowerdir={},upperdir={},workdir={},writeback=0{extra}",
                    branches.lowers.join(":"),
                    branches.upper,
                    branches.fuse_work
                )
                .into(),
            );
        }
        Overlay::Unionfs => {
            args.push(match context.isolation {
                Isolation::Namespaces => "cow,hide_meta_files,allow_other,use_ino".into(),
                Isolation::Host => "cow,hide_meta_files,use_ino".into(),
            });
            let lowers: Vec<String> = branches.lowers.iter().map(|l| format!("{l}=RO")).collect();
            args.push(format!("{}=RW:{}", branches.upper, lowers.join(":")).into());
        }
        Overlay::Bwrap => bail!("the kernel overlay has no FUSE backend"),
    }
    args.push(places.root.clone().into());

    // Opened before the start: its change notification cannot be missed.
    let mountinfo = File::open("/proc/self/mountinfo").context("cannot open the mount table")?;
    let mut log = memfd(name)?;
    debug::log(format!(
        "daemon: {name}: {} ({:?})",
        program.path.display(),
        program.origin
    ));
    debug::log(format!(
        "daemon: {} {}",
        program.path.display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let mut command = Command::new(&program.path);
    // Its own name, not `N` of `/proc/self/fd/N`: libfuse names the mount's type after it
    // (`fuse.fuse-overlayfs`), and `ps` shows it.
    command
        .arg0(name)
        .args(&args)
        .current_dir(&branches.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log.try_clone()?));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            // The daemon blocks its stop signals; the backend must receive them.
            let none: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", program.path.display()))?;
    let pidfd = pidfd_open(child.id()).context("cannot watch the overlay backend")?;
    let mut helper = Helper { name, child, pidfd };

    let deadline = Instant::now() + MOUNT_TIMEOUT;
    loop {
        if is_mount_point(&places.root, &places.instance) {
            return Ok(helper);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = helper.child.kill();
            let _ = helper.child.wait();
            bail!("{name} did not mount the overlay within {MOUNT_TIMEOUT:?}");
        }
        let mut fds = [
            PollFd::new(mountinfo.as_fd(), PollFlags::POLLPRI),
            PollFd::new(helper.pidfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, millis(left)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("cannot wait for the overlay backend"),
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty())
            && !is_mount_point(&places.root, &places.instance)
        {
            let status = helper.child.wait()?;
            let mut said = String::new();
            let _ = log.rewind();
            let _ = log.read_to_string(&mut said);
            let said = said
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.contains("unknown argument ignored"))
                .collect::<Vec<_>>()
                .join(" ");
            bail!("{name} could not mount the overlay ({status}): {said}");
        }
    }
}

/// Whether `path` is the root of a mount, not part of `parent`'s file system.
fn is_mount_point(path: &Path, parent: &Path) -> bool {
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(inner), Ok(outer)) => inner.dev() != outer.dev(),
        _ => false,
    }
}

/// Waits up to `limit` for `fd` to become readable.
fn wait_readable(fd: BorrowedFd<'_>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, millis(left)) {
            Ok(n) if n > 0 => return true,
            Err(Errno::EINTR) if !left.is_zero() => continue,
            _ => return false,
        }
    }
}

/// An anonymous file for a backend's error output.
fn memfd(name: &str) -> anyhow::Result<File> {
    let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .context("cannot create a memfd")?;
    Ok(File::from(fd))
}

/// A descriptor that becomes readable when process `pid` exits.
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A poll timeout of at least one millisecond.
pub fn millis(d: Duration) -> PollTimeout {
    let ms = d.as_millis().clamp(1, u128::from(u16::MAX)) as u16;
    PollTimeout::from(ms)
}
