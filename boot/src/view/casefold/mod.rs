//! The casefold view: names found whatever their case, kept as they were written. A
//! passthrough FUSE file system served by the session daemon, mounted on the writable
//! view's own mount point, over it, so the sandbox's root and every instance see it:
//!
//! ```text
//! places.root   casefold (this server)       <- the sandbox's root
//!     │ O_PATH descriptors taken before it covered the view
//! places.root   the writable view (kernel overlay, fuse-overlayfs or unionfs)
//! places.layers the merged read-only layers
//! ```
//!
//! It never renames anything below: turned off, every file is reachable by its real name.
//! `fold` is the comparison, `names` the choice of a real name, `inodes` the node table,
//! `sys` the calls on the view below, `server` the file system, `listing` a directory's
//! entries, `ahead` the walker that lists directories before the kernel asks.

mod ahead;
mod fold;
mod inodes;
mod listing;
mod names;
mod server;
mod sys;

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::Context;
use fuser::{Config, INodeNo, MountOption, SessionACL};
use nix::fcntl::OFlag;

use super::Isolation;
use super::layer_server::run_on_thread;
use crate::debug;

/// What the casefold view is mounted over, as far as a close is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Below {
    /// The kernel overlay on a local file system, or fuse-overlayfs (it has no flush: the
    /// kernel stops asking it at the first close): a close reports nothing, so the kernel
    /// is told not to send one (a `flush` trip per close saved; an `exec` opens several
    /// files, the touch loop of the overlay benchmark one per touch).
    QuietClose,
    /// unionfs, whose flush (the close of a duplicate) may report a write error at close.
    FlushingBackend,
}

/// The server holds a descriptor for every node the kernel remembers, and a walk with
/// readdirplus makes the kernel remember every entry listed: the soft limit of 1,024 would
/// fail a `find` over a large tree with EMFILE. The daemon takes the hard limit the host
/// allows (no privilege needed); if it cannot, it keeps what it has. Returns the limit.
fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            debug::log(format!("casefold: descriptor limit stays at {soft}: {e}"));
            return soft;
        }
        return hard;
    }
    soft
}

/// Descriptors the walker ahead may hold in its listings: a quarter of the limit, the rest
/// left to the nodes the kernel remembers, and no more than a large walk needs.
fn walk_ahead_budget(limit: u64) -> usize {
    usize::try_from(limit / 4).unwrap_or(usize::MAX).min(8192)
}

/// Mounts the casefold view over the writable view at `root`, served on threads of the
/// daemon; returns its unmounter and a descriptor that hangs up when it stops.
pub fn serve(
    root: &Path,
    isolation: Isolation,
    below: Below,
) -> anyhow::Result<(fuser::SessionUnmounter, OwnedFd)> {
    let _step = debug::Step::new("daemon: mount the casefold view (FUSE)");
    // Taken before the mount covers it: the server reaches the view below through it.
    let view = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("cannot open {}", root.display()))?;
    let budget = walk_ahead_budget(raise_descriptor_limit());
    let (stale, stale_rx) = std::sync::mpsc::channel::<(u64, Vec<u8>)>();
    let fs = server::CasefoldFs::new(view, root, stale, below, budget)
        .map_err(|e| anyhow::anyhow!("cannot read {}: errno {}", root.display(), e.code()))?;
    let session = fuser::Session::new(fs, root, &config(isolation)).map_err(|e| {
        anyhow::anyhow!(
            "cannot mount the casefold view with FUSE: {e} (is /dev/fuse present and open to you?)"
        )
    })?;
    let notifier = session.notifier();
    std::thread::Builder::new()
        .name("casefold-stale".into())
        .spawn(move || {
            for (dir, name) in stale_rx {
                let _ = notifier.inval_entry(INodeNo(dir), OsStr::from_bytes(&name));
            }
        })
        .context("cannot start the casefold view's notifier")?;
    run_on_thread(session, "casefold")
}

/// Mount options: writable, modes checked by the kernel, open to the sandbox's nested
/// user namespace. (Without user namespaces the view refuses casefold before any mount.)
fn config(isolation: Isolation) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("fim-casefold".into()),
        MountOption::Subtype("fim".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    if isolation == Isolation::Namespaces {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(fim_layers::reader::cpu_count().max(2));
    config.clone_fd = true;
    config
}
