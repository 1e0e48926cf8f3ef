//! A layer, through the reader the FUSE server uses: open it, then walk the tree as a
//! file manager would (list, look up each name and a few made-up ones, stat, read data at
//! several offsets, read links and xattrs, map data runs). Nothing may panic, loop forever
//! or allocate without bound, whatever the superblock, index, metadata pages or extents say.
#![no_main]

use fim_layers::{BlockCache, Entry, Layer, ROOT, Stack};
use libfuzzer_sys::fuzz_target;

/// Bounds on the walk, so one input stays fast.
const MAX_DEPTH: usize = 6;
const MAX_VISITS: usize = 400;

fuzz_target!(|data: &[u8]| {
    let map = fim_fuzz::map(data);
    let cache = BlockCache::new(4 << 20);
    let Ok(layer) = Layer::open(map, 0, data.len() as u64, cache) else {
        return;
    };
    let Ok(stack) = Stack::new(vec![layer]) else {
        return;
    };
    let mut visits = 0;
    walk(&stack, ROOT, 0, &mut visits);
});

fn walk(stack: &Stack, dir: u64, depth: usize, visits: &mut usize) {
    if depth > MAX_DEPTH || *visits > MAX_VISITS {
        return;
    }
    let Ok(entries) = stack.read_dir(dir) else {
        return;
    };
    for probe in [&b"."[..], b"..", b"", b"missing", b"a/b"] {
        let _ = stack.lookup(dir, probe);
    }
    for (name, entry) in entries {
        *visits += 1;
        if *visits > MAX_VISITS {
            return;
        }
        let _ = stack.lookup(dir, &name);
        let _ = stack.entry(entry.id);
        touch(stack, &entry);
        if entry.inode.mode & 0o170000 == 0o040000 {
            walk(stack, entry.id, depth + 1, visits);
        }
    }
}

fn touch(stack: &Stack, entry: &Entry) {
    let _ = stack.xattrs(entry);
    match entry.inode.mode & 0o170000 {
        0o100000 => {
            let _ = stack.data_runs(entry);
            let mut buf = vec![0u8; 4096];
            let size = entry.inode.size;
            for offset in [
                0,
                size / 2,
                size.saturating_sub(1),
                size,
                size.saturating_add(4096),
            ] {
                let _ = stack.read(entry, offset, &mut buf);
            }
        }
        0o120000 => {
            let _ = stack.read_link(entry);
        }
        _ => {}
    }
}
