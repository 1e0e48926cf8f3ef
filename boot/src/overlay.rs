//! The writable view over the merged layers, by one of three backends: the kernel overlay
//! (BWRAP, the default), `fuse-overlayfs` (OVERLAYFS) or `unionfs -o cow` (UNIONFS). The
//! FUSE backends run as children of the session daemon, inside its namespaces; they die
//! with it (parent-death signal) and are waited for through a pidfd and the mount table's
//! change notification, never by polling on a timer.
//!
//! When the kernel refuses its overlay, the next installed FUSE backend takes over and the
//! launcher says so in one line.

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
use nix::mount::{MsFlags, mount};
use nix::poll::{PollFd, PollFlags, poll};

use crate::daemon::millis;
use crate::debug;
use crate::markers::{self, Format};
use crate::namespaces::Isolation;
use crate::places::{Places, find_program};

/// Test-only switch: with `1`, the daemon treats the kernel overlay mount as refused
/// (`EPERM`), as a host that forbids it would, so the fallback can be tested anywhere.
pub const REFUSE_KERNEL_OVERLAY: &str = "FIM_TEST_REFUSE_KERNEL_OVERLAY";

/// How long a FUSE backend may take to appear in the mount table.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a FUSE backend may take to exit once its mount is detached.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The program behind a FUSE backend and the Debian package that installs it.
struct Tool {
    program: &'static str,
    package: &'static str,
}

fn tool(overlay: Overlay) -> Option<Tool> {
    match overlay {
        Overlay::Bwrap => None,
        Overlay::Overlayfs => Some(Tool {
            program: "fuse-overlayfs",
            package: "fuse-overlayfs",
        }),
        Overlay::Unionfs => Some(Tool {
            program: "unionfs",
            package: "unionfs-fuse",
        }),
    }
}

/// The writable view, mounted on `places.root`.
pub struct Mounted {
    /// The backend that mounted it.
    pub overlay: Overlay,
    /// Why it is not the one asked for, to be shown to the user.
    pub notice: Option<String>,
    /// The FUSE backend's process; none for the kernel overlay.
    pub helper: Option<Helper>,
}

/// Mounts the writable view with `wanted`, falling back from a refused kernel overlay to
/// the installed FUSE backends. The upper directory's deletion markers are converted to
/// each backend's format before it mounts.
pub fn mount_view(
    places: &Places,
    lower: &Path,
    ids: (u32, u32),
    isolation: Isolation,
    wanted: Overlay,
) -> anyhow::Result<Mounted> {
    let fuse = FuseContext { ids, isolation };
    if wanted != Overlay::Bwrap {
        let tool = tool(wanted).context("a FUSE backend has a tool")?;
        let program = find_program(tool.program).with_context(|| {
            format!(
                "{} is not installed (no {} in PATH), and the {wanted} overlay needs it: install the {} package, or choose another backend (FIM_OVERLAY=bwrap, or fim-overlay set bwrap)",
                tool.program, tool.program, tool.package
            )
        })?;
        let helper = mount_fuse(places, lower, fuse, wanted, &program)?;
        return Ok(Mounted {
            overlay: wanted,
            notice: None,
            helper: Some(helper),
        });
    }
    let refused = match mount_kernel(places, lower) {
        Ok(()) => {
            return Ok(Mounted {
                overlay: Overlay::Bwrap,
                notice: None,
                helper: None,
            });
        }
        Err(Refusal::Errno(errno)) => errno,
        Err(Refusal::Other(e)) => return Err(e),
    };
    debug::log(format!(
        "daemon: the kernel refused the overlay ({refused:?})"
    ));
    let mut failures = Vec::new();
    for fallback in [Overlay::Overlayfs, Overlay::Unionfs] {
        let Some(tool) = tool(fallback) else { continue };
        let Some(program) = find_program(tool.program) else {
            failures.push(format!("{} is not installed", tool.program));
            continue;
        };
        match mount_fuse(places, lower, fuse, fallback, &program) {
            Ok(helper) => {
                return Ok(Mounted {
                    overlay: fallback,
                    notice: Some(format!(
                        "overlayfs mount refused ({refused:?}), using {}",
                        tool.package
                    )),
                    helper: Some(helper),
                });
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    bail!(
        "the kernel refused the overlay mount ({refused:?}) and no FUSE backend could take over ({}): install fuse-overlayfs or unionfs-fuse",
        failures.join("; ")
    )
}

enum Refusal {
    /// The mount call itself failed: a fallback may work.
    Errno(Errno),
    /// Something before it failed (converting markers, entering the data directory).
    Other(anyhow::Error),
}

/// Mounts the kernel overlay: the merged layers below, the data directory's upper and
/// work directories above. Paths are given relative to the data directory, whose name the
/// user chose and may hold the `,` and `:` that separate overlay options.
fn mount_kernel(places: &Places, lower: &Path) -> Result<(), Refusal> {
    prepare_upper(places, lower, Overlay::Bwrap).map_err(Refusal::Other)?;
    let _step = debug::Step::new("daemon: mount the overlay (kernel)");
    if std::env::var_os(REFUSE_KERNEL_OVERLAY).is_some_and(|v| v == "1") {
        debug::log(format!(
            "daemon: {REFUSE_KERNEL_OVERLAY}=1 refuses the kernel overlay"
        ));
        return Err(Refusal::Errno(Errno::EPERM));
    }
    std::env::set_current_dir(&places.data)
        .with_context(|| format!("cannot enter {}", places.data.display()))
        .map_err(Refusal::Other)?;
    let lower = option_path(lower).map_err(Refusal::Other)?;
    // `userxattr`: the same deletion markers whether root or a user mounted it.
    let options = format!("lowerdir={lower},upperdir=upper,workdir=work,userxattr");
    let result = mount(
        Some("fim"),
        &places.root,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    );
    let _ = std::env::set_current_dir("/");
    result.map_err(Refusal::Errno)
}

/// Converts the upper directory's markers to `overlay`'s format.
fn prepare_upper(places: &Places, lower: &Path, overlay: Overlay) -> anyhow::Result<()> {
    let _step = debug::Step::new("daemon: check the upper directory's deletion markers");
    let lower = markers::MountedLower(lower);
    if markers::convert(&places.data, &places.upper, &lower, Format::of(overlay))? {
        debug::log(format!(
            "daemon: converted the deletion markers for {overlay}"
        ));
    }
    Ok(())
}

/// An absolute path that can stand in a mount option list: no separators, no escapes.
fn option_path(path: &Path) -> anyhow::Result<String> {
    let text = path.to_str().filter(|t| !t.contains([',', ':', '=', '\\']));
    text.map(str::to_string).with_context(|| {
        format!(
            "{} holds a character (',', ':', '=' or '\\') that mount options cannot carry: set TMPDIR (or XDG_CACHE_HOME) to a plainer path",
            path.display()
        )
    })
}

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

    /// Waits for the backend, whose mount the caller detached, to exit; kills it if it
    /// lingers (a sandbox process may still hold the view).
    pub fn stop(mut self) {
        if !wait_readable(self.pidfd.as_fd(), EXIT_TIMEOUT) {
            debug::log(format!("daemon: {} did not exit; killing it", self.name));
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Starts the FUSE backend `overlay` on `places.root` and returns once it is mounted.
/// Who mounts a FUSE backend, and where.
#[derive(Debug, Clone, Copy)]
struct FuseContext {
    ids: (u32, u32),
    isolation: Isolation,
}

fn mount_fuse(
    places: &Places,
    lower: &Path,
    context: FuseContext,
    overlay: Overlay,
    program: &Path,
) -> anyhow::Result<Helper> {
    let (uid, gid) = context.ids;
    prepare_upper(places, lower, overlay)?;
    let _step = debug::Step::new(format!("daemon: mount the overlay ({overlay})"));
    let lower = option_path(lower)?;
    let name = tool(overlay).map_or("overlay", |t| t.program);
    let mut args: Vec<OsString> = vec!["-f".into(), "-o".into()];
    match overlay {
        Overlay::Overlayfs => {
            let work = places.data.join("work").join("fuse-overlayfs");
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
            args.push(
                format!("lowerdir={lower},upperdir=upper,workdir=work/fuse-overlayfs{extra}")
                    .into(),
            );
        }
        Overlay::Unionfs => {
            args.push(match context.isolation {
                Isolation::Namespaces => "cow,hide_meta_files,allow_other,use_ino".into(),
                Isolation::Host => "cow,hide_meta_files,use_ino".into(),
            });
            args.push(format!("upper=RW:{lower}=RO").into());
        }
        Overlay::Bwrap => bail!("the kernel overlay has no FUSE backend"),
    }
    args.push(places.root.clone().into());

    // Opened before the start: its change notification cannot be missed.
    let mountinfo = File::open("/proc/self/mountinfo").context("cannot open the mount table")?;
    let mut log = memfd(name)?;
    debug::log(format!(
        "daemon: {} {}",
        program.display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let mut command = Command::new(program);
    command
        .args(&args)
        .current_dir(&places.data)
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
        .with_context(|| format!("cannot start {}", program.display()))?;
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

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_paths_refuse_separators() {
        assert_eq!(
            option_path(Path::new("/tmp/fim-0/ab/layers"))
                .ok()
                .as_deref(),
            Some("/tmp/fim-0/ab/layers")
        );
        for bad in ["/tmp/a,b", "/tmp/a:b", "/tmp/a=b", "/tmp/a\\b"] {
            assert!(option_path(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_fuse_backends_have_tools_and_each_names_its_package() {
        assert!(tool(Overlay::Bwrap).is_none());
        assert_eq!(
            tool(Overlay::Overlayfs).map(|t| t.package),
            Some("fuse-overlayfs")
        );
        assert_eq!(
            tool(Overlay::Unionfs).map(|t| (t.program, t.package)),
            Some(("unionfs", "unionfs-fuse"))
        );
    }
}
