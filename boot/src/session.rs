//! A session: one daemon per data directory holds the namespaces, the FUSE server and the
//! overlay mount; every launcher of the image connects to it and joins its namespaces.
//! The kernel refuses (or corrupts) two overlay mounts sharing an upper directory, so
//! concurrent instances must share one mount. The daemon lives exactly as long as some
//! launcher holds a connection: the last one to exit, or be killed, ends it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use fim_image::Image;
use fim_reserved::Overlay;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::daemon;
use crate::debug::{self, Step};
use crate::layer_stack::{self, LayerFile};
use crate::places::Places;

/// How long a launcher waits for a live daemon to greet it.
const GREETING_TIMEOUT: Duration = Duration::from_secs(30);

/// The first line a daemon sends on every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// The mounts are up. `pid` is the daemon (whose namespaces to join), `image` the
    /// identity of the layers it serves, `instances` the launchers connected, this one included.
    /// `wanted` is the backend the session was started for, `used` the one that mounted
    /// the view (they differ after a fallback).
    Ready {
        pid: i32,
        image: String,
        instances: u32,
        wanted: Overlay,
        used: Overlay,
    },
    /// The daemon could not set the session up; the text says why.
    Failed(String),
    /// Something the user should know, sent before `Ready` (one line).
    Note(String),
}

impl Greeting {
    pub fn encode(&self) -> String {
        match self {
            Greeting::Ready {
                pid,
                image,
                instances,
                wanted,
                used,
            } => format!("ready {pid} {image} {instances} {wanted} {used}\n"),
            // One line, whatever the message held.
            Greeting::Failed(why) => format!("failed {}\n", why.replace('\n', " ")),
            Greeting::Note(what) => format!("note {}\n", what.replace('\n', " ")),
        }
    }

    pub fn parse(line: &str) -> Option<Greeting> {
        let line = line.strip_suffix('\n')?;
        if let Some(why) = line.strip_prefix("failed ") {
            return Some(Greeting::Failed(why.to_string()));
        }
        if let Some(what) = line.strip_prefix("note ") {
            return Some(Greeting::Note(what.to_string()));
        }
        let mut words = line.strip_prefix("ready ")?.split(' ');
        let pid = words.next()?.parse().ok().filter(|p| *p > 0)?;
        let image = words.next().filter(|w| !w.is_empty())?.to_string();
        let instances = words.next()?.parse().ok()?;
        let wanted = words.next()?.parse().ok()?;
        let used = words.next()?.parse().ok()?;
        words.next().is_none().then_some(Greeting::Ready {
            pid,
            image,
            instances,
            wanted,
            used,
        })
    }
}

/// Byte a launcher sends when its app ended normally, just before it leaves.
pub const LEAVING: u8 = b'L';
/// Byte the only launcher sends to make a session whose layers changed go away.
pub const QUIT: u8 = b'Q';

/// A launcher's membership in the session: dropping it (or dying) leaves the session.
#[derive(Debug)]
pub struct Membership {
    connection: UnixStream,
    pub daemon: i32,
    pub instances: u32,
    /// The backend the session was started for, and the one serving the view.
    pub wanted: Overlay,
    pub overlay: Overlay,
}

impl Membership {
    /// Leaves after a normal run, which lets the session linger for a relaunch.
    pub fn leave(mut self) {
        let _ = self.connection.write_all(&[LEAVING]);
    }

    /// Asks the daemon, of which this is the only member, to end, and waits until it has.
    fn make_way(mut self) -> anyhow::Result<()> {
        self.connection
            .write_all(&[QUIT])
            .context("asking the old session to end")?;
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut self.connection, &mut rest);
        Ok(())
    }
}

/// Joins the running session of `places`, or starts one.
pub fn connect(
    image: &Image,
    extras: &[LayerFile],
    places: &Places,
    (uid, gid): (u32, u32),
    wanted: Overlay,
) -> anyhow::Result<Membership> {
    let identity = layer_stack::identity(image, extras);
    let lock = lock_file(&places.session_lock)?;
    let _lock = {
        let _step = Step::new("wait for the session lock");
        Flock::lock(lock, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("cannot lock {}", places.session_lock.display()))?
    };

    if let Some(stream) = connect_running(&places.socket)? {
        let _step = Step::new("join the running session");
        match greeting(stream)? {
            // Alone in a lingering session that serves other layers, or another
            // backend: replace it.
            Some((member, image))
                if (image != identity || member.wanted != wanted) && member.instances == 1 =>
            {
                debug::log(
                    "the lingering session serves other layers or another overlay backend; replacing it",
                );
                member.make_way()?;
            }
            Some(member) => return check_identity(member, &identity, wanted, places),
            None => debug::log("the session's daemon died; starting a new one"),
        }
    }
    // What a dead daemon left: its socket and the empty mount points (its mounts died
    // with its namespace, unless it had to mount in the host's, through fusermount3).
    if places.remove_session_files().is_err() {
        for mount_point in [&places.root, &places.layers] {
            daemon::fusermount_detach(mount_point);
        }
        places
            .remove_session_files()
            .context("cannot clear a stale session")?;
    }
    let _step = Step::new("start the session daemon");
    let stream = daemon::spawn(image, extras, places, (uid, gid), &identity, wanted)?;
    match greeting(stream)? {
        Some(member) => check_identity(member, &identity, wanted, places),
        None => {
            bail!("the session daemon exited while starting (run with FIM_DEBUG=1 for details)")
        }
    }
}

fn check_identity(
    (member, image): (Membership, String),
    identity: &str,
    wanted: Overlay,
    places: &Places,
) -> anyhow::Result<Membership> {
    let others = member.instances.saturating_sub(1);
    if image != identity {
        bail!(
            "{} changed its layers while {others} other instance(s) still run the old ones; close them and run again",
            places.image.display(),
        );
    }
    if member.wanted != wanted {
        // One view per upper directory: joining is safe, a second backend is not.
        eprintln!(
            "fim: {others} running instance(s) of this image use the {} overlay; {wanted} applies once they have exited",
            member.overlay
        );
    }
    debug::log(format!(
        "session daemon {} serves {} instance(s)",
        member.daemon, member.instances
    ));
    Ok(member)
}

/// Ends this user's lingering session of `places`, whose mounts hold the upper directory
/// a layer change is about to change. Fails, naming how many, when instances still run.
pub fn end_lingering(places: &Places) -> anyhow::Result<()> {
    let lock = lock_file(&places.session_lock)?;
    let _lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("cannot lock {}", places.session_lock.display()))?;
    let Some(stream) = connect_running(&places.socket)? else {
        return Ok(());
    };
    match greeting(stream)? {
        Some((member, _)) if member.instances == 1 => member.make_way(),
        Some((member, _)) => Err(running_error(places, Some(member.instances - 1))),
        None => Ok(()),
    }
}

/// How many instances this user's session of `places` serves, if it can be reached.
pub fn running_instances(places: &Places) -> Option<u32> {
    let stream = connect_running(&places.socket).ok()??;
    // Leaving at once is safe: other members keep the session alive.
    let (member, _) = greeting(stream).ok()??;
    Some(member.instances.saturating_sub(1))
}

/// The refusal of a change while instances run.
pub fn running_error(places: &Places, count: Option<u32>) -> anyhow::Error {
    let image = places.image.display();
    match count {
        Some(n) if n > 0 => {
            anyhow::anyhow!("{n} instance(s) of {image} are running; close them, then try again")
        }
        _ => anyhow::anyhow!(
            "instances of {image} are running (another user's, or with another TMPDIR); close them, then try again"
        ),
    }
}

/// Connects to a live daemon's socket; `None` when there is none.
fn connect_running(socket: &Path) -> anyhow::Result<Option<UnixStream>> {
    match UnixStream::connect(socket) {
        Ok(stream) => {
            let peer = getsockopt(&stream, PeerCredentials)
                .context("reading the peer of the session socket")?;
            if peer.uid() != nix::unistd::geteuid().as_raw() {
                bail!(
                    "{} is served by uid {}, not by you; remove it",
                    socket.display(),
                    peer.uid()
                );
            }
            Ok(Some(stream))
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("cannot connect to {}", socket.display())),
    }
}

/// Reads the daemon's greeting: the membership, or `None` if the daemon hung up. Notes
/// before it are shown to the user.
fn greeting(stream: UnixStream) -> anyhow::Result<Option<(Membership, String)>> {
    stream.set_read_timeout(Some(GREETING_TIMEOUT))?;
    // The daemon sends nothing after `Ready`, so the reader holds nothing beyond it.
    let mut reader = BufReader::new(&stream);
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .context("no answer from the session daemon")?;
        if line.is_empty() {
            return Ok(None);
        }
        match Greeting::parse(&line) {
            Some(Greeting::Note(what)) => eprintln!("fim: {what}"),
            Some(Greeting::Ready {
                pid,
                image,
                instances,
                wanted,
                used,
            }) => {
                drop(reader);
                return Ok(Some((
                    Membership {
                        connection: stream,
                        daemon: pid,
                        instances,
                        wanted,
                        overlay: used,
                    },
                    image,
                )));
            }
            Some(Greeting::Failed(why)) => bail!("{why}"),
            None => bail!("the session daemon sent a garbled greeting: {line:?}"),
        }
    }
}

/// Sends a greeting, ignoring a launcher that already went away.
pub fn send(stream: &mut UnixStream, greeting: &Greeting) {
    let _ = stream.write_all(greeting.encode().as_bytes());
}

/// Opens (creating) a lock file.
pub fn lock_file(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::Greeting;
    use fim_reserved::Overlay;

    #[test]
    fn ready_round_trips() {
        let g = Greeting::Ready {
            pid: 42,
            image: "00ff".into(),
            instances: 3,
            wanted: Overlay::Bwrap,
            used: Overlay::Unionfs,
        };
        assert_eq!(g.encode(), "ready 42 00ff 3 bwrap unionfs\n");
        assert_eq!(Greeting::parse(&g.encode()), Some(g));
    }

    #[test]
    fn note_round_trips_as_one_line() {
        let g = Greeting::Note("overlayfs mount refused (EPERM),\nusing unionfs-fuse".into());
        assert_eq!(
            Greeting::parse(&g.encode()),
            Some(Greeting::Note(
                "overlayfs mount refused (EPERM), using unionfs-fuse".into()
            ))
        );
    }

    #[test]
    fn failure_stays_one_line() {
        let g = Greeting::Failed("a\nb".into());
        assert_eq!(g.encode(), "failed a b\n");
        assert_eq!(
            Greeting::parse(&g.encode()),
            Some(Greeting::Failed("a b".into()))
        );
    }

    #[test]
    fn garbled_greetings_are_rejected() {
        for bad in [
            "",
            "ready\n",
            "ready 0 ab 1\n",
            "ready -3 ab 1\n",
            "ready 5 ab\n",
            "ready 5 ab 1\n",
            "ready 5 ab 1 bwrap\n",
            "ready 5 ab 1 bwrap nonsense\n",
            "ready 5 ab 1 bwrap bwrap extra\n",
            "ready 5 ab 1 bwrap bwrap",
            "hello\n",
        ] {
            assert_eq!(Greeting::parse(bad), None, "{bad:?}");
        }
    }
}
