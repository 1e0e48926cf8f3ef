//! Decompression ahead of a reader, on another core. A reader moving forward through the
//! data stream (a program's files one after another, a large file) otherwise waits for
//! each block to be decompressed in turn while the machine's other cores sit idle; the
//! reader asks for the next block to be decompressed here, on one worker thread, and finds
//! it in the block cache when it gets there.
//!
//! Work is only ever ahead: when the worker already has enough queued, a job is dropped
//! and the reader decompresses that block itself if it needs it. On a machine with one
//! CPU nothing is done ahead.

use std::collections::HashSet;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// Jobs waiting at most.
const QUEUED: usize = 4;

/// Blocks marked at most; past it the marks start over (a reader that stopped early
/// leaves its next block marked).
const MAX_MARKED: usize = 1024;

/// The worker's queue, started on first use; `None` with one CPU, or if no thread starts.
fn worker() -> Option<&'static SyncSender<Job>> {
    static WORKER: OnceLock<Option<SyncSender<Job>>> = OnceLock::new();
    WORKER
        .get_or_init(|| {
            if crate::reader::cpu_count() < 2 {
                return None;
            }
            let (tx, rx) = sync_channel::<Job>(QUEUED);
            std::thread::Builder::new()
                .name("decompress-ahead".into())
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                })
                .ok()?;
            Some(tx)
        })
        .as_ref()
}

/// Blocks decompressed ahead and not yet used by a reader, by (layer id, block index).
#[derive(Default)]
pub struct Marks {
    marked: Mutex<HashSet<(u64, u32)>>,
}

impl Marks {
    /// Marks a block as asked for ahead; false when it already was.
    fn mark(&self, key: (u64, u32)) -> bool {
        let Ok(mut marked) = self.marked.lock() else {
            return false;
        };
        if marked.len() >= MAX_MARKED {
            marked.clear();
        }
        marked.insert(key)
    }

    /// A reader used the block: true when it had been asked for ahead (then the reader is
    /// moving forward, and the next one should be asked for).
    pub fn take(&self, key: (u64, u32)) -> bool {
        self.marked.lock().is_ok_and(|mut m| m.remove(&key))
    }

    /// Runs `job` (decompressing block `key`) on the worker unless the block is already
    /// marked or the worker has enough queued.
    pub fn ask(&self, key: (u64, u32), job: impl FnOnce() + Send + 'static) {
        let Some(worker) = worker() else {
            return;
        };
        if self.mark(key) && worker.try_send(Box::new(job)).is_err() {
            self.take(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_asked_for_once_until_a_reader_takes_it() {
        let marks = Marks::default();
        assert!(marks.mark((1, 5)));
        assert!(!marks.mark((1, 5)));
        assert!(marks.mark((2, 5)));
        assert!(marks.take((1, 5)));
        assert!(!marks.take((1, 5)));
        assert!(marks.mark((1, 5)));
    }

    #[test]
    fn marks_left_behind_are_dropped_past_the_limit() {
        let marks = Marks::default();
        for i in 0..MAX_MARKED as u32 {
            assert!(marks.mark((0, i)));
        }
        assert!(marks.mark((0, u32::MAX)));
        assert!(!marks.take((0, 0)));
        assert!(marks.take((0, u32::MAX)));
    }
}
