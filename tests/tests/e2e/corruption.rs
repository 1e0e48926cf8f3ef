//! Damaged images and files that are not images: every tool refuses them with one clear
//! line and status 125, never a panic. `fim verify` notices any changed byte.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use fim_tests::fsutil::write_random;
use fim_tests::{
    Layout, Mount, Rng, build_with, fim, fim_boot_path, layout, put, require_fuse, run, tempdir,
};

/// A verified image of two layers, its bytes and where its parts are.
struct Good {
    work: tempfile::TempDir,
    image: PathBuf,
    bytes: Vec<u8>,
    layout: Layout,
}

/// Two layers with several data blocks (64 KiB blocks) and files of every size, so each
/// layer has data blocks, metadata pages and tables worth hitting.
fn good_image() -> Good {
    let work = tempdir();
    let mut rng = Rng::new(0xc0ff_ee00);
    let l0 = work.path().join("l0");
    let l1 = work.path().join("l1");
    write_random(&put(&l0, "bin/random", b""), 300_000, &mut rng);
    put(
        &l0,
        "etc/text",
        "text that compresses\n".repeat(5000).as_bytes(),
    );
    for i in 0..300 {
        put(
            &l0,
            format!("many/file-{i:03}"),
            format!("{i}\n").as_bytes(),
        );
    }
    write_random(&put(&l1, "data/random", b""), 200_000, &mut rng);
    put(&l1, "etc/text", b"replaced by the upper layer\n");
    for i in 0..100 {
        put(
            &l1,
            format!("more/with-a-longer-name-{i:03}"),
            format!("{i}").repeat(i).as_bytes(),
        );
    }
    let image = work.path().join("good");
    build_with(
        &[&l0, &l1],
        &image,
        &["--level", "3", "--block-size", "64K"],
    );
    fim([OsStr::new("verify"), image.as_os_str()]).assert_ok();
    let bytes = fs::read(&image).expect("read the image");
    let layout = layout(&image);
    assert_eq!(layout.layers.len(), 2);
    assert_eq!(layout.size, bytes.len() as u64);
    Good {
        work,
        image,
        bytes,
        layout,
    }
}

/// Writes `bytes` as an executable file `name` in `dir`.
fn write_image(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod the image");
    path
}

fn verify_fails(image: &Path) -> String {
    let out = fim([OsStr::new("verify"), image.as_os_str()]);
    out.assert_clean_failure("fim: ");
    out.stderr
}

fn inspect_fails(image: &Path) {
    fim([OsStr::new("inspect"), image.as_os_str()]).assert_clean_failure("fim: ");
    fim([
        OsStr::new("inspect"),
        image.as_os_str(),
        OsStr::new("--json"),
    ])
    .assert_clean_failure("fim: ");
}

/// Runs the image itself; a damaged payload must give one line `NAME: ...` and 125.
fn run_image_fails(image: &Path, args: &[&str]) {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    run(Command::new(image).args(args)).assert_clean_failure(&format!("{name}: "));
}

fn le_u64(b: &[u8], at: u64) -> u64 {
    let at = at as usize;
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn le_u32(b: &[u8], at: u64) -> u64 {
    let at = at as usize;
    u64::from(u32::from_le_bytes(
        b[at..at + 4].try_into().expect("4 bytes"),
    ))
}

/// Where the parts of one layer are (absolute offsets).
struct LayerParts {
    /// `(offset, compressed size)` of each data block.
    blocks: Vec<(u64, u64)>,
    /// `(offset, compressed size)` of each metadata page.
    pages: Vec<(u64, u64)>,
    block_table: u64,
    meta_table: u64,
}

/// Reads the parts of the layer at `base` from its superblock and tables, as
/// `layers/src/format.rs` lays them out: superblock fields at 40 (block table offset),
/// 48 (block count), 52 (page count), 56 (meta table offset); 24-byte table entries
/// holding the offset from the layer start (u64) and the compressed size (u32).
fn layer_parts(b: &[u8], base: u64) -> LayerParts {
    let block_table = base + le_u64(b, base + 40);
    let blocks = le_u32(b, base + 48);
    let pages = le_u32(b, base + 52);
    let meta_table = base + le_u64(b, base + 56);
    let entries = |table: u64, n: u64| -> Vec<(u64, u64)> {
        (0..n)
            .map(|i| {
                let e = table + i * 24;
                (base + le_u64(b, e), le_u32(b, e + 8))
            })
            .collect()
    };
    LayerParts {
        blocks: entries(block_table, blocks),
        pages: entries(meta_table, pages),
        block_table,
        meta_table,
    }
}

/// Named offsets in every part of the image: launcher, padding, reserved block (its
/// fields, regions and unused tail), each layer's superblock, data blocks, metadata
/// pages and tables, the layer table and the footer.
fn targets(g: &Good) -> Vec<(String, u64)> {
    let l = &g.layout;
    let mut t: Vec<(String, u64)> = vec![
        ("launcher: ELF magic".into(), 1),
        ("launcher: ELF header".into(), 40),
        ("launcher: middle".into(), l.launcher_size / 2),
        ("launcher: last byte".into(), l.launcher_size - 1),
    ];
    if l.reserved_offset > l.launcher_size {
        t.push(("padding after the launcher".into(), l.reserved_offset - 1));
    }
    let r = l.reserved_offset;
    for (what, at) in [
        ("permissions", 0),
        ("overlay byte", 9),
        ("zero bytes 11..16", 12),
        ("magic", 16),
        ("layout version", 24),
        ("block size", 28),
        ("checksum", 32),
        ("zero bytes 42..64", 50),
        ("boot region length", 64),
        ("environment region", 9000),
        ("binds region", 80_000),
        ("icon region", 300_000),
        ("remote region", 406_000),
        ("unused tail start", 409_664),
        ("unused tail", 500_000),
        ("last byte", 524_287),
    ] {
        t.push((format!("reserved block: {what}"), r + at));
    }
    for (i, &(base, size)) in l.layers.iter().enumerate() {
        for (what, at) in [
            ("magic", 0),
            ("version", 9),
            ("layer size", 20),
            ("block size", 25),
            ("data size", 33),
            ("counts", 50),
            ("section offsets", 100),
            ("body digest", 140),
            ("tables checksum", 161),
            ("unused bytes", 200),
            ("checksum", 250),
        ] {
            t.push((format!("layer {i} superblock: {what}"), base + at));
        }
        let LayerParts {
            blocks,
            pages,
            block_table,
            meta_table,
        } = layer_parts(&g.bytes, base);
        assert!(
            blocks.len() > 1,
            "layer {i} should have several data blocks"
        );
        t.push((format!("layer {i}: first data byte"), base + 256 + 3));
        for (k, &(at, len)) in blocks.iter().enumerate() {
            t.push((format!("layer {i}: data block {k} middle"), at + len / 2));
        }
        let (last_at, last_len) = blocks[blocks.len() - 1];
        t.push((format!("layer {i}: last data byte"), last_at + last_len - 1));
        for (k, &(at, len)) in pages.iter().enumerate() {
            t.push((format!("layer {i}: metadata page {k} start"), at));
            t.push((format!("layer {i}: metadata page {k} middle"), at + len / 2));
            t.push((format!("layer {i}: metadata page {k} end"), at + len - 1));
        }
        for (what, at) in [
            ("block table: offset", block_table),
            ("block table: compressed size", block_table + 8),
            ("block table: size", block_table + 12),
            ("block table: checksum", block_table + 16),
            ("meta table", meta_table + 3),
        ] {
            t.push((format!("layer {i} {what}"), at));
        }
        t.push((format!("layer {i}: size - 30 (tables)"), base + size - 30));
        t.push((format!("layer {i}: last byte"), base + size - 1));
        let next = l.layers.get(i + 1).map_or(l.table_offset, |n| n.0);
        if next > base + size {
            t.push((format!("padding after layer {i}"), next - 1));
        }
        // A few more offsets in the last 10% of the layer (metadata and tables).
        for k in 1..=5 {
            t.push((
                format!("layer {i}: last 10%, offset {k}"),
                base + size - size * k / 55 - 1,
            ));
        }
    }
    let lt = l.table_offset;
    for (what, at) in [
        ("layer 0 offset", lt),
        ("layer 0 size", lt + 8),
        ("layer 0 digest", lt + 20),
        ("layer 0 padding", lt + 50),
        ("layer 1 offset", lt + 64),
        ("layer 1 digest", lt + 64 + 40),
    ] {
        t.push((format!("layer table: {what}"), at));
    }
    let f = l.footer_offset;
    for (what, at) in [
        ("magic", 0),
        ("version", 8),
        ("layer count", 12),
        ("launcher size", 16),
        ("launcher checksum", 24),
        ("reserved offset", 32),
        ("table offset", 40),
        ("table checksum", 48),
        ("checksum", 56),
        ("last byte", 63),
    ] {
        t.push((format!("footer: {what}"), f + at));
    }
    t
}

#[test]
fn verify_passes_on_a_good_image() {
    let g = good_image();
    let out = fim([OsStr::new("verify"), g.image.as_os_str()]);
    out.assert_ok();
    assert!(out.stdout.starts_with("ok: "), "{}", out.stdout);
}

#[test]
fn every_flipped_byte_in_every_part_is_reported() {
    let g = good_image();
    let targets = targets(&g);
    let mut seen = std::collections::HashSet::new();
    for (what, at) in targets {
        assert!(
            at < g.bytes.len() as u64,
            "{what}: offset {at} out of range"
        );
        if !seen.insert(at) {
            continue;
        }
        let mut bytes = g.bytes.clone();
        bytes[at as usize] ^= 0x01;
        let image = write_image(g.work.path(), "flipped", &bytes);
        let out = fim([OsStr::new("verify"), image.as_os_str()]);
        assert!(
            !out.success(),
            "fim verify accepted a flipped byte in {what} (offset {at})"
        );
        out.assert_clean_failure("fim: ");
        // What the running image reads at start (reserved block, trailer) is checked
        // there too. Damaged launcher code is not run.
        if what.starts_with("reserved block") || what.starts_with("footer") {
            run_image_fails(&image, &["fim-overlay", "show"]);
        }
    }
}

/// Any byte, not only the ones chosen above: 200 seeded random offsets.
#[test]
fn random_flipped_bytes_are_reported() {
    let g = good_image();
    let mut rng = Rng::new(0xf11b);
    for _ in 0..200 {
        let at = rng.below(g.bytes.len() as u64) as usize;
        let mask = 1u8 << rng.below(8);
        let mut bytes = g.bytes.clone();
        bytes[at] ^= mask;
        let image = write_image(g.work.path(), "flipped", &bytes);
        let out = fim([OsStr::new("verify"), image.as_os_str()]);
        assert!(
            !out.success(),
            "fim verify accepted byte {at} xor {mask:#04x}"
        );
        out.assert_clean_failure("fim: ");
    }
}

/// Damaged file data is refused by `fim extract` too, with one line.
#[test]
fn extract_refuses_damaged_data_and_metadata() {
    let g = good_image();
    let (base, _) = g.layout.layers[0];
    let LayerParts { blocks, pages, .. } = layer_parts(&g.bytes, base);
    for (what, at) in [
        ("data block", blocks[0].0 + blocks[0].1 / 2),
        ("metadata page", pages[0].0 + pages[0].1 / 2),
    ] {
        let mut bytes = g.bytes.clone();
        bytes[at as usize] ^= 0x01;
        let image = write_image(g.work.path(), "damaged", &bytes);
        let dest = g
            .work
            .path()
            .join(format!("out-{}", what.replace(' ', "-")));
        let out = fim([OsStr::new("extract"), image.as_os_str(), dest.as_os_str()]);
        assert!(!out.success(), "fim extract accepted a damaged {what}");
        out.assert_clean_failure("fim: ");
    }
}

/// Reading damaged data through the mount fails with EIO; the mount keeps serving.
#[test]
fn mount_reports_damaged_data_as_io_errors() {
    if !require_fuse("mount_reports_damaged_data_as_io_errors") {
        return;
    }
    let g = good_image();
    let (base, _) = g.layout.layers[0];
    let blocks = layer_parts(&g.bytes, base).blocks;
    let mut bytes = g.bytes.clone();
    for &(at, len) in &blocks {
        bytes[(at + len / 2) as usize] ^= 0x01;
    }
    let image = write_image(g.work.path(), "damaged", &bytes);
    let mnt = g.work.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir mnt");
    let mount = Mount::start(&image, &mnt);
    let err = fs::read(mnt.join("bin/random")).expect_err("damaged data was read");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Layer 1 is intact and still readable.
    assert_eq!(
        fs::read(mnt.join("etc/text"))
            .expect("read an intact file")
            .as_slice(),
        b"replaced by the upper layer\n"
    );
    let log = mount.stop();
    assert!(!log.contains("panicked"), "fim mount panicked: {log}");
}

#[test]
fn truncated_images_are_refused_with_one_line() {
    let g = good_image();
    let l = &g.layout;
    let len = g.bytes.len() as u64;
    let mut points = vec![
        0,
        1,
        63,
        64,
        l.launcher_size / 2,
        l.launcher_size,
        l.reserved_offset + 100,
        l.layers[0].0 + l.layers[0].1 / 2,
        l.layers[1].0 + 10,
        l.table_offset,
        l.footer_offset,
        l.footer_offset + 30, // inside the footer
        len - 1,
    ];
    let mut rng = Rng::new(0x7a11);
    while points.len() < 20 {
        points.push(rng.below(len));
    }
    for at in points {
        let image = write_image(g.work.path(), "truncated", &g.bytes[..at as usize]);
        let msg = verify_fails(&image);
        assert!(
            msg.contains("truncated") || msg.contains("too small") || msg.contains("not an image"),
            "truncated at {at}: unclear message: {msg}"
        );
        inspect_fails(&image);
        // With the launcher whole, the image runs and reports its damage.
        if at >= l.launcher_size {
            run_image_fails(&image, &["fim-overlay", "show"]);
            run_image_fails(&image, &["fim-overlay", "set", "unionfs"]);
            // fim-version needs no payload: it either works or fails cleanly.
            let v = run(Command::new(&image).arg("fim-version"));
            if v.success() {
                assert_eq!(v.stdout.trim(), env!("CARGO_PKG_VERSION"));
            } else {
                v.assert_clean_failure("truncated: ");
            }
        }
    }
}

/// Bytes appended after the footer hide it: refused like a truncation.
#[test]
fn appended_bytes_are_refused() {
    let g = good_image();
    for extra in [1usize, 64, 4096] {
        let mut bytes = g.bytes.clone();
        bytes.extend(std::iter::repeat_n(0u8, extra));
        let image = write_image(g.work.path(), "appended", &bytes);
        verify_fails(&image);
        inspect_fails(&image);
        run_image_fails(&image, &["fim-overlay", "show"]);
    }
}

#[test]
fn files_that_are_not_images_are_refused_with_one_line() {
    let work = tempdir();
    let mut rng = Rng::new(3);
    let mut random = vec![0u8; 100_000];
    rng.fill(&mut random);
    let mut inputs: Vec<PathBuf> = vec![
        write_image(work.path(), "empty", b""),
        write_image(
            work.path(),
            "text",
            b"#!/bin/sh\necho this is not an image\n",
        ),
        write_image(work.path(), "zeros", &[0u8; 64]),
        write_image(work.path(), "random", &random),
        write_image(work.path(), "footer-magic-only", b"FIMIMAGE"),
        fim_boot_path(),
        work.path().to_owned(),
        work.path().join("does-not-exist"),
    ];
    if Path::new("/bin/true").is_file() {
        inputs.push(PathBuf::from("/bin/true"));
    }
    for input in &inputs {
        verify_fails(input);
        inspect_fails(input);
        let dest = work.path().join("never-written");
        fim([OsStr::new("extract"), input.as_os_str(), dest.as_os_str()])
            .assert_clean_failure("fim: ");
        assert!(!dest.exists(), "extract created {}", dest.display());
    }
    // The bare launcher says it carries no image, and still knows its version.
    let boot = fim_boot_path();
    let out = run(Command::new(&boot).args(["fim-overlay", "show"]));
    out.assert_clean_failure("fim-boot: ");
    assert!(out.stderr.contains("no image"), "{}", out.stderr);
    run(Command::new(&boot).arg("fim-version")).assert_ok();
}
