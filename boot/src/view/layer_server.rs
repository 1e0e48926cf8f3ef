//! The merged read-only layers, mounted with the in-process FUSE server (fuser: no
//! libfuse, no fusermount inside a user namespace): one multithreaded server for the
//! whole stack, on a thread of the session daemon. Where the mount is made decides who
//! may look and whose files they appear to be.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use fim_layers::Stack;
use fim_layers::fuse::{MountSettings, session as fuse_session};
use nix::fcntl::OFlag;

use super::Isolation;
use crate::debug;

/// Mounts the layers at `mount_point` with the in-process FUSE server, run on a thread
/// of its own; returns its unmounter and a descriptor that hangs up when it stops.
pub fn serve(
    stack: Stack,
    mount_point: &Path,
    (uid, gid): (u32, u32),
    isolation: Isolation,
) -> anyhow::Result<(fuser::SessionUnmounter, OwnedFd)> {
    let settings = match isolation {
        Isolation::Namespaces => MountSettings {
            // The sandbox runs in a nested user namespace, not as the mounter.
            allow_other: true,
            threads: 0,
            // With one id mapped, every file is root's (the user's): the kernel overlay
            // cannot copy up a file whose owner is not mapped. With subordinate ids,
            // files keep their owners (`_apt`'s cache is `_apt`'s).
            owner: (uid != 0 && crate::session::namespaces::mapped_uids() == 1).then_some((0, 0)),
        },
        // Through fusermount3, which allows `allow_other` only if the host says so; the
        // app runs as the user who mounts, and sees the tree as theirs.
        Isolation::Host => MountSettings {
            allow_other: false,
            threads: 0,
            owner: Some((uid, gid)),
        },
    };
    let session = {
        let _step = debug::Step::new("daemon: mount the layers (FUSE)");
        fuse_session(Arc::new(stack), mount_point, &settings).map_err(|e| {
            anyhow::anyhow!(
                "cannot mount the image's layers with FUSE: {e} (is /dev/fuse present and open to you?)"
            )
        })?
    };
    let _ = super::prefetch::LAYER_SERVER.set(session.notifier());
    run_on_thread(session, "fuse")
}

/// Runs a mounted FUSE session on a thread named `name`; returns its unmounter and a
/// descriptor that hangs up when the session stops.
pub fn run_on_thread<FS: fuser::Filesystem>(
    mut session: fuser::Session<FS>,
    name: &str,
) -> anyhow::Result<(fuser::SessionUnmounter, OwnedFd)> {
    let unmounter = session.unmount_callable();
    let (stopped, stopped_writer) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = session.run();
            drop(stopped_writer);
        })
        .with_context(|| format!("cannot start the FUSE server {name}"))?;
    Ok((unmounter, stopped))
}
