//! Host resources that the sandbox tests offer to an app and then take away: files in
//! shared places (`/mnt`, `/dev/shm`), unix sockets standing in for a display, a bus or a
//! sound server, and a TCP server on loopback. Each is removed when dropped.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A name no other test (of this process or another) uses: `fim-e2e-PID-N-what`.
pub fn unique(what: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "fim-e2e-{}-{}-{what}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A file or socket that is removed when dropped.
pub struct HostPath(pub PathBuf);

impl HostPath {
    /// A file holding `text`, readable by everyone.
    pub fn file(path: PathBuf, text: &str) -> HostPath {
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        crate::fsutil::chmod(&path, 0o644);
        HostPath(path)
    }

    /// A listening unix socket that everyone may connect to (creating its directory).
    pub fn socket(path: PathBuf) -> (HostPath, UnixListener) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .unwrap_or_else(|e| panic!("cannot listen on {}: {e}", path.display()));
        crate::fsutil::chmod(&path, 0o777);
        (HostPath(path), listener)
    }

    /// The inode number, which a bind mount shows unchanged inside.
    pub fn inode(&self) -> u64 {
        std::fs::metadata(&self.0)
            .map(|m| m.ino())
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", self.0.display()))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for HostPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A TCP server on 127.0.0.1 that answers `pong` to every connection, for at most 60 s.
pub struct PongServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
}

impl PongServer {
    pub fn start() -> PongServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen on 127.0.0.1");
        let port = listener.local_addr().expect("local address").port();
        listener.set_nonblocking(true).expect("non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let (stopping, count) = (stop.clone(), served.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stopping.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.write_all(b"pong\n");
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        PongServer { port, stop, served }
    }

    /// How many connections it answered.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for PongServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
