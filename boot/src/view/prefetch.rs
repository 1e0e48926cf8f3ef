//! The program a new session starts, decompressed before it is asked for. Most of a cold
//! start is the app's first reads through a FUSE mount whose caches are empty: every block
//! of the program is decompressed only when the kernel asks for it. The daemon is forked
//! from the launcher that wants the session, so it knows the command: it finds the
//! program's file in the layers (a path, or a name in the usual `PATH` directories, symlinks
//! followed) before it mounts anything, and once its namespaces are made (a thread before
//! them would stop the kernel from making a user namespace) a thread decompresses the
//! file's blocks into the layer server's cache, while the daemon mounts the view and the
//! launcher joins and starts bwrap. Only the program's own file: its interpreter and
//! libraries are not looked for. A wrong guess costs a thread's work and nothing else.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use fim_layers::format::{Inode, S_IFLNK, S_IFREG};
use fim_layers::{Entry, Layer, ROOT, Stack};

use crate::debug;

/// Where a name without a slash is looked for (the sandbox's default `PATH`).
const SEARCH: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];
/// Symlinks followed at most, as the kernel's path walk allows.
const MAX_HOPS: u32 = 40;
/// Blocks decompressed ahead at most, in bytes: a large program's first pages matter most,
/// and the rest of the cache is the app's.
const MAX_BYTES: u64 = 32 << 20;

/// A program's file, found in the layers.
pub struct Program {
    layer: Layer,
    inode: Inode,
    path: Vec<u8>,
}

/// Finds the file `command` runs in `stack`, if it is a regular file there.
pub fn find(stack: &Stack, command: &OsStr) -> Option<Program> {
    let command = command.as_bytes();
    let candidates: Vec<Vec<u8>> = if command.contains(&b'/') {
        vec![command.to_vec()]
    } else if command.is_empty() {
        Vec::new()
    } else {
        SEARCH
            .iter()
            .map(|dir| [dir.as_bytes(), b"/", command].concat())
            .collect()
    };
    candidates.into_iter().find_map(|path| {
        let entry = resolve(stack, &path)?;
        (entry.inode.file_type() == S_IFREG).then(|| Program {
            layer: stack.layers()[entry.layer].clone(),
            inode: entry.inode,
            path,
        })
    })
}

/// Decompresses the program's blocks on a thread of its own. Call it only once no user
/// namespace will be made by this process.
pub fn start(program: Program) {
    let spawned = std::thread::Builder::new()
        .name("prefetch".into())
        .spawn(move || {
            let taken = program.layer.warm(&program.inode, MAX_BYTES);
            debug::log(format!(
                "daemon: {} decompressed ahead: {}",
                String::from_utf8_lossy(&program.path),
                match taken {
                    Ok(bytes) => format!("{} KiB of blocks", bytes / 1024),
                    Err(e) => format!("stopped: {e}"),
                }
            ));
        });
    if let Err(e) = spawned {
        debug::log(format!("daemon: no thread to decompress ahead: {e}"));
    }
}

/// The entry `path` names (absolute; relative to the stack's root), every symlink on the
/// way and at the end followed; `None` when there is none or it is out of reach.
fn resolve(stack: &Stack, path: &[u8]) -> Option<Entry> {
    let root = stack.entry(ROOT).ok()?;
    // The directories walked through, for `..`; the root is never left.
    let mut walked = vec![root];
    let mut parts = components(path);
    let mut hops = 0;
    while let Some(part) = parts.pop_front() {
        match part.as_slice() {
            b"." => continue,
            b".." => {
                if walked.len() > 1 {
                    walked.pop();
                }
                continue;
            }
            _ => {}
        }
        let dir = *walked.last()?;
        if !dir.inode.is_dir() {
            return None;
        }
        let next = stack.lookup(dir.id, &part).ok()??;
        if next.inode.file_type() == S_IFLNK {
            hops += 1;
            if hops > MAX_HOPS {
                return None;
            }
            let target = stack.read_link(&next).ok()?;
            if target.first() == Some(&b'/') {
                walked.truncate(1);
            }
            let mut rest = components(&target);
            rest.extend(parts);
            parts = rest;
        } else {
            walked.push(next);
        }
    }
    walked.last().copied()
}

/// The non-empty components of `path`.
fn components(path: &[u8]) -> VecDeque<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|part| !part.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::sync::Arc;

    use fim_layers::{BlockCache, BuildOptions, NoProgress, build_layer};

    /// A one-layer stack of the tree `make` writes.
    fn stack_of(make: impl FnOnce(&std::path::Path)) -> (tempfile::NamedTempFile, Stack) {
        let src = tempfile::tempdir().unwrap();
        make(src.path());
        let out = tempfile::NamedTempFile::new().unwrap();
        let options = BuildOptions {
            level: 1,
            block_size: 4096,
            ..Default::default()
        };
        let stats = build_layer(src.path(), out.as_file(), 0, &options, &NoProgress).unwrap();
        // SAFETY: test file, not modified while mapped.
        let map = Arc::new(unsafe { memmap2::Mmap::map(out.as_file()).unwrap() });
        let layer = Layer::open(map, 0, stats.layer_size, BlockCache::new(1 << 20)).unwrap();
        (out, Stack::new(vec![layer]).unwrap())
    }

    fn found(stack: &Stack, command: &str) -> Option<String> {
        find(stack, OsStr::new(command)).map(|p| String::from_utf8(p.path).unwrap())
    }

    #[test]
    fn a_name_is_looked_for_in_the_path_directories_through_symlinks() {
        let (_file, stack) = stack_of(|root| {
            fs::create_dir_all(root.join("usr/bin")).unwrap();
            fs::write(root.join("usr/bin/busybox"), b"\x7fELF program").unwrap();
            symlink("usr/bin", root.join("bin")).unwrap();
            symlink("busybox", root.join("usr/bin/true")).unwrap();
            symlink("../bin/./true", root.join("usr/bin/again")).unwrap();
            symlink("/usr/bin/busybox", root.join("usr/bin/sh")).unwrap();
        });
        assert_eq!(found(&stack, "true").as_deref(), Some("/usr/bin/true"));
        assert_eq!(found(&stack, "/bin/true").as_deref(), Some("/bin/true"));
        assert_eq!(found(&stack, "again").as_deref(), Some("/usr/bin/again"));
        assert_eq!(found(&stack, "sh").as_deref(), Some("/usr/bin/sh"));
        let program = find(&stack, OsStr::new("true")).unwrap();
        assert_eq!(program.inode.size, 12, "the symlink's target, busybox");
    }

    #[test]
    fn what_is_not_a_reachable_regular_file_is_not_found() {
        let (_file, stack) = stack_of(|root| {
            fs::create_dir_all(root.join("bin/dir")).unwrap();
            symlink("loop", root.join("bin/loop")).unwrap();
            symlink("/nowhere", root.join("bin/dangling")).unwrap();
            fs::write(root.join("bin/file"), b"x").unwrap();
        });
        for command in [
            "dir",
            "loop",
            "dangling",
            "missing",
            "",
            "/bin/file/x",
            "/..",
        ] {
            assert_eq!(found(&stack, command), None, "{command:?}");
        }
        assert_eq!(found(&stack, "file").as_deref(), Some("/bin/file"));
        assert_eq!(
            found(&stack, "/../bin/file").as_deref(),
            Some("/../bin/file")
        );
    }
}
