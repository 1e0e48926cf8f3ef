//! Build-then-read tests of the layer format and the merged stack.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::sync::Arc;

use crate::format::{S_IFDIR, S_IFLNK, S_IFREG};
use crate::*;

fn build(dir: &Path, options: &BuildOptions) -> (tempfile::NamedTempFile, u64) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let stats = build_layer(dir, out.as_file(), 0, options, &NoProgress).unwrap();
    (out, stats.layer_size)
}

fn open(file: &tempfile::NamedTempFile, size: u64) -> Layer {
    // SAFETY: test file, not modified while mapped.
    let map = Arc::new(unsafe { memmap2::Mmap::map(file.as_file()).unwrap() });
    Layer::open(map, 0, size, BlockCache::new(1 << 20)).unwrap()
}

fn small_options() -> BuildOptions {
    BuildOptions {
        level: 3,
        block_size: 4096,
        ..Default::default()
    }
}

fn stack_of(dirs: &[&Path]) -> (Vec<tempfile::NamedTempFile>, Stack) {
    let options = BuildOptions {
        whiteouts: WhiteoutFormat::Oci,
        ..small_options()
    };
    let mut files = Vec::new();
    let mut layers = Vec::new();
    for dir in dirs {
        let (f, size) = build(dir, &options);
        layers.push(open(&f, size));
        files.push(f);
    }
    (files, Stack::new(layers).unwrap())
}

fn read_all(stack: &Stack, entry: &Entry) -> Vec<u8> {
    let mut buf = vec![0u8; entry.inode.size as usize];
    let n = stack.read(entry, 0, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn resolve(stack: &Stack, path: &str) -> Option<Entry> {
    let mut id = ROOT;
    let mut last = stack.entry(ROOT).unwrap();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        last = stack.lookup(id, part.as_bytes()).unwrap()?;
        id = last.id;
    }
    Some(last)
}

fn names(stack: &Stack, path: &str) -> Vec<String> {
    let id = resolve(stack, path).unwrap().id;
    stack
        .read_dir(id)
        .unwrap()
        .into_iter()
        .map(|(n, _)| String::from_utf8(n).unwrap())
        .collect()
}

#[test]
fn content_spanning_many_blocks_reads_back_at_every_offset() {
    let src = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(src.path().join("big"), &data).unwrap();
    fs::write(src.path().join("small"), b"hello").unwrap();
    let (_f, stack) = stack_of(&[src.path()]);
    let big = resolve(&stack, "big").unwrap();
    assert_eq!(read_all(&stack, &big), data);
    for offset in [0u64, 1, 4095, 4096, 12_345, 49_999] {
        let mut buf = [0u8; 5000];
        let n = stack.read(&big, offset, &mut buf).unwrap();
        let end = (offset as usize + 5000).min(data.len());
        assert_eq!(&buf[..n], &data[offset as usize..end], "offset {offset}");
    }
    assert_eq!(
        read_all(&stack, &resolve(&stack, "small").unwrap()),
        b"hello"
    );
}

#[test]
fn a_read_within_one_block_is_served_in_place_and_others_are_not() {
    let src = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(src.path().join("big"), &data).unwrap();
    let (_f, stack) = stack_of(&[src.path()]);
    let big = resolve(&stack, "big").unwrap();
    // Within a 4 KiB block (the file starts at a block's start: it is the only one).
    let (block, range) = stack.read_in_place(&big, 4096, 100).unwrap().unwrap();
    assert_eq!(&block[range], &data[4096..4196]);
    // Cut at the end of the file.
    let (block, range) = stack.read_in_place(&big, 49_990, 4096).unwrap().unwrap();
    assert_eq!(&block[range], &data[49_990..]);
    // Across a block boundary, past the end, or empty: read with a buffer instead.
    assert!(stack.read_in_place(&big, 4000, 200).unwrap().is_none());
    assert!(stack.read_in_place(&big, 50_000, 10).unwrap().is_none());
    assert!(stack.read_in_place(&big, 0, 0).unwrap().is_none());
}

#[test]
fn a_reader_moving_forward_finds_the_next_block_decompressed_ahead() {
    if crate::reader::cpu_count() < 2 {
        eprintln!("skipped: one CPU, so nothing is decompressed ahead");
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(src.path().join("big"), &data).unwrap();
    let (file, size) = build(src.path(), &small_options());
    let cache = BlockCache::new(1 << 20);
    cache.allow_decompress_ahead();
    // SAFETY: test file, not modified while mapped.
    let map = Arc::new(unsafe { memmap2::Mmap::map(file.as_file()).unwrap() });
    let stack = Stack::new(vec![Layer::open(map, 0, size, cache.clone()).unwrap()]).unwrap();
    let big = resolve(&stack, "big").unwrap();
    let before = cache.held();
    let mut buf = [0u8; 100];
    stack.read(&big, 0, &mut buf).unwrap();
    // Block 0 was read; block 1 arrives without a reader asking for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cache.held() < before + 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(
        cache.held(),
        before + 2,
        "the next block was not decompressed ahead"
    );
    // Read forward in steps that cross blocks: the bytes are right either way.
    let mut offset = 0;
    while offset < data.len() {
        let mut step = [0u8; 3000];
        let n = stack.read(&big, offset as u64, &mut step).unwrap();
        assert_eq!(&step[..n], &data[offset..offset + n], "offset {offset}");
        offset += n;
    }
}

#[test]
fn warming_a_file_decompresses_its_blocks_up_to_the_limit_and_no_more() {
    let src = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(src.path().join("big"), &data).unwrap();
    fs::create_dir(src.path().join("dir")).unwrap();
    let (file, size) = build(src.path(), &small_options());
    let cache = BlockCache::new(1 << 20);
    // SAFETY: test file, not modified while mapped.
    let map = Arc::new(unsafe { memmap2::Mmap::map(file.as_file()).unwrap() });
    let layer = Layer::open(map, 0, size, cache.clone()).unwrap();
    let stack = Stack::new(vec![layer.clone()]).unwrap();
    let big = resolve(&stack, "big").unwrap();
    let dir = resolve(&stack, "dir").unwrap();
    let before = cache.held();
    assert_eq!(layer.warm(&dir.inode, u64::MAX).unwrap(), 0);
    assert_eq!(layer.warm(&big.inode, 3 * 4096).unwrap(), 3 * 4096);
    assert_eq!(cache.held(), before + 3, "three blocks and no more");
    // 50,000 bytes span 13 blocks of 4 KiB; the three already there are taken again.
    assert_eq!(layer.warm(&big.inode, u64::MAX).unwrap(), 13 * 4096);
    assert_eq!(cache.held(), before + 13);
    assert_eq!(read_all(&stack, &big), data);
}

/// A tree's files in path order (depth first, names sorted), with distinct contents.
const PATHS: [&str; 8] = [
    "a/copyright",
    "a/x.txt",
    "b/copyright",
    "b/v.aa",
    "b/y.txt",
    "c/copyright",
    "c/sub/copyright",
    "c/z.txt",
];

/// [`PATHS`] in the order their contents lie in the data stream of a layer built with `order`.
fn stream_order(order: ContentOrder) -> Vec<&'static str> {
    let src = tempfile::tempdir().unwrap();
    for (i, path) in PATHS.iter().enumerate() {
        let path = src.path().join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, vec![b'a' + i as u8; 100 + i]).unwrap();
    }
    let options = BuildOptions {
        order,
        ..small_options()
    };
    let (out, size) = build(src.path(), &options);
    let stack = Stack::new(vec![open(&out, size)]).unwrap();
    let mut by_offset: Vec<(u64, &str)> = PATHS
        .iter()
        .map(|p| (resolve(&stack, p).unwrap().inode.a, *p))
        .collect();
    by_offset.sort();
    by_offset.into_iter().map(|(_, p)| p).collect()
}

#[test]
fn files_sharing_a_name_are_gathered_where_the_first_is_and_the_rest_keep_path_order() {
    assert_eq!(
        stream_order(ContentOrder::Similarity),
        [
            "a/copyright",
            "b/copyright",
            "c/copyright",
            "c/sub/copyright",
            "a/x.txt",
            "b/v.aa",
            "b/y.txt",
            "c/z.txt",
        ]
    );
}

#[test]
fn path_order_keeps_the_depth_first_walk() {
    assert_eq!(stream_order(ContentOrder::Path), PATHS);
}

#[test]
fn identical_files_are_stored_once() {
    let src = tempfile::tempdir().unwrap();
    let data = vec![42u8; 100_000];
    fs::write(src.path().join("a"), &data).unwrap();
    fs::write(src.path().join("b"), &data).unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let stats = build_layer(src.path(), out.as_file(), 0, &small_options(), &NoProgress).unwrap();
    assert_eq!(stats.content_bytes, 200_000);
    assert_eq!(stats.unique_bytes, 100_000);
    let layer = open(&out, stats.layer_size);
    let stack = Stack::new(vec![layer]).unwrap();
    assert_eq!(read_all(&stack, &resolve(&stack, "b").unwrap()), data);
}

#[test]
fn metadata_types_modes_xattrs_and_hardlinks_survive() {
    let src = tempfile::tempdir().unwrap();
    let p = src.path();
    fs::create_dir(p.join("d")).unwrap();
    fs::write(p.join("d/suid"), b"x").unwrap();
    fs::set_permissions(p.join("d/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(p.join("one"), b"linked").unwrap();
    fs::hard_link(p.join("one"), p.join("two")).unwrap();
    symlink("d/suid", p.join("link")).unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"bad\xffname");
    fs::write(p.join(odd), b"").unwrap();
    let has_xattrs = xattr::set(p.join("one"), "user.k", b"v").is_ok();

    let (_f, stack) = stack_of(&[p]);
    assert_eq!(
        resolve(&stack, "d/suid").unwrap().inode.mode,
        S_IFREG | 0o4755
    );
    let link = resolve(&stack, "link").unwrap();
    assert_eq!(link.inode.mode & 0o170000, S_IFLNK);
    assert_eq!(stack.read_link(&link).unwrap(), b"d/suid");
    let one = resolve(&stack, "one").unwrap();
    let two = resolve(&stack, "two").unwrap();
    assert_eq!(one.id, two.id, "hardlinks share one node");
    assert_eq!(one.inode.nlink, 2);
    let root = stack.entry(ROOT).unwrap();
    assert!(stack.lookup(ROOT, b"bad\xffname").unwrap().is_some());
    assert_eq!(root.inode.mode & 0o170000, S_IFDIR);
    assert_eq!(
        root.inode.mtime_sec,
        fs::metadata(p).unwrap().mtime(),
        "directory mtime kept"
    );
    if has_xattrs {
        assert_eq!(
            stack.xattrs(&one).unwrap(),
            vec![(b"user.k".to_vec(), b"v".to_vec())]
        );
    }
}

#[test]
fn a_stack_knows_whether_any_layer_has_an_xattr() {
    let plain = tempfile::tempdir().unwrap();
    fs::write(plain.path().join("f"), b"x").unwrap();
    let (_f, stack) = stack_of(&[plain.path()]);
    assert!(!stack.has_xattrs(), "no xattr anywhere");

    let marked = tempfile::tempdir().unwrap();
    fs::write(marked.path().join("g"), b"y").unwrap();
    if xattr::set(marked.path().join("g"), "user.k", b"v").is_err() {
        eprintln!("skipped: the temporary directory takes no user xattrs");
        return;
    }
    let (_g, stack) = stack_of(&[plain.path(), marked.path()]);
    assert!(stack.has_xattrs(), "one layer of two has one");
}

#[test]
fn sparse_file_stores_only_data_and_reads_holes_as_zeros() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("sparse");
    let mut f = File::create(&path).unwrap();
    f.set_len(10 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"middle", 5 << 20).unwrap();
    f.flush().unwrap();
    drop(f);
    let out = tempfile::NamedTempFile::new().unwrap();
    let stats = build_layer(src.path(), out.as_file(), 0, &small_options(), &NoProgress).unwrap();
    assert!(stats.unique_bytes < 1 << 20, "holes were stored");
    let stack = Stack::new(vec![open(&out, stats.layer_size)]).unwrap();
    let e = resolve(&stack, "sparse").unwrap();
    assert_eq!(e.inode.size, 10 << 20);
    let mut buf = [1u8; 8];
    stack.read(&e, (5 << 20) - 2, &mut buf).unwrap();
    assert_eq!(&buf, b"\0\0middle");
    let mut zeros = [1u8; 16];
    stack.read(&e, 100, &mut zeros).unwrap();
    assert_eq!(zeros, [0u8; 16]);
    // Holes are not in any block: never served in place.
    assert!(stack.read_in_place(&e, 5 << 20, 6).unwrap().is_none());
}

#[test]
fn upper_layer_wins_and_whiteout_hides_lower_file() {
    let lower = tempfile::tempdir().unwrap();
    let upper = tempfile::tempdir().unwrap();
    fs::write(lower.path().join("keep"), b"lower").unwrap();
    fs::write(lower.path().join("gone"), b"lower").unwrap();
    fs::write(lower.path().join("both"), b"lower").unwrap();
    fs::write(upper.path().join("both"), b"upper").unwrap();
    fs::write(upper.path().join(".wh.gone"), b"").unwrap();
    let (_f, stack) = stack_of(&[lower.path(), upper.path()]);
    assert_eq!(names(&stack, ""), ["both", "keep"]);
    assert!(resolve(&stack, "gone").is_none());
    assert_eq!(
        read_all(&stack, &resolve(&stack, "both").unwrap()),
        b"upper"
    );
}

#[test]
fn opaque_directory_hides_lower_contents_but_merged_directory_does_not() {
    let l0 = tempfile::tempdir().unwrap();
    let l1 = tempfile::tempdir().unwrap();
    let l2 = tempfile::tempdir().unwrap();
    for d in ["opaque", "merged"] {
        fs::create_dir(l0.path().join(d)).unwrap();
        fs::write(l0.path().join(d).join("old"), b"0").unwrap();
    }
    fs::create_dir(l1.path().join("merged")).unwrap();
    fs::write(l1.path().join("merged/mid"), b"1").unwrap();
    fs::create_dir(l2.path().join("opaque")).unwrap();
    fs::write(l2.path().join("opaque/.wh..wh..opq"), b"").unwrap();
    fs::write(l2.path().join("opaque/new"), b"2").unwrap();
    fs::create_dir(l2.path().join("merged")).unwrap();
    fs::write(l2.path().join("merged/top"), b"2").unwrap();
    let (_f, stack) = stack_of(&[l0.path(), l1.path(), l2.path()]);
    assert_eq!(names(&stack, "opaque"), ["new"]);
    assert_eq!(names(&stack, "merged"), ["mid", "old", "top"]);
    assert!(resolve(&stack, "opaque/old").is_none());
    assert!(resolve(&stack, "merged/old").is_some());
}

#[test]
fn file_in_upper_layer_replaces_lower_directory() {
    let lower = tempfile::tempdir().unwrap();
    let upper = tempfile::tempdir().unwrap();
    fs::create_dir(lower.path().join("x")).unwrap();
    fs::write(lower.path().join("x/inside"), b"").unwrap();
    fs::write(upper.path().join("x"), b"file").unwrap();
    let (_f, stack) = stack_of(&[lower.path(), upper.path()]);
    let x = resolve(&stack, "x").unwrap();
    assert_eq!(x.inode.mode & 0o170000, S_IFREG);
    assert!(stack.lookup(x.id, b"inside").unwrap().is_none());
}

#[test]
fn flipped_data_byte_is_a_clear_error_on_read_and_verify() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), vec![9u8; 20_000]).unwrap();
    let (f, size) = build(src.path(), &small_options());
    let mut bytes = fs::read(f.path()).unwrap();
    bytes[256 + 4] ^= 1; // the first data block starts right after the 256-byte superblock
    fs::write(f.path(), &bytes).unwrap();
    let layer = open(&f, size);
    let err = layer.verify().unwrap_err().to_string();
    assert!(err.contains("digest mismatch"), "{err}");
    let stack = Stack::new(vec![layer]).unwrap();
    let e = resolve(&stack, "f").unwrap();
    let mut buf = [0u8; 10];
    let err = stack.read(&e, 0, &mut buf).unwrap_err().to_string();
    assert!(err.contains("data block 0 checksum mismatch"), "{err}");
}

#[test]
fn truncated_layer_is_refused_at_open() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"abc").unwrap();
    let (f, size) = build(src.path(), &small_options());
    // SAFETY: test file.
    let map = Arc::new(unsafe { memmap2::Mmap::map(f.as_file()).unwrap() });
    let err = Layer::open(map, 0, size - 1, BlockCache::new(1 << 20))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn stored_layer_extracts_whiteouts_as_oci_markers() {
    let src = tempfile::tempdir().unwrap();
    fs::create_dir(src.path().join("d")).unwrap();
    fs::write(src.path().join("d/.wh..wh..opq"), b"").unwrap();
    fs::write(src.path().join(".wh.x"), b"").unwrap();
    let (_f, stack) = stack_of(&[src.path()]);
    let dest = tempfile::tempdir().unwrap();
    let out = dest.path().join("out");
    extract(&stack, &out, true).unwrap();
    assert!(out.join(".wh.x").exists());
    assert!(out.join("d/.wh..wh..opq").exists());
    let merged = dest.path().join("merged");
    extract(&stack, &merged, false).unwrap();
    assert!(!merged.join(".wh.x").exists());
    assert!(fs::read_dir(merged.join("d")).unwrap().next().is_none());
}

#[test]
fn oci_whiteout_beside_a_recreated_directory_makes_it_opaque() {
    let lower = tempfile::tempdir().unwrap();
    let upper = tempfile::tempdir().unwrap();
    fs::create_dir(lower.path().join("d")).unwrap();
    fs::write(lower.path().join("d/old"), b"0").unwrap();
    fs::write(upper.path().join(".wh.d"), b"").unwrap();
    fs::create_dir(upper.path().join("d")).unwrap();
    fs::write(upper.path().join("d/new"), b"1").unwrap();
    let (_f, stack) = stack_of(&[lower.path(), upper.path()]);
    assert_eq!(names(&stack, "d"), ["new"]);
}

#[test]
fn bare_oci_whiteout_marker_is_refused() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join(".wh."), b"").unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let options = BuildOptions {
        whiteouts: WhiteoutFormat::Oci,
        ..small_options()
    };
    let err = build_layer(src.path(), out.as_file(), 0, &options, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("must name"), "{err}");
}

/// A layer whose root holds a file named `name`, written as a crafted file would hold it:
/// the scanned tree is renamed behind the writer's back.
fn layer_with_name(name: &[u8]) -> (tempfile::NamedTempFile, Stack) {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"payload").unwrap();
    fs::create_dir(src.path().join("d")).unwrap();
    let mut tree = scan::scan(src.path(), WhiteoutFormat::None, &[]).unwrap();
    let root = &mut tree.nodes[0].children;
    for child in root.iter_mut() {
        if child.0 == "f" {
            child.0 = std::ffi::OsStr::from_bytes(name).to_os_string();
        }
    }
    root.sort();
    let out = tempfile::NamedTempFile::new().unwrap();
    let stats = writer::write_tree(&tree, out.as_file(), 0, &small_options(), &NoProgress).unwrap();
    let layer = open(&out, stats.layer_size);
    (out, Stack::new(vec![layer]).unwrap())
}

/// Names a crafted layer may hold that are not one path component a directory can have.
const HOSTILE_NAMES: [&[u8]; 6] = [b"a/b", b"..", b".", b"../../escape", b"x\0y", &[b'n'; 256]];

#[test]
fn crafted_names_that_are_not_one_path_component_are_corruption() {
    for name in HOSTILE_NAMES {
        let (_f, stack) = layer_with_name(name);
        let shown = String::from_utf8_lossy(name);
        let listing = stack.read_dir(ROOT);
        let err = listing.expect_err(&shown).to_string();
        assert!(
            err.contains("not a single path component") || err.contains("longer than"),
            "{shown}: {err}"
        );
        // A lookup that meets it on the way of its binary search fails the same way or
        // finds nothing; it never answers with the crafted entry.
        for probe in [name, b"d".as_slice(), b"zzz".as_slice()] {
            if let Ok(Some(e)) = stack.lookup(ROOT, probe) {
                assert_eq!(probe, b"d", "{shown}: found {e:?}");
            }
        }
    }
}

#[test]
fn extracting_a_crafted_name_fails_and_writes_nothing_outside() {
    for name in HOSTILE_NAMES {
        let (_f, stack) = layer_with_name(name);
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("dest");
        let shown = String::from_utf8_lossy(name);
        assert!(extract(&stack, &dest, false).is_err(), "{shown}");
        let outside: Vec<_> = fs::read_dir(parent.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            outside.iter().all(|n| n == "dest"),
            "{shown}: {outside:?} beside the destination"
        );
    }
}
