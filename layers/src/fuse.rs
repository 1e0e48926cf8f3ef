//! Serves a [`Stack`] as one read-only FUSE file system. Layers never change, so the kernel
//! may cache entries, attributes, directory listings and pages for as long as it likes.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};

use crate::error::LayerError;
use crate::format::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK};
use crate::stack::{Entry, Stack};

/// How long the kernel may trust what we told it: the layers are immutable.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A merged directory listing taken at `opendir`.
type Listing = Arc<Vec<(Vec<u8>, Entry)>>;

/// The FUSE file system over a stack of layers.
pub struct StackFs {
    stack: Arc<Stack>,
    /// Every entry reported as owned by this uid/gid instead of the stored owner.
    owner: Option<(u32, u32)>,
    /// Merged listings by directory. Layers are immutable, so a listing never goes stale;
    /// it is computed on the first `readdir`, not at `opendir`, which the kernel sends
    /// even when it serves the entries from its own cache.
    listings: Mutex<HashMap<u64, Listing>>,
    /// Whether any layer holds an xattr; without any, the xattr requests are declined
    /// for good (`ENOSYS`).
    xattrs: bool,
    /// Whether the kernel takes `ENOSYS` from `open` and `opendir` to mean "stop sending
    /// them" (it then opens files and directories itself, with the page cache kept and
    /// listings cached: what this server answers anyway), saving two round trips per
    /// open file or listed directory.
    no_open: bool,
    no_opendir: bool,
}

/// Listings kept at most; beyond it the cache starts over (cheap to recompute).
const MAX_LISTINGS: usize = 4096;

impl StackFs {
    pub fn new(stack: Arc<Stack>, owner: Option<(u32, u32)>) -> Self {
        StackFs {
            xattrs: stack.has_xattrs(),
            no_open: false,
            no_opendir: false,
            stack,
            owner,
            listings: Mutex::new(HashMap::new()),
        }
    }

    fn entry(&self, ino: INodeNo) -> Result<Entry, Errno> {
        self.stack.entry(ino.0).map_err(to_errno)
    }

    /// `stat` attributes, with the owner override applied.
    fn attr(&self, entry: &Entry) -> FileAttr {
        let mut a = attr(entry);
        if let Some((uid, gid)) = self.owner {
            a.uid = uid;
            a.gid = gid;
        }
        a
    }

    fn listing(&self, ino: INodeNo) -> Result<Listing, Errno> {
        if let Some(l) = self
            .listings
            .lock()
            .ok()
            .and_then(|m| m.get(&ino.0).cloned())
        {
            return Ok(l);
        }
        let listing: Listing = Arc::new(self.stack.read_dir(ino.0).map_err(to_errno)?);
        if let Ok(mut map) = self.listings.lock() {
            if map.len() >= MAX_LISTINGS {
                map.clear();
            }
            map.insert(ino.0, listing.clone());
        }
        Ok(listing)
    }
}

/// `SEEK_DATA`/`SEEK_HOLE` over a file's data runs, so tools can skip holes.
fn seek_data_or_hole(runs: &[(u64, u64)], size: u64, offset: i64, whence: i32) -> Result<i64, i32> {
    let Ok(start) = u64::try_from(offset) else {
        return Err(libc::ENXIO);
    };
    if start >= size {
        return Err(libc::ENXIO);
    }
    match whence {
        libc::SEEK_DATA => runs
            .iter()
            .find(|(at, len)| at + len > start)
            .map(|(at, _)| (*at).max(start) as i64)
            .ok_or(libc::ENXIO),
        libc::SEEK_HOLE => {
            let mut pos = start;
            for (at, len) in runs {
                if *at <= pos && pos < at + len {
                    pos = at + len;
                }
            }
            Ok(pos.min(size) as i64)
        }
        _ => Err(libc::EINVAL),
    }
}

fn to_errno(e: LayerError) -> Errno {
    Errno::from_i32(e.errno())
}

fn kind(mode: u32) -> FileType {
    match mode & S_IFMT {
        S_IFDIR => FileType::Directory,
        S_IFLNK => FileType::Symlink,
        S_IFCHR => FileType::CharDevice,
        S_IFBLK => FileType::BlockDevice,
        S_IFIFO => FileType::NamedPipe,
        S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// `stat` attributes of a merged-tree object.
pub fn attr(entry: &Entry) -> FileAttr {
    let i = &entry.inode;
    let mtime = if i.mtime_sec >= 0 {
        UNIX_EPOCH + Duration::new(i.mtime_sec as u64, i.mtime_nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(i.mtime_sec.unsigned_abs())
            + Duration::from_nanos(u64::from(i.mtime_nsec))
    };
    let size = match i.mode & S_IFMT {
        S_IFREG | S_IFLNK => i.size,
        S_IFDIR => 4096,
        _ => 0,
    };
    let rdev = match i.mode & S_IFMT {
        S_IFCHR | S_IFBLK => i.a as u32,
        _ => 0,
    };
    FileAttr {
        ino: INodeNo(entry.id),
        size,
        blocks: size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: kind(i.mode),
        perm: (i.mode & 0o7777) as u16,
        nlink: i.nlink.max(1),
        uid: i.uid,
        gid: i.gid,
        rdev,
        blksize: 4096,
        flags: 0,
    }
}

impl Filesystem for StackFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each capability is optional: an older kernel simply keeps its defaults.
        for flag in [
            InitFlags::FUSE_ASYNC_READ,
            // Listings always with attributes (no `FUSE_READDIRPLUS_AUTO`, which sends
            // plain READDIRs after a directory's first chunk): they come from the same
            // merged listing, and each entry left out costs a LOOKUP when the kernel
            // overlay (or the casefold view above it) stats it.
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_MAX_PAGES,
        ] {
            let _ = config.add_capabilities(flag);
        }
        self.no_open = config
            .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
            .is_ok();
        self.no_opendir = config
            .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.stack.lookup(parent.0, name.as_bytes()) {
            Ok(Some(entry)) => reply.entry(&TTL, &self.attr(&entry), Generation(0)),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.entry(ino) {
            Ok(entry) => reply.attr(&TTL, &self.attr(&entry)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self
            .entry(ino)
            .and_then(|e| self.stack.read_link(&e).map_err(to_errno))
        {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        if self.no_open {
            return reply.error(Errno::ENOSYS);
        }
        match self.entry(ino) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let entry = match self.entry(ino) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        // Most reads lie in one block: answered from the cached block, with no buffer to
        // fill and no copy besides the kernel's.
        match self.stack.read_in_place(&entry, offset, size as usize) {
            Ok(Some((block, range))) => return reply.data(&block[range]),
            Ok(None) => {}
            Err(e) => return reply.error(to_errno(e)),
        }
        let want = (size as u64).min(entry.inode.size.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; want];
        match self.stack.read(&entry, offset, &mut buf) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let entry = match self.entry(ino) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let runs = match self.stack.data_runs(&entry) {
            Ok(r) => r,
            Err(e) => return reply.error(to_errno(e)),
        };
        match seek_data_or_hole(&runs, entry.inode.size, offset, whence) {
            Ok(pos) => reply.offset(pos),
            Err(errno) => reply.error(Errno::from_i32(errno)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir {
            return reply.error(Errno::ENOSYS);
        }
        match self.entry(ino) {
            Ok(e) if e.inode.is_dir() => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = match self.listing(ino) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let dots = [(b".".as_slice(), ino.0, FileType::Directory); 2];
        let mut index = offset as usize;
        while index < listing.len() + 2 {
            let full = if index < 2 {
                let (name, id, kind) = dots[index];
                let name = if index == 0 { name } else { b".." };
                reply.add(INodeNo(id), index as u64 + 1, kind, OsStr::from_bytes(name))
            } else {
                let (name, entry) = &listing[index - 2];
                reply.add(
                    INodeNo(entry.id),
                    index as u64 + 1,
                    kind(entry.inode.mode),
                    OsStr::from_bytes(name),
                )
            };
            if full {
                break;
            }
            index += 1;
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listing = match self.listing(ino) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let this = match self.entry(ino) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let mut index = offset as usize;
        while index < listing.len() + 2 {
            let full = if index < 2 {
                let name: &[u8] = if index == 0 { b"." } else { b".." };
                reply.add(
                    INodeNo(this.id),
                    index as u64 + 1,
                    OsStr::from_bytes(name),
                    &TTL,
                    &self.attr(&this),
                    Generation(0),
                )
            } else {
                let (name, entry) = &listing[index - 2];
                reply.add(
                    INodeNo(entry.id),
                    index as u64 + 1,
                    OsStr::from_bytes(name),
                    &TTL,
                    &self.attr(entry),
                    Generation(0),
                )
            };
            if full {
                break;
            }
            index += 1;
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.stack.stored_bytes().div_ceil(4096);
        let files = self.stack.inode_total();
        reply.statfs(blocks, 0, 0, files, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if !self.xattrs {
            // The kernel then stops asking: without this, the kernel overlay above asks
            // for `user.overlay.metacopy` on every file it looks up, and every exec for
            // `security.capability`, one round trip each.
            return reply.error(Errno::ENOSYS);
        }
        let xattrs = match self
            .entry(ino)
            .and_then(|e| self.stack.xattrs(&e).map_err(to_errno))
        {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        match xattrs.iter().find(|(n, _)| n.as_slice() == name.as_bytes()) {
            None => reply.error(Errno::NO_XATTR),
            Some((_, value)) if size == 0 => reply.size(value.len() as u32),
            Some((_, value)) if value.len() > size as usize => reply.error(Errno::ERANGE),
            Some((_, value)) => reply.data(value),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        let xattrs = match self
            .entry(ino)
            .and_then(|e| self.stack.xattrs(&e).map_err(to_errno))
        {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let mut names = Vec::new();
        for (name, _) in &xattrs {
            names.extend_from_slice(name);
            names.push(0);
        }
        if size == 0 {
            reply.size(names.len() as u32);
        } else if names.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(&names);
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Permission bits are checked by the kernel (default_permissions); only refuse writes.
        if mask.contains(AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        match self.entry(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// Mount settings for [`mount`].
#[derive(Debug, Clone, Default)]
pub struct MountSettings {
    /// Let other users (root included) see the mount; needs `user_allow_other` for non-root.
    pub allow_other: bool,
    /// Worker threads answering the kernel; 0 means one per CPU.
    pub threads: usize,
    /// Report every entry as owned by this uid/gid. A user namespace maps only the
    /// invoking user, and the kernel overlay cannot copy up a file whose owner is not
    /// mapped, so the launcher presents the whole tree as owned by that one identity.
    pub owner: Option<(u32, u32)>,
}

fn config(settings: &MountSettings) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("fim".into()),
        MountOption::Subtype("fim".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    if settings.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    let threads = if settings.threads == 0 {
        crate::reader::cpu_count()
    } else {
        settings.threads
    };
    config.n_threads = Some(threads.max(2));
    config.clone_fd = true;
    config
}

/// Mounts `stack` read-only at `mountpoint`; the caller runs the session (`run`) and may
/// take an unmounter first (`unmount_callable`) to end it from another thread.
pub fn session(
    stack: Arc<Stack>,
    mountpoint: &Path,
    settings: &MountSettings,
) -> std::io::Result<fuser::Session<StackFs>> {
    fuser::Session::new(
        StackFs::new(stack, settings.owner),
        mountpoint,
        &config(settings),
    )
}

/// Mounts `stack` read-only at `mountpoint` and serves it on background threads until the
/// returned session is dropped or joined (which unmounts).
pub fn mount(
    stack: Arc<Stack>,
    mountpoint: &Path,
    settings: &MountSettings,
) -> std::io::Result<fuser::BackgroundSession> {
    fuser::spawn_mount(
        StackFs::new(stack, settings.owner),
        mountpoint,
        &config(settings),
    )
}

#[cfg(test)]
mod tests {
    use super::seek_data_or_hole;

    const RUNS: [(u64, u64); 2] = [(100, 50), (150, 10)];

    #[test]
    fn seek_data_skips_leading_hole_and_stays_inside_data() {
        assert_eq!(seek_data_or_hole(&RUNS, 1000, 0, libc::SEEK_DATA), Ok(100));
        assert_eq!(
            seek_data_or_hole(&RUNS, 1000, 120, libc::SEEK_DATA),
            Ok(120)
        );
        assert_eq!(
            seek_data_or_hole(&RUNS, 1000, 200, libc::SEEK_DATA),
            Err(libc::ENXIO)
        );
    }

    #[test]
    fn seek_hole_follows_adjacent_runs_and_ends_at_size() {
        assert_eq!(
            seek_data_or_hole(&RUNS, 1000, 100, libc::SEEK_HOLE),
            Ok(160)
        );
        assert_eq!(seek_data_or_hole(&RUNS, 1000, 10, libc::SEEK_HOLE), Ok(10));
        assert_eq!(
            seek_data_or_hole(&[(0, 1000)], 1000, 5, libc::SEEK_HOLE),
            Ok(1000)
        );
    }

    #[test]
    fn seek_past_end_or_negative_is_enxio() {
        assert_eq!(
            seek_data_or_hole(&RUNS, 1000, 1000, libc::SEEK_HOLE),
            Err(libc::ENXIO)
        );
        assert_eq!(
            seek_data_or_hole(&RUNS, 1000, -1, libc::SEEK_DATA),
            Err(libc::ENXIO)
        );
    }
}
