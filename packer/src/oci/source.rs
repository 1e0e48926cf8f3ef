//! Where an image's files are read from: an OCI layout or unpacked Docker archive
//! directory, or a tar archive read in place through an index of its members (a
//! compressed archive is first decompressed next to the output). Also the hashing
//! reader every blob goes through.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context, bail};
use sha2::{Digest as _, Sha256};

/// The files of an image archive, by their path inside it.
pub enum Store {
    Dir(PathBuf),
    Tar {
        file: File,
        /// Member path -> (offset of its data, size).
        members: HashMap<String, (u64, u64)>,
        /// Keeps a decompressed copy alive while it is read.
        _decompressed: Option<tempfile::NamedTempFile>,
    },
}

/// A member path as the index keys it: no `./`, no leading or doubled `/`.
pub fn normal(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

impl Store {
    /// Indexes the members of the uncompressed tar `file`; symlinked members (Docker's
    /// `ID/layer.tar -> ../blobs/sha256/...`) are resolved inside the archive.
    pub fn tar(file: File, decompressed: Option<tempfile::NamedTempFile>) -> anyhow::Result<Self> {
        let mut members = HashMap::new();
        let mut links: Vec<(String, String)> = Vec::new();
        let mut archive = tar::Archive::new(BufReader::new(file.try_clone()?));
        for entry in archive.entries().context("not a tar archive")? {
            let entry = entry.context("damaged tar entry")?;
            let path = entry.path()?.to_string_lossy().into_owned();
            let Some(name) = normal(&path) else { continue };
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                if let Some(target) = entry.link_name()? {
                    let target = target.to_string_lossy().into_owned();
                    let base = if kind.is_symlink() {
                        match name.rsplit_once('/') {
                            Some((dir, _)) => format!("{dir}/{target}"),
                            None => target,
                        }
                    } else {
                        target
                    };
                    if let Some(resolved) = normal(&base) {
                        links.push((name, resolved));
                    }
                }
            } else if kind.is_file() {
                members.insert(name, (entry.raw_file_position(), entry.size()));
            }
        }
        for (name, target) in links {
            if let Some(&place) = members.get(&target) {
                members.insert(name, place);
            }
        }
        Ok(Store::Tar {
            file,
            members,
            _decompressed: decompressed,
        })
    }

    /// A member path from a manifest: relative, inside the archive.
    fn checked(name: &str) -> anyhow::Result<String> {
        let path = Path::new(name);
        if path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            bail!("the archive names '{name}', a path outside it");
        }
        normal(name).with_context(|| format!("the archive names '{name}', a path outside it"))
    }

    pub fn has(&self, name: &str) -> bool {
        let Ok(name) = Self::checked(name) else {
            return false;
        };
        match self {
            Store::Dir(dir) => dir.join(&name).is_file(),
            Store::Tar { members, .. } => members.contains_key(&name),
        }
    }

    pub fn size(&self, name: &str) -> anyhow::Result<u64> {
        let name = Self::checked(name)?;
        match self {
            Store::Dir(dir) => Ok(std::fs::metadata(dir.join(&name))
                .with_context(|| format!("the archive has no {name}"))?
                .len()),
            Store::Tar { members, .. } => members
                .get(&name)
                .map(|&(_, size)| size)
                .with_context(|| format!("the archive has no {name}")),
        }
    }

    /// The member's bytes as a stream.
    pub fn open(&self, name: &str) -> anyhow::Result<Box<dyn Read + '_>> {
        let name = Self::checked(name)?;
        match self {
            Store::Dir(dir) => {
                let path = dir.join(&name);
                let file =
                    File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
                Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
            }
            Store::Tar { file, members, .. } => {
                let &(offset, size) = members
                    .get(&name)
                    .with_context(|| format!("the archive has no {name}"))?;
                Ok(Box::new(BufReader::with_capacity(
                    1 << 20,
                    At {
                        file,
                        pos: offset,
                        end: offset + size,
                    },
                )))
            }
        }
    }

    /// A small member (a manifest or config) whole, refusing one over `limit` bytes.
    pub fn read_small(&self, name: &str, limit: u64) -> anyhow::Result<Vec<u8>> {
        let size = self.size(name)?;
        if size > limit {
            bail!("{name} is {size} bytes, more than a manifest or config can be ({limit})");
        }
        let mut bytes = Vec::with_capacity(size as usize);
        self.open(name)?
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {name}"))?;
        Ok(bytes)
    }
}

/// A range of a file, read by position.
struct At<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = (self.end - self.pos).min(buf.len() as u64) as usize;
        if left == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..left], self.pos)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// The SHA-256 and length of everything read through it; `progress` sees each read.
pub struct Hashing<R> {
    inner: R,
    state: Rc<RefCell<(Sha256, u64)>>,
    progress: Option<Box<dyn Fn(u64)>>,
}

/// A handle on a [`Hashing`] reader's result, usable after the reader was moved.
#[derive(Clone)]
pub struct HashState(Rc<RefCell<(Sha256, u64)>>);

impl HashState {
    /// `sha256:HEX` and the byte count so far.
    pub fn digest(&self) -> (String, u64) {
        let state = self.0.borrow();
        let hex = fim_layers::hex(&state.0.clone().finalize());
        (format!("sha256:{hex}"), state.1)
    }
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R, progress: Option<Box<dyn Fn(u64)>>) -> (Self, HashState) {
        let state = Rc::new(RefCell::new((Sha256::new(), 0)));
        (
            Hashing {
                inner,
                state: state.clone(),
                progress,
            },
            HashState(state),
        )
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut state = self.state.borrow_mut();
        state.0.update(&buf[..n]);
        state.1 += n as u64;
        if let Some(progress) = &self.progress {
            progress(n as u64);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths_are_normalised_and_cannot_climb_out() {
        assert_eq!(
            normal("./blobs//sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(normal("a/../b").as_deref(), Some("b"));
        assert_eq!(normal("../x"), None);
        assert!(Store::checked("/etc/passwd").is_err());
        assert!(Store::checked("a/../../x").is_err());
    }

    #[test]
    fn hashing_reports_the_sha256_of_what_was_read() {
        let (mut reader, state) = Hashing::new(&b"abc"[..], None);
        std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
        assert_eq!(
            state.digest(),
            (
                "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
                3
            )
        );
    }
}
