//! `fim mount`: the merged layers read-only at a directory, in the foreground, until
//! SIGINT, SIGTERM or SIGHUP (then unmounted) or until someone unmounts it.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use fim_layers::fuse::{MountSettings, session};
use fim_layers::{BlockCache, DEFAULT_CACHE_BYTES};

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

pub fn run(image_path: &Path, dir: &Path, allow_other: bool) -> anyhow::Result<()> {
    let image = crate::inspect::open(image_path)?;
    let cache = BlockCache::new(DEFAULT_CACHE_BYTES);
    cache.allow_decompress_ahead();
    let stack = image
        .stack(cache)
        .map_err(|e| crate::inspect::in_image(image_path, e))?;
    if !dir.is_dir() {
        anyhow::bail!("{}: mount point is not a directory", dir.display());
    }
    // Block the stop signals before any thread starts, so only our waiter receives them.
    let set = stop_signals();
    // SAFETY: changes this thread's mask; threads spawned later inherit it.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let settings = MountSettings {
        allow_other,
        threads: 0,
        owner: None,
    };
    let mut fs = session(Arc::new(stack), dir, &settings)
        .with_context(|| format!("mounting {} (is /dev/fuse available?)", dir.display()))?;
    let mut unmounter = fs.unmount_callable();
    let server = std::thread::spawn(move || fs.run());
    let mountpoint = dir.to_path_buf();
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: waits on a valid, blocked signal set.
        unsafe { libc::sigwait(&set, &mut sig) };
        // A file closed a moment ago may still hold the mount while the kernel releases
        // it: retry briefly, then detach lazily (`umount -l`), as asked.
        let Err(e) = unmounter.unmount() else {
            return;
        };
        if e.raw_os_error() == Some(libc::EBUSY) {
            for _ in 0..20 {
                std::thread::sleep(std::time::Duration::from_millis(25));
                if unmount(&mountpoint, 0) {
                    return;
                }
            }
            if unmount(&mountpoint, libc::MNT_DETACH) {
                return;
            }
        }
        eprintln!("fim: unmount failed: {e}; try `fusermount3 -u` or `umount -l`");
        std::process::exit(125);
    });
    eprintln!(
        "fim: mounted {} at {} (Ctrl-C to unmount)",
        image_path.display(),
        dir.display()
    );
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the file system thread panicked"))?
        .context("serving the file system")?;
    Ok(())
}

/// `umount2(dir, flags)`; with `MNT_DETACH` (`umount -l`) the kernel ends the mount when its
/// last user goes.
fn unmount(dir: &Path, flags: libc::c_int) -> bool {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid C string.
    unsafe { libc::umount2(path.as_ptr(), flags) == 0 }
}
