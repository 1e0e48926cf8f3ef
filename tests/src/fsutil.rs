//! File-system helpers, prerequisites and a seeded random generator.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh temporary directory under the system temp dir, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fim-tests.")
        .tempdir()
        .unwrap_or_else(|e| {
            panic!(
                "cannot create a temporary directory in {}: {e}",
                std::env::temp_dir().display()
            )
        })
}

/// Reports on stderr that a test did not run, and why.
pub fn skip(reason: &str) {
    // Straight to stderr: `eprintln!` output of a passing test is captured by the test
    // harness and never shown.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {reason}");
}

/// Whether the tests run as root (device nodes, other owners, `trusted.*` xattrs).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True when running as root; otherwise prints `skipped: <test>: needs root` and
/// returns false.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(&format!("{test}: needs root"));
    false
}

/// True when FUSE mounts can work here (`/dev/fuse` opens read-write, and we are root
/// or `fusermount3` is installed); otherwise prints `skipped: <test>: ...` and returns
/// false.
pub fn require_fuse(test: &str) -> bool {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        skip(&format!("{test}: /dev/fuse is not usable ({e})"));
        return false;
    }
    if !is_root() && which("fusermount3").is_none() {
        skip(&format!("{test}: not root and no fusermount3 on PATH"));
        return false;
    }
    true
}

/// The path of `tool` on `$PATH`, if any.
pub fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes())
        .unwrap_or_else(|_| panic!("{} contains a NUL byte", path.display()))
}

fn check(rc: libc::c_int, what: &str, path: &Path) {
    if rc != 0 {
        panic!(
            "{what} {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
}

/// Creates a node with `mknod(2)`: `kind` is `libc::S_IFCHR`, `S_IFBLK`, `S_IFIFO` or
/// `S_IFSOCK`; the permission bits are set exactly (no umask).
pub fn mknod(path: &Path, kind: libc::mode_t, perm: libc::mode_t, major: u32, minor: u32) {
    let c = cpath(path);
    // SAFETY: valid NUL-terminated path.
    check(
        unsafe { libc::mknod(c.as_ptr(), kind | perm, libc::makedev(major, minor)) },
        "mknod",
        path,
    );
    chmod(path, perm);
}

/// `chmod` with every bit kept (setuid, setgid, sticky). Follows symlinks.
pub fn chmod(path: &Path, mode: libc::mode_t) {
    let c = cpath(path);
    // SAFETY: valid path.
    check(unsafe { libc::chmod(c.as_ptr(), mode) }, "chmod", path);
}

/// `lchown` (does not follow symlinks).
pub fn lchown(path: &Path, uid: u32, gid: u32) {
    let c = cpath(path);
    // SAFETY: valid path.
    check(
        unsafe { libc::lchown(c.as_ptr(), uid, gid) },
        "lchown",
        path,
    );
}

/// Sets atime and mtime of `path` (not following symlinks) to `sec.nsec`.
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let c = cpath(path);
    let t = libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as libc::c_long,
    };
    // SAFETY: valid path and a two-element timespec array.
    check(
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                [t, t].as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        },
        "utimensat",
        path,
    );
}

/// Writes `len` random bytes to a new file at `path`.
pub fn write_random(path: &Path, len: usize, rng: &mut Rng) {
    let mut file =
        File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        rng.fill(&mut buf[..n]);
        file.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        left -= n;
    }
}

/// A small seeded generator (SplitMix64): the same seed gives the same sequence on every
/// run, so a failure can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        self.next_u64() % n
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes `content` to `root/rel`, creating the missing parent directories.
pub fn put(root: &Path, rel: impl AsRef<Path>, content: &[u8]) -> std::path::PathBuf {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    std::fs::write(&path, content)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// A mount made for a test (`mount ARGS TARGET`), lazily unmounted when dropped.
pub struct HostMount(PathBuf);

impl HostMount {
    /// `None` when this machine refuses the mount.
    pub fn new(args: &[&str], target: &Path) -> Option<HostMount> {
        let ok = Command::new("mount")
            .args(args)
            .arg(target)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| HostMount(target.to_path_buf()))
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A setuid-root copy of the host's bwrap in `dir`, if this machine allows one there.
pub fn setuid_bwrap(dir: &Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let host = which("bwrap")?;
    let copy = dir.join("setuid-bwrap");
    std::fs::copy(host, &copy).ok()?;
    std::os::unix::fs::chown(&copy, Some(0), Some(0)).ok()?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o4755)).ok()?;
    // A nosuid mount would ignore the bit.
    let path = std::ffi::CString::new(copy.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a zeroed statvfs for the kernel to fill.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a live statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    (rc == 0 && stat.f_flag & libc::ST_NOSUID == 0).then_some(copy)
}
