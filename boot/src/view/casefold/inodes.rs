//! The casefold view's inode table: the kernel's node ids, each bound to an `O_PATH`
//! descriptor of the object in the view below, counted as the kernel counts its
//! lookups.
//!
//! ```text
//! node id ──> Node { fd: O_PATH of the object below, key: (st_dev, st_ino) }
//! (st_dev, st_ino) ──> node id        one id per object below, hard links included
//! ```
//!
//! A node lives until the kernel forgets every lookup of it; the root (id 1) lives as
//! long as the view. An id is the object's own inode number when that is free (so `stat`
//! and `readdir` agree), else one from a private range.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use fuser::Errno;

/// The root's node id, fixed by FUSE.
pub const ROOT: u64 = 1;
/// Where ids start when an object's inode number is taken (or is the root's).
const PRIVATE_IDS: u64 = 1 << 60;

/// One object of the view below.
#[derive(Debug)]
pub struct Node {
    pub fd: OwnedFd,
    pub key: (u64, u64),
}

#[derive(Default)]
struct Table {
    by_id: HashMap<u64, (Arc<Node>, u64)>,
    by_key: HashMap<(u64, u64), u64>,
    next_private: u64,
}

/// Every node the kernel knows.
pub struct Inodes {
    table: Mutex<Table>,
}

impl Inodes {
    /// A table holding the root, `fd`, whose key is `key`.
    pub fn new(fd: OwnedFd, key: (u64, u64)) -> Inodes {
        let mut table = Table {
            next_private: PRIVATE_IDS,
            ..Table::default()
        };
        table.by_id.insert(ROOT, (Arc::new(Node { fd, key }), 1));
        table.by_key.insert(key, ROOT);
        Inodes {
            table: Mutex::new(table),
        }
    }

    pub fn get(&self, id: u64) -> Result<Arc<Node>, Errno> {
        let table = self.table.lock().map_err(|_| Errno::EIO)?;
        table
            .by_id
            .get(&id)
            .map(|(node, _)| node.clone())
            .ok_or(Errno::ESTALE)
    }

    /// Counts one lookup of the object `fd` (whose key is `key`) and returns its id; an
    /// object already known keeps its id and its descriptor (`fd` is closed).
    pub fn looked_up(&self, fd: OwnedFd, key: (u64, u64)) -> Result<u64, Errno> {
        let mut table = self.table.lock().map_err(|_| Errno::EIO)?;
        if let Some(&id) = table.by_key.get(&key)
            && let Some((_, lookups)) = table.by_id.get_mut(&id)
        {
            *lookups += 1;
            return Ok(id);
        }
        let id = if key.1 > ROOT && key.1 < PRIVATE_IDS && !table.by_id.contains_key(&key.1) {
            key.1
        } else {
            table.next_private += 1;
            table.next_private
        };
        table.by_id.insert(id, (Arc::new(Node { fd, key }), 1));
        table.by_key.insert(key, id);
        Ok(id)
    }

    /// The kernel forgot `count` lookups of `id`.
    pub fn forget(&self, id: u64, count: u64) {
        if id == ROOT {
            return;
        }
        let Ok(mut table) = self.table.lock() else {
            return;
        };
        let gone = match table.by_id.get_mut(&id) {
            Some((node, lookups)) => {
                *lookups = lookups.saturating_sub(count);
                (*lookups == 0).then_some(node.key)
            }
            None => None,
        };
        if let Some(key) = gone {
            table.by_id.remove(&id);
            if table.by_key.get(&key) == Some(&id) {
                table.by_key.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        std::fs::File::open("/").map(OwnedFd::from).expect("open /")
    }

    #[test]
    fn one_object_keeps_one_id_and_an_inode_number_that_is_free_is_the_id() {
        let t = Inodes::new(fd(), (1, 2));
        assert_eq!(t.looked_up(fd(), (1, 50)), Ok(50));
        assert_eq!(t.looked_up(fd(), (1, 50)), Ok(50));
    }

    #[test]
    fn a_taken_inode_number_gets_a_private_id() {
        let t = Inodes::new(fd(), (1, 2));
        assert_eq!(t.looked_up(fd(), (1, 50)), Ok(50));
        let other = t.looked_up(fd(), (9, 50)).expect("id");
        assert!(other > PRIVATE_IDS);
        // The root's inode number never becomes a node's id.
        assert!(t.looked_up(fd(), (9, ROOT)).expect("id") > PRIVATE_IDS);
    }

    #[test]
    fn a_node_lives_until_every_lookup_is_forgotten_and_the_root_forever() {
        let t = Inodes::new(fd(), (1, 2));
        let id = t.looked_up(fd(), (1, 50)).expect("id");
        let _ = t.looked_up(fd(), (1, 50));
        t.forget(id, 1);
        assert!(t.get(id).is_ok());
        t.forget(id, 1);
        assert_eq!(t.get(id).err(), Some(Errno::ESTALE));
        t.forget(ROOT, 100);
        assert!(t.get(ROOT).is_ok());
    }
}
