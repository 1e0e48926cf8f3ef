//! Unpacking a root-filesystem tarball (.tar, .tar.gz, .tar.zst, .tar.xz) into a staging
//! directory, keeping what a layer keeps: owners (as root), modes, mtimes, xattrs,
//! hardlinks, and the device nodes and fifos the tar crate would turn into plain files.

use std::ffi::CString;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};

/// Compression of a tarball, recognised by its first bytes rather than its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
}

pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else {
        Compression::None
    }
}

pub fn unpack(input: &Path, dest: &Path) -> anyhow::Result<()> {
    let mut file = BufReader::new(File::open(input)?);
    let mut head = [0u8; 6];
    let n = file.read(&mut head)?;
    let file = BufReader::new(File::open(input)?);
    let reader: Box<dyn Read> = match sniff(&head[..n]) {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new(file)),
    };
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_preserve_ownerships(is_root);
    archive.set_overwrite(true);

    let mut dir_mtimes: Vec<(PathBuf, i64)> = Vec::new();
    let mut count = 0u64;
    for entry in archive.entries().context("not a tar archive")? {
        let mut entry = entry.context("damaged tar entry")?;
        count += 1;
        let kind = entry.header().entry_type();
        let rel = sanitize(&entry.path()?)?;
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            special(&entry, &dest.join(&rel), is_root)?;
            continue;
        }
        if kind.is_dir() {
            dir_mtimes.push((dest.join(&rel), entry.header().mtime()? as i64));
        }
        entry
            .unpack_in(dest)
            .with_context(|| format!("unpacking {}", rel.display()))?;
    }
    if count == 0 {
        bail!("the archive is empty or not a tar archive");
    }
    // Deepest first, so setting a parent's mtime comes after its children are in place.
    dir_mtimes.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, mtime) in dir_mtimes {
        set_mtime(&path, mtime)?;
    }
    Ok(())
}

/// The entry path relative to the root; `..` components are refused, as tar does.
fn sanitize(path: &Path) -> anyhow::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => bail!("entry {} escapes the root with ..", path.display()),
        }
    }
    Ok(out)
}

fn cstr(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).context("path contains a NUL byte")
}

/// Creates a device node or fifo with its owner, mode and mtime.
fn special<R: Read>(entry: &tar::Entry<R>, path: &Path, is_root: bool) -> anyhow::Result<()> {
    let h = entry.header();
    let kind = h.entry_type();
    let file_type = if kind.is_character_special() {
        libc::S_IFCHR
    } else if kind.is_block_special() {
        libc::S_IFBLK
    } else {
        libc::S_IFIFO
    };
    let mode = h.mode()? & 0o7777;
    let dev = libc::makedev(
        h.device_major()?.unwrap_or(0),
        h.device_minor()?.unwrap_or(0),
    );
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(path);
    let c = cstr(path)?;
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), file_type | mode, dev) } != 0 {
        let err = std::io::Error::last_os_error();
        if !is_root && file_type != libc::S_IFIFO {
            eprintln!(
                "fim: {}: device node skipped (needs root): {err}",
                path.display()
            );
            return Ok(());
        }
        return Err(err).with_context(|| format!("creating {}", path.display()));
    }
    if is_root {
        let (uid, gid) = (h.uid()? as u32, h.gid()? as u32);
        // SAFETY: valid path.
        if unsafe { libc::lchown(c.as_ptr(), uid, gid) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("chown {}", path.display()));
        }
    }
    // SAFETY: valid path; chmod again because mknod applies the umask.
    if unsafe { libc::chmod(c.as_ptr(), mode) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("chmod {}", path.display()));
    }
    set_mtime(path, h.mtime()? as i64)
}

fn set_mtime(path: &Path, mtime: i64) -> anyhow::Result<()> {
    let c = cstr(path)?;
    let t = libc::timespec {
        tv_sec: mtime as _,
        tv_nsec: 0,
    };
    // SAFETY: valid path and a two-element timespec array.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [t, t].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setting the mtime of {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_recognised_by_magic_bytes() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0, 0, 0]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0]), Compression::Zstd);
        assert_eq!(sniff(b"\xfd7zXZ\0"), Compression::Xz);
        assert_eq!(sniff(b"usr/\0\0"), Compression::None);
        assert_eq!(sniff(b""), Compression::None);
    }

    #[test]
    fn parent_components_are_refused_and_roots_stripped() {
        assert_eq!(
            sanitize(Path::new("/etc/./passwd")).unwrap(),
            Path::new("etc/passwd")
        );
        assert!(sanitize(Path::new("a/../../etc")).is_err());
    }
}
