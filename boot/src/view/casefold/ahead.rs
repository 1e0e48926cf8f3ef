//! Walking ahead of a walk. A cold `find` over the casefold view waits, for each
//! directory, first on this server and then, inside the server's own listing and lookups,
//! on the view below (a kernel overlay over the layers' FUSE mount): one trip behind the
//! other, while the second core idles. When the kernel lists a directory of the view, this
//! walker lists its subdirectories in the view below on a thread of its own and opens
//! their entries (`O_PATH`), so that when the kernel lists one of them the server answers
//! from what is prepared: no listing and no open of its own, a `stat` per entry.
//!
//! How far ahead: the subdirectories of a directory the kernel lists, one level. A walk
//! that stops (an `ls`) costs one level of its children, never a whole tree. (Going two
//! levels while a walk goes on was slower: the walker then works where the walk is not
//! yet, on the same two cores.) Which first: the subdirectories of the newest listing,
//! from its last: a depth-first walk goes through them from the first, so the two meet
//! in the middle instead of racing for the same directory. A directory is claimed by
//! whoever lists it first: the server waits for a listing the walker is making rather
//! than making its own, and the walker leaves alone a directory the server listed.
//! Bounded: `MAX_PENDING` directories to walk, `MAX_PREPARED` listings and a share of the
//! descriptor limit held, the oldest dropped first. A prepared listing is used only while
//! its directory's stamp (mtime, ctime) is unchanged, and each entry is `stat`ed when
//! used, so what the app sees is what the view below holds then.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::inodes::Node;
use super::listing::{self, DirListing, Entry};
use super::names::Stamp;
use crate::debug;

/// Directories waiting to be walked, at most.
const MAX_PENDING: usize = 4096;
/// Listings prepared and not taken, at most.
const MAX_PREPARED: usize = 1024;
/// Directories remembered, at most (then those done are forgotten).
const MAX_WALKED: usize = 1 << 16;
/// How long the server waits for a listing the walker is making, at most.
const WAIT: Duration = Duration::from_millis(100);

/// A subdirectory to walk: the directory the kernel listed, and the name in it.
type Pending = (Arc<Node>, Vec<u8>);

/// A directory's listing, made when its stamp was `stamp`.
struct Prepared {
    stamp: Stamp,
    listing: DirListing,
    held: usize,
}

/// Where a directory is, for the walker.
enum Dir {
    /// The walker is listing it.
    Walking,
    /// Listed, waiting for the kernel's listing.
    Prepared(Prepared),
    /// Listed by the server, taken by it, or dropped: not to be walked again.
    Done,
}

#[derive(Default)]
struct State {
    pending: VecDeque<Pending>,
    /// Every directory the walker or the server listed, by key.
    dirs: HashMap<(u64, u64), Dir>,
    /// Prepared directories, oldest first (some may have been taken since).
    order: VecDeque<(u64, u64)>,
    /// How many directories are prepared.
    prepared: usize,
    /// Descriptors held by prepared listings.
    held: usize,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when there is something to walk, or the walker is to stop.
    wake: Condvar,
    /// Signalled when a listing in progress is done.
    done: Condvar,
    /// Descriptors prepared listings may hold together.
    budget: usize,
}

/// The walker; it stops when this is dropped (with the file system).
pub struct WalkAhead {
    shared: Option<Arc<Shared>>,
}

impl WalkAhead {
    /// Starts the walker's thread, whose listings may hold `budget` descriptors; without
    /// a thread (it could not start), nothing is walked ahead.
    pub fn start(budget: usize) -> WalkAhead {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
            budget,
        });
        let theirs = shared.clone();
        match std::thread::Builder::new()
            .name("casefold-ahead".into())
            .spawn(move || run(&theirs))
        {
            Ok(_) => WalkAhead {
                shared: Some(shared),
            },
            Err(e) => {
                debug::log(format!("casefold: no walking ahead: {e}"));
                WalkAhead { shared: None }
            }
        }
    }

    /// The kernel listed `dir`, whose subdirectories are `subdirs` in listing order.
    pub fn listed<'a>(&self, dir: &Arc<Node>, subdirs: impl Iterator<Item = &'a [u8]>) {
        let Some(shared) = &self.shared else {
            return;
        };
        let Ok(mut state) = shared.state.lock() else {
            return;
        };
        if state.add(dir, subdirs) {
            shared.wake.notify_one();
        }
    }

    /// The prepared listing of the directory `key`, if its stamp is still `stamp`; one
    /// the walker is making is waited for (up to `WAIT`). Without one, the directory is
    /// the caller's to list: the walker leaves it alone.
    pub fn take(&self, key: (u64, u64), stamp: Stamp) -> Option<DirListing> {
        let shared = self.shared.as_ref()?;
        let mut state = shared.state.lock().ok()?;
        let deadline = Instant::now() + WAIT;
        while matches!(state.dirs.get(&key), Some(Dir::Walking)) {
            let left = deadline.checked_duration_since(Instant::now())?;
            state = shared.done.wait_timeout(state, left).ok()?.0;
        }
        match state.remove(key) {
            Some(prepared) if prepared.stamp == stamp => Some(prepared.listing),
            Some(_) => {
                debug::log(
                    "casefold: a listing made ahead is stale (its directory changed since): listed again",
                );
                None
            }
            None => {
                state.claim(key, Dir::Done);
                None
            }
        }
    }
}

impl Drop for WalkAhead {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared
            && let Ok(mut state) = shared.state.lock()
        {
            // The prepared listings' descriptors close now, not when the last node goes.
            *state = State {
                closed: true,
                ..State::default()
            };
            shared.wake.notify_one();
        }
    }
}

impl State {
    /// Adds the subdirectories of `dir` to walk, to be taken from the last listed, before
    /// any added earlier; whether any was added.
    fn add<'a>(&mut self, dir: &Arc<Node>, subdirs: impl Iterator<Item = &'a [u8]>) -> bool {
        let before = self.pending.len();
        // Taken from the back: the last listed is taken first.
        for name in subdirs {
            self.pending.push_back((dir.clone(), name.to_vec()));
        }
        let added = self.pending.len() != before;
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_front();
        }
        added
    }

    /// The next subdirectory to walk.
    fn take(&mut self) -> Option<Pending> {
        self.pending.pop_back()
    }

    /// Claims the directory `key` for whoever lists it, as `claim`, if neither the walker
    /// nor the server listed it yet.
    fn claim(&mut self, key: (u64, u64), claim: Dir) -> bool {
        if self.dirs.len() >= MAX_WALKED {
            self.dirs.retain(|_, d| !matches!(d, Dir::Done));
        }
        if self.dirs.contains_key(&key) {
            return false;
        }
        self.dirs.insert(key, claim);
        true
    }

    /// Keeps the listing of `key`; the oldest go beyond `MAX_PREPARED`.
    fn keep(&mut self, key: (u64, u64), prepared: Prepared) {
        self.held += prepared.held;
        self.prepared += 1;
        if let Some(Dir::Prepared(old)) = self.dirs.insert(key, Dir::Prepared(prepared)) {
            self.held -= old.held;
            self.prepared -= 1;
        }
        self.order.push_back(key);
        while self.prepared > MAX_PREPARED {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.remove(oldest);
        }
        // Keys taken since they were kept are not kept in the order for ever.
        if self.order.len() > 2 * MAX_PREPARED {
            let dirs = &self.dirs;
            self.order
                .retain(|k| matches!(dirs.get(k), Some(Dir::Prepared(_))));
        }
    }

    /// The listing of `key`, if it is prepared; the directory is then done.
    fn remove(&mut self, key: (u64, u64)) -> Option<Prepared> {
        let dir = self.dirs.get_mut(&key)?;
        if !matches!(dir, Dir::Prepared(_)) {
            return None;
        }
        let Dir::Prepared(prepared) = std::mem::replace(dir, Dir::Done) else {
            return None;
        };
        self.held -= prepared.held;
        self.prepared -= 1;
        Some(prepared)
    }
}

fn run(shared: &Shared) {
    loop {
        let (dir, name) = {
            let Ok(mut state) = shared.state.lock() else {
                return;
            };
            loop {
                if state.closed {
                    return;
                }
                if let Some(next) = state.take() {
                    break next;
                }
                state = match shared.wake.wait(state) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
        };
        walk(shared, &dir, &name);
    }
}

/// Prepares the listing of the directory `name` of `dir`. An error ends the walk of that
/// directory: the server lists it itself when asked.
fn walk(shared: &Shared, dir: &Node, name: &[u8]) {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let Ok(fd) = nix::fcntl::openat(&dir.fd, name, flags, Mode::empty()) else {
        return;
    };
    let Ok(st) = nix::sys::stat::fstat(&fd) else {
        return;
    };
    let key = (st.st_dev, st.st_ino);
    let room = {
        let Ok(mut state) = shared.state.lock() else {
            return;
        };
        if !state.claim(key, Dir::Walking) {
            return;
        }
        shared.budget.saturating_sub(state.held)
    };
    let _landed = Landed { shared, key };
    let stamp = (st.st_mtime, st.st_mtime_nsec, st.st_ctime, st.st_ctime_nsec);
    let Ok(entries) = listing::read(&fd) else {
        return;
    };
    let opened = open_entries(&fd, &entries, room);
    let held = opened.iter().flatten().count();
    let Ok(mut state) = shared.state.lock() else {
        return;
    };
    // Kept before the claim ends (`_landed`, dropped after this guard): a waiting server
    // finds it.
    if state.closed {
        return;
    }
    state.keep(
        key,
        Prepared {
            stamp,
            listing: DirListing::opened(entries, opened),
            held,
        },
    );
}

/// Ends the walker's claim on a directory, listed or not, and wakes whoever waits for it.
struct Landed<'a> {
    shared: &'a Shared,
    key: (u64, u64),
}

impl Drop for Landed<'_> {
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock()
            && let Some(dir) = state.dirs.get_mut(&self.key)
            && matches!(dir, Dir::Walking)
        {
            *dir = Dir::Done;
        }
        self.shared.done.notify_all();
    }
}

/// `O_PATH` descriptors of the first `room` entries of the directory `dir`.
fn open_entries(dir: &impl AsFd, entries: &[Entry], room: usize) -> Vec<Option<OwnedFd>> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    entries
        .iter()
        .take(room)
        .map(|e| nix::fcntl::openat(dir, e.name.as_slice(), flags, Mode::empty()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuser::FileType;

    fn node(path: &std::path::Path) -> Arc<Node> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .expect("open");
        Arc::new(Node { fd, key: (0, 0) })
    }

    fn shared(budget: usize) -> Shared {
        Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
            budget,
        }
    }

    fn stamp_of(path: &std::path::Path) -> ((u64, u64), Stamp) {
        let st = nix::sys::stat::lstat(path).expect("stat");
        (
            (st.st_dev, st.st_ino),
            (st.st_mtime, st.st_mtime_nsec, st.st_ctime, st.st_ctime_nsec),
        )
    }

    fn names(state: &mut State) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| state.take().map(|p| p.1)).collect()
    }

    #[test]
    fn the_last_listed_of_the_newest_listing_is_taken_first() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = node(tmp.path());
        let mut state = State::default();
        assert!(state.add(&dir, [&b"a"[..], b"b"].into_iter()));
        assert!(state.add(&dir, [&b"a1"[..], b"a2"].into_iter()));
        assert!(!state.add(&dir, std::iter::empty()));
        assert_eq!(names(&mut state), [&b"a2"[..], b"a1", b"b", b"a"]);
    }

    #[test]
    fn the_oldest_pending_are_dropped_beyond_the_limit() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = node(tmp.path());
        let mut state = State::default();
        let all: Vec<Vec<u8>> = (0..MAX_PENDING + 2)
            .map(|i| i.to_string().into_bytes())
            .collect();
        state.add(&dir, all.iter().map(Vec::as_slice));
        assert_eq!(state.pending.len(), MAX_PENDING);
        assert_eq!(state.take().map(|p| p.1), all.last().cloned());
        // The first two listed were dropped.
        assert_eq!(
            state.pending.front().map(|p| p.1.clone()),
            Some(all[2].clone())
        );
    }

    #[test]
    fn a_directory_is_walked_once() {
        let mut state = State::default();
        assert!(state.claim((1, 2), Dir::Walking));
        assert!(!state.claim((1, 2), Dir::Walking));
        assert!(!state.claim((1, 2), Dir::Done));
    }

    #[test]
    fn a_walk_prepares_a_listing_with_its_entries_opened_within_the_budget() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("Game/Sub")).expect("mkdir");
        for f in ["a", "b", "c"] {
            std::fs::write(tmp.path().join("Game").join(f), b"x").expect("write");
        }
        let shared = shared(2);
        walk(&shared, &node(tmp.path()), b"Game");
        let (key, stamp) = stamp_of(&tmp.path().join("Game"));
        let mut state = shared.state.lock().expect("lock");
        assert_eq!(state.held, 2);
        // One level: its subdirectory is left to the kernel's listing of it.
        assert!(names(&mut state).is_empty());
        let prepared = state.remove(key).expect("prepared");
        assert_eq!(state.held, 0);
        assert_eq!(prepared.stamp, stamp);
        let listing = prepared.listing;
        assert_eq!(listing.entries.len(), 4);
        let opened = (0..4).filter(|&i| listing.take_opened(i).is_some()).count();
        assert_eq!(opened, 2);
    }

    #[test]
    fn a_listing_is_taken_once_and_only_while_its_directory_is_unchanged() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let game = tmp.path().join("Game");
        std::fs::create_dir(&game).expect("mkdir");
        let ahead = WalkAhead {
            shared: Some(Arc::new(shared(100))),
        };
        let inner = ahead.shared.as_ref().expect("shared");
        walk(inner, &node(tmp.path()), b"Game");
        let (key, stamp) = stamp_of(&game);
        assert!(ahead.take(key, stamp).is_some());
        assert!(ahead.take(key, stamp).is_none());
        // A change before it is taken makes it unusable.
        let other = tmp.path().join("Other");
        std::fs::create_dir(&other).expect("mkdir");
        walk(inner, &node(tmp.path()), b"Other");
        let (other_key, before) = stamp_of(&other);
        assert_eq!(inner.state.lock().expect("lock").prepared, 1);
        std::fs::write(other.join("new"), b"x").expect("write");
        let (_, after) = stamp_of(&other);
        assert_ne!(after, before);
        assert!(ahead.take(other_key, after).is_none());
        assert_eq!(inner.state.lock().expect("lock").prepared, 0);
    }

    #[test]
    fn a_directory_the_server_lists_itself_is_left_alone_by_the_walker() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("Game")).expect("mkdir");
        let ahead = WalkAhead {
            shared: Some(Arc::new(shared(100))),
        };
        let (key, stamp) = stamp_of(&tmp.path().join("Game"));
        assert!(ahead.take(key, stamp).is_none());
        let inner = ahead.shared.as_ref().expect("shared");
        walk(inner, &node(tmp.path()), b"Game");
        assert_eq!(inner.state.lock().expect("lock").prepared, 0);
    }

    #[test]
    fn the_server_waits_for_a_listing_in_progress() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ahead = WalkAhead {
            shared: Some(Arc::new(shared(100))),
        };
        let inner = ahead.shared.clone().expect("shared");
        let key = (7, 7);
        inner.state.lock().expect("lock").claim(key, Dir::Walking);
        let walker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let entry = Entry {
                ino: 1,
                kind: FileType::RegularFile,
                name: b"f".to_vec(),
            };
            let fd = nix::fcntl::open(tmp.path(), OFlag::O_PATH, Mode::empty()).expect("open");
            let mut state = inner.state.lock().expect("lock");
            let listing = DirListing::opened(vec![entry], vec![Some(fd)]);
            let stamp = (1, 2, 3, 4);
            state.keep(
                key,
                Prepared {
                    stamp,
                    listing,
                    held: 1,
                },
            );
            drop(state);
            drop(Landed {
                shared: &inner,
                key,
            });
        });
        let listing = ahead.take(key, (1, 2, 3, 4)).expect("waited for it");
        assert_eq!(listing.entries.len(), 1);
        walker.join().expect("walker");
    }

    #[test]
    fn prepared_listings_beyond_the_limit_drop_the_oldest_and_free_their_budget() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut state = State::default();
        for i in 0..MAX_PREPARED as u64 + 1 {
            let fd = nix::fcntl::open(tmp.path(), OFlag::O_PATH, Mode::empty()).expect("open");
            let listing = DirListing::opened(Vec::new(), vec![Some(fd)]);
            state.keep(
                (1, i),
                Prepared {
                    stamp: (0, 0, 0, 0),
                    listing,
                    held: 1,
                },
            );
        }
        assert_eq!(state.prepared, MAX_PREPARED);
        assert_eq!(state.held, MAX_PREPARED);
        assert!(matches!(state.dirs.get(&(1, 0)), Some(Dir::Done)));
        assert!(matches!(state.dirs.get(&(1, 1)), Some(Dir::Prepared(_))));
    }

    #[test]
    fn the_walker_prepares_what_the_kernel_listed_and_stops_when_dropped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for d in ["a", "b"] {
            std::fs::create_dir(tmp.path().join(d)).expect("mkdir");
        }
        let ahead = WalkAhead::start(100);
        let dir = node(tmp.path());
        ahead.listed(&dir, [&b"a"[..], b"b"].into_iter());
        let shared = ahead.shared.clone().expect("thread");
        let prepared = || shared.state.lock().map(|s| s.prepared).unwrap_or(0);
        for _ in 0..200 {
            if prepared() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(prepared(), 2);
        drop(ahead);
        assert!(shared.state.lock().map(|s| s.closed).unwrap_or(false));
        assert_eq!(prepared(), 0);
    }
}
