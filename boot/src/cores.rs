//! A core of its own for the read-ahead while a session starts. The launch waits on a
//! chain of wakeups then (the daemon's FUSE server answers the overlay's mount, the daemon
//! tells the launcher it is ready, bwrap starts the app), and the kernel wakes a thread on
//! the core it last ran on or its waker's. When the read-ahead decompresses there, the
//! woken thread waits behind it until a scheduler tick moves it (traced on 2 cores: up to
//! 3.5 ms, the other core idle). So while the read-ahead runs it keeps to one core, the
//! last the launcher may use, and the launcher, the daemon and what they start keep to the
//! rest. Then the daemon's threads get their cores back, and the shim gives the app the
//! cores the launcher was started with (`ORIGINAL`). With fewer than two cores, nothing
//! changes.

use std::sync::OnceLock;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The cores the launcher was started with, once it kept one for the read-ahead.
static ORIGINAL: OnceLock<CpuSet> = OnceLock::new();

/// The shim's argument when the launcher kept its cores as they were.
pub const UNCHANGED: &str = "-";

/// The cores the process had, and the one kept for the read-ahead.
pub struct Split {
    all: CpuSet,
    kept: usize,
}

impl Split {
    /// Keeps the calling thread, and the threads and processes it starts from now on, off
    /// the last core it may use; `None` (and nothing changed) with fewer than two.
    pub fn start() -> Option<Split> {
        let all = sched_getaffinity(Pid::from_raw(0)).ok()?;
        let kept = (0..CpuSet::count())
            .rev()
            .find(|&c| all.is_set(c) == Ok(true))?;
        let mut others = all;
        others.unset(kept).ok()?;
        if (0..kept).all(|c| others.is_set(c) != Ok(true)) {
            return None;
        }
        sched_setaffinity(Pid::from_raw(0), &others).ok()?;
        let _ = ORIGINAL.set(all);
        Some(Split { all, kept })
    }

    /// Confines the calling thread (the read-ahead) to the kept core.
    pub fn enter(&self) {
        let mut one = CpuSet::new();
        if one.set(self.kept).is_ok() {
            let _ = sched_setaffinity(Pid::from_raw(0), &one);
        }
    }

    /// Gives every thread of the process the cores it had. Twice over the thread list: a
    /// thread started while the first pass ran may have taken the narrower set.
    pub fn end(&self) {
        for _ in 0..2 {
            let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
                return;
            };
            for task in tasks.flatten() {
                if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) {
                    let _ = sched_setaffinity(Pid::from_raw(tid), &self.all);
                }
            }
        }
    }
}

/// The shim's argument: the cores the launcher was started with (`0,1,3`), or
/// [`UNCHANGED`] when it never kept one.
pub fn original() -> String {
    let Some(all) = ORIGINAL.get() else {
        return UNCHANGED.to_owned();
    };
    let mut list = String::new();
    for c in (0..CpuSet::count()).filter(|&c| all.is_set(c) == Ok(true)) {
        if !list.is_empty() {
            list.push(',');
        }
        list.push_str(&c.to_string());
    }
    list
}

/// Gives the calling process the cores `arg` (from [`original`]) names. Nothing is
/// changed by [`UNCHANGED`]; `Err` when `arg` is no list of cores.
pub fn restore(arg: &str) -> Result<(), ()> {
    if arg == UNCHANGED {
        return Ok(());
    }
    let set = parse(arg).ok_or(())?;
    // The host may have taken cores away since (a cpuset changed): the app then keeps
    // the narrower set rather than failing.
    let _ = sched_setaffinity(Pid::from_raw(0), &set);
    Ok(())
}

/// `0,1,3` as a set of cores; `None` for anything else (empty, a core past the set's size).
fn parse(arg: &str) -> Option<CpuSet> {
    let mut set = CpuSet::new();
    for core in arg.split(',') {
        set.set(core.parse().ok()?).ok()?;
    }
    Some(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cores(set: &CpuSet) -> Vec<usize> {
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c) == Ok(true))
            .collect()
    }

    #[test]
    fn a_list_of_cores_reads_back_as_the_set_it_names() {
        assert_eq!(parse("0,1,3").map(|s| cores(&s)), Some(vec![0, 1, 3]));
        assert_eq!(parse("2").map(|s| cores(&s)), Some(vec![2]));
    }

    #[test]
    fn malformed_lists_of_cores_are_refused() {
        for bad in ["", ",", "0,", "a", "-1", "0;1", "1 2", "99999999"] {
            assert!(parse(bad).is_none(), "{bad:?}");
            assert!(restore(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_unchanged_mark_changes_nothing() {
        let before = sched_getaffinity(Pid::from_raw(0)).map(|s| cores(&s));
        assert_eq!(restore(UNCHANGED), Ok(()));
        assert_eq!(
            sched_getaffinity(Pid::from_raw(0)).map(|s| cores(&s)),
            before
        );
    }

    #[test]
    fn a_launcher_that_kept_no_core_passes_the_unchanged_mark() {
        // Tests never call Split::start, so no core was kept in this process.
        assert_eq!(original(), UNCHANGED);
    }
}
