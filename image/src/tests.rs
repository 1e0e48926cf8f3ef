//! Writing, opening, verifying and changing whole images (the launcher is this test binary).

use std::fs;
use std::path::Path;

use fim_layers::{BuildOptions, NoProgress};
use fim_reserved::{Overlay, Reserved};

use crate::trailer::{FOOTER_SIZE, Footer};
use crate::{Image, ImageError, ImageWriter, Updated, read_launcher, update_reserved};

fn small_image(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/hostname"), b"fim\n").unwrap();
    let launcher = read_launcher(&std::env::current_exe().unwrap()).unwrap();
    let out = dir.join("app");
    let mut writer = ImageWriter::create(&out, &launcher, &Reserved::new()).unwrap();
    let options = BuildOptions {
        level: 1,
        ..Default::default()
    };
    writer
        .add_layer_from_dir(&src, &options, &NoProgress)
        .unwrap();
    writer.finish().unwrap();
    out
}

#[test]
fn written_image_opens_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let image = Image::open(&small_image(dir.path())).unwrap();
    assert_eq!(image.layer_entries().len(), 1);
    image.verify().unwrap();
}

#[test]
fn footer_pointing_the_reserved_block_past_the_table_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_image(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len() - FOOTER_SIZE;
    let mut footer = Footer::decode(&bytes[at..], bytes.len() as u64).unwrap();
    footer.launcher_size = footer.table_offset;
    footer.reserved_offset = footer.table_offset.next_multiple_of(crate::ALIGN);
    bytes[at..].copy_from_slice(&footer.encode());
    fs::write(&path, &bytes).unwrap();
    let err = Image::open(&path).unwrap_err();
    assert!(matches!(err, ImageError::Corrupt(_)), "{err}");
}

#[test]
fn reserved_update_changes_only_the_reserved_block() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_image(dir.path());
    let before = fs::read(&path).unwrap();
    let offset = Image::open(&path).unwrap().footer().reserved_offset as usize;
    let updated = update_reserved(&path, |r| {
        r.set_overlay(Some(Overlay::Unionfs));
        Ok::<(), ImageError>(())
    })
    .unwrap();
    assert_eq!(updated, Updated::Changed);
    let after = fs::read(&path).unwrap();
    assert_eq!(after.len(), before.len());
    assert_eq!(after[offset + 9], 0x08);
    let block = offset..offset + fim_reserved::BLOCK_SIZE;
    assert_eq!(after[..block.start], before[..block.start]);
    assert_eq!(after[block.end..], before[block.end..]);
    Image::open(&path).unwrap().verify().unwrap();
}

#[test]
fn reserved_update_that_fails_leaves_the_file_identical_and_no_temp_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_image(dir.path());
    let before = fs::read(&path).unwrap();
    let result = update_reserved(&path, |r| {
        r.set_overlay(Some(Overlay::Bwrap));
        Err(ImageError::corrupt("refused by the caller"))
    });
    assert!(result.is_err());
    assert_eq!(fs::read(&path).unwrap(), before);
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}"); // src and app
}

#[test]
fn unchanged_update_does_not_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_image(dir.path());
    let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
    let updated = update_reserved(&path, |_| Ok::<(), ImageError>(())).unwrap();
    assert_eq!(updated, Updated::Unchanged);
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap()),
        inode
    );
}

#[test]
fn an_output_path_holding_a_device_fifo_directory_or_symlink_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let launcher = read_launcher(&std::env::current_exe().unwrap()).unwrap();
    let fifo = dir.path().join("fifo");
    let c_fifo = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    let sub = dir.path().join("dir");
    fs::create_dir(&sub).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), &link).unwrap();
    for (out, what) in [
        (&fifo, "not a regular file"),
        (&sub, "is a directory"),
        (&link, "is a symlink"),
    ] {
        let before = fs::symlink_metadata(out).unwrap().file_type();
        let err = ImageWriter::create(out, &launcher, &Reserved::new())
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(what), "{err}");
        assert_eq!(fs::symlink_metadata(out).unwrap().file_type(), before);
    }
    // Nothing was left beside them either.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
}
