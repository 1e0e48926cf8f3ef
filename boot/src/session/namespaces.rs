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

use super::subids;
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
            unshare_user(uid, gid, CloneFlags::CLONE_NEWNS)?
        };
        match created {
            Ok(Ids::Subordinate(count)) => crate::debug::log(format!(
                "daemon: user namespace: you are root and {count} subordinate ids exist (newuidmap, newgidmap)"
            )),
            Ok(Ids::One(why)) => crate::debug::log(format!(
                "daemon: user namespace: you are root, the only id ({why})"
            )),
            Err(e) => {
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
        }
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

/// Who exists in a user namespace besides the user, who is its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ids {
    /// This many subordinate ids (`subids`).
    Subordinate(u64),
    /// None: the user alone is mapped, for this reason.
    One(String),
}

/// Moves the calling (single-threaded) process into a new user namespace, with the
/// namespaces `also`, and maps it: the user as root, and the user's subordinate ids when
/// the host gives some. `Err` (with nothing changed) when the kernel refuses.
fn unshare_user(
    uid: u32,
    gid: u32,
    also: CloneFlags,
) -> anyhow::Result<Result<Ids, nix::errno::Errno>> {
    let helper = subids::plan(uid, gid).and_then(|plan| {
        subids::Helper::fork(&plan)
            .map(|helper| (plan, helper))
            .map_err(|e| format!("{e:#}"))
    });
    if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER | also) {
        return Ok(Err(e));
    }
    let ids = match helper {
        Ok((plan, helper)) => match helper.map() {
            Ok(()) => Ids::Subordinate(subids::mapped(&plan.uids) - 1),
            Err(why) => Ids::One(why),
        },
        Err(why) => Ids::One(why),
    };
    // What the helper did not map, the process maps itself: its own id only, and it must
    // give up setgroups(2) before it may write a gid map.
    let empty = |map: &str| std::fs::read_to_string(map).is_ok_and(|m| m.trim().is_empty());
    if empty("/proc/self/gid_map") {
        std::fs::write("/proc/self/setgroups", "deny").context("writing /proc/self/setgroups")?;
        std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")).context("writing gid_map")?;
    }
    if empty("/proc/self/uid_map") {
        std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")).context("writing uid_map")?;
    }
    Ok(Ok(ids))
}

/// For a commit by a normal user who has subordinate ids: moves the calling
/// (single-threaded) process into a user namespace mapped as the user's sessions are, so
/// files of the upper directory owned by subordinate ids can be read, are recorded with
/// their ids inside, and can be removed once committed. `false` (nothing changed) when the
/// user has none or the kernel refuses; the commit then reads the upper directory as the
/// user.
pub fn enter_for_commit(uid: u32, gid: u32) -> anyhow::Result<bool> {
    let refused = std::env::var_os(REFUSE_USERNS).is_some_and(|v| v == "1");
    if uid == 0 || refused {
        return Ok(false);
    }
    if let Err(why) = subids::plan(uid, gid) {
        crate::debug::log(format!("commit: as you ({why})"));
        return Ok(false);
    }
    match unshare_user(uid, gid, CloneFlags::empty())? {
        Ok(ids) => {
            crate::debug::log(format!("commit: in a user namespace ({ids:?})"));
            Ok(true)
        }
        Err(e) => {
            crate::debug::log(format!("commit: as you (no user namespace: {e})"));
            Ok(false)
        }
    }
}

/// How many uids the calling process's user namespace maps (the initial one: all).
pub fn mapped_uids() -> u64 {
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    map.lines()
        .filter_map(|line| line.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum()
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
    let open = |kind: &str| open_daemons(pid, &format!("ns/{kind}"));
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

/// Opens `/proc/PID/WHAT` of the session's daemon `pid` (through the host's `/proc`).
pub fn open_daemons(pid: i32, what: &str) -> anyhow::Result<File> {
    let path = format!("/proc/{pid}/{what}");
    File::open(&path).with_context(|| format!("cannot open {path}"))
}
