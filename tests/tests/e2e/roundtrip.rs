//! A root filesystem with every kind of entry goes through `fim build` and comes back
//! exactly: through `fim extract`, through `fim mount`, and when given as a tarball.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fim_tests::fsutil::{chmod, lchown, mknod, set_mtime, write_random};
use fim_tests::tree::{Kind, bytes_path};
use fim_tests::{
    Mount, Rng, Tree, assert_same_tree, build, build_with, fim, is_root, put, require_fuse, run,
    skip, snapshot, tempdir, which,
};

const GIB: u64 = 1 << 30;
/// Paths (relative to the source root) with something the tarball case leaves out.
const SPARSE: &[u8] = b"sparse/big";
const SOCKET: &[u8] = b"special/socket";
const XATTR_NEWLINE: &[u8] = b"xattr/newline-value";

/// The source tree, its snapshot and its image, built once and shared by the tests of
/// this file; removed when the test process exits.
struct Fixture {
    dir: tempfile::TempDir,
    src: PathBuf,
    image: PathBuf,
    tree: Tree,
}

static SHARED: Mutex<Option<Arc<Fixture>>> = Mutex::new(None);

/// Runs at exit (the test harness ends with `exit`): drops the fixture, which removes
/// its directory (a 5 GiB sparse file and 20,000 small files).
extern "C" fn remove_fixture() {
    let fixture = SHARED.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(fixture);
}

fn fixture() -> Arc<Fixture> {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = shared.as_ref() {
        return f.clone();
    }
    let dir = tempdir();
    let src = dir.path().join("src");
    let started = Instant::now();
    make_source(&src);
    let tree = snapshot(&src);
    eprintln!(
        "roundtrip: source of {} entries made in {:.1} s",
        tree.nodes.len(),
        started.elapsed().as_secs_f64()
    );
    let image = dir.path().join("image");
    let started = Instant::now();
    build(&[&src], &image);
    eprintln!(
        "roundtrip: image of {} bytes built in {:.1} s",
        fs::metadata(&image).map(|m| m.len()).unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
    let f = Arc::new(Fixture {
        dir,
        src,
        image,
        tree,
    });
    // SAFETY: registers a plain function without arguments to run at exit.
    unsafe { libc::atexit(remove_fixture) };
    *shared = Some(f.clone());
    f
}

fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
}

fn symlink(target: &[u8], path: &Path) {
    std::os::unix::fs::symlink(OsStr::from_bytes(target), path)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", path.display()));
}

fn hard_link(from: &Path, to: &Path) {
    fs::hard_link(from, to).unwrap_or_else(|e| panic!("link {}: {e}", to.display()));
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> bool {
    match xattr::set(path, name, value) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("roundtrip: cannot set {name} on {}: {e}", path.display());
            false
        }
    }
}

/// Every directory under `root` (root included), deepest first.
fn dirs_deepest_first(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let e = e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
        out.push(dir);
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// Writes the source tree: every entry type, mode, owner, time and name a root
/// filesystem can hold, a 5 GiB sparse file and 20,000 small files.
fn make_source(src: &Path) {
    let root = is_root();
    let mut rng = Rng::new(0x5eed_0001);
    mkdir(src);

    // Regular files and modes.
    put(src, "files/empty", b"");
    put(src, "files/small", b"hello, world\n");
    write_random(&src.join("files/random-3m"), 3 << 20, &mut rng);
    for (name, mode) in [
        ("mode-0600", 0o600),
        ("mode-0444", 0o444),
        ("setuid", 0o4755),
        ("setgid", 0o2755),
        ("all-bits", 0o7777),
    ] {
        let p = put(src, format!("files/{name}"), name.as_bytes());
        chmod(&p, mode);
    }
    if root {
        // Unreadable but for root, whose snapshot can still hash it.
        let p = put(src, "files/mode-0000", b"nobody reads this");
        chmod(&p, 0o000);
        // Read-only for its owner: fine for root, but a user could not clean it up.
        let d = src.join("dirs/read-only");
        mkdir(&d);
        put(&d, "inside", b"x");
        chmod(&d, 0o555);
    }
    for (name, mode) in [
        ("sticky", 0o1777),
        ("setgid-dir", 0o2755),
        ("private", 0o700),
    ] {
        let p = src.join("dirs").join(name);
        mkdir(&p);
        put(&p, "inside", b"x");
        chmod(&p, mode);
    }
    mkdir(&src.join("dirs/empty"));

    // Nesting, and a deep path of 60 levels.
    put(src, "nested/a/b/c/d/e/file", b"nested\n");
    let mut deep = src.join("deep");
    for i in 0..60 {
        deep.push(format!("{}", i % 10));
    }
    put(&deep, "bottom", b"60 levels down\n");

    // Symlinks.
    mkdir(&src.join("links"));
    symlink(b"../files/small", &src.join("links/relative"));
    symlink(b"/etc/passwd", &src.join("links/absolute"));
    symlink(b"does/not/exist", &src.join("links/dangling"));
    symlink(b"../links", &src.join("links/to-dir"));
    symlink(b"caf\xe9/\xff", &src.join("links/binary-target"));

    // Hardlinks: a group of three across directories, and a pair.
    let one = put(src, "hard/one", b"three names, one inode\n");
    mkdir(&src.join("hard/sub"));
    mkdir(&src.join("elsewhere"));
    hard_link(&one, &src.join("hard/sub/two"));
    hard_link(&one, &src.join("elsewhere/three"));
    let a = put(src, "hard/pair-a", b"two names\n");
    hard_link(&a, &src.join("hard/pair-b"));
    chmod(&a, 0o640);

    // Special files.
    mkdir(&src.join("special"));
    mknod(&src.join("special/fifo"), libc::S_IFIFO, 0o640, 0, 0);
    let socket = src.join(bytes_path(SOCKET));
    drop(
        std::os::unix::net::UnixListener::bind(&socket)
            .unwrap_or_else(|e| panic!("bind {}: {e}", socket.display())),
    );
    if root {
        mknod(&src.join("special/null"), libc::S_IFCHR, 0o666, 1, 3);
        mknod(&src.join("special/loop0"), libc::S_IFBLK, 0o660, 7, 0);
        mknod(
            &src.join("special/big-numbers"),
            libc::S_IFCHR,
            0o600,
            4095,
            1 << 19,
        );
    } else {
        skip("roundtrip: device nodes left out of the source (needs root)");
    }

    // Owners.
    if root {
        let f = put(src, "owned/file", b"owned by 1234:5678\n");
        lchown(&f, 1234, 5678);
        let s = put(src, "owned/setuid-after-chown", b"#!/bin/sh\n");
        lchown(&s, 1234, 5678);
        chmod(&s, 0o4750);
        let d = src.join("owned/dir");
        mkdir(&d);
        put(&d, "f", b"in a dir owned by 4000:4001\n");
        lchown(&d, 4000, 4001);
        let l = src.join("owned/link");
        symlink(b"file", &l);
        lchown(&l, 1234, 5678);
        mknod(&src.join("owned/fifo"), libc::S_IFIFO, 0o600, 0, 0);
        lchown(&src.join("owned/fifo"), 65534, 65534);
    } else {
        skip("roundtrip: other owners left out of the source (needs root)");
    }

    // Xattrs.
    let x = put(src, "xattr/file", b"with xattrs\n");
    let dx = src.join("xattr/dir");
    mkdir(&dx);
    let user_ok = set_xattr(&x, "user.one", b"1")
        && set_xattr(&x, "user.empty", b"")
        && set_xattr(&x, "user.binary", b"\x00\xff\x01 value=")
        && set_xattr(&x, "user.big", &[b'v'; 3000])
        && set_xattr(
            &put(src, bytes_path(XATTR_NEWLINE), b"x"),
            "user.newline",
            b"two\nlines\n",
        )
        && set_xattr(&dx, "user.on-a-dir", b"dir value");
    if !user_ok {
        skip("roundtrip: user.* xattrs not supported here; left out");
    }
    if !(root
        && set_xattr(&x, "trusted.fim-test", b"trusted value")
        && set_xattr(&dx, "trusted.dir", b"t"))
    {
        let _ = xattr::remove(&x, "trusted.fim-test");
        skip("roundtrip: trusted.* xattrs left out (needs root and support)");
    }

    // Names: not UTF-8, spaces, newlines, literal OCI markers (taken literally by
    // default), the longest name.
    let names = src.join("names");
    mkdir(&names);
    let long = vec![b'n'; 255];
    for name in [
        &b"caf\xe9"[..],
        b"\xff\xfe",
        b"with space",
        b" leading and trailing ",
        b"with\nnewline",
        b".wh.literal",
        b".wh..wh..opq",
        b"-dash",
        b"*?[glob]",
        &long,
    ] {
        let p = names.join(OsStr::from_bytes(name));
        fs::write(&p, name).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }
    mkdir(&names.join(OsStr::from_bytes(b"dir \xe9\n")));
    put(
        &names.join(OsStr::from_bytes(b"dir \xe9\n")),
        "inner",
        b"inner",
    );

    // A sparse file over 4 GiB: data at 0, at 2 GiB and at the very end.
    let sparse = src.join(bytes_path(SPARSE));
    mkdir(sparse.parent().unwrap_or(src));
    let f = fs::File::create(&sparse).unwrap_or_else(|e| panic!("{}: {e}", sparse.display()));
    f.set_len(5 * GIB).expect("set_len of the sparse file");
    let mut block = vec![0u8; 4096];
    for (at, len) in [(0, 4096), (2 * GIB, 4096), (5 * GIB - 3000, 3000)] {
        rng.fill(&mut block[..len]);
        f.write_all_at(&block[..len], at)
            .expect("write sparse data");
    }
    drop(f);
    // A small sparse file too, with a hole at the end.
    let f = fs::File::create(src.join("sparse/hole-at-end")).expect("create sparse file");
    f.write_all_at(b"data then a hole", 8192)
        .expect("write sparse data");
    f.set_len(1 << 20).expect("set_len");
    drop(f);

    // 20,000 small files over 100 directories; one in five shares its content with others.
    for d in 0..100 {
        let dir = src.join(format!("many/d{d:03}"));
        mkdir(&dir);
        for i in 0..200 {
            let n = d * 200 + i;
            let content = if n % 5 == 0 {
                format!("shared content #{}\n", n % 7).repeat(1 + n % 13)
            } else {
                let len = rng.range(1, 4096) as usize;
                let mut v = vec![0u8; len];
                if n % 2 == 0 {
                    rng.fill(&mut v);
                } else {
                    v.iter_mut()
                        .enumerate()
                        .for_each(|(k, b)| *b = b"abcdefgh \n"[(k * n + d) % 10]);
                }
                String::from_utf8_lossy(&v).into_owned()
            };
            fs::write(dir.join(format!("f{i:03}.txt")), content).expect("write a small file");
        }
    }

    // Times before 1970 and after 2038.
    put(src, "times/before-1970", b"old");
    put(src, "times/after-2038", b"new");

    // Explicit nanosecond mtimes: on chosen entries, then on every directory, deepest
    // first (so creating entries does not change them afterwards), the root last.
    let mut times = vec![
        ("files/small", 1_600_000_000, 123_456_789),
        ("files/empty", 1, 1),
        ("files/random-3m", 4_000_000_000, 999_999_999),
        ("links/relative", 1_500_000_000, 5),
        ("links/dangling", 1_234_567_890, 987_654_321),
        ("hard/one", 1_000_000_000, 500_000_000),
        ("special/fifo", 1_111_111_111, 111_111_111),
        ("xattr/file", 1_700_000_000, 42),
        ("times/before-1970", -31_536_000, 250_000_000),
        ("times/after-2038", 4_102_444_800, 1),
    ];
    if root {
        times.push(("special/null", 1_222_222_222, 222_222_222));
        times.push(("owned/link", 1_333_333_333, 333));
    }
    for (rel, sec, nsec) in times {
        set_mtime(&src.join(rel), sec, nsec);
    }
    for (i, dir) in dirs_deepest_first(src).iter().enumerate() {
        set_mtime(
            dir,
            1_650_000_000 + i as i64,
            (i as i64 * 7_919) % 1_000_000_000,
        );
    }
}

fn tree_has(tree: &Tree, path: &[u8], kind: Kind) {
    let node = tree
        .get(path)
        .unwrap_or_else(|| panic!("the source lacks {}", String::from_utf8_lossy(path)));
    assert_eq!(node.kind, kind, "{}", String::from_utf8_lossy(path));
}

/// The source really holds what the tests claim to cover (guards against a setup
/// step that silently did nothing).
fn check_source(tree: &Tree) {
    assert!(tree.file_count() > 20_000, "{} files", tree.file_count());
    tree_has(tree, SPARSE, Kind::File);
    assert_eq!(tree.get(SPARSE).and_then(|n| n.size), Some(5 * GIB));
    tree_has(tree, b"special/fifo", Kind::Fifo);
    tree_has(tree, SOCKET, Kind::Socket);
    tree_has(tree, b"links/dangling", Kind::Symlink);
    tree_has(tree, b"names/caf\xe9", Kind::File);
    tree_has(tree, b"names/with\nnewline", Kind::File);
    if is_root() {
        tree_has(tree, b"special/null", Kind::CharDevice);
        tree_has(tree, b"special/loop0", Kind::BlockDevice);
        assert_eq!(
            tree.get(b"owned/file").map(|n| (n.uid, n.gid)),
            Some((1234, 5678))
        );
    }
    let setuid = tree.get(b"files/setuid").map(|n| n.mode & 0o7777);
    assert_eq!(setuid, Some(0o4755));
    let groups = tree.link_groups();
    assert!(
        groups.contains(&vec![
            b"elsewhere/three".to_vec(),
            b"hard/one".to_vec(),
            b"hard/sub/two".to_vec()
        ]),
        "{groups:?}"
    );
    assert_eq!(
        tree.get(b"files/small").map(|n| n.mtime),
        Some((1_600_000_000, 123_456_789))
    );
}

#[test]
fn extract_reproduces_every_kind_of_entry_exactly() {
    let f = fixture();
    check_source(&f.tree);
    fim([OsStr::new("verify"), f.image.as_os_str()]).assert_ok();
    let out = tempdir();
    let dest = out.path().join("extracted");
    let started = Instant::now();
    let x = fim([OsStr::new("extract"), f.image.as_os_str(), dest.as_os_str()]);
    x.assert_ok();
    assert!(
        !x.stderr.contains("warning"),
        "fim extract warned: {}",
        x.stderr
    );
    eprintln!(
        "roundtrip: extracted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_same_tree(&f.tree, &snapshot(&dest), "fim extract");
}

#[test]
fn mount_shows_every_kind_of_entry_exactly() {
    if !require_fuse("mount_shows_every_kind_of_entry_exactly") {
        return;
    }
    let f = fixture();
    let mnt = f.dir.path().join("mnt");
    mkdir(&mnt);
    let mount = Mount::start(&f.image, &mnt);
    let started = Instant::now();
    let seen = snapshot(mount.dir());
    eprintln!(
        "roundtrip: snapshot through FUSE in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let log = mount.stop();
    assert!(log.contains("fim: mounted"), "fim mount said: {log}");
    assert_same_tree(&f.tree, &seen, "fim mount");
}

/// Makes `SRC.tar.zst` of `src` with GNU tar in pax format (xattrs, long and binary
/// names, numeric owners), leaving out `exclude` (tar patterns).
fn make_tarball(src: &Path, tarball: &Path, exclude: &[&str]) {
    let mut cmd = Command::new("tar");
    cmd.args([
        "--zstd",
        "--xattrs",
        "--xattrs-include=*",
        "--format=posix",
        "--numeric-owner",
    ]);
    for pattern in exclude {
        cmd.arg(format!("--exclude={pattern}"));
    }
    run(cmd.arg("-cf").arg(tarball).arg("-C").arg(src).arg(".")).assert_ok();
}

fn have_tar_and_zstd(test: &str) -> bool {
    if which("tar").is_some() && which("zstd").is_some() {
        return true;
    }
    skip(&format!("{test}: needs tar and zstd on PATH"));
    false
}

/// Builds an image from `tarball` in `work` and returns the snapshot of its extraction;
/// checks that the build leaves no staging directory behind.
fn build_and_extract(tarball: &Path, work: &Path) -> Tree {
    let image = work.join("from-tarball");
    build(&[tarball], &image);
    let dest = work.join("extracted");
    fim([OsStr::new("extract"), image.as_os_str(), dest.as_os_str()]).assert_ok();
    let leftovers: Vec<_> = fs::read_dir(work)
        .expect("read the work dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n.as_bytes().starts_with(b"."))
        .collect();
    assert!(leftovers.is_empty(), "staging leftovers: {leftovers:?}");
    snapshot(&dest)
}

/// What a tarball input still loses (a known limitation of the tar crate's pax parser,
/// which splits records on newlines; documented in the README): an xattr value holding a
/// newline is dropped, and an entry whose path holds a newline keeps whole-second mtimes.
/// Applied to both sides, so the comparison still holds once this is fixed.
fn forget_known_tarball_gaps(tree: &mut Tree) {
    if let Some(node) = tree.nodes.get_mut(XATTR_NEWLINE) {
        node.xattrs.clear();
    }
    for (path, node) in tree.nodes.iter_mut() {
        if path.contains(&b'\n') {
            node.mtime.1 = 0;
        }
    }
}

/// The whole source as a .tar.zst gives the same tree as the directory. Left out: the
/// 5 GiB sparse file (GNU tar's pax sparse format is not one fim reads, and without
/// `--sparse` it would archive 5 GiB of zeros) and the socket (tar cannot archive one).
#[test]
fn tarball_input_gives_the_same_tree_as_the_directory() {
    if !have_tar_and_zstd("tarball_input_gives_the_same_tree_as_the_directory") {
        return;
    }
    let f = fixture();
    let work = tempdir();
    let tarball = work.path().join("rootfs.tar.zst");
    make_tarball(&f.src, &tarball, &["./sparse/big", "./special/socket"]);
    let work_dir = work.path().join("work");
    mkdir(&work_dir);
    let mut got = build_and_extract(&tarball, &work_dir);
    let mut expected = f.tree.clone();
    expected.remove(SPARSE);
    expected.remove(SOCKET);
    forget_known_tarball_gaps(&mut expected);
    forget_known_tarball_gaps(&mut got);
    assert_same_tree(&expected, &got, "fim build of a .tar.zst, then fim extract");
}

/// The strict form of the tarball round trip, on the cases the tar crate alone gets
/// wrong and the packer repairs from the pax records: nanosecond and pre-1970 mtimes,
/// and directory xattrs.
#[test]
fn tarball_input_keeps_nanoseconds_old_mtimes_and_directory_xattrs() {
    if !have_tar_and_zstd("tarball_input_keeps_nanoseconds_old_mtimes_and_directory_xattrs") {
        return;
    }
    let work = tempdir();
    let src = work.path().join("src");
    let file = put(&src, "nanoseconds", b"a");
    set_mtime(&file, 1_600_000_000, 123_456_789);
    let old = put(&src, "before-1970", b"b");
    set_mtime(&old, -31_536_000, 0);
    let plain = put(&src, "plain-xattr", b"c");
    assert!(set_xattr(&plain, "user.b-plain", b"plain"));
    let dir = src.join("dir-with-xattr");
    mkdir(&dir);
    assert!(set_xattr(&dir, "user.dir", b"value"));
    set_mtime(&dir, 1_600_000_001, 1);
    set_mtime(&src, 1_600_000_002, 2);
    let expected = snapshot(&src);
    let tarball = work.path().join("src.tar.zst");
    make_tarball(&src, &tarball, &[]);
    let work_dir = work.path().join("work");
    mkdir(&work_dir);
    let got = build_and_extract(&tarball, &work_dir);
    assert_same_tree(&expected, &got, "strict tarball round trip");
}

/// Block size, content order and level change how data is stored, never what comes out.
#[test]
fn build_options_do_not_change_the_tree() {
    let work = tempdir();
    let src = work.path().join("src");
    let mut rng = Rng::new(7);
    mkdir(&src);
    write_random(&src.join("random"), 300_000, &mut rng);
    put(
        &src,
        "text/a.txt",
        "line of text\n".repeat(20_000).as_bytes(),
    );
    put(
        &src,
        "text/b.txt",
        "line of text\n".repeat(20_001).as_bytes(),
    );
    put(&src, "empty", b"");
    let a = put(&src, "linked", b"linked");
    hard_link(&a, &src.join("text/linked-too"));
    let f = fs::File::create(src.join("sparse")).expect("create sparse file");
    f.write_all_at(&[7u8; 10_000], 100_000).expect("write");
    f.set_len(1 << 20).expect("set_len");
    drop(f);
    let expected = snapshot(&src);
    for (name, extra) in [
        (
            "4k-path",
            &["--block-size", "4K", "--order", "path", "--level", "1"][..],
        ),
        ("64m-level19", &["--block-size", "64M", "--level", "19"][..]),
        (
            "128k",
            &["--block-size", "128K", "--order", "similarity"][..],
        ),
    ] {
        let image = work.path().join(name);
        build_with(&[&src], &image, extra);
        fim([OsStr::new("verify"), image.as_os_str()]).assert_ok();
        let dest = work.path().join(format!("{name}.out"));
        fim([OsStr::new("extract"), image.as_os_str(), dest.as_os_str()]).assert_ok();
        assert_same_tree(&expected, &snapshot(&dest), name);
    }
}

/// A real (small) root filesystem: busybox and its applet symlinks, from
/// `tools/make-test-rootfs`, round-trips through extract and mount.
#[test]
fn busybox_rootfs_roundtrips() {
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        skip("busybox_rootfs_roundtrips: needs busybox-static (/bin/busybox)");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/make-test-rootfs");
    let work = tempdir();
    let rootfs = work.path().join("rootfs");
    let made = run(Command::new(&script).arg(&rootfs));
    if !made.success() {
        // The script refuses a dynamic busybox; anything else is a failure.
        assert!(
            made.stderr.contains("busybox-static"),
            "tools/make-test-rootfs failed: {}",
            made.stderr
        );
        skip(&format!(
            "busybox_rootfs_roundtrips: {}",
            made.stderr.trim()
        ));
        return;
    }
    let expected = snapshot(&rootfs);
    assert!(
        expected.nodes.len() > 50,
        "a rootfs of {} entries",
        expected.nodes.len()
    );
    let image = work.path().join("busybox.img");
    build_with(&[&rootfs], &image, &["--level", "3", "--boot", "/bin/sh"]);
    let dest = work.path().join("extracted");
    fim([OsStr::new("extract"), image.as_os_str(), dest.as_os_str()]).assert_ok();
    assert_same_tree(&expected, &snapshot(&dest), "busybox rootfs, extracted");
    if require_fuse("busybox_rootfs_roundtrips (mount part)") {
        let mnt = work.path().join("mnt");
        mkdir(&mnt);
        let mount = Mount::start(&image, &mnt);
        let seen = snapshot(mount.dir());
        mount.stop();
        assert_same_tree(&expected, &seen, "busybox rootfs, mounted");
    }
}
