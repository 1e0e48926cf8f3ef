//! The program a new session starts, decompressed before it is asked for. Most of a cold
//! start is the app's first reads through a FUSE mount whose caches are empty: every block
//! of the program is decompressed only when the kernel asks for it. The daemon is forked
//! from the launcher that wants the session, so it knows the command. Once its namespaces
//! are made (a thread before them would stop the kernel from making a user namespace), a
//! thread finds the program's file in the layers (a path, or a name in the usual `PATH`
//! directories, symlinks followed), reads it, which decompresses its blocks into the layer
//! server's cache, and does the same for what an ELF program loads first: its interpreter
//! and the libraries it needs, looked for in the usual library directories, theirs too.
//! All of it while the daemon mounts the view and the launcher joins and starts bwrap. A
//! wrong guess costs the thread's work and nothing else. The image's `/etc/passwd` and
//! `/etc/group` come first: every launch reads them before it starts bwrap (they are
//! merged with the user's line), and they share a block with whatever precedes them.
//!
//! Once the layers are served, the files read ahead are also put in the kernel's page
//! cache of the layers' mount, with FUSE's store notification: the app's page faults then
//! ask the layer server nothing. No file is opened on that mount for it (a daemon thread
//! with a file open on the daemon's own mount could not exit: closing it waits for an
//! answer from server threads that have already ended); a lookup makes the kernel know
//! the inode, and the server writes the pages into it.

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use fuser::{INodeNo, Notifier};

use fim_layers::format::{S_IFLNK, S_IFREG};
use fim_layers::{Entry, Layer, ROOT, Stack};

use crate::cores::Split;
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
/// Where a library a program needs is looked for: the dynamic loader's defaults on x86_64
/// distributions (multiarch first). Its cache and a program's own search paths are not read.
const LIBRARY_DIRS: [&str; 6] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];
/// What every launch reads before the program: the account files it merges.
const ACCOUNT_FILES: [&str; 2] = ["/etc/passwd", "/etc/group"];
/// Symlinks followed at most, as the kernel's path walk allows.
const MAX_HOPS: u32 = 40;
/// Bytes of files read ahead at most: a large program's first pages matter most, and the
/// rest of the cache is the app's.
const MAX_BYTES: u64 = 32 << 20;

/// The layer server's way to write into the kernel's caches of its mount, once it runs.
pub static LAYER_SERVER: OnceLock<Notifier> = OnceLock::new();

/// What a new session reads ahead: the layers and the command.
pub struct Prefetch {
    layers: Vec<Layer>,
    command: OsString,
    /// Where the layers will be served over FUSE (`None`: extracted).
    pub mounted_at: Option<PathBuf>,
}

/// Takes what the thread needs; costs nothing else.
pub fn prepare(stack: &Stack, command: &OsStr) -> Prefetch {
    Prefetch {
        layers: stack.layers().to_vec(),
        command: command.to_owned(),
        mounted_at: None,
    }
}

/// Reads ahead on a thread of its own. Call it only once no user namespace will be made by
/// this process.
pub fn start(prefetch: Prefetch, split: Option<Split>) {
    let split = split.map(Arc::new);
    let theirs = split.clone();
    let spawned = std::thread::Builder::new()
        .name("prefetch".into())
        .spawn(move || {
            if let Some(split) = &theirs {
                split.enter();
            }
            let Ok(stack) = Stack::new(prefetch.layers) else {
                if let Some(split) = &theirs {
                    split.end();
                }
                return;
            };
            let read = read_ahead(&stack, &prefetch.command, MAX_BYTES);
            for (path, _, bytes) in &read {
                debug::log(format!(
                    "daemon: {} decompressed ahead: {} KiB",
                    String::from_utf8_lossy(path),
                    bytes.div_ceil(1024)
                ));
            }
            if let Some(split) = &theirs {
                split.end();
            }
            if let Some(lower) = prefetch.mounted_at {
                let stored = store_in_page_cache(&stack, &lower, LAYER_SERVER.wait(), &read);
                debug::log(format!(
                    "daemon: {stored} of {} files stored in the page cache",
                    read.len()
                ));
            }
        });
    if let Err(e) = spawned {
        debug::log(format!("daemon: no thread to decompress ahead: {e}"));
        if let Some(split) = &split {
            split.end();
        }
    }
}

/// Writes the files `read` ahead, as far as they were, into the kernel's page cache of the
/// layers' mount at `lower`; returns how many were stored whole.
fn store_in_page_cache(
    stack: &Stack,
    lower: &Path,
    server: &Notifier,
    read: &[(Vec<u8>, Entry, u64)],
) -> usize {
    let mut buffer = vec![0; 256 << 10];
    let mut store = |path: &[u8], entry: &Entry, bytes: u64| {
        // The kernel stores pages only into an inode it knows: a lookup makes it.
        let relative = OsStr::from_bytes(path.strip_prefix(b"/").unwrap_or(path));
        std::fs::metadata(lower.join(relative)).ok()?;
        let mut at = 0;
        while at < bytes.min(entry.inode.size) {
            let n = stack.read(entry, at, &mut buffer).ok().filter(|&n| n > 0)?;
            server.store(INodeNo(entry.id), at, &buffer[..n]).ok()?;
            at += n as u64;
        }
        Some(())
    };
    read.iter()
        .filter(|(path, entry, bytes)| store(path, entry, *bytes).is_some())
        .count()
}

/// Reads the account files, the program `command` runs, then its interpreter and the
/// libraries it needs (and theirs), each once, until `budget` bytes were read; returns
/// each file's path, entry and bytes.
fn read_ahead(stack: &Stack, command: &OsStr, budget: u64) -> Vec<(Vec<u8>, Entry, u64)> {
    let mut queue: VecDeque<(Vec<u8>, Entry)> = ACCOUNT_FILES
        .iter()
        .filter_map(|path| regular_file(stack, path.as_bytes().to_vec()))
        .chain(find(stack, command))
        .collect();
    let mut seen = HashSet::new();
    let mut read = Vec::new();
    let mut left = budget;
    while let Some((path, entry)) = queue.pop_front() {
        if left == 0 {
            break;
        }
        if !seen.insert(entry.id) {
            continue;
        }
        let layer = &stack.layers()[entry.layer];
        if entry.inode.size > left {
            // Too large to read whole: its first blocks, and nothing it needs.
            let taken = layer.warm(&entry.inode, left).unwrap_or(0);
            read.push((path, entry, taken));
            break;
        }
        // Into the cache only: copying a program out would cost a page fault for every
        // 4 KiB of it, and only its headers are read. Every block it touches (warm counts
        // whole blocks, and a file may start in the middle of one).
        if layer.warm(&entry.inode, u64::MAX).is_err() {
            continue;
        }
        left -= entry.inode.size;
        read.push((path, entry, entry.inode.size));
        queue.extend(needed(stack, &entry));
    }
    read
}

/// Bytes `[at, at + len)` of `entry`, fewer at its end; `None` past it or on error.
fn bytes_of(stack: &Stack, entry: &Entry, at: u64, len: u64) -> Option<Vec<u8>> {
    let len = len.min(entry.inode.size.checked_sub(at)?);
    let mut bytes = vec![0; usize::try_from(len).ok()?];
    let n = stack.read(entry, at, &mut bytes).ok()?;
    bytes.truncate(n);
    Some(bytes)
}

/// The interpreter and the libraries an x86_64 ELF program or library names, found in
/// `stack`. Only its headers, interpreter path, dynamic section and string table are
/// read, from the cache (a whole `Elf::parse`, symbols and relocations included, would
/// add 40 KB to the launcher for nothing).
fn needed(stack: &Stack, entry: &Entry) -> Vec<(Vec<u8>, Entry)> {
    use goblin::container::{Container, Ctx, Endian};
    use goblin::elf::dynamic::{DT_NEEDED, DT_NULL, DT_STRSZ, DT_STRTAB};
    use goblin::elf::header::{EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, EM_X86_64};
    use goblin::elf::program_header::{PT_DYNAMIC, PT_INTERP, PT_LOAD, ProgramHeader};

    /// A string table or dynamic section larger than this is not a loader's.
    const MAX_SECTION: u64 = 1 << 20;
    let Some(head) = bytes_of(stack, entry, 0, 64) else {
        return Vec::new();
    };
    let Ok(header) = goblin::elf::Elf::parse_header(&head) else {
        return Vec::new();
    };
    let x86_64 = header.e_ident[EI_CLASS] == ELFCLASS64
        && header.e_ident[EI_DATA] == ELFDATA2LSB
        && header.e_machine == EM_X86_64;
    let phnum = usize::from(header.e_phnum);
    let Some(table) = bytes_of(stack, entry, header.e_phoff, 56 * phnum as u64).filter(|_| x86_64)
    else {
        return Vec::new();
    };
    let ctx = Ctx::new(Container::Big, Endian::Little);
    let Ok(phdrs) = ProgramHeader::parse(&table, 0, phnum, ctx) else {
        return Vec::new();
    };
    let section =
        |ph: &ProgramHeader| bytes_of(stack, entry, ph.p_offset, ph.p_filesz.min(MAX_SECTION));
    let mut found = Vec::new();
    let interpreter = phdrs
        .iter()
        .find(|ph| ph.p_type == PT_INTERP)
        .and_then(section);
    if let Some(path) = interpreter {
        let path = path.split(|&b| b == 0).next().unwrap_or_default();
        if !path.is_empty() {
            found.extend(regular_file(stack, path.to_vec()));
        }
    }
    let Some(dynamic) = phdrs
        .iter()
        .find(|ph| ph.p_type == PT_DYNAMIC)
        .and_then(section)
    else {
        return found;
    };
    // Its entries: (tag, value) pairs of 8 bytes each, up to DT_NULL.
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
    let entries: Vec<(u64, u64)> = dynamic
        .chunks_exact(16)
        .map(|pair| (word(&pair[..8]), word(&pair[8..])))
        .take_while(|&(tag, _)| tag != DT_NULL)
        .collect();
    let value = |wanted: u64| {
        entries
            .iter()
            .find(|&&(tag, _)| tag == wanted)
            .map(|&(_, v)| v)
    };
    // The string table is named by its address once loaded: found in the file through
    // the segment that loads it.
    let strtab = value(DT_STRTAB).and_then(|address| {
        let ph = phdrs.iter().find(|ph| {
            ph.p_type == PT_LOAD && address >= ph.p_vaddr && address - ph.p_vaddr < ph.p_filesz
        })?;
        let size = value(DT_STRSZ)?.min(MAX_SECTION);
        bytes_of(
            stack,
            entry,
            ph.p_offset.checked_add(address - ph.p_vaddr)?,
            size,
        )
    });
    let Some(strtab) = strtab else {
        return found;
    };
    for &(_, at) in entries.iter().filter(|&&(tag, _)| tag == DT_NEEDED) {
        let Some(name) = usize::try_from(at)
            .ok()
            .and_then(|at| strtab.get(at..))
            .and_then(|rest| rest.split(|&b| b == 0).next())
        else {
            continue;
        };
        if name.is_empty() || name.contains(&b'/') {
            continue;
        }
        found.extend(
            LIBRARY_DIRS
                .iter()
                .find_map(|dir| regular_file(stack, [dir.as_bytes(), b"/", name].concat())),
        );
    }
    found
}

/// The regular file the command `command` runs, found in `stack`.
fn find(stack: &Stack, command: &OsStr) -> Option<(Vec<u8>, Entry)> {
    let command = command.as_bytes();
    if command.is_empty() {
        return None;
    }
    if command.contains(&b'/') {
        return regular_file(stack, command.to_vec());
    }
    SEARCH
        .iter()
        .find_map(|dir| regular_file(stack, [dir.as_bytes(), b"/", command].concat()))
}

/// `path` and its entry, if it resolves to a regular file.
fn regular_file(stack: &Stack, path: Vec<u8>) -> Option<(Vec<u8>, Entry)> {
    let entry = resolve(stack, &path)?;
    (entry.inode.file_type() == S_IFREG).then_some((path, entry))
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
        find(stack, OsStr::new(command)).map(|(path, _)| String::from_utf8(path).unwrap())
    }

    fn read(stack: &Stack, command: &str, budget: u64) -> Vec<(String, u64)> {
        read_ahead(stack, OsStr::new(command), budget)
            .into_iter()
            .map(|(path, _, bytes)| (String::from_utf8(path).unwrap(), bytes))
            .collect()
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
        let (_, program) = find(&stack, OsStr::new("true")).unwrap();
        assert_eq!(program.inode.size, 12, "the symlink's target, busybox");
        assert_eq!(read(&stack, "sh", 1 << 20), [("/usr/bin/sh".into(), 12)]);
    }

    /// This machine's own dynamically linked `true`, its interpreter and libc, at the paths
    /// an x86_64 distribution has them, are read ahead, each once; a budget stops it.
    #[test]
    fn a_dynamic_program_brings_its_interpreter_and_libraries() {
        let host = |p: &str| std::fs::canonicalize(p).ok().filter(|p| p.is_file());
        let (Some(program), Some(loader), Some(libc)) = (
            host("/usr/bin/true"),
            host("/lib64/ld-linux-x86-64.so.2"),
            host("/lib/x86_64-linux-gnu/libc.so.6"),
        ) else {
            eprintln!("skipped: no glibc x86_64 layout on this machine");
            return;
        };
        let elf = std::fs::read(&program).unwrap();
        let parsed = goblin::elf::Elf::parse(&elf).unwrap();
        if parsed.interpreter != Some("/lib64/ld-linux-x86-64.so.2")
            || parsed.libraries != ["libc.so.6"]
        {
            eprintln!("skipped: this machine's true is not linked as expected");
            return;
        }
        let (_file, stack) = stack_of(|root| {
            fs::create_dir_all(root.join("usr/bin")).unwrap();
            fs::create_dir_all(root.join("lib64")).unwrap();
            fs::create_dir_all(root.join("usr/lib/x86_64-linux-gnu")).unwrap();
            symlink("usr/lib", root.join("lib")).unwrap();
            fs::copy(&program, root.join("usr/bin/true")).unwrap();
            fs::copy(&libc, root.join("usr/lib/x86_64-linux-gnu/libc.so.6")).unwrap();
            fs::copy(
                &loader,
                root.join("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
            )
            .unwrap();
            symlink(
                "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                root.join("lib64/ld-linux-x86-64.so.2"),
            )
            .unwrap();
        });
        let size = |p: &std::path::Path| fs::metadata(p).unwrap().len();
        assert_eq!(
            read(&stack, "true", u64::MAX),
            [
                ("/usr/bin/true".to_string(), size(&program)),
                ("/lib64/ld-linux-x86-64.so.2".to_string(), size(&loader)),
                ("/lib/x86_64-linux-gnu/libc.so.6".to_string(), size(&libc)),
            ],
            "libc needs the loader too, which is read once"
        );
        // A budget smaller than libc: the program and the loader whole, libc's first blocks.
        let budget = size(&program) + size(&loader) + 4096;
        let got = read(&stack, "true", budget);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[2].0, "/lib/x86_64-linux-gnu/libc.so.6");
        assert!(got[2].1 <= 8192 && got[2].1 > 0, "{got:?}");
    }

    /// Every launch reads the account files before it starts bwrap: they come first,
    /// whatever the command; a missing one is skipped.
    #[test]
    fn the_account_files_are_read_before_the_program() {
        let (_file, stack) = stack_of(|root| {
            fs::create_dir_all(root.join("etc")).unwrap();
            fs::create_dir_all(root.join("bin")).unwrap();
            fs::write(root.join("etc/group"), b"root:x:0:\n").unwrap();
            fs::write(root.join("bin/app"), b"#!/bin/sh\n").unwrap();
        });
        assert_eq!(
            read(&stack, "app", u64::MAX),
            [("/etc/group".into(), 10), ("/bin/app".into(), 10)]
        );
    }

    /// An x86_64 ELF header with `phnum` program headers at `phoff`, then `rest`.
    fn elf(phoff: u64, phnum: u16, rest: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
        b[16..18].copy_from_slice(&2u16.to_le_bytes()); // executable
        b[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[32..40].copy_from_slice(&phoff.to_le_bytes());
        b[52..54].copy_from_slice(&64u16.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&phnum.to_le_bytes());
        b[58..60].copy_from_slice(&64u16.to_le_bytes());
        b.extend_from_slice(rest);
        b
    }

    /// A program header: type, file offset, address, size in the file.
    fn phdr(kind: u32, offset: u64, address: u64, size: u64) -> Vec<u8> {
        let mut b = vec![0u8; 56];
        b[..4].copy_from_slice(&kind.to_le_bytes());
        b[8..16].copy_from_slice(&offset.to_le_bytes());
        b[16..24].copy_from_slice(&address.to_le_bytes());
        b[32..40].copy_from_slice(&size.to_le_bytes());
        b[40..48].copy_from_slice(&size.to_le_bytes());
        b
    }

    /// Headers that point past the file, sizes far beyond it, a string table no segment
    /// maps, offsets that overflow: the program is read ahead, nothing else, no panic.
    #[test]
    fn a_malformed_program_brings_nothing_it_names() {
        use goblin::elf::program_header::{PT_DYNAMIC, PT_INTERP, PT_LOAD};
        let pairs = |list: &[(u64, u64)]| -> Vec<u8> {
            list.iter()
                .flat_map(|&(tag, value)| [tag.to_le_bytes(), value.to_le_bytes()].concat())
                .collect()
        };
        let programs = [
            ("headers-past-the-end", elf(1 << 40, 3, &[])),
            (
                "huge-sections",
                elf(
                    64,
                    2,
                    &[
                        phdr(PT_INTERP, 64 + 112, 0, 1 << 40),
                        phdr(PT_DYNAMIC, 64 + 112, 0, 1 << 40),
                        pairs(&[(1, u64::MAX), (5, 0x1234_5678), (10, u64::MAX)]),
                    ]
                    .concat(),
                ),
            ),
            (
                "string-table-overflows",
                elf(
                    64,
                    2,
                    &[
                        phdr(PT_DYNAMIC, 64 + 112, 0, 48),
                        phdr(PT_LOAD, u64::MAX - 8, 0x1000, u64::MAX),
                        pairs(&[(1, 0), (5, 0x2000), (10, 64)]),
                    ]
                    .concat(),
                ),
            ),
        ];
        let (_file, stack) = stack_of(|root| {
            fs::create_dir_all(root.join("bin")).unwrap();
            fs::create_dir_all(root.join("lib")).unwrap();
            fs::write(root.join("lib/libc.so.6"), b"a library").unwrap();
            for (name, bytes) in &programs {
                fs::write(root.join("bin").join(name), bytes).unwrap();
            }
        });
        for (name, bytes) in &programs {
            assert_eq!(
                read(&stack, name, u64::MAX),
                [(format!("/bin/{name}"), bytes.len() as u64)],
                "{name}"
            );
        }
        // The same parts well formed: the library it names is found.
        let good = elf(
            64,
            2,
            &[
                phdr(PT_DYNAMIC, 64 + 112, 0, 48),
                phdr(PT_LOAD, 0, 0, 234),
                pairs(&[(1, 0), (5, 224), (10, 10)]),
                b"libc.so.6\0".to_vec(),
            ]
            .concat(),
        );
        let (_file, stack) = stack_of(|root| {
            fs::create_dir_all(root.join("bin")).unwrap();
            fs::create_dir_all(root.join("lib")).unwrap();
            fs::write(root.join("lib/libc.so.6"), b"a library").unwrap();
            fs::write(root.join("bin/good"), &good).unwrap();
        });
        assert_eq!(
            read(&stack, "good", u64::MAX),
            [("/bin/good".into(), 234), ("/lib/libc.so.6".into(), 9)]
        );
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
        assert_eq!(read(&stack, "loop", u64::MAX), []);
        assert_eq!(
            found(&stack, "/../bin/file").as_deref(),
            Some("/../bin/file")
        );
    }
}
