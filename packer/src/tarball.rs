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

/// The compression of a stream from its first bytes (6 are enough).
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

/// Unpacks a root-filesystem tarball, compressed or not, into `dest`.
pub fn unpack(input: &Path, dest: &Path) -> anyhow::Result<()> {
    let file = BufReader::new(File::open(input)?);
    let (compression, stream) = sniffed(file)?;
    let count = unpack_stream(decoder(stream, compression)?, dest)?;
    if count == 0 {
        bail!("the archive is empty or not a tar archive");
    }
    Ok(())
}

/// `reader` decompressed as `compression` says.
pub fn decoder<'a>(
    reader: impl Read + 'a,
    compression: Compression,
) -> anyhow::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new(reader)),
    })
}

/// The compression of a stream, from its first bytes, and the stream with them put back.
pub fn sniffed<'a>(
    mut reader: impl Read + 'a,
) -> anyhow::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut head = [0u8; 6];
    let mut n = 0;
    while n < head.len() {
        let got = reader.read(&mut head[n..])?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let compression = sniff(&head[..n]);
    let again = std::io::Cursor::new(head[..n].to_vec()).chain(reader);
    Ok((compression, Box::new(again)))
}

/// Unpacks an uncompressed tar stream into `dest` (an image layer, or a root filesystem
/// tarball); returns how many entries it had. `.wh.` markers are unpacked as the plain
/// files they are: the layer builder's `WhiteoutFormat::Oci` reads them.
pub fn unpack_stream(reader: impl Read, dest: &Path) -> anyhow::Result<u64> {
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_preserve_ownerships(is_root);
    archive.set_overwrite(true);

    // Directories get their xattrs and mtimes last: the tar crate sets no xattrs on
    // directories, and unpacking their contents would change their mtimes.
    let mut dirs: Vec<(PathBuf, Pax)> = Vec::new();
    let mut count = 0u64;
    let root = dest
        .canonicalize()
        .with_context(|| format!("{}", dest.display()))?;
    for entry in archive.entries().context("not a tar archive")? {
        let mut entry = entry.context("damaged tar entry")?;
        count += 1;
        let kind = entry.header().entry_type();
        let rel = sanitize(&entry.path()?)?;
        let path = dest.join(&rel);
        let pax = Pax::read(&mut entry)?;
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            ensure_inside(&root, &path)?;
            if special(&entry, &path, is_root)? {
                set_mtime(&path, pax.mtime)?;
            }
            continue;
        }
        let unpacked = entry
            .unpack_in(dest)
            .with_context(|| format!("unpacking {}", rel.display()))?;
        if !unpacked {
            continue; // Refused by the tar crate (outside the root); nothing to finish.
        }
        ensure_inside(&root, &path)?;
        if kind.is_dir() {
            // A read-only directory (e.g. 0555 /usr/bin) must stay writable until its
            // contents are in: its real mode is applied last, with its mtime.
            if !is_root {
                let mode = entry.header().mode()? & 0o7777;
                set_mode(&path, mode | 0o700)?;
            }
            dirs.push((path, pax));
        } else if !kind.is_hard_link() {
            // The tar crate keeps whole, non-negative seconds only; pax has nanoseconds.
            set_mtime(&path, pax.mtime)?;
        }
    }
    // Deepest first, so setting a parent's mtime comes after its children are in place.
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, pax) in dirs {
        // A later entry may have put a symlink on the way; never touch outside the root.
        ensure_inside(&root, &path)?;
        for (name, value) in &pax.xattrs {
            xattr::set(&path, name, value)
                .with_context(|| format!("setting xattr {name} on {}", path.display()))?;
        }
        set_mode(&path, pax.mode)?;
        set_mtime(&path, pax.mtime)?;
    }
    Ok(count)
}

/// What an entry's header and pax records say beyond what the tar crate applies.
struct Pax {
    /// Seconds and nanoseconds; may be before 1970.
    mtime: (i64, u32),
    /// Permission bits from the header.
    mode: u32,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Pax {
    fn read<R: Read>(entry: &mut tar::Entry<R>) -> anyhow::Result<Self> {
        let mut pax = Pax {
            mtime: (entry.header().mtime().unwrap_or(0) as i64, 0),
            mode: entry.header().mode().unwrap_or(0o755) & 0o7777,
            xattrs: Vec::new(),
        };
        if let Some(records) = entry.pax_extensions()? {
            for record in records {
                let Ok(record) = record else {
                    // The tar crate splits records on newlines, so a value holding one
                    // (an xattr) cannot be read; keep what came before it.
                    let path = entry
                        .path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    eprintln!("fim: warning: {path}: unreadable pax record skipped");
                    break;
                };
                let Ok(key) = record.key() else { continue };
                if key == "mtime" {
                    if let Some(t) = std::str::from_utf8(record.value_bytes())
                        .ok()
                        .and_then(parse_pax_time)
                    {
                        pax.mtime = t;
                    }
                } else if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    pax.xattrs
                        .push((name.to_owned(), record.value_bytes().to_vec()));
                }
            }
        }
        Ok(pax)
    }
}

/// Parses a pax time such as `1577836800.123456789` or `-1.5` into seconds and nanoseconds.
fn parse_pax_time(text: &str) -> Option<(i64, u32)> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let secs: i64 = whole.parse().ok()?;
    if !fraction.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut nanos_text: String = fraction.chars().take(9).collect();
    while nanos_text.len() < 9 {
        nanos_text.push('0');
    }
    let nanos: u32 = nanos_text.parse().ok()?;
    if !negative {
        return Some((secs, nanos));
    }
    if nanos == 0 {
        Some((-secs, 0))
    } else {
        Some((-secs - 1, 1_000_000_000 - nanos))
    }
}

/// Refuses `path` unless its parent directory, symlinks resolved, is inside `root` (which
/// is canonical), so an archive cannot reach outside through a symlink it planted. A
/// parent that does not exist yet is judged by its nearest existing ancestor.
fn ensure_inside(root: &Path, path: &Path) -> anyhow::Result<()> {
    if path.canonicalize().is_ok_and(|real| real == root) {
        return Ok(()); // The root itself (an archive's `./` entry).
    }
    let mut ancestor = path.parent();
    while let Some(dir) = ancestor {
        match dir.canonicalize() {
            Ok(real) if real.starts_with(root) => return Ok(()),
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ancestor = dir.parent(),
            Err(e) => return Err(e).with_context(|| format!("{}", dir.display())),
        }
    }
    bail!(
        "archive entry {} would be written outside the root (through a symlink)",
        path.display()
    )
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

/// Creates a device node or fifo with its owner and mode; false when a device node was
/// skipped because only root may create one.
fn special<R: Read>(entry: &tar::Entry<R>, path: &Path, is_root: bool) -> anyhow::Result<bool> {
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
            return Ok(false);
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
    Ok(true)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Gives the owner write access to every directory under `root` again, so a staging tree
/// holding read-only directories can be removed without root.
pub fn make_removable(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        if let Ok(meta) = std::fs::symlink_metadata(&dir)
            && meta.is_dir()
        {
            let mode = meta.permissions().mode() | 0o700;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode));
            if let Ok(entries) = std::fs::read_dir(&dir) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
}

fn set_mtime(path: &Path, (secs, nanos): (i64, u32)) -> anyhow::Result<()> {
    fim_layers::extract::set_mtime_nofollow(path, secs, nanos)
        .with_context(|| format!("setting the mtime of {}", path.display()))
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
    fn sniffing_a_stream_puts_its_first_bytes_back() {
        let data = b"\x28\xb5\x2f\xfdthe rest";
        let (compression, mut stream) = sniffed(&data[..]).unwrap();
        assert_eq!(compression, Compression::Zstd);
        let mut again = Vec::new();
        stream.read_to_end(&mut again).unwrap();
        assert_eq!(again, data);
        let (compression, mut stream) = sniffed(&b"\x1f"[..]).unwrap();
        assert_eq!(compression, Compression::None);
        again.clear();
        stream.read_to_end(&mut again).unwrap();
        assert_eq!(again, b"\x1f");
    }

    #[test]
    fn pax_times_keep_nanoseconds_and_dates_before_1970() {
        assert_eq!(
            parse_pax_time("1577836800.123456789"),
            Some((1_577_836_800, 123_456_789))
        );
        assert_eq!(parse_pax_time("12"), Some((12, 0)));
        assert_eq!(parse_pax_time("1.5"), Some((1, 500_000_000)));
        assert_eq!(parse_pax_time("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time("-86400"), Some((-86_400, 0)));
        assert_eq!(parse_pax_time("1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time("x"), None);
        assert_eq!(parse_pax_time("1.x"), None);
    }

    #[test]
    fn paths_through_a_planted_symlink_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("escape")).unwrap();
        let root = root.canonicalize().unwrap();
        assert!(ensure_inside(&root, &root).is_ok());
        assert!(ensure_inside(&root, &root.join("real/dev")).is_ok());
        assert!(ensure_inside(&root, &root.join("new/deeper/dev")).is_ok());
        let err = ensure_inside(&root, &root.join("escape/dev")).unwrap_err();
        assert!(err.to_string().contains("outside the root"), "{err}");
        assert!(ensure_inside(&root, &root.join("escape/missing/dev")).is_err());
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
