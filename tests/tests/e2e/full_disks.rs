//! Full disks: when the file system of the data directory (the overlay's upper directory)
//! fills, the app gets ENOSPC as on any disk, files written before stay intact, and the
//! next run works once space is freed; when `TMPDIR` is full as a session starts, the
//! launcher fails with one line naming the place and the fix. Small tmpfs mounts stand in
//! for the full disks, so these tests need root (they run the app as root and as a
//! created user).

use std::path::{Path, PathBuf};
use std::process::Command;

use fim_tests::checks::wait_for_the_session_to_end;
use fim_tests::sandbox::{App, Who, app_with_backend as app};
use fim_tests::{is_root, skip};

fim_tests::per_backend!(a_full_data_directory_gives_enospc_and_keeps_what_was_written);
fim_tests::for_both!(a_full_tmpdir_fails_with_one_line);

/// A tmpfs mounted for the test, owned by the app's user; unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs with `options` at a new directory `name` of the app's directory;
    /// `None` (after saying why) when that cannot be done here.
    fn mount(app: &App, name: &str, options: &str) -> Option<SmallDisk> {
        if !is_root() {
            skip(&format!("{name}: mounting a small tmpfs needs root"));
            return None;
        }
        let dir = app.host_dir(name);
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        if !out.status.success() {
            skip(&format!(
                "{name}: cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return None;
        }
        app.own(&dir);
        Some(SmallDisk(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn a_full_data_directory_gives_enospc_and_keeps_what_was_written(backend: &'static str, who: Who) {
    let Some(app) = app("full_data", who, backend) else {
        return;
    };
    let Some(disk) = SmallDisk::mount(&app, "small-data", "size=4m") else {
        return;
    };
    let data = disk.path().to_string_lossy().into_owned();
    let run = |script: &str| {
        fim_tests::run(
            app.command(["fim-exec", "sh", "-c", script])
                .env("FIM_DIR_DATA", &data),
        )
    };
    // Written before the disk fills: a new file and a changed file of the image.
    run("echo before > /data/before.txt && echo more >> /data/keep.txt").assert_ok();
    let full = run("dd if=/dev/zero of=/data/big bs=64k count=200; echo dd=$?");
    assert!(
        full.stdout.contains("dd=1") && full.stderr.contains("No space left on device"),
        "the app should get ENOSPC: {full:?}"
    );
    // Still full: what was written before reads back intact, and a small write fails at
    // once (not only at fsync, as through fuse-overlayfs's writeback cache, which the
    // launcher turns off).
    let out = run("cat /data/before.txt /data/keep.txt; echo x > /data/more.txt; echo rc=$?");
    assert_eq!(out.stdout, "before\nkeep\nmore\nrc=1\n", "{out:?}");
    assert!(out.stderr.contains("No space left on device"), "{out:?}");
    // Space freed: writing works again, in this session and in a new one.
    let out = run("rm /data/big && echo after > /data/after.txt && cat /data/after.txt");
    out.assert_ok();
    assert_eq!(out.stdout, "after\n");
    wait_for_the_session_to_end(&app);
    let out = run("cat /data/before.txt /data/keep.txt /data/after.txt");
    out.assert_ok();
    assert_eq!(out.stdout, "before\nkeep\nmore\nafter\n");
    wait_for_the_session_to_end(&app);
}

fn a_full_tmpdir_fails_with_one_line(who: Who) {
    let Some(app) = App::new("full_tmpdir", who) else {
        return;
    };
    // Few inodes, all taken: nothing more can be created there. Freed, they are more than
    // a session needs (the runtime directory, its lock, the session's directory, socket,
    // records and mount points: 9 with the tmpfs's root).
    let Some(disk) = SmallDisk::mount(&app, "small-tmp", "size=64k,nr_inodes=16") else {
        return;
    };
    let mut filler = Vec::new();
    for i in 0.. {
        let file = disk.path().join(format!("f{i}"));
        if std::fs::write(&file, "").is_err() {
            break;
        }
        filler.push(file);
    }
    let run = || {
        fim_tests::run(
            app.command(["fim-exec", "echo", "ok"])
                .env("TMPDIR", disk.path()),
        )
    };
    let out = run();
    out.assert_clean_failure("app.flatimage: cannot create ");
    assert!(
        out.stderr.contains("No space left on device")
            && out.stderr.contains("free some space on that file system"),
        "{out:?}"
    );
    for file in filler {
        std::fs::remove_file(file).expect("free an inode");
    }
    let out = run();
    out.assert_ok();
    assert_eq!(out.stdout, "ok\n");
}
