//! The session's network when the app has no network permission: a network namespace
//! holding only its loopback, up, made once by the daemon and joined by each launch,
//! instead of bubblewrap making one at every launch (`--unshare-net`: 0.7 ms of a 5 ms
//! relaunch, timed with bare bwrap). The host's network stays out of reach as before;
//! the instances of one session share that loopback, as they share the view.
//!
//! A network namespace belongs to a thread, not to a process: a thread of the daemon
//! makes it and brings its loopback up, and the daemon keeps it alive as a descriptor
//! (the daemon itself stays where it was). A launcher opens that descriptor through the
//! daemon's `/proc/PID/fd` (the greeting names it) and joins it once it is in the
//! session's user namespace, which owns the network namespace.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::thread::JoinHandle;

use anyhow::{Context, anyhow};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// The session's network namespace being made, on a thread of its own: making one is
/// about 0.6 ms of kernel work, which then overlaps with the daemon's mounts wherever they
/// wait (new sessions, interleaved A/B: 13.11 -> 12.49 ms; on the read-ahead's core
/// instead it was slower).
pub struct Making(JoinHandle<anyhow::Result<OwnedFd>>);

impl Making {
    /// The namespace (loopback up), once made.
    pub fn finish(self) -> anyhow::Result<OwnedFd> {
        self.0
            .join()
            .map_err(|_| anyhow!("the thread making the network namespace panicked"))?
    }
}

/// Starts making the session's network namespace.
pub fn make() -> anyhow::Result<Making> {
    std::thread::Builder::new()
        .name("network".into())
        .spawn(|| -> anyhow::Result<OwnedFd> {
            unshare(CloneFlags::CLONE_NEWNET).context("cannot create a network namespace")?;
            loopback_up()?;
            File::open("/proc/thread-self/ns/net")
                .map(OwnedFd::from)
                .context("cannot open /proc/thread-self/ns/net")
        })
        .map(Making)
        .context("cannot start a thread")
}

/// Brings the loopback of the calling thread's network namespace up (the kernel gives
/// it 127.0.0.1 and ::1 then), as bubblewrap does for a namespace of its own.
fn loopback_up() -> anyhow::Result<()> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("cannot open a socket")?;
    // SAFETY: zeroes are a valid `ifreq`; the name fits with its NUL.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in req.ifr_name.iter_mut().zip(b"lo") {
        *to = *from as libc::c_char;
    }
    // SAFETY: valid socket and `ifreq`, for the flags requests.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(std::io::Error::last_os_error())
                .context("cannot read the loopback's flags");
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(std::io::Error::last_os_error()).context("cannot bring the loopback up");
        }
    }
    Ok(())
}

/// Opens the daemon `pid`'s network namespace, descriptor `fd` there (through the host's
/// `/proc`: before joining the session's mount namespace).
pub fn open(pid: i32, fd: i32) -> anyhow::Result<File> {
    super::namespaces::open_daemons(pid, &format!("fd/{fd}"))
}

/// Moves the calling thread into `network` (from [`open`]); the sandbox it starts then
/// needs no network namespace of its own.
pub fn join(network: &File) -> anyhow::Result<()> {
    setns(network, CloneFlags::CLONE_NEWNET).context("cannot join the session's network namespace")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_made_is_a_new_namespace_with_its_loopback_up() {
        // Making a network namespace needs CAP_SYS_ADMIN (root, or a user namespace).
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: making a network namespace needs root");
            return;
        }
        let made = make()
            .and_then(Making::finish)
            .expect("a network namespace");
        let ours = std::fs::metadata("/proc/thread-self/ns/net").expect("ours");
        let theirs = File::from(made).metadata().expect("theirs");
        use std::os::unix::fs::MetadataExt;
        assert_ne!(ours.ino(), theirs.ino());
        // Joined from a thread of its own: the loopback is up, the only interface.
        let fd = make()
            .and_then(Making::finish)
            .expect("a network namespace");
        let seen = std::thread::spawn(move || {
            join(&File::from(fd)).expect("join");
            let dev = std::fs::read_to_string("/proc/thread-self/net/dev").expect("dev");
            let trie = std::fs::read_to_string("/proc/thread-self/net/fib_trie").expect("trie");
            (dev, trie)
        })
        .join()
        .expect("thread");
        let interfaces: Vec<&str> = seen
            .0
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next().map(str::trim))
            .collect();
        assert_eq!(interfaces, ["lo"]);
        assert!(seen.1.contains("127.0.0.1"), "{}", seen.1);
    }
}
