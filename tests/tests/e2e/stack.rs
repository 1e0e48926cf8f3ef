//! Several inputs become a stack of layers: upper layers win, OCI whiteouts delete,
//! opaque directories hide what is below them. Checked through `fim extract` and
//! `fim mount`, and `--layer N` shows a layer as stored.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use fim_tests::fsutil::chmod;
use fim_tests::tree::{Kind, bytes_path, show};
use fim_tests::{Mount, assert_same_tree, build_with, fim, put, require_fuse, snapshot, tempdir};

/// A path and its content; `None` is a directory.
type Listing = BTreeMap<String, Option<Vec<u8>>>;

fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
}

/// Every path under `root` with its content (files) or `None` (directories). Anything
/// else is reported as a failure, since the stacks here hold only files and directories.
fn listing(root: &Path) -> Listing {
    let tree = snapshot(root);
    let mut out = Listing::new();
    for (path, node) in &tree.nodes {
        if path.is_empty() {
            continue;
        }
        let content = match node.kind {
            Kind::Dir => None,
            Kind::File => Some(
                fs::read(root.join(bytes_path(path)))
                    .unwrap_or_else(|e| panic!("read {}: {e}", show(path))),
            ),
            other => panic!("{}: unexpected {other:?}", show(path)),
        };
        out.insert(show(path), content);
    }
    out
}

fn expect(entries: &[(&str, Option<&str>)]) -> Listing {
    entries
        .iter()
        .map(|(p, c)| (p.to_string(), c.map(|c| c.as_bytes().to_vec())))
        .collect()
}

#[track_caller]
fn assert_listing(expected: &Listing, got: &Listing, what: &str) {
    if expected == got {
        return;
    }
    let mut lines = Vec::new();
    for (p, c) in expected {
        match got.get(p) {
            None => lines.push(format!("missing {p}")),
            Some(g) if g != c => lines.push(format!(
                "{p}: expected {:?}, got {:?}",
                c.as_deref().map(String::from_utf8_lossy),
                g.as_deref().map(String::from_utf8_lossy)
            )),
            _ => {}
        }
    }
    for p in got.keys().filter(|p| !expected.contains_key(*p)) {
        lines.push(format!("unexpected {p}"));
    }
    panic!("{what}:\n  {}", lines.join("\n  "));
}

struct Stack {
    work: tempfile::TempDir,
    layers: Vec<PathBuf>,
    image: PathBuf,
}

/// Three layers exercising every rule; see [`merged`] for the result.
fn make_stack() -> Stack {
    let work = tempdir();
    let l0 = work.path().join("l0");
    let l1 = work.path().join("l1");
    let l2 = work.path().join("l2");

    put(&l0, "a/keep.txt", b"keep");
    put(&l0, "a/gone.txt", b"gone");
    put(&l0, "d/old1", b"old1");
    put(&l0, "d/sub/old2", b"old2");
    put(&l0, "f.txt", b"v0");
    put(&l0, "m/x", b"x0");
    put(&l0, "r/inner", b"inner");
    put(&l0, "top0", b"top0");
    put(&l0, "w/file", b"w0");
    put(&l0, "back", b"orig");
    put(&l0, "file-becomes-dir", b"a file in l0");

    // L1 deletes a file, adds files to a directory of L0, adds a new directory, deletes a
    // whole directory and a file that L2 brings back.
    put(&l1, "a/.wh.gone.txt", b"");
    put(&l1, "m/y", b"y1");
    put(&l1, "m/z", b"z1");
    put(&l1, "n/new1", b"n1");
    put(&l1, ".wh.w", b"");
    put(&l1, ".wh.back", b"");

    // L2 makes `d` opaque with new content, overrides a file, replaces a directory by a
    // file and a file by a directory, deletes a file L1 added, merges into L1's new
    // directory, re-creates the directory L1 deleted and the file L1 deleted.
    put(&l2, "d/.wh..wh..opq", b"");
    put(&l2, "d/new", b"new");
    chmod(&l2.join("d"), 0o700);
    put(&l2, "f.txt", b"v2");
    put(&l2, "r", b"r is a file now");
    put(&l2, "file-becomes-dir/inside", b"a dir in l2");
    put(&l2, "m/.wh.z", b"");
    put(&l2, "n/new2", b"n2");
    put(&l2, "w/fresh", b"fresh");
    put(&l2, "back", b"again");

    let image = work.path().join("image");
    build_with(
        &[&l0, &l1, &l2],
        &image,
        &["--level", "3", "--whiteouts", "oci"],
    );
    Stack {
        work,
        layers: vec![l0, l1, l2],
        image,
    }
}

/// The merged tree of [`make_stack`], written by hand.
fn merged() -> Listing {
    expect(&[
        ("a", None),
        ("a/keep.txt", Some("keep")),
        ("back", Some("again")),
        ("d", None),
        ("d/new", Some("new")),
        ("f.txt", Some("v2")),
        ("file-becomes-dir", None),
        ("file-becomes-dir/inside", Some("a dir in l2")),
        ("m", None),
        ("m/x", Some("x0")),
        ("m/y", Some("y1")),
        ("n", None),
        ("n/new1", Some("n1")),
        ("n/new2", Some("n2")),
        ("r", Some("r is a file now")),
        ("top0", Some("top0")),
        ("w", None),
        ("w/fresh", Some("fresh")),
    ])
}

fn extract(image: &Path, dest: &Path, layer: Option<usize>) {
    let mut args = vec![
        OsStr::new("extract").to_owned(),
        image.as_os_str().to_owned(),
        dest.as_os_str().to_owned(),
    ];
    if let Some(n) = layer {
        args.push("--layer".into());
        args.push(n.to_string().into());
    }
    fim(&args).assert_ok();
}

#[test]
fn extract_shows_the_merged_stack() {
    let s = make_stack();
    fim([OsStr::new("verify"), s.image.as_os_str()]).assert_ok();
    let dest = s.work.path().join("merged");
    extract(&s.image, &dest, None);
    assert_listing(&merged(), &listing(&dest), "fim extract of 3 layers");
    // The opaque directory's own attributes come from the layer that made it opaque.
    let mode = fs::metadata(dest.join("d")).map(|m| m.permissions().mode() & 0o7777);
    assert_eq!(mode.ok(), Some(0o700));
}

#[test]
fn mount_shows_the_merged_stack() {
    if !require_fuse("mount_shows_the_merged_stack") {
        return;
    }
    let s = make_stack();
    let mnt = s.work.path().join("mnt");
    mkdir(&mnt);
    let mount = Mount::start(&s.image, &mnt);
    let seen = listing(mount.dir());
    // Lookups of names that are hidden must fail too, not only be absent from listings.
    for hidden in ["a/gone.txt", "d/old1", "d/sub", "m/z", "r/inner", "w/file"] {
        assert!(
            fs::symlink_metadata(mnt.join(hidden)).is_err(),
            "{hidden} is visible through the mount"
        );
    }
    mount.stop();
    assert_listing(&merged(), &seen, "fim mount of 3 layers");
}

#[test]
fn extract_layer_shows_whiteouts_as_oci_markers() {
    let s = make_stack();
    let l1 = s.work.path().join("layer1");
    extract(&s.image, &l1, Some(1));
    assert_listing(
        &expect(&[
            (".wh.back", Some("")),
            (".wh.w", Some("")),
            ("a", None),
            ("a/.wh.gone.txt", Some("")),
            ("m", None),
            ("m/y", Some("y1")),
            ("m/z", Some("z1")),
            ("n", None),
            ("n/new1", Some("n1")),
        ]),
        &listing(&l1),
        "fim extract --layer 1",
    );
    let l2 = s.work.path().join("layer2");
    extract(&s.image, &l2, Some(2));
    let got = listing(&l2);
    for marker in ["d/.wh..wh..opq", "m/.wh.z"] {
        assert_eq!(
            got.get(marker),
            Some(&Some(Vec::new())),
            "{marker} in --layer 2: {got:?}"
        );
    }
    let out = fim([
        OsStr::new("extract"),
        s.image.as_os_str(),
        s.work.path().join("layer3").as_os_str(),
        OsStr::new("--layer"),
        OsStr::new("3"),
    ]);
    out.assert_clean_failure("fim: ");
}

/// Each layer extracted as stored and built again with `--whiteouts oci` gives the same
/// merged tree, metadata included.
#[test]
fn layers_extracted_as_stored_rebuild_the_same_stack() {
    let s = make_stack();
    let original = s.work.path().join("merged");
    extract(&s.image, &original, None);
    let mut stored = Vec::new();
    for n in 0..s.layers.len() {
        let dir = s.work.path().join(format!("stored{n}"));
        extract(&s.image, &dir, Some(n));
        stored.push(dir);
    }
    let rebuilt = s.work.path().join("rebuilt");
    let inputs: Vec<&Path> = stored.iter().map(PathBuf::as_path).collect();
    build_with(&inputs, &rebuilt, &["--level", "3", "--whiteouts", "oci"]);
    let again = s.work.path().join("merged-again");
    extract(&rebuilt, &again, None);
    assert_same_tree(&snapshot(&original), &snapshot(&again), "rebuilt stack");
}

/// With the default `--whiteouts none`, markers are ordinary files.
#[test]
fn markers_are_literal_without_whiteouts_option() {
    let s = make_stack();
    let image = s.work.path().join("literal");
    build_with(&[&s.layers[0], &s.layers[1]], &image, &["--level", "3"]);
    let dest = s.work.path().join("literal-merged");
    extract(&image, &dest, None);
    let got = listing(&dest);
    for present in [
        "a/gone.txt",
        "a/.wh.gone.txt",
        ".wh.w",
        "w/file",
        "back",
        "m/z",
    ] {
        assert!(got.contains_key(present), "{present} missing: {got:?}");
    }
}

/// An opaque root in the top layer hides every lower layer.
#[test]
fn opaque_root_hides_every_lower_layer() {
    let s = make_stack();
    let top = s.work.path().join("opaque-top");
    put(&top, ".wh..wh..opq", b"");
    put(&top, "only", b"only this");
    let image = s.work.path().join("opaque");
    build_with(
        &[&s.layers[0], &s.layers[1], &top],
        &image,
        &["--level", "3", "--whiteouts", "oci"],
    );
    let dest = s.work.path().join("opaque-merged");
    extract(&image, &dest, None);
    assert_listing(
        &expect(&[("only", Some("only this"))]),
        &listing(&dest),
        "opaque root",
    );
}
