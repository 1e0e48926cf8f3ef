//! The system calls of the casefold view, on descriptors of the view below: each returns
//! the `errno` the app should see, unchanged. Objects are reached through their `O_PATH`
//! descriptors, by name relative to a directory's, or through `/proc/self/fd/N` where a
//! call takes no descriptor (open, chmod, xattrs).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use fuser::Errno;

pub type Result<T> = std::result::Result<T, Errno>;

/// The `errno` of the last failed call.
pub fn last() -> Errno {
    Errno::from_i32(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// The `errno` of a failed I/O call of the standard library.
pub fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

/// A call's return value, or its `errno`.
pub fn check(ret: libc::c_long) -> Result<libc::c_long> {
    if ret < 0 { Err(last()) } else { Ok(ret) }
}

fn checked(ret: libc::c_int) -> Result<libc::c_int> {
    check(ret.into()).map(|r| r as libc::c_int)
}

/// A name as C wants it; the kernel never sends one holding NUL.
pub fn c(name: &[u8]) -> Result<CString> {
    CString::new(name).map_err(|_| Errno::EINVAL)
}

/// The path that reaches the object of `fd` (the descriptor's magic link).
pub fn proc_path(fd: &impl AsRawFd) -> CString {
    // A number holds no NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

fn owned(fd: libc::c_int) -> Result<OwnedFd> {
    let fd = checked(fd)?;
    // SAFETY: the call just returned this new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat(dir, name, O_PATH | O_NOFOLLOW)`.
pub fn open_path(dir: &OwnedFd, name: &[u8]) -> Result<OwnedFd> {
    let name = c(name)?;
    // SAFETY: valid descriptor and C string.
    owned(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })
}

/// `openat(dir, name, flags, mode)`, for reading and writing.
pub fn open_at(dir: &OwnedFd, name: &[u8], flags: i32, mode: u32) -> Result<OwnedFd> {
    let name = c(name)?;
    // SAFETY: valid descriptor and C string.
    owned(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    })
}

/// Opens the object of an `O_PATH` descriptor for I/O.
pub fn reopen(node: &OwnedFd, flags: i32) -> Result<OwnedFd> {
    let path = proc_path(node);
    // SAFETY: valid C string.
    owned(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })
}

/// `stat` of the object of `fd` itself (a symlink is not followed).
pub fn stat_fd(fd: &impl AsRawFd) -> Result<libc::stat> {
    // SAFETY: zeroes are a valid `stat`; valid descriptor and C string.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    checked(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// `stat` of `name` in `dir` (a symlink is not followed).
pub fn stat_at(dir: &OwnedFd, name: &[u8]) -> Result<libc::stat> {
    let name = c(name)?;
    // SAFETY: zeroes are a valid `stat`; valid descriptor and C string.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    checked(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// What a directory entry is: a new directory, node, symlink or hard link.
pub enum Make<'a> {
    Dir(u32),
    Node(u32, u64),
    Symlink(&'a [u8]),
    Link(&'a OwnedFd),
}

/// Makes `name` in `dir`.
pub fn make(dir: &OwnedFd, name: &[u8], what: Make) -> Result<()> {
    let n = c(name)?;
    let d = dir.as_raw_fd();
    // SAFETY: valid descriptors and C strings.
    checked(unsafe {
        match what {
            Make::Dir(mode) => libc::mkdirat(d, n.as_ptr(), mode),
            Make::Node(mode, rdev) => libc::mknodat(d, n.as_ptr(), mode, rdev),
            Make::Symlink(target) => libc::symlinkat(c(target)?.as_ptr(), d, n.as_ptr()),
            Make::Link(node) => libc::linkat(
                libc::AT_FDCWD,
                proc_path(node).as_ptr(),
                d,
                n.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            ),
        }
    })
    .map(drop)
}

/// `unlinkat(dir, name, flags)`.
pub fn unlink(dir: &OwnedFd, name: &[u8], flags: i32) -> Result<()> {
    let name = c(name)?;
    // SAFETY: valid descriptor and C string.
    checked(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// `renameat2`.
pub fn rename(from: &OwnedFd, name: &[u8], to: &OwnedFd, new: &[u8], flags: u32) -> Result<()> {
    let (name, new) = (c(name)?, c(new)?);
    // SAFETY: valid descriptors and C strings.
    check(unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            from.as_raw_fd(),
            name.as_ptr(),
            to.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// `fchownat(dir, name, uid, gid)`, on a symlink itself.
pub fn chown_at(dir: &OwnedFd, name: &[u8], uid: u32, gid: u32) -> Result<()> {
    let name = c(name)?;
    // SAFETY: valid descriptor and C string.
    checked(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// `fchmodat(dir, name, mode)`.
pub fn chmod_at(dir: &OwnedFd, name: &[u8], mode: u32) -> Result<()> {
    let name = c(name)?;
    // SAFETY: valid descriptor and C string.
    checked(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
}

/// Borrows an open file by its raw descriptor (a FUSE file handle).
pub fn raw(fh: u64) -> RawFd {
    fh as RawFd
}
