//! The greeting: the one line a session daemon sends on every connection, and the bytes a
//! launcher sends back. A launcher reads the greeting to learn whose namespaces to join;
//! the daemon counts its members by their open connections.
//!
//! ```text
//! daemon -> launcher:  note TEXT\n ...        things the user should know (zero or more)
//!                      progress DONE TOTAL\n ...   a long step's bytes (an extraction)
//!                      ready PID IDENTITY INSTANCES WANTED USED CASEFOLD(0|1) BWRAP NETWORK\n | failed WHY\n
//!                      ended WHY\n           (later, only when the session fails under its members)
//! launcher -> daemon:  L (leaving after a normal run: linger) | Q (make way, only member)
//! ```
//!
//! BWRAP is `FD:DIGEST` when the daemon holds the image's bwrap in a sealed memfd at
//! descriptor FD (DIGEST: the first 8 bytes of its BLAKE3, in hex), so a launcher runs
//! it from there instead of decompressing its own; `-` when it holds none. NETWORK is the
//! descriptor FD of the session's loopback-only network namespace (`network`), `-` when it
//! made none. A daemon of an older launcher sends no BWRAP word, or no NETWORK word.
//!
//! After `ready` the daemon is silent until the session ends under its members (the view's
//! FUSE server or backend stopped, or the daemon was told to stop): then it sends `ended`
//! and hangs up. A daemon that is killed just hangs up. Either way a launcher watching its
//! connection ends its app.

use std::io::Write;
use std::os::unix::net::UnixStream;

use fim_reserved::Overlay;

/// The first line a daemon sends on every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// The mounts are up. `pid` is the daemon (whose namespaces to join), `image` the
    /// identity of the layers it serves, `instances` the launchers connected, this one included.
    /// `wanted` is the backend the session was started for, `used` the one that mounted
    /// the view (they differ after a fallback). `casefold`: whether the casefold view is on.
    Ready {
        pid: i32,
        image: String,
        instances: u32,
        wanted: Overlay,
        used: Overlay,
        casefold: bool,
        /// The image's bwrap, held by the daemon for its launchers.
        bwrap: Option<HeldProgram>,
        /// The daemon's descriptor of the session's network namespace.
        network: Option<i32>,
    },
    /// The daemon could not set the session up; the text says why.
    Failed(String),
    /// Something the user should know, sent before `Ready` (one line).
    Note(String),
    /// How far a long step of the set-up is, in bytes; it also keeps the launcher waiting.
    Progress { done: u64, total: u64 },
    /// The session failed under its members and is ending; the text says why.
    Ended(String),
}

/// A program a daemon holds in a sealed memfd: the descriptor's number in the daemon, and
/// the first 8 bytes of the program's BLAKE3 (the image's tool table names it), in hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldProgram {
    pub fd: i32,
    pub digest: String,
}

impl HeldProgram {
    fn parse(word: &str) -> Option<Option<HeldProgram>> {
        if word == "-" {
            return Some(None);
        }
        let (fd, digest) = word.split_once(':')?;
        let fd = fd.parse().ok().filter(|fd| *fd > 2)?;
        let hex = digest.len() == 16 && digest.bytes().all(|b| b.is_ascii_hexdigit());
        hex.then(|| {
            Some(HeldProgram {
                fd,
                digest: digest.to_ascii_lowercase(),
            })
        })
    }
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
                casefold,
                bwrap,
                network,
            } => format!(
                "ready {pid} {image} {instances} {wanted} {used} {} {} {}\n",
                u8::from(*casefold),
                bwrap
                    .as_ref()
                    .map_or("-".to_string(), |b| format!("{}:{}", b.fd, b.digest)),
                network.map_or("-".to_string(), |fd| fd.to_string())
            ),
            // One line, whatever the message held.
            Greeting::Failed(why) => format!("failed {}\n", why.replace('\n', " ")),
            Greeting::Note(what) => format!("note {}\n", what.replace('\n', " ")),
            Greeting::Ended(why) => format!("ended {}\n", why.replace('\n', " ")),
            Greeting::Progress { done, total } => format!("progress {done} {total}\n"),
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
        if let Some(why) = line.strip_prefix("ended ") {
            return Some(Greeting::Ended(why.to_string()));
        }
        if let Some(numbers) = line.strip_prefix("progress ") {
            let (done, total) = numbers.split_once(' ')?;
            return Some(Greeting::Progress {
                done: done.parse().ok()?,
                total: total.parse().ok()?,
            });
        }
        let mut words = line.strip_prefix("ready ")?.split(' ');
        let pid = words.next()?.parse().ok().filter(|p| *p > 0)?;
        let image = words.next().filter(|w| !w.is_empty())?.to_string();
        let instances = words.next()?.parse().ok()?;
        let wanted = words.next()?.parse().ok()?;
        let used = words.next()?.parse().ok()?;
        let casefold = match words.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let bwrap = match words.next() {
            Some(word) => HeldProgram::parse(word)?,
            None => None,
        };
        let network = match words.next() {
            None | Some("-") => None,
            Some(word) => Some(word.parse().ok().filter(|fd: &i32| *fd >= 0)?),
        };
        words.next().is_none().then_some(Greeting::Ready {
            pid,
            image,
            instances,
            wanted,
            used,
            casefold,
            bwrap,
            network,
        })
    }
}

/// Byte a launcher sends when its app ended normally, just before it leaves.
pub const LEAVING: u8 = b'L';
/// Byte the only launcher sends to make a session whose layers changed go away.
pub const QUIT: u8 = b'Q';

/// Sends a greeting, ignoring a launcher that already went away.
pub fn send(stream: &mut UnixStream, greeting: &Greeting) {
    let _ = stream.write_all(greeting.encode().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::{Greeting, HeldProgram};
    use fim_reserved::Overlay;

    #[test]
    fn ready_round_trips() {
        let g = Greeting::Ready {
            pid: 42,
            image: "00ff".into(),
            instances: 3,
            wanted: Overlay::Bwrap,
            used: Overlay::Unionfs,
            casefold: true,
            bwrap: Some(HeldProgram {
                fd: 7,
                digest: "736e095701b58ae3".into(),
            }),
            network: Some(9),
        };
        assert_eq!(
            g.encode(),
            "ready 42 00ff 3 bwrap unionfs 1 7:736e095701b58ae3 9\n"
        );
        assert_eq!(Greeting::parse(&g.encode()), Some(g));
    }

    #[test]
    fn ready_without_a_held_bwrap_or_network_round_trips_and_an_older_daemons_ready_parses() {
        let g = Greeting::Ready {
            pid: 42,
            image: "00ff".into(),
            instances: 1,
            wanted: Overlay::Bwrap,
            used: Overlay::Bwrap,
            casefold: false,
            bwrap: None,
            network: None,
        };
        assert_eq!(g.encode(), "ready 42 00ff 1 bwrap bwrap 0 - -\n");
        assert_eq!(Greeting::parse(&g.encode()), Some(g.clone()));
        assert_eq!(
            Greeting::parse("ready 42 00ff 1 bwrap bwrap 0 -\n"),
            Some(g.clone())
        );
        assert_eq!(Greeting::parse("ready 42 00ff 1 bwrap bwrap 0\n"), Some(g));
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
    fn progress_round_trips_and_garbled_progress_is_rejected() {
        let g = Greeting::Progress {
            done: 5,
            total: 1 << 40,
        };
        assert_eq!(g.encode(), "progress 5 1099511627776\n");
        assert_eq!(Greeting::parse(&g.encode()), Some(g));
        for bad in [
            "progress\n",
            "progress 5\n",
            "progress a b\n",
            "progress -1 2\n",
        ] {
            assert_eq!(Greeting::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_end_of_a_session_round_trips_as_one_line() {
        let g = Greeting::Ended("fuse-overlayfs\nwas killed".into());
        assert_eq!(g.encode(), "ended fuse-overlayfs was killed\n");
        assert_eq!(
            Greeting::parse(&g.encode()),
            Some(Greeting::Ended("fuse-overlayfs was killed".into()))
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
            "ready 5 ab 1 bwrap bwrap\n",
            "ready 5 ab 1 bwrap bwrap 2\n",
            "ready 5 ab 1 bwrap bwrap 0 extra\n",
            "ready 5 ab 1 bwrap bwrap 0 - extra\n",
            "ready 5 ab 1 bwrap bwrap 0 - -1\n",
            "ready 5 ab 1 bwrap bwrap 0 - 3 extra\n",
            "ready 5 ab 1 bwrap bwrap 0 7\n",
            "ready 5 ab 1 bwrap bwrap 0 2:736e095701b58ae3\n",
            "ready 5 ab 1 bwrap bwrap 0 7:736e0957\n",
            "ready 5 ab 1 bwrap bwrap 0 7:736e095701b58aeg\n",
            "ready 5 ab 1 bwrap bwrap 1",
            "hello\n",
        ] {
            assert_eq!(Greeting::parse(bad), None, "{bad:?}");
        }
    }
}
