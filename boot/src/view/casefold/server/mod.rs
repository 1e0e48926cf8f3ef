//! The casefold file system: a passthrough of the writable view below, whose lookups
//! ignore case and whose names keep it. Every operation goes to the object below through
//! the descriptors of `inodes`; names go through `names` first:
//!
//! ```text
//! lookup/create/mkdir/unlink/rename "save.dat" in dir D
//!   1. "save.dat" on disk in D?            yes -> that entry (an exact match wins)
//!   2. D's names by fold (cached; kept in step with the view's own changes, and
//!      listed again when D's mtime/ctime show any other change)
//!        "save.dat" -> "Save.DAT"          -> that entry: opened, written, removed
//!   3. none                                -> ENOENT, or created as "save.dat"
//! ```
//!
//! Kernel caching: every writer of the view writes through this one mount (all instances
//! share it), so the kernel may keep entries, attributes, pages and listings long. The one
//! exception is a name that differs from the real one (`data.pak` for `Data.PAK`): its
//! entry is not cached, and when an operation by such a name removes or replaces a real
//! name, the kernel is told to drop the real name's entry too (from another thread: the
//! kernel holds the directory's lock until the operation is answered).
//!
//! This file answers the kernel; `entries` does the name-level work, `attr` the
//! attributes.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::Below;
use super::ahead::WalkAhead;
use super::inodes::{Inodes, Node};
use super::listing::DirListing;
use super::names::DirNames;
use super::sys::{self, Make, Result, io_errno};

mod attr;
mod backing;
mod entries;

use attr::{attr, dot_attr, timespec};
use backing::Backing;
use entries::Change;

/// How long the kernel may trust an entry or attributes: every change comes through here.
const TTL: Duration = Duration::from_secs(3600);
/// An entry by a name that differs from the real one is checked on every use.
const NO_TTL: Duration = Duration::ZERO;
/// Listings kept at most; beyond it the cache starts over.
const MAX_LISTINGS: usize = 4096;
/// Marks the handle of an open that has no descriptor of its own (a read-only open passed
/// through by its node's `O_PATH` descriptor); other handles are descriptors' numbers.
const BY_PATH: u64 = 1 << 62;

/// A directory's listing, shared by the calls that read it.
type Listing = Arc<DirListing>;

/// The casefold file system over the view whose root is `root`.
pub struct CasefoldFs {
    inodes: Inodes,
    /// Folded names by directory node.
    names: Mutex<HashMap<u64, Arc<DirNames>>>,
    /// Listings being read, by directory node and handle (taken when read from the start,
    /// dropped at their end or release).
    listings: Mutex<HashMap<(u64, u64), Listing>>,
    next_dir: AtomicU64,
    next_by_path: AtomicU64,
    /// Whether the kernel takes `ENOSYS` from `opendir` to mean "stop sending it" (it then
    /// opens directories itself, listings cached, and sends no `releasedir`): two round
    /// trips saved per directory listed.
    no_opendir: bool,
    /// File contents passed through to the files below, where the kernel allows it.
    backing: Backing,
    /// The descriptors of open files, by handle (the descriptor's number). Closed at
    /// `release`, or with the server when the kernel never sent it: a view taken down
    /// while files were open (its releases still queued) would otherwise leave them open,
    /// and they hold the view below, whose backend then cannot end.
    open_files: Mutex<HashMap<u64, OwnedFd>>,
    /// Entries the kernel must drop, sent to the thread that tells it.
    stale: Mutex<Sender<(u64, Vec<u8>)>>,
    /// Who the server is: an object made for another caller is given to the caller.
    own: (u32, u32),
    /// The server's umask, which the kernel already applied for the caller.
    umask: u32,
    /// The view's path in the server's mount namespace, to name directories in debug lines.
    shown_root: PathBuf,
    /// Collisions already named under `FIM_DEBUG`: (directory node, folded name).
    named: Mutex<HashSet<(u64, Vec<u8>)>>,
    /// What the view below is: whether a close must be passed on.
    below: Below,
    /// Warms the view below for the subdirectories of what the kernel lists.
    ahead: WalkAhead,
}

impl CasefoldFs {
    /// Serves the view whose root directory is `root` (an `O_PATH` descriptor).
    pub fn new(
        root: OwnedFd,
        shown_root: &Path,
        stale: Sender<(u64, Vec<u8>)>,
        below: Below,
        walk_ahead_budget: usize,
    ) -> Result<Self> {
        let st = sys::stat_fd(&root)?;
        // SAFETY: umask only swaps the process's mask; it is put back at once.
        let umask = unsafe {
            let old = libc::umask(0o022);
            libc::umask(old);
            old
        };
        Ok(CasefoldFs {
            inodes: Inodes::new(root, (st.st_dev, st.st_ino)),
            names: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
            next_dir: AtomicU64::new(1),
            next_by_path: AtomicU64::new(BY_PATH),
            no_opendir: false,
            backing: Backing::default(),
            open_files: Mutex::new(HashMap::new()),
            stale: Mutex::new(stale),
            own: (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            ),
            umask,
            shown_root: shown_root.to_path_buf(),
            named: Mutex::new(HashSet::new()),
            below,
            ahead: WalkAhead::start(walk_ahead_budget),
        })
    }

    /// The table of open files; one poisoned by a panic elsewhere is still whole (each
    /// change is one call).
    fn open_files(&self) -> MutexGuard<'_, HashMap<u64, OwnedFd>> {
        self.open_files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn node(&self, ino: INodeNo) -> Result<Arc<Node>> {
        self.inodes.get(ino.0)
    }

    /// Hands the descriptor of a new open of node `ino` to the kernel as its file handle,
    /// with the node's backing id (from `register` if it has none) where contents pass
    /// through.
    fn hand_over(
        &self,
        ino: u64,
        fd: OwnedFd,
        register: impl FnOnce(&OwnedFd) -> std::io::Result<fuser::BackingId>,
    ) -> (FileHandle, Option<Arc<fuser::BackingId>>) {
        let handle = fd.as_raw_fd() as u64;
        let passed = self.backing.attach(ino, handle, false, || register(&fd));
        self.open_files().insert(handle, fd);
        (FileHandle(handle), passed)
    }

    /// The descriptor of the open `fh` of node `ino`, and what keeps it open for the call:
    /// its own, or for an open passed through by its node's path, one opened for the call
    /// (the kernel sends such an open nearly nothing: no reads, writes or flushes).
    fn opened(
        &self,
        ino: INodeNo,
        fh: FileHandle,
    ) -> Result<(ManuallyDrop<File>, Option<OwnedFd>)> {
        let for_the_call = match fh.0 & BY_PATH {
            0 => None,
            _ => Some(sys::reopen(&self.node(ino)?.fd, libc::O_RDONLY)?),
        };
        let fd = for_the_call
            .as_ref()
            .map_or(sys::raw(fh.0), |fd| fd.as_raw_fd());
        // SAFETY: a descriptor this server keeps in `open_files` until release, or the
        // one opened for the call, returned beside it.
        Ok((
            ManuallyDrop::new(unsafe { File::from_raw_fd(fd) }),
            for_the_call,
        ))
    }
}

/// The handle of an open that has a descriptor of its own.
fn own(fh: Option<FileHandle>) -> Option<FileHandle> {
    fh.filter(|fh| fh.0 & BY_PATH == 0)
}

fn answer(reply: ReplyEmpty, result: Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for CasefoldFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for flag in [
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_MAX_PAGES,
        ] {
            let _ = config.add_capabilities(flag);
        }
        self.no_opendir = config
            .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        // Registering a backing file takes the host's root (CAP_SYS_ADMIN in the initial
        // user namespace); anyone else would only pay for the deeper stack. The view below
        // is one level deep (a kernel overlay over the layers' FUSE mount), so this mount
        // is two: nothing can be stacked on it.
        if nix::unistd::geteuid().is_root()
            && crate::session::namespaces::mapped_uids() == u64::from(u32::MAX)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok()
        {
            self.backing.enable();
            crate::debug::log("casefold: file contents pass through to the view below");
        } else {
            crate::debug::log(
                "casefold: file contents go through the server (passthrough needs the host's root and a kernel that has it)",
            );
        }
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.as_bytes();
        let result = (|| {
            let dir = self.node(parent)?;
            match self.enter(&dir, name) {
                Err(e) if e == Errno::ENOENT => {}
                other => return other.map(|a| (a, TTL)),
            }
            let real = self.folded(parent.0, &dir, name)?.ok_or(Errno::ENOENT)?;
            self.enter(&dir, &real)
                .map(|a| (a, Self::entry_ttl(name, &real)))
        })();
        match result {
            Ok((a, entry_ttl)) => reply.entry_with_ttls(&TTL, &entry_ttl, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let result = match own(fh) {
            Some(fh) => self
                .opened(ino, fh)
                .and_then(|(f, _keep)| sys::stat_fd(&*f)),
            None => self.node(ino).and_then(|n| sys::stat_fd(&n.fd)),
        };
        match result {
            Ok(st) => reply.attr(&TTL, &attr(ino.0, &st)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let fh = own(fh);
        let result = (|| {
            let node = self.node(ino)?;
            let path = sys::proc_path(&node.fd);
            // SAFETY (each call below): valid descriptors and C strings.
            if let Some(mode) = mode {
                sys::check(unsafe { libc::chmod(path.as_ptr(), mode & 0o7777) }.into())?;
            }
            if uid.is_some() || gid.is_some() {
                sys::check(
                    unsafe {
                        libc::fchownat(
                            node.fd.as_raw_fd(),
                            c"".as_ptr(),
                            uid.unwrap_or(u32::MAX),
                            gid.unwrap_or(u32::MAX),
                            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                        )
                    }
                    .into(),
                )?;
            }
            if let Some(size) = size {
                let size = size as libc::off_t;
                sys::check(match fh {
                    Some(fh) => unsafe { libc::ftruncate(sys::raw(fh.0), size) }.into(),
                    None => unsafe { libc::truncate(path.as_ptr(), size) }.into(),
                })?;
            }
            if atime.is_some() || mtime.is_some() {
                let times = [timespec(atime), timespec(mtime)];
                sys::check(match fh {
                    Some(fh) => unsafe { libc::futimens(sys::raw(fh.0), times.as_ptr()) }.into(),
                    None => {
                        unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) }
                            .into()
                    }
                })?;
            }
            sys::stat_fd(&node.fd)
        })();
        match result {
            Ok(st) => reply.attr(&TTL, &attr(ino.0, &st)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = self.node(ino).and_then(|node| {
            let mut buf = vec![0u8; libc::PATH_MAX as usize];
            // SAFETY: valid descriptor, C string and buffer of that length.
            let n = sys::check(unsafe {
                libc::readlinkat(
                    node.fd.as_raw_fd(),
                    c"".as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            } as libc::c_long)?;
            buf.truncate(n as usize);
            Ok(buf)
        });
        match result {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.make(req, parent, name, Make::Node(mode, rdev.into()), reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.make(req, parent, name, Make::Dir(mode), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(reply, self.remove(parent, name.as_bytes(), 0));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(
            reply,
            self.remove(parent, name.as_bytes(), libc::AT_REMOVEDIR),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = link_name.as_bytes();
        let result = (|| {
            let dir = self.node(parent)?;
            if self.real_name(parent.0, &dir, name)?.is_some() {
                return Err(Errno::EEXIST);
            }
            sys::make(&dir.fd, name, Make::Symlink(target.as_os_str().as_bytes()))?;
            self.changed(parent.0, &dir, Change::Added(name));
            self.settle_new(req, &dir, name, None);
            self.enter(&dir, name)
        })();
        match result {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        answer(
            reply,
            self.rename_entry(
                parent,
                name.as_bytes(),
                newparent,
                newname.as_bytes(),
                flags,
            ),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let result = self.node(ino).and_then(|node| {
            let dir = self.node(newparent)?;
            let name = newname.as_bytes();
            if self.real_name(newparent.0, &dir, name)?.is_some() {
                return Err(Errno::EEXIST);
            }
            sys::make(&dir.fd, name, Make::Link(&node.fd))?;
            self.changed(newparent.0, &dir, Change::Added(name));
            self.enter(&dir, name)
        });
        match result {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let flags = flags.0 & !(libc::O_NOFOLLOW | libc::O_CREAT | libc::O_EXCL);
        let node = match self.node(ino) {
            Ok(node) => node,
            Err(e) => return reply.error(e),
        };
        // Read-only (nothing to truncate): the kernel opens the file below itself, from
        // the path of the node's descriptor, when it takes that as the backing file.
        if flags & (libc::O_ACCMODE | libc::O_TRUNC) == libc::O_RDONLY {
            let handle = self.next_by_path.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = self
                .backing
                .attach(ino.0, handle, true, || reply.open_backing(&node.fd))
            {
                return reply.opened_passthrough(
                    FileHandle(handle),
                    FopenFlags::FOPEN_NOFLUSH,
                    &id,
                );
            }
        }
        let fd = match sys::reopen(&node.fd, flags) {
            Ok(fd) => fd,
            Err(e) => return reply.error(e),
        };
        // A close of a file opened for reading has nothing to pass on to the view below
        // (this server takes no locks: the kernel keeps them): no FLUSH trip for it.
        let no_flush = if flags & libc::O_ACCMODE == libc::O_RDONLY {
            FopenFlags::FOPEN_NOFLUSH
        } else {
            FopenFlags::empty()
        };
        let (handle, passed) = self.hand_over(ino.0, fd, |fd| reply.open_backing(fd));
        match passed {
            Some(id) => reply.opened_passthrough(handle, no_flush, &id),
            None => reply.opened(handle, FopenFlags::FOPEN_KEEP_CACHE | no_flush),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (file, _for_the_call) = match self.opened(ino, fh) {
            Ok(opened) => opened,
            Err(e) => return reply.error(e),
        };
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(io_errno(e)),
            }
        }
        reply.data(&buf[..done]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self
            .opened(ino, fh)
            .and_then(|(f, _keep)| f.write_all_at(data, offset).map_err(io_errno))
        {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if self.below == Below::QuietClose {
            // Nothing to pass on: the kernel stops sending flushes for this mount.
            return reply.error(Errno::ENOSYS);
        }
        if fh.0 & BY_PATH != 0 {
            // Opened nothing below: nothing to pass on for this open.
            return reply.ok();
        }
        // A close of a duplicate: what the view below does on close (a FUSE backend's
        // flush) happens now, with its error.
        // SAFETY: dup of an open descriptor; the duplicate is closed at once.
        let result = sys::check(unsafe { libc::dup(sys::raw(fh.0)) }.into())
            .and_then(|dup| sys::check(unsafe { libc::close(dup as i32) }.into()));
        answer(reply, result.map(drop));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Before the descriptor closes: its number may be reused by the next open.
        self.backing.detach(ino.0, fh.0);
        // Closed once the table is free again: a close may wait on the view below.
        let closed = self.open_files().remove(&fh.0);
        drop(closed);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.opened(ino, fh).and_then(|(file, _keep)| {
            if datasync {
                file.sync_data()
            } else {
                file.sync_all()
            }
            .map_err(io_errno)
        });
        answer(reply, result);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir {
            return reply.error(Errno::ENOSYS);
        }
        match self.node(ino) {
            Ok(_) => reply.opened(
                FileHandle(self.next_dir.fetch_add(1, Ordering::Relaxed)),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = match self.listing(ino, fh, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let mut index = offset as usize;
        while index < listing.entries.len() + 2 {
            let full = match index {
                0 => reply.add(ino, 1, FileType::Directory, "."),
                1 => reply.add(ino, 2, FileType::Directory, ".."),
                _ => {
                    let entry = &listing.entries[index - 2];
                    reply.add(
                        INodeNo(entry.ino),
                        index as u64 + 1,
                        entry.kind,
                        OsStr::from_bytes(&entry.name),
                    )
                }
            };
            if full {
                break;
            }
            index += 1;
        }
        if offset as usize >= listing.entries.len() + 2 {
            // The kernel reads until an empty answer: this listing has been read.
            self.listing_done(ino, fh);
        }
        reply.ok();
    }

    /// A listing with each entry's attributes, so a walk (`find`, `ls -l`) needs no
    /// lookup per entry. Every entry sent counts as a lookup of its node, as the kernel
    /// counts it; the kernel takes no node from `.` and `..`, whose attributes are only
    /// their kind.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listing = match self.listing(ino, fh, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let dir = match self.node(ino) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let mut index = offset as usize;
        while index < listing.entries.len() + 2 {
            let next = index as u64 + 1;
            let full = match index {
                0 | 1 => {
                    let name = if index == 0 { "." } else { ".." };
                    reply.add(ino, next, name, &NO_TTL, &dot_attr(ino), Generation(0))
                }
                _ => {
                    let name = &listing.entries[index - 2].name;
                    let entered = match listing.take_opened(index - 2) {
                        Some(fd) => self.enter_opened(fd),
                        None => self.enter(&dir, name),
                    };
                    match entered {
                        Ok(a) => {
                            let full = reply.add(
                                a.ino,
                                next,
                                OsStr::from_bytes(name),
                                &TTL,
                                &a,
                                Generation(0),
                            );
                            if full {
                                // Not sent: the kernel will not count it.
                                self.inodes.forget(a.ino.0, 1);
                            }
                            full
                        }
                        // Gone since the listing: left out, as a new listing would.
                        Err(e) if e == Errno::ENOENT => false,
                        // Anything else (out of descriptors, an I/O error) is not hidden as
                        // a missing entry: the first entry reports it; after others, the
                        // listing stops here and the kernel's next call from this offset
                        // reports it.
                        Err(e) if index == offset as usize => return reply.error(e),
                        Err(_) => true,
                    }
                }
            };
            if full {
                break;
            }
            index += 1;
        }
        if offset as usize >= listing.entries.len() + 2 {
            // The kernel reads until an empty answer: this listing has been read.
            self.listing_done(ino, fh);
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.listing_done(ino, fh);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let result = self.node(ino).and_then(|node| {
            // SAFETY: zeroes are a valid `statvfs`; valid descriptor.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            sys::check(unsafe { libc::fstatvfs(node.fd.as_raw_fd(), &mut st) }.into())?;
            Ok(st)
        });
        match result {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let result = self.xattr_path(ino).and_then(|path| {
            let name = sys::c(name.as_bytes())?;
            // SAFETY: valid C strings and buffer.
            sys::check(
                unsafe {
                    libc::setxattr(
                        path.as_ptr(),
                        name.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        flags,
                    )
                }
                .into(),
            )
            .map(drop)
        });
        answer(reply, result);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let result = self.xattr_path(ino).and_then(|path| {
            let name = sys::c(name.as_bytes())?;
            let mut buf = vec![0u8; size as usize];
            // SAFETY: valid C strings and a buffer of that length (none when size is 0).
            let n = sys::check(unsafe {
                libc::getxattr(
                    path.as_ptr(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            } as libc::c_long)?;
            buf.truncate(n as usize);
            Ok((n, buf))
        });
        xattr_answer(reply, size, result);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let result = self.xattr_path(ino).and_then(|path| {
            let mut buf = vec![0u8; size as usize];
            // SAFETY: valid C string and a buffer of that length (none when size is 0).
            let n = sys::check(unsafe {
                libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            } as libc::c_long)?;
            buf.truncate(n as usize);
            Ok((n, buf))
        });
        xattr_answer(reply, size, result);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.xattr_path(ino).and_then(|path| {
            let name = sys::c(name.as_bytes())?;
            // SAFETY: valid C strings.
            sys::check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }.into()).map(drop)
        });
        answer(reply, result);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The kernel checks the mode bits (default_permissions).
        answer(reply, self.node(ino).map(drop));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name.as_bytes();
        let result = (|| {
            let dir = self.node(parent)?;
            let real = self.real_name(parent.0, &dir, name)?;
            let existed = real.is_some();
            let real = real.unwrap_or_else(|| name.to_vec());
            let fd = sys::open_at(&dir.fd, &real, flags | libc::O_CREAT, mode)?;
            if !existed {
                self.changed(parent.0, &dir, Change::Added(&real));
                self.settle_new(req, &dir, &real, Some(mode));
            }
            if real != name {
                // The kernel now holds `name` for this file; the real name stays right.
                self.drop_entry(parent.0, &real);
            }
            let a = self.enter(&dir, &real)?;
            Ok((a, fd, Self::entry_ttl(name, &real)))
        })();
        let (a, fd, ttl) = match result {
            Ok(created) => created,
            Err(e) => return reply.error(e),
        };
        let (handle, passed) = self.hand_over(a.ino.0, fd, |fd| reply.open_backing(fd));
        match passed {
            Some(id) => {
                reply.created_passthrough(&ttl, &a, Generation(0), handle, FopenFlags::empty(), &id)
            }
            None => reply.created(
                &ttl,
                &a,
                Generation(0),
                handle,
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = self.opened(ino, fh).and_then(|(file, _keep)| {
            // SAFETY: an open descriptor.
            sys::check(
                unsafe {
                    libc::fallocate(
                        file.as_raw_fd(),
                        mode,
                        offset as libc::off_t,
                        length as libc::off_t,
                    )
                }
                .into(),
            )
        });
        answer(reply, result.map(drop));
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let result = self.opened(ino, fh).and_then(|(file, _keep)| {
            // SAFETY: an open descriptor.
            sys::check(unsafe { libc::lseek(file.as_raw_fd(), offset, whence) })
        });
        match result {
            Ok(pos) => reply.offset(pos),
            Err(e) => reply.error(e),
        }
    }
}

fn xattr_answer(reply: ReplyXattr, size: u32, result: Result<(libc::c_long, Vec<u8>)>) {
    match result {
        Ok((n, _)) if size == 0 => reply.size(n as u32),
        Ok((_, data)) => reply.data(&data),
        Err(e) => reply.error(e),
    }
}
