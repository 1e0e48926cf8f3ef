//! Changing the config stored in an image (`IMAGE fim-overlay set`): the exact byte
//! written, refusals that leave the file untouched, the environment override, and
//! safety while the image is in use, when changes race, and when killed at any moment.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fim_tests::fsutil::write_random;
use fim_tests::{
    Mount, Output, Rng, assert_same_tree, build, build_with, fim, layout, put, require_fuse, run,
    snapshot, tempdir,
};

/// Offset of the overlay byte in the reserved block (FlatImage's offset).
const OVERLAY_BYTE: u64 = 9;
/// The values of `fim-overlay set` and the byte each stores.
const OVERLAYS: [(&str, u8); 3] = [("bwrap", 0x02), ("overlayfs", 0x04), ("unionfs", 0x08)];

struct Fixture {
    work: tempfile::TempDir,
    src: PathBuf,
    image: PathBuf,
}

/// A small image in its own directory.
fn small_image() -> Fixture {
    let work = tempdir();
    let src = work.path().join("src");
    put(&src, "etc/hostname", b"fim\n");
    put(
        &src,
        "usr/share/doc/readme",
        "read me\n".repeat(1000).as_bytes(),
    );
    let dir = work.path().join("images");
    fs::create_dir(&dir).expect("mkdir images");
    let image = dir.join("app");
    build(&[&src], &image);
    Fixture { work, src, image }
}

/// Runs the image with `args`, without any FIM_OVERLAY from the test's environment.
fn image_run(image: &Path, args: &[&str]) -> Output {
    run(Command::new(image).args(args).env_remove("FIM_OVERLAY"))
}

fn image_run_env(image: &Path, args: &[&str], overlay: &str) -> Output {
    run(Command::new(image).args(args).env("FIM_OVERLAY", overlay))
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn overlay_byte(image: &Path, reserved_offset: u64) -> u8 {
    read(image)[(reserved_offset + OVERLAY_BYTE) as usize]
}

fn verify_ok(image: &Path) {
    fim([OsStr::new("verify"), image.as_os_str()]).assert_ok();
}

/// Temporary files of changes to `image`: `.<name>.fim-tmp*` next to it.
fn temp_files(image: &Path) -> Vec<String> {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.fim-tmp");
    let dir = image.parent().unwrap_or(Path::new("."));
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

#[test]
fn overlay_set_writes_the_flatimage_byte_and_nothing_else() {
    let f = small_image();
    let before = layout(&f.image);
    let original = read(&f.image);
    let r = before.reserved_offset;
    assert_eq!(original[(r + OVERLAY_BYTE) as usize], 0, "unset at build");
    let show = image_run(&f.image, &["fim-overlay", "show"]);
    show.assert_ok();
    assert_eq!(show.stdout.trim(), "bwrap", "the default");

    for (value, byte) in [("unionfs", 0x08), ("bwrap", 0x02), ("overlayfs", 0x04)] {
        image_run(&f.image, &["fim-overlay", "set", value]).assert_ok();
        let bytes = read(&f.image);
        assert_eq!(
            bytes[(r + OVERLAY_BYTE) as usize],
            byte,
            "byte at reserved.offset + 9 after `fim-overlay set {value}`"
        );
        verify_ok(&f.image);
        let show = image_run(&f.image, &["fim-overlay", "show"]);
        show.assert_ok();
        assert_eq!(show.stdout.trim(), value);
        // Same size and layout; only the overlay byte and the block checksum changed.
        assert_eq!(bytes.len(), original.len());
        let changed: Vec<u64> = (0..bytes.len() as u64)
            .filter(|&i| bytes[i as usize] != original[i as usize])
            .collect();
        let allowed = |i: &u64| *i == r + OVERLAY_BYTE || (r + 32..r + 40).contains(i);
        assert!(
            changed.iter().all(allowed),
            "`fim-overlay set {value}` changed bytes {changed:?} (reserved block at {r})"
        );
        assert_eq!(layout(&f.image).reserved_offset, r);
        let mode = fs::metadata(&f.image).map(|m| m.mode() & 0o7777).ok();
        assert_eq!(mode, Some(0o755), "the image stays executable");
    }
    // Setting the current value again is fine and changes nothing.
    let same = read(&f.image);
    image_run(&f.image, &["fim-overlay", "set", "overlayfs"]).assert_ok();
    assert_eq!(read(&f.image), same);
}

#[test]
fn overlay_refusals_leave_the_image_byte_identical() {
    let f = small_image();
    image_run(&f.image, &["fim-overlay", "set", "unionfs"]).assert_ok();
    let before = read(&f.image);
    let ino = fs::metadata(&f.image).map(|m| m.ino()).ok();
    for args in [
        &["fim-overlay", "set", "foo"][..],
        &["fim-overlay", "set", ""],
        &["fim-overlay", "set"],
        &["fim-overlay", "set", "bwrap", "extra"],
        &["fim-overlay"],
        &["fim-overlay", "frobnicate"],
    ] {
        image_run(&f.image, args).assert_clean_failure("app: ");
        assert!(read(&f.image) == before, "{args:?} changed the image");
        assert_eq!(fs::metadata(&f.image).map(|m| m.ino()).ok(), ino);
        assert!(temp_files(&f.image).is_empty(), "{args:?} left temp files");
    }
    verify_ok(&f.image);
}

#[test]
fn overlay_environment_beats_the_stored_value() {
    let f = small_image();
    image_run(&f.image, &["fim-overlay", "set", "unionfs"]).assert_ok();
    for (value, _) in OVERLAYS {
        let out = image_run_env(&f.image, &["fim-overlay", "show"], value);
        out.assert_ok();
        assert_eq!(out.stdout.trim(), value, "FIM_OVERLAY={value}");
    }
    image_run_env(&f.image, &["fim-overlay", "show"], "nonsense").assert_clean_failure("app: ");
    let show = image_run(&f.image, &["fim-overlay", "show"]);
    assert_eq!(show.stdout.trim(), "unionfs", "the stored value is back");
}

/// An instance using the image (here a `fim mount`, which maps it) keeps reading the
/// old file correctly while the config changes underneath.
#[test]
fn overlay_change_while_the_image_is_in_use() {
    if !require_fuse("overlay_change_while_the_image_is_in_use") {
        return;
    }
    let f = small_image();
    let mut rng = Rng::new(11);
    write_random(&f.src.join("usr/random"), 2 << 20, &mut rng);
    build(&[&f.src], &f.image);
    let expected = snapshot(&f.src);
    let r = layout(&f.image).reserved_offset;
    let mnt = f.work.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir mnt");
    let mount = Mount::start(&f.image, &mnt);
    assert_same_tree(&expected, &snapshot(mount.dir()), "before the change");
    for value in ["unionfs", "overlayfs", "unionfs"] {
        image_run(&f.image, &["fim-overlay", "set", value]).assert_ok();
        fs::write(mnt.join("x"), b"").expect_err("the mount is read-only");
        assert_same_tree(&expected, &snapshot(mount.dir()), "after the change");
    }
    verify_ok(&f.image);
    assert_eq!(overlay_byte(&f.image, r), 0x08);
    mount.stop();
}

/// Concurrent changes are serialised: all succeed and the image stays valid.
#[test]
fn concurrent_overlay_changes_serialise() {
    let f = small_image();
    let r = layout(&f.image).reserved_offset;
    let children: Vec<_> = (0..40)
        .map(|i| {
            Command::new(&f.image)
                .args(["fim-overlay", "set", OVERLAYS[i % 3].0])
                .env_remove("FIM_OVERLAY")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start fim-overlay set")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait for fim-overlay set");
        assert!(
            out.status.success(),
            "a concurrent fim-overlay set failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    verify_ok(&f.image);
    let byte = overlay_byte(&f.image, r);
    assert!(OVERLAYS.iter().any(|&(_, b)| b == byte), "byte {byte:#04x}");
    assert!(
        temp_files(&f.image).is_empty(),
        "{:?}",
        temp_files(&f.image)
    );
}

/// 100 changes, each SIGKILLed after a random 0–30 ms (most mid-copy, on a 20 MiB
/// image): after each one the image is the old or the new one, whole; the temporary
/// files left behind go with the next change.
#[test]
fn overlay_change_killed_at_random_moments_never_breaks_the_image() {
    let work = tempdir();
    let src = work.path().join("src");
    let mut rng = Rng::new(0xdead_5eed);
    fs::create_dir_all(src.join("data")).expect("mkdir");
    for i in 0..4 {
        write_random(&src.join(format!("data/blob{i}")), 5 << 20, &mut rng);
    }
    let dir = work.path().join("images");
    fs::create_dir(&dir).expect("mkdir images");
    let image = dir.join("big-app");
    build_with(&[&src], &image, &["--level", "1"]);
    let r = layout(&image).reserved_offset;
    let size = fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
    assert!(size > 20 << 20, "image of {size} bytes");

    let mut current = 0u8;
    let (mut interrupted, mut temps_seen) = (0, 0);
    let started = Instant::now();
    for i in 0..100 {
        let (value, byte) = OVERLAYS[i % 3];
        let mut child = Command::new(&image)
            .args(["fim-overlay", "set", value])
            .env_remove("FIM_OVERLAY")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fim-overlay set");
        std::thread::sleep(Duration::from_millis(rng.range(0, 30)));
        if matches!(child.try_wait(), Ok(None)) {
            interrupted += 1;
        }
        // SAFETY: kills our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        let _ = child.wait();

        let out = fim([OsStr::new("verify"), image.as_os_str()]);
        assert!(
            out.success(),
            "kill #{i} ({value}) broke the image: {}",
            out.stderr
        );
        let now = overlay_byte(&image, r);
        assert!(
            now == current || now == byte,
            "kill #{i}: overlay byte {now:#04x}, expected the old {current:#04x} or the new {byte:#04x}"
        );
        current = now;
        temps_seen += usize::from(!temp_files(&image).is_empty());
    }
    eprintln!(
        "config: 100 killed changes in {:.1} s: {interrupted} interrupted while running, \
         temp files left after {temps_seen}",
        started.elapsed().as_secs_f64()
    );
    assert!(interrupted > 0, "no kill landed while a change was running");

    let last = OVERLAYS
        .iter()
        .find(|&&(_, b)| b != current)
        .expect("a value");
    image_run(&image, &["fim-overlay", "set", last.0]).assert_ok();
    assert_eq!(overlay_byte(&image, r), last.1);
    verify_ok(&image);
    assert_eq!(
        temp_files(&image),
        Vec::<String>::new(),
        "temp files remain"
    );
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .expect("read the image dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, vec![OsStr::new("big-app").to_owned()]);
    let mode = fs::metadata(&image).map(|m| m.permissions().mode() & 0o7777);
    assert_eq!(mode.ok(), Some(0o755));
}
