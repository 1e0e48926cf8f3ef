//! One image layer's tar members: what each means (a file, a whiteout, an opaque
//! directory) under rules that refuse any member reaching out of the tree; the checking
//! pass that also follows `/etc/passwd` and `/etc/group` up the stack (for `User`); and
//! `--squash`, which applies a layer's deletions and files onto the layers below.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Files larger than this are not account databases; they are not read.
const ID_FILE_LIMIT: u64 = 4 << 20;

/// What one member of a layer tar means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    /// An entry to unpack at this path (relative; empty for the root itself).
    Plain(PathBuf),
    /// `DIR/.wh.NAME`: NAME in DIR of the lower layers is deleted.
    Whiteout(PathBuf),
    /// `DIR/.wh..wh..opq`: DIR hides everything the lower layers put in it.
    Opaque(PathBuf),
}

/// The meaning of a member at `path` (`is_file`: a regular file; `hard_link`: the
/// target of a hard link), or why it is refused.
pub fn classify(path: &Path, is_file: bool, hard_link: Option<&Path>) -> anyhow::Result<Member> {
    let shown = path.display();
    let relative = inside(path).with_context(|| format!("layer member {shown}"))?;
    if let Some(target) = hard_link {
        inside(target).with_context(|| {
            format!(
                "hard link {shown} -> {}: points outside the tree",
                target.display()
            )
        })?;
    }
    let Some(name) = relative.file_name().map(OsStr::as_bytes) else {
        return Ok(Member::Plain(relative));
    };
    let dir = relative.parent().unwrap_or(Path::new("")).to_owned();
    let Some(hidden) = name.strip_prefix(WHITEOUT) else {
        return Ok(Member::Plain(relative));
    };
    if !is_file || hard_link.is_some() {
        bail!("whiteout {shown} is not an empty regular file");
    }
    if name == OPAQUE {
        return Ok(Member::Opaque(dir));
    }
    if hidden.starts_with(WHITEOUT) {
        bail!("layer member {shown} uses the reserved .wh..wh. prefix");
    }
    if hidden.is_empty() || hidden == b"." || hidden == b".." {
        bail!("whiteout {shown} escapes its directory");
    }
    Ok(Member::Whiteout(dir.join(OsStr::from_bytes(hidden))))
}

/// `path` as a relative path inside the tree: no root, no `..`.
fn inside(path: &Path) -> anyhow::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => bail!("is an absolute path"),
            Component::ParentDir => bail!("climbs out of the tree with .."),
        }
    }
    Ok(out)
}

/// `/etc/passwd` and `/etc/group` as the layers stack them so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IdFiles {
    pub passwd: Option<Vec<u8>>,
    pub group: Option<Vec<u8>>,
}

/// Whether deleting `gone` (a whiteout) or hiding the contents of `gone` (opaque)
/// removes `file`.
fn removes(member: &Member, file: &Path) -> bool {
    match member {
        Member::Whiteout(gone) => file.starts_with(gone),
        Member::Opaque(dir) => file.starts_with(dir) && file != dir,
        Member::Plain(_) => false,
    }
}

/// Reads every member of one uncompressed layer stream, refusing what [`classify`]
/// refuses, and updates `ids` with what the layer does to the account files. Reads the
/// stream to its end, so a hash of it covers every byte.
pub fn check(mut stream: impl Read, ids: &mut IdFiles) -> anyhow::Result<u64> {
    let mut count = 0;
    let mut own = IdFiles::default();
    let mut deletions: Vec<Member> = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut stream);
        for entry in archive.entries().context("not a tar archive")? {
            let mut entry = entry.context("damaged tar member")?;
            count += 1;
            let kind = entry.header().entry_type();
            let path = entry.path()?.into_owned();
            let link = if kind.is_hard_link() {
                entry.link_name()?.map(|l| l.into_owned())
            } else {
                None
            };
            let member = classify(&path, kind.is_file(), link.as_deref())?;
            match &member {
                Member::Plain(p) if kind.is_file() && entry.size() <= ID_FILE_LIMIT => {
                    let slot = if p == Path::new("etc/passwd") {
                        &mut own.passwd
                    } else if p == Path::new("etc/group") {
                        &mut own.group
                    } else {
                        continue;
                    };
                    let mut bytes = Vec::new();
                    entry.read_to_end(&mut bytes)?;
                    *slot = Some(bytes);
                }
                Member::Plain(_) => {}
                _ => deletions.push(member),
            }
        }
    }
    std::io::copy(&mut stream, &mut std::io::sink()).context("reading the layer")?;
    for (slot, name) in [
        (&mut ids.passwd, "etc/passwd"),
        (&mut ids.group, "etc/group"),
    ] {
        if deletions.iter().any(|d| removes(d, Path::new(name))) {
            *slot = None;
        }
    }
    if own.passwd.is_some() {
        ids.passwd = own.passwd;
    }
    if own.group.is_some() {
        ids.group = own.group;
    }
    Ok(count)
}

/// `--squash`: applies the unpacked layer `layer` (with its `.wh.` markers) onto `acc`,
/// the layers below it merged: deletions first, then its entries, which replace what
/// they cover. `layer` is consumed (its entries are renamed into `acc`).
pub fn merge(layer: &Path, acc: &Path) -> anyhow::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(layer)
        .with_context(|| format!("reading {}", layer.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    if names.iter().any(|n| n.as_bytes() == OPAQUE) {
        for old in std::fs::read_dir(acc)? {
            remove(&old?.path())?;
        }
    }
    for name in &names {
        let bytes = name.as_bytes();
        if bytes == OPAQUE {
            continue;
        }
        if let Some(hidden) = bytes.strip_prefix(WHITEOUT) {
            remove(&acc.join(OsStr::from_bytes(hidden)))?;
        }
    }
    for name in &names {
        if name.as_bytes().starts_with(WHITEOUT) {
            continue;
        }
        let from = layer.join(name);
        let to = acc.join(name);
        let from_meta = std::fs::symlink_metadata(&from)?;
        let to_is_dir = std::fs::symlink_metadata(&to).is_ok_and(|m| m.is_dir());
        if from_meta.is_dir() && to_is_dir {
            merge(&from, &to)?;
            copy_dir_attributes(&from_meta, &from, &to)?;
        } else {
            remove(&to)?;
            std::fs::rename(&from, &to)
                .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
        }
    }
    Ok(())
}

/// Removes whatever is at `path`, if anything.
fn remove(path: &Path) -> anyhow::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    result.with_context(|| format!("removing {}", path.display()))
}

/// The upper layer's directory attributes win: mode, owner, xattrs, then mtime.
fn copy_dir_attributes(meta: &std::fs::Metadata, from: &Path, to: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let context = || format!("setting the attributes of {}", to.display());
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .with_context(context)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())).with_context(context)?;
    }
    let wanted: Vec<_> = xattr::list(from).with_context(context)?.collect();
    for old in xattr::list(to).with_context(context)? {
        if !wanted.contains(&old) {
            xattr::remove(to, &old).with_context(context)?;
        }
    }
    for name in wanted {
        if let Some(value) = xattr::get(from, &name).with_context(context)? {
            xattr::set(to, &name, &value).with_context(context)?;
        }
    }
    fim_layers::extract::set_mtime_nofollow(to, meta.mtime(), meta.mtime_nsec() as u32)
        .with_context(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(path: &str) -> anyhow::Result<Member> {
        classify(Path::new(path), true, None)
    }

    #[test]
    fn markers_become_whiteouts_and_opaque_directories() {
        assert_eq!(
            member("etc/.wh.marker").unwrap(),
            Member::Whiteout("etc/marker".into())
        );
        assert_eq!(
            member("./srv/replace/.wh..wh..opq").unwrap(),
            Member::Opaque("srv/replace".into())
        );
        assert_eq!(member(".wh..wh..opq").unwrap(), Member::Opaque("".into()));
        assert_eq!(
            member("usr/bin/sh").unwrap(),
            Member::Plain("usr/bin/sh".into())
        );
        assert_eq!(member("./").unwrap(), Member::Plain("".into()));
    }

    #[test]
    fn a_whiteout_that_escapes_its_directory_is_refused() {
        for bad in ["etc/.wh..", "etc/.wh...", "etc/.wh."] {
            let err = member(bad).unwrap_err().to_string();
            assert!(err.contains("escapes its directory"), "{bad}: {err}");
        }
        assert!(member("etc/.wh..wh.plnk.123").is_err());
        assert!(classify(Path::new("etc/.wh.x"), false, None).is_err());
    }

    #[test]
    fn absolute_and_climbing_paths_and_links_out_of_the_tree_are_refused() {
        assert!(format!("{:#}", member("/etc/passwd").unwrap_err()).contains("absolute"));
        assert!(format!("{:#}", member("a/../../etc").unwrap_err()).contains(".."));
        let err = classify(Path::new("a"), false, Some(Path::new("../../etc/shadow")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("points outside the tree"), "{err}");
        assert!(classify(Path::new("a"), false, Some(Path::new("/etc/shadow"))).is_err());
        assert!(classify(Path::new("a"), false, Some(Path::new("usr/bin/x"))).is_ok());
    }

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, path, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn account_files_follow_the_stack() {
        let mut ids = IdFiles::default();
        check(
            &tar_of(&[("etc/passwd", b"a"), ("etc/group", b"g")])[..],
            &mut ids,
        )
        .unwrap();
        assert_eq!(ids.passwd.as_deref(), Some(&b"a"[..]));
        check(&tar_of(&[("etc/.wh.passwd", b"")])[..], &mut ids).unwrap();
        assert_eq!(ids.passwd, None);
        assert_eq!(ids.group.as_deref(), Some(&b"g"[..]));
        check(
            &tar_of(&[("etc/passwd", b"b"), ("etc/.wh..wh..opq", b"")])[..],
            &mut ids,
        )
        .unwrap();
        assert_eq!(
            ids.passwd.as_deref(),
            Some(&b"b"[..]),
            "the layer's own file stays"
        );
        assert_eq!(ids.group, None);
    }

    #[test]
    fn squash_applies_deletions_then_files() {
        let acc = tempfile::tempdir().unwrap();
        let layer = tempfile::tempdir().unwrap();
        let (a, l) = (acc.path(), layer.path());
        std::fs::create_dir_all(a.join("etc")).unwrap();
        std::fs::write(a.join("etc/marker"), "x").unwrap();
        std::fs::write(a.join("etc/keep"), "x").unwrap();
        std::fs::create_dir_all(a.join("srv/replace/old")).unwrap();
        std::fs::create_dir_all(l.join("etc")).unwrap();
        std::fs::write(l.join("etc/.wh.marker"), "").unwrap();
        std::fs::write(l.join("etc/new"), "n").unwrap();
        std::fs::create_dir_all(l.join("srv/replace")).unwrap();
        std::fs::write(l.join("srv/replace/.wh..wh..opq"), "").unwrap();
        std::fs::write(l.join("srv/replace/fresh"), "f").unwrap();
        merge(l, a).unwrap();
        assert!(!a.join("etc/marker").exists());
        assert!(a.join("etc/keep").exists() && a.join("etc/new").exists());
        let mut names: Vec<_> = std::fs::read_dir(a.join("srv/replace"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["fresh"]);
    }
}
