//! The casefold file system: a passthrough of the writable view below, whose lookups
//! ignore case and whose names keep it. Every operation goes to the object below through
//! the descriptors of `inodes`; names go through `names` first:
//!
//! ```text
//! lookup/create/mkdir/unlink/rename "save.dat" in dir D
//!   1. "save.dat" on disk in D?            yes -> that entry (an exact match wins)
//!   2. D's names by fold (cached, rebuilt when D's mtime/ctime change)
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

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::fold::fold;
use super::inodes::{Inodes, Node};
use super::names::{DirNames, Stamp};
use super::sys::{self, Make, Result};
use crate::debug;

/// How long the kernel may trust an entry or attributes: every change comes through here.
const TTL: Duration = Duration::from_secs(3600);
/// An entry by a name that differs from the real one is checked on every use.
const NO_TTL: Duration = Duration::ZERO;
/// Listings kept at most; beyond it the cache starts over.
const MAX_LISTINGS: usize = 4096;

/// One directory entry of a listing: inode number, kind, name.
type Listing = Arc<Vec<(u64, FileType, Vec<u8>)>>;

/// The casefold file system over the view whose root is `root`.
pub struct CasefoldFs {
    inodes: Inodes,
    /// Folded names by directory node.
    names: Mutex<HashMap<u64, Arc<DirNames>>>,
    /// Open directories' listings, by handle (taken at the first `readdir`).
    listings: Mutex<HashMap<u64, Listing>>,
    next_dir: AtomicU64,
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
}

impl CasefoldFs {
    /// Serves the view whose root directory is `root` (an `O_PATH` descriptor).
    pub fn new(root: OwnedFd, shown_root: &Path, stale: Sender<(u64, Vec<u8>)>) -> Result<Self> {
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
            stale: Mutex::new(stale),
            own: (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            ),
            umask,
            shown_root: shown_root.to_path_buf(),
            named: Mutex::new(HashSet::new()),
        })
    }

    fn node(&self, ino: INodeNo) -> Result<Arc<Node>> {
        self.inodes.get(ino.0)
    }

    /// The real name of `name` in the directory `dir`: itself if it is there, else the
    /// entry whose name folds alike; `None` if neither is.
    fn real_name(&self, dir_id: u64, dir: &Node, name: &[u8]) -> Result<Option<Vec<u8>>> {
        match sys::stat_at(&dir.fd, name) {
            Ok(_) => Ok(Some(name.to_vec())),
            Err(e) if e == Errno::ENOENT => self.folded(dir_id, dir, name),
            Err(e) => Err(e),
        }
    }

    /// The entry of `dir` whose name folds like `name`, which is not there itself.
    fn folded(&self, dir_id: u64, dir: &Node, name: &[u8]) -> Result<Option<Vec<u8>>> {
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
    fn names_of(&self, dir_id: u64, dir: &Node) -> Result<Arc<DirNames>> {
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
        let entries = std::fs::read_dir(Path::new(OsStr::from_bytes(
            sys::proc_path(&dir.fd).as_bytes(),
        )))
        .map_err(io_errno)?;
        let names = Arc::new(DirNames::new(
            stamp,
            entries.filter_map(|e| e.ok().map(|e| e.file_name().as_bytes().to_vec())),
        ));
        let mut cache = self.names.lock().map_err(|_| Errno::EIO)?;
        if cache.len() >= MAX_LISTINGS {
            cache.clear();
        }
        cache.insert(dir_id, names.clone());
        Ok(names)
    }

    /// Records in the folded names of `dir` that this view just added or removed `name`.
    fn changed(&self, dir_id: u64, dir: &Node, change: Change) {
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
    fn name_collision(
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
    fn drop_entry(&self, dir_id: u64, name: &[u8]) {
        if let Ok(stale) = self.stale.lock() {
            let _ = stale.send((dir_id, name.to_vec()));
        }
    }

    /// Counts a lookup of `name` in `dir` (which is there) and returns its node and
    /// attributes.
    fn enter(&self, dir: &Node, name: &[u8]) -> Result<FileAttr> {
        let fd = sys::open_path(&dir.fd, name)?;
        let st = sys::stat_fd(&fd)?;
        let id = self.inodes.looked_up(fd, (st.st_dev, st.st_ino))?;
        Ok(attr(id, &st))
    }

    /// The entry TTL of an answer for `asked` when the real name is `real`.
    fn entry_ttl(asked: &[u8], real: &[u8]) -> Duration {
        if asked == real { TTL } else { NO_TTL }
    }

    /// After making `name` in `dir` for `req`: its mode as asked (the server's own umask
    /// may have taken bits), and its owner the caller, as a kernel overlay would make it.
    fn settle_new(&self, req: &Request, dir: &Node, name: &[u8], mode: Option<u32>) {
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
    fn make(&self, req: &Request, parent: INodeNo, name: &OsStr, what: Make, reply: ReplyEntry) {
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
}

/// A change this view made to a directory.
enum Change<'a> {
    Added(&'a [u8]),
    Removed(&'a [u8]),
}

/// When a directory last changed.
fn stamp(st: &libc::stat) -> Stamp {
    (st.st_mtime, st.st_mtime_nsec, st.st_ctime, st.st_ctime_nsec)
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// The attributes of node `id`, whose object's `stat` is `st`.
fn attr(id: u64, st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(id),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: kind(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let (sec, nsec) = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
                Err(e) => {
                    let d = e.duration();
                    let (s, n) = (-(d.as_secs() as i64), i64::from(d.subsec_nanos()));
                    if n == 0 {
                        (s, 0)
                    } else {
                        (s - 1, 1_000_000_000 - n)
                    }
                }
            };
            libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            }
        }
    }
}

/// An open file, by its handle (the raw descriptor), without taking ownership.
fn open_file(fh: FileHandle) -> ManuallyDrop<File> {
    // SAFETY: the handle is a descriptor this server opened and keeps open until release.
    ManuallyDrop::new(unsafe { File::from_raw_fd(sys::raw(fh.0)) })
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
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_MAX_PAGES,
        ] {
            let _ = config.add_capabilities(flag);
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
        let result = match fh {
            Some(fh) => sys::stat_fd(&*open_file(fh)),
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
        match self.node(ino).and_then(|n| sys::reopen(&n.fd, flags)) {
            Ok(fd) => reply.opened(FileHandle(fd_handle(fd)), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = open_file(fh);
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
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match open_file(fh).write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(io_errno(e)),
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
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // SAFETY: the handle is a descriptor opened by `open`/`create`, released once.
        drop(unsafe { OwnedFd::from_raw_fd(sys::raw(fh.0)) });
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let file = open_file(fh);
        let result = if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        };
        answer(reply, result.map_err(io_errno));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
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
        while index < listing.len() + 2 {
            let full = match index {
                0 => reply.add(ino, 1, FileType::Directory, "."),
                1 => reply.add(ino, 2, FileType::Directory, ".."),
                _ => {
                    let (d_ino, kind, name) = &listing[index - 2];
                    reply.add(
                        INodeNo(*d_ino),
                        index as u64 + 1,
                        *kind,
                        OsStr::from_bytes(name),
                    )
                }
            };
            if full {
                break;
            }
            index += 1;
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        if let Ok(mut listings) = self.listings.lock() {
            listings.remove(&fh.0);
        }
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
        match result {
            Ok((a, fd, ttl)) => reply.created(
                &ttl,
                &a,
                Generation(0),
                FileHandle(fd_handle(fd)),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // SAFETY: an open descriptor.
        let result = sys::check(
            unsafe {
                libc::fallocate(
                    sys::raw(fh.0),
                    mode,
                    offset as libc::off_t,
                    length as libc::off_t,
                )
            }
            .into(),
        );
        answer(reply, result.map(drop));
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        // SAFETY: an open descriptor.
        match sys::check(unsafe { libc::lseek(sys::raw(fh.0), offset, whence) }) {
            Ok(pos) => reply.offset(pos),
            Err(e) => reply.error(e),
        }
    }
}

/// A descriptor handed to the kernel as a file handle, owned by it until `release`.
fn fd_handle(fd: OwnedFd) -> u64 {
    std::os::fd::IntoRawFd::into_raw_fd(fd) as u64
}

fn xattr_answer(reply: ReplyXattr, size: u32, result: Result<(libc::c_long, Vec<u8>)>) {
    match result {
        Ok((n, _)) if size == 0 => reply.size(n as u32),
        Ok((_, data)) => reply.data(&data),
        Err(e) => reply.error(e),
    }
}

impl CasefoldFs {
    /// Removes `name` (by its real name) from `parent`.
    fn remove(&self, parent: INodeNo, name: &[u8], flags: i32) -> Result<()> {
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
    fn rename_entry(
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

    /// The listing of the open directory `fh`, taken when it is read from the start.
    fn listing(&self, ino: INodeNo, fh: FileHandle, offset: u64) -> Result<Listing> {
        if offset > 0
            && let Some(l) = self
                .listings
                .lock()
                .ok()
                .and_then(|l| l.get(&fh.0).cloned())
        {
            return Ok(l);
        }
        let node = self.node(ino)?;
        let entries = std::fs::read_dir(Path::new(OsStr::from_bytes(
            sys::proc_path(&node.fd).as_bytes(),
        )))
        .map_err(io_errno)?;
        let listing: Listing = Arc::new(
            entries
                .filter_map(|e| {
                    let e = e.ok()?;
                    let kind = e
                        .file_type()
                        .ok()
                        .and_then(FileType::from_std)
                        .unwrap_or(FileType::RegularFile);
                    Some((e.ino(), kind, e.file_name().as_bytes().to_vec()))
                })
                .collect(),
        );
        if let Ok(mut listings) = self.listings.lock() {
            listings.insert(fh.0, listing.clone());
        }
        Ok(listing)
    }

    /// The path for an xattr call on node `ino`; a symlink's xattrs are not reachable
    /// through it (the path would follow the link).
    fn xattr_path(&self, ino: INodeNo) -> Result<std::ffi::CString> {
        let node = self.node(ino)?;
        let st = sys::stat_fd(&node.fd)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(Errno::from_i32(libc::ENOTSUP));
        }
        Ok(sys::proc_path(&node.fd))
    }
}
