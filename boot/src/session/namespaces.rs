//! Namespaces of a session: the daemon creates them, every launcher of the image joins
//! them. A normal user gets a user namespace in which they are root (so they may mount);
//! root needs only a mount namespace. Mounts made there are invisible to the rest of the
//! system and vanish with the last process inside.
//!
//! Where user namespaces are refused, a normal user's session falls back to the host's
//! mount namespace: its FUSE mounts go through the setuid `fusermount3` (in its private
//! runtime directory) and the sandbox needs a setuid bwrap.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use anyhow::Context;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};

use crate::view::{Isolation, setuid_fusermount};

/// Creates the session's namespaces in the calling (single-threaded) process.
/// `uid`/`gid` are the caller's ids outside; inside a new user namespace they become 0.
pub fn create(uid: u32, gid: u32) -> anyhow::Result<Isolation> {
    if uid == 0 {
        unshare(CloneFlags::CLONE_NEWNS).context("cannot create a mount namespace")?;
    } else {
        // Test-only switch: act as a host that refuses user namespaces.
        let refused = std::env::var_os(REFUSE_USERNS).is_some_and(|v| v == "1");
        let created = if refused {
            Err(nix::errno::Errno::EPERM)
        } else {
            unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
        };
        if let Err(e) = created {
            // Without one, a setuid fusermount3 can mount and a setuid bwrap can sandbox.
            if setuid_fusermount().is_some() && crate::tools::setuid_bwrap().is_ok() {
                crate::debug::log(format!(
                    "daemon: no user namespace ({e}); mounting through fusermount3 in the host's mount namespace"
                ));
                return Ok(Isolation::Host);
            }
            let (by, fix) = userns_hint();
            anyhow::bail!(
                "cannot create a user namespace ({e}): unprivileged user namespaces are disabled on this system{by}, and there is no setuid fusermount3 and setuid bwrap (FIM_BWRAP) to do without them; {fix}"
            );
        }
        // A process may map only its own ids into a namespace it created, and must give up
        // setgroups(2) before it may write a gid map.
        std::fs::write("/proc/self/setgroups", "deny").context("writing /proc/self/setgroups")?;
        std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")).context("writing uid_map")?;
        std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")).context("writing gid_map")?;
    }
    // Slave, not private: mounts the host makes later (a USB stick) still appear inside,
    // and nothing made inside leaks out.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context("cannot make the mount namespace private")?;
    Ok(Isolation::Namespaces)
}

/// Test-only switch: with `1`, a normal user's launcher treats the creation of a user
/// namespace as refused (`EPERM`), as some hosts do, so the message can be tested anywhere.
pub const REFUSE_USERNS: &str = "FIM_TEST_REFUSE_USERNS";

/// The sysctl that refuses user namespaces on this machine, if one does (" by NAME=VALUE"),
/// and what to do about it.
fn userns_hint() -> (String, String) {
    for (name, refusing, allowing) in [
        ("kernel.apparmor_restrict_unprivileged_userns", "1", "0"),
        ("kernel.unprivileged_userns_clone", "0", "1"),
        ("user.max_user_namespaces", "0", "15000"),
    ] {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == refusing) {
            return (
                format!(" by {name}={refusing}"),
                format!("an administrator can allow them with `sysctl -w {name}={allowing}`"),
            );
        }
    }
    (
        String::new(),
        "ask an administrator to allow unprivileged user namespaces".into(),
    )
}

/// Moves the calling (single-threaded) process into the namespaces of session process
/// `pid`: its user namespace when it has its own, then its mount namespace. A session in
/// the host's namespaces has nothing to join.
pub fn join(pid: i32) -> anyhow::Result<Isolation> {
    let open = |kind: &str| {
        let path = format!("/proc/{pid}/ns/{kind}");
        File::open(&path).with_context(|| format!("cannot open {path}"))
    };
    let theirs = open("user")?;
    let ours = File::open("/proc/self/ns/user").context("cannot open /proc/self/ns/user")?;
    let mnt = open("mnt")?;
    let our_mnt = File::open("/proc/self/ns/mnt").context("cannot open /proc/self/ns/mnt")?;
    if theirs.metadata()?.ino() == ours.metadata()?.ino()
        && mnt.metadata()?.ino() == our_mnt.metadata()?.ino()
    {
        // A session in the host's mount namespace: nothing to join.
        return Ok(Isolation::Host);
    }
    if theirs.metadata()?.ino() != ours.metadata()?.ino() {
        setns(&theirs, CloneFlags::CLONE_NEWUSER)
            .context("cannot join the session's user namespace")?;
    }
    setns(&mnt, CloneFlags::CLONE_NEWNS).context("cannot join the session's mount namespace")?;
    Ok(Isolation::Namespaces)
}
