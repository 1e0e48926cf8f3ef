//! The name-level work of the casefold file system: which real name a name means in a
//! directory, the directory's folded names kept in step with the view's own changes,
//! collisions named under `FIM_DEBUG`, and the operations that change names (make,
//! remove, rename), each by real names only.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Generation, INodeNo, RenameFlags, ReplyEntry, Request,
};

use super::attr::attr;
use super::{CasefoldFs, Listing, MAX_LISTINGS, NO_TTL, TTL};
use crate::debug;
use crate::view::casefold::fold::fold;
use crate::view::casefold::inodes::Node;
use crate::view::casefold::listing::{self, DirListing, Entry};
use crate::view::casefold::names::{DirNames, Stamp};
use crate::view::casefold::sys::{self, Make, Result};

impl CasefoldFs {
    /// The real name of `name` in the directory `dir`: itself if it is there, else the
    /// entry whose name folds alike; `None` if neither is.
    pub(super) fn real_name(
        &self,
        dir_id: u64,
        dir: &Node,
        name: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        match sys::stat_at(&dir.fd, name) {
            Ok(_) => Ok(Some(name.to_vec())),
            Err(e) if e == Errno::ENOENT => self.folded(dir_id, dir, name),
            Err(e) => Err(e),
        }
    }

    /// The entry of `dir` whose name folds like `name`, which is not there itself.
    pub(super) fn folded(&self, dir_id: u64, dir: &Node, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let names = self.names_of(dir_id, dir)?;
        let Some(found) = names.resolve(name) else {
            return Ok(None);
        };
        if let Some(all) = found.collision {
            self.name_collision(dir_id, dir, name, found.real, all);
        }
        Ok(Some(found.real.to_vec()))
    }

    /// The folded names of `dir`, from the cache while the directory is unchanged.
    pub(super) fn names_of(&self, dir_id: u64, dir: &Node) -> Result<Arc<DirNames>> {
        let st = sys::stat_fd(&dir.fd)?;
        let stamp = stamp(&st);
        let cached = self
            .names
            .lock()
            .map_err(|_| Errno::EIO)?
            .get(&dir_id)
            .cloned();
        if let Some(names) = cached.filter(|n| n.stamp == stamp) {
            return Ok(names);
        }
        // Listed without the lock: other directories' lookups go on meanwhile.
        let entries = self.read_listing(dir)?;
        let names = Arc::new(DirNames::new(stamp, entries.into_iter().map(|e| e.name)));
        let mut cache = self.names.lock().map_err(|_| Errno::EIO)?;
        if cache.len() >= MAX_LISTINGS {
            cache.clear();
        }
        cache.insert(dir_id, names.clone());
        Ok(names)
    }

    /// Records in the folded names of `dir` that this view just added or removed `name`.
    pub(super) fn changed(&self, dir_id: u64, dir: &Node, change: Change) {
        let Ok(mut cache) = self.names.lock() else {
            return;
        };
        let stamp = sys::stat_fd(&dir.fd).map(|st| stamp(&st));
        match (cache.get_mut(&dir_id), stamp) {
            (Some(names), Ok(stamp)) => {
                let names = Arc::make_mut(names);
                match change {
                    Change::Added(name) => names.add(stamp, name),
                    Change::Removed(name) => names.remove(stamp, name),
                }
            }
            _ => {
                cache.remove(&dir_id);
            }
        }
    }

    /// Under `FIM_DEBUG`, names (once) a directory's entries that differ only by case.
    pub(super) fn name_collision(
        &self,
        dir_id: u64,
        dir: &Node,
        asked: &[u8],
        chosen: &[u8],
        all: &[Vec<u8>],
    ) {
        if !debug::enabled() {
            return;
        }
        let fresh = self
            .named
            .lock()
            .is_ok_and(|mut named| named.insert((dir_id, fold(asked))));
        if !fresh {
            return;
        }
        let path = std::fs::read_link(Path::new(OsStr::from_bytes(
            sys::proc_path(&dir.fd).as_bytes(),
        )))
        .ok()
        .and_then(|p| p.strip_prefix(&self.shown_root).ok().map(Path::to_path_buf))
        .map_or_else(|| "?".to_string(), |p| format!("/{}", p.display()));
        let names: Vec<String> = all
            .iter()
            .map(|n| format!("{:?}", String::from_utf8_lossy(n)))
            .collect();
        debug::log(format!(
            "casefold: {path} holds {} that differ only by case; {:?} opens {:?} (the byte-wise smallest)",
            names.join(", "),
            String::from_utf8_lossy(asked),
            String::from_utf8_lossy(chosen),
        ));
    }

    /// Asks the kernel to drop its entry `name` in `dir_id`.
    pub(super) fn drop_entry(&self, dir_id: u64, name: &[u8]) {
        if let Ok(stale) = self.stale.lock() {
            let _ = stale.send((dir_id, name.to_vec()));
        }
    }

    /// Counts a lookup of `name` in `dir` (which is there) and returns its node and
    /// attributes.
    pub(super) fn enter(&self, dir: &Node, name: &[u8]) -> Result<FileAttr> {
        self.enter_opened(sys::open_path(&dir.fd, name)?)
    }

    /// Counts a lookup of the object `fd` (an `O_PATH` descriptor) and returns its node
    /// and attributes.
    pub(super) fn enter_opened(&self, fd: OwnedFd) -> Result<FileAttr> {
        let st = sys::stat_fd(&fd)?;
        let id = self.inodes.looked_up(fd, (st.st_dev, st.st_ino))?;
        Ok(attr(id, &st))
    }

    /// The entry TTL of an answer for `asked` when the real name is `real`.
    pub(super) fn entry_ttl(asked: &[u8], real: &[u8]) -> Duration {
        if asked == real { TTL } else { NO_TTL }
    }

    /// After making `name` in `dir` for `req`: its mode as asked (the server's own umask
    /// may have taken bits), and its owner the caller, as a kernel overlay would make it.
    pub(super) fn settle_new(&self, req: &Request, dir: &Node, name: &[u8], mode: Option<u32>) {
        if let Some(mode) = mode
            && mode & self.umask & 0o7777 != 0
        {
            let _ = sys::chmod_at(&dir.fd, name, mode & 0o7777);
        }
        let caller = (req.uid(), req.gid());
        if caller != self.own {
            // A set-group-id directory gives its group, as it does to any creator.
            let sgid = sys::stat_fd(&dir.fd).is_ok_and(|st| st.st_mode & libc::S_ISGID != 0);
            let gid = if sgid { u32::MAX } else { caller.1 };
            let _ = sys::chown_at(&dir.fd, name, caller.0, gid);
        }
    }

    /// Makes a directory or node `name` in `parent` (never beside an entry that folds
    /// alike) and answers with it.
    pub(super) fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        what: Make,
        reply: ReplyEntry,
    ) {
        let mode = match what {
            Make::Dir(mode) | Make::Node(mode, _) => Some(mode),
            _ => None,
        };
        let name = name.as_bytes();
        let result = (|| {
            let dir = self.node(parent)?;
            if self.real_name(parent.0, &dir, name)?.is_some() {
                return Err(Errno::EEXIST);
            }
            sys::make(&dir.fd, name, what)?;
            self.changed(parent.0, &dir, Change::Added(name));
            self.settle_new(req, &dir, name, mode);
            self.enter(&dir, name)
        })();
        match result {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    /// Removes `name` (by its real name) from `parent`.
    pub(super) fn remove(&self, parent: INodeNo, name: &[u8], flags: i32) -> Result<()> {
        let dir = self.node(parent)?;
        let real = self.real_name(parent.0, &dir, name)?.ok_or(Errno::ENOENT)?;
        sys::unlink(&dir.fd, &real, flags)?;
        self.changed(parent.0, &dir, Change::Removed(&real));
        if real != name {
            self.drop_entry(parent.0, &real);
        }
        Ok(())
    }

    /// Renames by real names: the source is found whatever its case; a target that folds
    /// like an entry there replaces that entry (no second entry differing by case),
    /// unless it is the source itself, when only the case changes.
    pub(super) fn rename_entry(
        &self,
        parent: INodeNo,
        name: &[u8],
        newparent: INodeNo,
        newname: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        let from = self.node(parent)?;
        let to = self.node(newparent)?;
        let real = self
            .real_name(parent.0, &from, name)?
            .ok_or(Errno::ENOENT)?;
        let target = match self.real_name(newparent.0, &to, newname)? {
            Some(t) if parent == newparent && t == real && t != newname => newname.to_vec(),
            Some(t) => t,
            None => newname.to_vec(),
        };
        if parent == newparent && target == real {
            return Ok(());
        }
        sys::rename(&from.fd, &real, &to.fd, &target, flags.bits())?;
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            // Both names stay; what they name is swapped.
        } else {
            self.changed(parent.0, &from, Change::Removed(&real));
            self.changed(newparent.0, &to, Change::Added(&target));
        }
        if real != name {
            self.drop_entry(parent.0, &real);
        }
        if target != newname {
            self.drop_entry(newparent.0, &target);
            self.drop_entry(newparent.0, newname);
        }
        Ok(())
    }

    /// The listing of directory `ino` read through handle `fh` (0 for every reader when
    /// the kernel opens directories itself), taken when it is read from the start: the
    /// one the walker ahead prepared while the directory is unchanged, else listed now.
    pub(super) fn listing(&self, ino: INodeNo, fh: FileHandle, offset: u64) -> Result<Listing> {
        let key = (ino.0, fh.0);
        if offset > 0
            && let Some(l) = self.listings.lock().ok().and_then(|l| l.get(&key).cloned())
        {
            return Ok(l);
        }
        let node = self.node(ino)?;
        let now = stamp(&sys::stat_fd(&node.fd)?);
        let listing = match self.ahead.take(node.key, now) {
            Some(listing) => listing,
            None => DirListing::new(self.read_listing(&node)?),
        };
        let listing: Listing = Arc::new(listing);
        self.ahead.listed(
            &node,
            listing
                .entries
                .iter()
                .filter(|e| e.kind == FileType::Directory)
                .map(|e| e.name.as_slice()),
        );
        if let Ok(mut listings) = self.listings.lock() {
            // Listings a reader left unfinished are not kept for ever.
            if listings.len() >= MAX_LISTINGS {
                listings.clear();
            }
            listings.insert(key, listing.clone());
        }
        Ok(listing)
    }

    /// The entries of the directory `dir` in the view below, listed now.
    fn read_listing(&self, dir: &Node) -> Result<Vec<Entry>> {
        listing::read(&dir.fd)
    }

    /// The listing of `ino` read through `fh` is finished or released.
    pub(super) fn listing_done(&self, ino: INodeNo, fh: FileHandle) {
        if let Ok(mut listings) = self.listings.lock() {
            listings.remove(&(ino.0, fh.0));
        }
    }

    /// The path for an xattr call on node `ino`; a symlink's xattrs are not reachable
    /// through it (the path would follow the link).
    pub(super) fn xattr_path(&self, ino: INodeNo) -> Result<std::ffi::CString> {
        let node = self.node(ino)?;
        let st = sys::stat_fd(&node.fd)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(Errno::from_i32(libc::ENOTSUP));
        }
        Ok(sys::proc_path(&node.fd))
    }
}

/// A change this view made to a directory.
pub(super) enum Change<'a> {
    Added(&'a [u8]),
    Removed(&'a [u8]),
}

/// When a directory last changed.
pub(super) fn stamp(st: &libc::stat) -> Stamp {
    (st.st_mtime, st.st_mtime_nsec, st.st_ctime, st.st_ctime_nsec)
}
