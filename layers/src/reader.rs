//! Reads a layer straight from a memory map: records are found by offset, metadata pages
//! and data blocks are decompressed only when touched, and kept in one bounded cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use memmap2::Mmap;

use crate::error::{LayerError, Result};
use crate::format::{
    DIRENT_SIZE, Dirent, EXTENT_SIZE, Extent, INODE_SIZE, Inode, META_PAGE_SIZE, S_IFDIR, S_IFLNK,
    S_IFREG, SUPERBLOCK_SIZE, Superblock, TABLE_ENTRY_SIZE, TableEntry, decode_xattrs,
};

/// Decompressed data blocks and metadata pages shared by every layer of a stack, bounded
/// by total bytes.
pub struct BlockCache {
    cache: quick_cache::sync::Cache<
        (u64, u64),
        Arc<[u8]>,
        BlockWeighter,
        quick_cache::DefaultHashBuilder,
        Recycler,
    >,
    /// Buffers of evicted blocks, decompressed into again.
    spare: Arc<Spare>,
    /// Data blocks being decompressed ahead of a reader.
    ahead: crate::ahead::Marks,
    /// Whether blocks may be decompressed ahead (see [`BlockCache::allow_decompress_ahead`]).
    ahead_allowed: AtomicBool,
}

#[derive(Clone)]
struct BlockWeighter;
impl quick_cache::Weighter<(u64, u64), Arc<[u8]>> for BlockWeighter {
    fn weight(&self, _key: &(u64, u64), val: &Arc<[u8]>) -> u64 {
        val.len().max(1) as u64
    }
}

/// Buffers of evicted blocks that no reader holds, for the next blocks to be decompressed
/// into: a fresh buffer costs a page fault for every 4 KiB of it (about 2 us each, a third
/// of the time to decompress a 1 MiB block on the machine measured) and its release an
/// unmap. A sequential read of a large tree evicts a block for every block it loads.
#[derive(Default)]
struct Spare {
    buffers: std::sync::Mutex<Vec<Arc<[u8]>>>,
}

/// Spare buffers kept at most, and their bytes at most (beyond the cache's budget): a
/// few 1 MiB blocks, and none of the largest block size.
const MAX_SPARE: usize = 4;
const MAX_SPARE_BYTES: usize = 16 << 20;

impl Spare {
    /// A buffer of exactly `size` bytes that nothing else holds; its bytes are stale.
    fn take(&self, size: usize) -> Option<Arc<[u8]>> {
        let mut buffers = self.buffers.lock().ok()?;
        let at = buffers.iter().position(|b| b.len() == size)?;
        Some(buffers.swap_remove(at))
    }

    fn put(&self, buffer: Arc<[u8]>) {
        if Arc::strong_count(&buffer) != 1 {
            return;
        }
        if let Ok(mut buffers) = self.buffers.lock()
            && buffers.len() < MAX_SPARE
            && buffers.iter().map(|b| b.len()).sum::<usize>() + buffer.len() <= MAX_SPARE_BYTES
        {
            buffers.push(buffer);
        }
    }
}

/// Hands evicted blocks to the spare buffers.
#[derive(Clone)]
struct Recycler(Arc<Spare>);

impl quick_cache::Lifecycle<(u64, u64), Arc<[u8]>> for Recycler {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: (u64, u64), block: Arc<[u8]>) {
        self.0.put(block);
    }
}

/// Default block-cache budget: enough to hold the working set of a large application.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

impl BlockCache {
    pub fn new(capacity_bytes: u64) -> Arc<Self> {
        let items = (capacity_bytes / (256 << 10)).max(16) as usize;
        // Shards set explicitly: the default asks `available_parallelism`, which reads
        // cgroup files and costs milliseconds at mount time.
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(items)
            .weight_capacity(capacity_bytes)
            .shards(cpu_count() * 4)
            .build();
        let spare = Arc::new(Spare::default());
        let recycler = Recycler(Arc::clone(&spare));
        let cache = match options {
            Ok(o) => quick_cache::sync::Cache::with_options(
                o,
                BlockWeighter,
                Default::default(),
                recycler,
            ),
            Err(_) => quick_cache::sync::Cache::with(
                items,
                capacity_bytes,
                BlockWeighter,
                Default::default(),
                recycler,
            ),
        };
        Arc::new(BlockCache {
            cache,
            spare,
            ahead: Default::default(),
            ahead_allowed: AtomicBool::new(false),
        })
    }

    /// Lets readers of this cache have blocks decompressed ahead, on a worker thread that
    /// starts with the first such block. Off until asked: a process with a second thread
    /// can no longer enter a new user namespace (`unshare` fails with EINVAL), so a caller
    /// allows it only once it will not need one (the session daemon, after it made its
    /// namespaces; `fim mount`).
    pub fn allow_decompress_ahead(&self) {
        self.ahead_allowed.store(true, Ordering::Relaxed);
    }

    /// Blocks and pages held.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.cache.len()
    }
}

/// CPUs this process may run on, from the affinity mask (cheap, unlike
/// `available_parallelism`, which also reads cgroup quota files).
pub fn cpu_count() -> usize {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            (libc::CPU_COUNT(&set) as usize).max(1)
        } else {
            1
        }
    }
}

/// Bytes served in place: the cached block that holds them, and their range in it.
pub type InPlace = (Arc<[u8]>, std::ops::Range<usize>);

/// Cache keys of metadata pages carry this bit; data blocks' keys are their index.
const META_KEY: u64 = 1 << 63;

/// Longest symlink target accepted (Linux `PATH_MAX`).
const MAX_SYMLINK: u64 = 4096;

/// Longest name a directory entry may have: what Linux file systems hold.
const NAME_MAX: usize = 255;

static NEXT_LAYER_ID: AtomicU64 = AtomicU64::new(1);

/// One layer, read in place from a memory map.
#[derive(Clone)]
pub struct Layer {
    map: Arc<Mmap>,
    base: usize,
    sb: Superblock,
    id: u64,
    cache: Arc<BlockCache>,
}

/// A directory entry as returned by [`Layer::read_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u32,
}

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses `src` into a shared buffer of exactly `size` bytes, a spare one if there
/// is one. The buffer is what the block cache keeps: no second copy of every block on its
/// way there.
fn decompress(src: &[u8], size: usize, spare: &Spare) -> Result<Arc<[u8]>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| LayerError::other("zstd decompressor", e))?,
            );
        }
        let dec = slot
            .as_mut()
            .ok_or_else(|| LayerError::corrupt("no decompressor"))?;
        let mut out: Arc<[u8]> = spare.take(size).unwrap_or_else(|| {
            // SAFETY: zeroed bytes are valid `u8`s.
            unsafe { Arc::<[u8]>::new_zeroed_slice(size).assume_init() }
        });
        let buffer = Arc::get_mut(&mut out).ok_or_else(|| LayerError::corrupt("shared buffer"))?;
        let written = dec
            .decompress_to_buffer(src, buffer)
            .map_err(|e| LayerError::corrupt(format!("zstd: {e}")))?;
        if written != size {
            return Err(LayerError::corrupt(format!(
                "block decompressed to {written} bytes, expected {size}"
            )));
        }
        Ok(out)
    })
}

impl Layer {
    /// Opens the layer occupying `[offset, offset + len)` of `map`; checks the superblock
    /// and the tables (cheap), not the data (see [`Layer::verify`]).
    pub fn open(map: Arc<Mmap>, offset: u64, len: u64, cache: Arc<BlockCache>) -> Result<Self> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= map.len() as u64)
            .ok_or_else(|| LayerError::corrupt("layer extends past the end of the file"))?;
        let base = offset as usize;
        let sb = Superblock::decode(&map[base..end as usize], len)?;
        let tables = &map[base + sb.block_table_offset as usize..base + sb.layer_size as usize];
        let computed = xxhash_rust::xxh3::xxh3_64(tables);
        if computed != sb.tables_checksum && !crate::FUZZING {
            return Err(LayerError::corrupt(format!(
                "block/meta table checksum mismatch (stored {:#018x}, computed {computed:#018x})",
                sb.tables_checksum
            )));
        }
        let layer = Layer {
            map,
            base,
            sb,
            id: NEXT_LAYER_ID.fetch_add(1, Ordering::Relaxed),
            cache,
        };
        // Frames must follow one another without overlapping: a table pointing many entries
        // at one tiny frame would otherwise multiply a small file into huge memory use.
        let mut end = SUPERBLOCK_SIZE as u64;
        for i in 0..layer.sb.block_count {
            end = layer.check_entry(
                layer.block_entry(i),
                end,
                layer.sb.block_size,
                "data block",
                i,
            )?;
        }
        for i in 0..layer.sb.meta_page_count {
            end =
                layer.check_entry(layer.meta_entry(i), end, META_PAGE_SIZE, "metadata page", i)?;
        }
        let root = layer.inode(0)?;
        if !root.is_dir() {
            return Err(LayerError::corrupt("root entry is not a directory"));
        }
        Ok(layer)
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// Whether any inode of the layer has an xattr: the xattr section, the last one of
    /// the metadata, is not empty.
    pub fn has_xattrs(&self) -> bool {
        self.sb.meta_size > self.sb.xattrs_at
    }

    /// Checks one table entry against the previous frame's end; returns this frame's end.
    fn check_entry(
        &self,
        e: TableEntry,
        after: u64,
        max: u32,
        what: &str,
        index: u32,
    ) -> Result<u64> {
        let end = e.offset.checked_add(u64::from(e.compressed_size));
        match end {
            Some(end)
                if e.offset >= after
                    && end <= self.sb.block_table_offset
                    && e.uncompressed_size <= max
                    && e.uncompressed_size > 0 =>
            {
                Ok(end)
            }
            _ => Err(LayerError::corrupt(format!(
                "{what} {index} has an invalid table entry"
            ))),
        }
    }

    fn table_entry(&self, table_offset: u64, index: u32) -> TableEntry {
        let at = self.base + table_offset as usize + index as usize * TABLE_ENTRY_SIZE;
        TableEntry::decode(&self.map[at..at + TABLE_ENTRY_SIZE])
    }
    fn block_entry(&self, index: u32) -> TableEntry {
        self.table_entry(self.sb.block_table_offset, index)
    }
    fn meta_entry(&self, index: u32) -> TableEntry {
        self.table_entry(self.sb.meta_table_offset, index)
    }

    /// Checked, decompressed bytes of one table entry.
    fn load(&self, e: TableEntry, what: &str, index: u32) -> Result<Arc<[u8]>> {
        let start = self.base + e.offset as usize;
        // One large read instead of a page fault per 4 KiB when the image is not cached.
        let _ = self
            .map
            .advise_range(memmap2::Advice::WillNeed, start, e.compressed_size as usize);
        let packed = &self.map[start..start + e.compressed_size as usize];
        let sum = xxhash_rust::xxh3::xxh3_64(packed);
        if sum != e.checksum && !crate::FUZZING {
            return Err(LayerError::corrupt(format!(
                "{what} {index} checksum mismatch (stored {:#018x}, computed {sum:#018x})",
                e.checksum
            )));
        }
        decompress(packed, e.uncompressed_size as usize, &self.cache.spare)
            .map_err(|err| LayerError::corrupt(format!("{what} {index}: {err}")))
    }

    /// A decompressed metadata page, through the same bounded cache as data blocks.
    fn meta_page(&self, index: u32) -> Result<Arc<[u8]>> {
        if index >= self.sb.meta_page_count {
            return Err(LayerError::corrupt("metadata reference past the end"));
        }
        let key = (self.id, META_KEY | u64::from(index));
        self.cache.cache.get_or_insert_with(&key, || {
            let expected = (self.sb.meta_size - u64::from(index) * u64::from(META_PAGE_SIZE))
                .min(u64::from(META_PAGE_SIZE));
            let e = self.meta_entry(index);
            if u64::from(e.uncompressed_size) != expected {
                return Err(LayerError::corrupt(format!(
                    "metadata page {index} has the wrong size"
                )));
            }
            self.load(e, "metadata page", index)
        })
    }

    /// Copies `out.len()` bytes of the metadata stream starting at `offset`.
    fn meta_read(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(out.len() as u64);
        if end.is_none_or(|end| end > self.sb.meta_size) {
            return Err(LayerError::corrupt("metadata reference past the end"));
        }
        let page_size = u64::from(META_PAGE_SIZE);
        let mut done = 0;
        while done < out.len() {
            let pos = offset + done as u64;
            let page = self.meta_page((pos / page_size) as u32)?;
            let within = (pos % page_size) as usize;
            let n = (page.len() - within).min(out.len() - done);
            out[done..done + n].copy_from_slice(&page[within..within + n]);
            done += n;
        }
        Ok(())
    }

    fn meta_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.meta_read(offset, &mut v)?;
        Ok(v)
    }

    pub fn inode_count(&self) -> u32 {
        self.sb.inode_count
    }

    /// The inode `ino`, with its references checked against the section bounds.
    pub fn inode(&self, ino: u32) -> Result<Inode> {
        if ino >= self.sb.inode_count {
            return Err(LayerError::corrupt(format!("inode {ino} does not exist")));
        }
        let mut b = [0u8; INODE_SIZE];
        self.meta_read(u64::from(ino) * INODE_SIZE as u64, &mut b)?;
        let inode = Inode::decode(&b)?;
        let within = |start: u64, len: u64, limit: u64| {
            start.checked_add(len).is_some_and(|end| end <= limit)
        };
        let names_len = self.sb.xattrs_at - self.sb.names_at;
        let ok = match inode.file_type() {
            S_IFDIR => within(inode.a, u64::from(inode.b), u64::from(self.sb.dirent_count)),
            S_IFREG if inode.is_sparse() => {
                within(inode.a, u64::from(inode.b), self.sb.extent_count)
            }
            S_IFREG => within(inode.a, inode.size, self.sb.data_size),
            S_IFLNK => inode.size <= MAX_SYMLINK && within(inode.a, inode.size, names_len),
            _ => true,
        } && within(
            inode.xattr_offset,
            u64::from(inode.xattr_len),
            self.sb.meta_size - self.sb.xattrs_at,
        );
        if !ok {
            return Err(LayerError::corrupt(format!(
                "inode {ino} points outside its section"
            )));
        }
        Ok(inode)
    }

    fn dirent(&self, index: u64) -> Result<Dirent> {
        let mut b = [0u8; DIRENT_SIZE];
        self.meta_read(self.sb.dirents_at + index * DIRENT_SIZE as u64, &mut b)?;
        let d = Dirent::decode(&b);
        if d.ino >= self.sb.inode_count
            || self.sb.names_at + u64::from(d.name_offset) + u64::from(d.name_len)
                > self.sb.xattrs_at
            || d.name_len == 0
        {
            return Err(LayerError::corrupt("directory entry out of bounds"));
        }
        Ok(d)
    }

    /// A dirent's name; anything but one plain path component (no `/`, no NUL, not `.` or
    /// `..`, at most `NAME_MAX` bytes) is corruption, so no reader can be steered outside a
    /// directory, nor hand the kernel a name no file system holds.
    fn dirent_name(&self, d: &Dirent) -> Result<Vec<u8>> {
        let name = self.meta_vec(
            self.sb.names_at + u64::from(d.name_offset),
            usize::from(d.name_len),
        )?;
        if name == b"." || name == b".." || name.iter().any(|&c| c == b'/' || c == 0) {
            return Err(LayerError::corrupt(
                "directory entry name is not a single path component",
            ));
        }
        if name.len() > NAME_MAX {
            return Err(LayerError::corrupt(
                "directory entry name is longer than 255 bytes",
            ));
        }
        Ok(name)
    }

    /// Finds `name` in directory `dir` by binary search over its sorted entries.
    pub fn lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<u32>> {
        if !dir.is_dir() {
            return Ok(None);
        }
        let (mut lo, mut hi) = (0u64, u64::from(dir.b));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let d = self.dirent(dir.a + mid)?;
            match self.dirent_name(&d)?.as_slice().cmp(name) {
                std::cmp::Ordering::Equal => return Ok(Some(d.ino)),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }

    /// Every entry of directory `dir`, in name order.
    pub fn read_dir(&self, dir: &Inode) -> Result<Vec<DirEntry>> {
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        (0..u64::from(dir.b))
            .map(|i| {
                let d = self.dirent(dir.a + i)?;
                Ok(DirEntry {
                    name: self.dirent_name(&d)?,
                    ino: d.ino,
                })
            })
            .collect()
    }

    pub fn read_link(&self, inode: &Inode) -> Result<Vec<u8>> {
        if inode.file_type() != S_IFLNK {
            return Err(LayerError::corrupt("not a symlink"));
        }
        self.meta_vec(self.sb.names_at + inode.a, inode.size as usize)
    }

    pub fn xattrs(&self, inode: &Inode) -> Result<crate::format::Xattrs> {
        if inode.xattr_len == 0 {
            return Ok(Vec::new());
        }
        let raw = self.meta_vec(
            self.sb.xattrs_at + inode.xattr_offset,
            inode.xattr_len as usize,
        )?;
        decode_xattrs(&raw)
    }

    /// Data runs of a sparse file.
    pub fn extents(&self, inode: &Inode) -> Result<Vec<Extent>> {
        if !inode.is_sparse() {
            return Ok(vec![Extent {
                file_offset: 0,
                len: inode.size,
                data_offset: inode.a,
            }]);
        }
        (0..u64::from(inode.b))
            .map(|i| {
                let mut b = [0u8; EXTENT_SIZE];
                self.meta_read(
                    self.sb.extents_at + (inode.a + i) * EXTENT_SIZE as u64,
                    &mut b,
                )?;
                let e = Extent::decode(&b);
                let in_bounds = e
                    .data_offset
                    .checked_add(e.len)
                    .is_some_and(|end| end <= self.sb.data_size)
                    && e.file_offset
                        .checked_add(e.len)
                        .is_some_and(|end| end <= inode.size);
                if !in_bounds {
                    return Err(LayerError::corrupt("extent out of bounds"));
                }
                Ok(e)
            })
            .collect()
    }

    /// A decompressed data block, through the shared cache. A reader moving forward keeps
    /// the next block being decompressed ahead: after a block it had to wait for, and at
    /// the first use of one decompressed ahead.
    fn block(&self, index: u32) -> Result<Arc<[u8]>> {
        let (block, loaded) = self.load_block(index)?;
        // Checked first: where it is not allowed, a read takes no lock for it.
        if self.cache.ahead_allowed.load(Ordering::Relaxed)
            && (loaded || self.cache.ahead.take((self.id, index)))
        {
            self.decompress_ahead(index + 1);
        }
        Ok(block)
    }

    /// Has block `index` decompressed on the worker thread, unless it is cached.
    fn decompress_ahead(&self, index: u32) {
        if index >= self.sb.block_count
            || self.cache.cache.contains_key(&(self.id, u64::from(index)))
        {
            return;
        }
        let layer = self.clone();
        self.cache.ahead.ask((self.id, index), move || {
            // An error is the reader's to meet, when it gets there.
            let _ = layer.load_block(index);
        });
    }

    /// Block `index` from the cache, or decompressed into it (then `true`).
    fn load_block(&self, index: u32) -> Result<(Arc<[u8]>, bool)> {
        if index >= self.sb.block_count {
            return Err(LayerError::corrupt("data reference past the end"));
        }
        let mut loaded = false;
        let block = self
            .cache
            .cache
            .get_or_insert_with(&(self.id, u64::from(index)), || {
                loaded = true;
                self.prefetch_after(index);
                let e = self.block_entry(index);
                let expected = (self.sb.data_size
                    - u64::from(index) * u64::from(self.sb.block_size))
                .min(u64::from(self.sb.block_size));
                if u64::from(e.uncompressed_size) != expected {
                    return Err(LayerError::corrupt(format!(
                        "data block {index} has the wrong size"
                    )));
                }
                self.load(e, "data block", index)
            })?;
        Ok((block, loaded))
    }

    /// Asks the kernel to start reading the next blocks' compressed bytes, so a sequential
    /// read from a cold cache overlaps disk reads with decompression.
    fn prefetch_after(&self, index: u32) {
        const AHEAD: u32 = 2;
        let first = index + 1;
        let last = (index + AHEAD).min(self.sb.block_count.saturating_sub(1));
        if first > last {
            return;
        }
        let (a, b) = (self.block_entry(first), self.block_entry(last));
        let start = self.base + a.offset as usize;
        let end = self.base + (b.offset + u64::from(b.compressed_size)) as usize;
        if end > start {
            let _ = self
                .map
                .advise_range(memmap2::Advice::WillNeed, start, end - start);
        }
    }

    /// Copies data-stream bytes `[offset, offset + out.len())` into `out`.
    fn read_stream(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        let bs = u64::from(self.sb.block_size);
        let mut done = 0;
        while done < out.len() {
            let pos = offset + done as u64;
            let block = self.block((pos / bs) as u32)?;
            let within = (pos % bs) as usize;
            if within >= block.len() {
                return Err(LayerError::corrupt("data reference past the end"));
            }
            let n = (block.len() - within).min(out.len() - done);
            out[done..done + n].copy_from_slice(&block[within..within + n]);
            done += n;
        }
        Ok(())
    }

    /// The decompressed block that holds bytes `[offset, offset + len)` of a file (cut at its
    /// end) and their range in it, when they lie in one block of a file without holes: a
    /// reader can use them in place. `None` otherwise (read them with [`Layer::read`]).
    pub fn read_in_place(&self, inode: &Inode, offset: u64, len: usize) -> Result<Option<InPlace>> {
        if inode.file_type() != S_IFREG || inode.is_sparse() || offset >= inode.size || len == 0 {
            return Ok(None);
        }
        let len = (inode.size - offset).min(len as u64);
        let bs = u64::from(self.sb.block_size);
        let start = inode.a + offset;
        let last = start + len - 1;
        if start / bs != last / bs {
            return Ok(None);
        }
        let block = self.block((start / bs) as u32)?;
        let within = (start % bs) as usize;
        let end = within + len as usize;
        if end > block.len() {
            return Err(LayerError::corrupt("data reference past the end"));
        }
        Ok(Some((block, within..end)))
    }

    /// Decompresses into the cache, in order, the blocks holding a regular file's contents,
    /// until `max_bytes` of blocks were taken; returns how many bytes of blocks that was.
    /// For a program a session is about to start: its first reads find their blocks ready.
    pub fn warm(&self, inode: &Inode, max_bytes: u64) -> Result<u64> {
        if inode.file_type() != S_IFREG {
            return Ok(0);
        }
        let runs = if inode.is_sparse() {
            self.extents(inode)?
                .into_iter()
                .map(|e| (e.data_offset, e.len))
                .collect()
        } else {
            vec![(inode.a, inode.size)]
        };
        let bs = u64::from(self.sb.block_size);
        let mut taken = 0;
        for (start, len) in runs.into_iter().filter(|&(_, len)| len > 0) {
            for index in start / bs..=(start + len - 1) / bs {
                if taken >= max_bytes {
                    return Ok(taken);
                }
                let index = u32::try_from(index)
                    .map_err(|_| LayerError::corrupt("data reference past the end"))?;
                self.load_block(index)?;
                taken += bs;
            }
        }
        Ok(taken)
    }

    /// Reads file content at `offset` into `out`; returns bytes read (short at end of file).
    pub fn read(&self, inode: &Inode, offset: u64, out: &mut [u8]) -> Result<usize> {
        if inode.file_type() != S_IFREG || offset >= inode.size {
            return Ok(0);
        }
        let len = (inode.size - offset).min(out.len() as u64) as usize;
        let out = &mut out[..len];
        if !inode.is_sparse() {
            self.read_stream(inode.a + offset, out)?;
            return Ok(len);
        }
        out.fill(0);
        let end = offset + len as u64;
        for e in self.extents(inode)? {
            let lo = e.file_offset.max(offset);
            let hi = (e.file_offset + e.len).min(end);
            if lo < hi {
                let dst = &mut out[(lo - offset) as usize..(hi - offset) as usize];
                self.read_stream(e.data_offset + (lo - e.file_offset), dst)?;
            }
        }
        Ok(len)
    }

    /// Checks everything: the body digest, every block and page, every record.
    pub fn verify(&self) -> Result<()> {
        let body = &self.map[self.base + SUPERBLOCK_SIZE..self.base + self.sb.layer_size as usize];
        let digest = blake3::hash(body);
        if digest.as_bytes() != &self.sb.body_digest && !crate::FUZZING {
            return Err(LayerError::corrupt(format!(
                "body digest mismatch (stored {}, computed {})",
                hex(&self.sb.body_digest),
                digest.to_hex()
            )));
        }
        for i in 0..self.sb.meta_page_count {
            self.load(self.meta_entry(i), "metadata page", i)?;
        }
        for i in 0..self.sb.block_count {
            let e = self.block_entry(i);
            let data = self.load(e, "data block", i)?;
            let expected = (self.sb.data_size - u64::from(i) * u64::from(self.sb.block_size))
                .min(u64::from(self.sb.block_size));
            if data.len() as u64 != expected {
                return Err(LayerError::corrupt(format!(
                    "data block {i} has the wrong size"
                )));
            }
        }
        // The directories must form a tree: each one named once, the root never, and each
        // directory's entries its own, so walking the tree terminates and visits each once.
        let mut named_dirs = vec![false; self.sb.inode_count as usize];
        let mut ranges = Vec::new();
        for ino in 0..self.sb.inode_count {
            let inode = self.inode(ino)?;
            if inode.is_dir() {
                ranges.push((inode.a, u64::from(inode.b)));
            }
        }
        ranges.sort_unstable();
        if ranges.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(LayerError::corrupt("directories share directory entries"));
        }
        for ino in 0..self.sb.inode_count {
            let inode = self.inode(ino)?;
            if inode.is_dir() {
                let entries = self.read_dir(&inode)?;
                if entries.windows(2).any(|w| w[0].name >= w[1].name) {
                    return Err(LayerError::corrupt(format!(
                        "directory inode {ino} has unsorted or duplicate entries"
                    )));
                }
                for e in &entries {
                    if self.inode(e.ino)?.is_dir() {
                        let seen = &mut named_dirs[e.ino as usize];
                        if e.ino == 0 || *seen {
                            return Err(LayerError::corrupt(format!(
                                "directory inode {} is named more than once",
                                e.ino
                            )));
                        }
                        *seen = true;
                    }
                }
            }
            if inode.file_type() == S_IFREG {
                self.extents(&inode)?;
            }
            self.xattrs(&inode)?;
        }
        Ok(())
    }

    /// The layer's identity: BLAKE3 of everything after the superblock.
    pub fn digest(&self) -> [u8; 32] {
        self.sb.body_digest
    }
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod spare_tests {
    use super::*;

    #[test]
    fn a_buffer_no_reader_holds_is_taken_again_by_its_size_only() {
        let spare = Spare::default();
        let buffer: Arc<[u8]> = vec![7u8; 4096].into();
        let at = buffer.as_ptr();
        spare.put(buffer);
        assert!(spare.take(8192).is_none(), "another size");
        let again = spare.take(4096).expect("kept");
        assert_eq!(again.as_ptr(), at);
        assert!(spare.take(4096).is_none(), "taken once");
    }

    #[test]
    fn a_buffer_a_reader_still_holds_is_not_kept() {
        let spare = Spare::default();
        let buffer: Arc<[u8]> = vec![0u8; 4096].into();
        let reader = Arc::clone(&buffer);
        spare.put(buffer);
        assert!(spare.take(4096).is_none());
        drop(reader);
    }

    #[test]
    fn spare_buffers_are_bounded_in_number_and_bytes() {
        let spare = Spare::default();
        for _ in 0..MAX_SPARE + 3 {
            spare.put(vec![0u8; 16].into());
        }
        let kept = std::iter::from_fn(|| spare.take(16)).count();
        assert_eq!(kept, MAX_SPARE);
        let large = MAX_SPARE_BYTES / 2 + 1;
        spare.put(vec![0u8; large].into());
        spare.put(vec![0u8; large].into());
        let kept = std::iter::from_fn(|| spare.take(large)).count();
        assert_eq!(kept, 1, "two would pass the byte bound");
    }

    /// Stale bytes in a spare buffer never show: the block is decompressed over all of it.
    #[test]
    fn a_block_decompressed_into_a_stale_buffer_is_exact() {
        let block: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let packed = zstd::bulk::compress(&block, 3).unwrap();
        let spare = Spare::default();
        spare.put(vec![0xAA; block.len()].into());
        let out = decompress(&packed, block.len(), &spare).unwrap();
        assert_eq!(&out[..], &block[..]);
        assert!(spare.take(block.len()).is_none(), "the spare one was used");
    }
}
