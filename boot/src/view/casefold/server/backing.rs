//! File contents without a trip through the server. Where the kernel offers FUSE
//! passthrough and lets this server register backing files (it asks for CAP_SYS_ADMIN in
//! the host's user namespace, so a session run by root), an open file of the casefold view
//! is tied to the file the server opened below: reads, writes and mappings go straight to
//! it, and the view costs nothing on contents. Otherwise (a user's session, an older
//! kernel) every read and write is a request, as before.
//!
//! The kernel wants one backing file per node while any open of it lasts (a different one
//! fails that open), and an open that is not passed through beside one that is fails too.
//! So a backing id is shared by every open of a node, each open handle holds it until its
//! release, and passthrough is turned off for the whole mount only when the very first
//! registration is refused, before any node depends on it.
//!
//! The kernel opens a backing file of its own for every open it passes through (from the
//! registered file's path, with the open's flags), so the registered descriptor only names
//! the file. Where the kernel takes the node's `O_PATH` descriptor for it, a read-only open
//! registers that one and opens nothing below: no second open through the view below (a
//! trip to a FUSE backend and its release). A kernel that refuses it is asked no more, and
//! opens register a descriptor opened for them, as before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use fuser::BackingId;

use crate::debug;

/// Backing ids of open files, by node and by handle.
#[derive(Default)]
pub struct Backing {
    /// Whether the kernel took passthrough at `init` and no registration was refused.
    enabled: AtomicBool,
    /// Whether any registration succeeded (then a refusal is not a refusal of the mount).
    proven: AtomicBool,
    /// Whether the kernel refused a node's `O_PATH` descriptor as a backing file.
    path_refused: AtomicBool,
    ids: Mutex<Ids>,
}

#[derive(Default)]
struct Ids {
    by_handle: HashMap<u64, Arc<BackingId>>,
    by_node: HashMap<u64, Weak<BackingId>>,
}

impl Backing {
    /// Called at `init` when the kernel accepted passthrough.
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// The backing id for the open `handle` of node `ino`: the node's current one, or a
    /// new one from `register`. `None` when contents go through the server. With
    /// `by_path`, `register` offers the node's `O_PATH` descriptor, and `None` also means
    /// the kernel refused that (it is then not asked again): the caller registers an open
    /// descriptor instead.
    pub fn attach(
        &self,
        ino: u64,
        handle: u64,
        by_path: bool,
        register: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.enabled.load(Ordering::Relaxed)
            || (by_path && self.path_refused.load(Ordering::Relaxed))
        {
            return None;
        }
        let mut ids = self.ids.lock().ok()?;
        let id = match ids.by_node.get(&ino).and_then(Weak::upgrade) {
            Some(id) => id,
            None => match register() {
                Ok(id) => {
                    self.proven.store(true, Ordering::Relaxed);
                    let id = Arc::new(id);
                    ids.by_node.insert(ino, Arc::downgrade(&id));
                    id
                }
                Err(e) => {
                    if by_path {
                        self.path_refused.store(true, Ordering::Relaxed);
                    } else if !self.proven.load(Ordering::Relaxed) {
                        self.enabled.store(false, Ordering::Relaxed);
                    }
                    debug::log(format!(
                        "casefold: backing file refused (by path: {by_path}): {e}"
                    ));
                    return None;
                }
            },
        };
        ids.by_handle.insert(handle, id.clone());
        Some(id)
    }

    /// The open `handle` of node `ino` was released: its hold on the backing id ends, and
    /// the node's entry with the last one.
    pub fn detach(&self, ino: u64, handle: u64) {
        let Ok(mut ids) = self.ids.lock() else {
            return;
        };
        if ids.by_handle.remove(&handle).is_some()
            && ids
                .by_node
                .get(&ino)
                .is_some_and(|id| id.strong_count() == 0)
        {
            ids.by_node.remove(&ino);
        }
    }
}
