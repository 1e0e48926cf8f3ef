//! On-disk records of the layer format, version 1 (see `docs/format.md`).
//!
//! Every record is fixed-size and little-endian so a reader can index straight into the
//! metadata stream without parsing anything before the record it wants.

use crate::error::LayerError;

/// First bytes of every layer.
pub const LAYER_MAGIC: [u8; 8] = *b"FIMLAYER";
/// Layer format version this crate writes and reads.
pub const LAYER_VERSION: u32 = 1;
/// Size of the superblock at the start of a layer.
pub const SUPERBLOCK_SIZE: usize = 256;
/// Bytes covered by the superblock checksum (everything before the checksum field).
const SUPERBLOCK_CHECKSUMMED: usize = 248;
/// Uncompressed size of one metadata page.
pub const META_PAGE_SIZE: u32 = 64 * 1024;
/// Size of one block-table or meta-table entry.
pub const TABLE_ENTRY_SIZE: usize = 24;
/// Size of one inode record.
pub const INODE_SIZE: usize = 64;
/// Size of one directory entry record.
pub const DIRENT_SIZE: usize = 12;
/// Size of one extent record (sparse files).
pub const EXTENT_SIZE: usize = 24;
/// Smallest and largest data block sizes a reader accepts.
pub const MIN_BLOCK_SIZE: u32 = 4096;
pub const MAX_BLOCK_SIZE: u32 = 64 * 1024 * 1024;

/// Inode flag: this entry hides the same name in lower layers.
pub const FLAG_WHITEOUT: u32 = 1 << 0;
/// Inode flag: this directory hides the directory of the same name in lower layers.
pub const FLAG_OPAQUE: u32 = 1 << 1;
/// Inode flag: the file's data is described by an extent list (it has holes).
pub const FLAG_SPARSE: u32 = 1 << 2;
const KNOWN_FLAGS: u32 = FLAG_WHITEOUT | FLAG_OPAQUE | FLAG_SPARSE;

/// `st_mode` file-type bits.
pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

/// The fixed header at offset 0 of a layer: where every section is and how to check it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Superblock {
    pub flags: u32,
    /// Total bytes of the layer, superblock included.
    pub layer_size: u64,
    /// Uncompressed size of each data block (the last one may be shorter).
    pub block_size: u32,
    /// Length of the logical (uncompressed) data stream.
    pub data_size: u64,
    pub block_table_offset: u64,
    pub block_count: u32,
    pub meta_page_count: u32,
    pub meta_table_offset: u64,
    /// Length of the logical (uncompressed) metadata stream.
    pub meta_size: u64,
    pub inode_count: u32,
    pub dirent_count: u32,
    pub extent_count: u64,
    pub dirents_at: u64,
    pub extents_at: u64,
    pub names_at: u64,
    pub xattrs_at: u64,
    /// BLAKE3 of every byte after the superblock: the layer's identity.
    pub body_digest: [u8; 32],
    /// XXH3-64 of the block table followed by the meta table.
    pub tables_checksum: u64,
}

impl Superblock {
    pub fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        put(&mut b, 0, &LAYER_MAGIC);
        put(&mut b, 8, &LAYER_VERSION.to_le_bytes());
        put(&mut b, 12, &self.flags.to_le_bytes());
        put(&mut b, 16, &self.layer_size.to_le_bytes());
        put(&mut b, 24, &self.block_size.to_le_bytes());
        put(&mut b, 28, &META_PAGE_SIZE.to_le_bytes());
        put(&mut b, 32, &self.data_size.to_le_bytes());
        put(&mut b, 40, &self.block_table_offset.to_le_bytes());
        put(&mut b, 48, &self.block_count.to_le_bytes());
        put(&mut b, 52, &self.meta_page_count.to_le_bytes());
        put(&mut b, 56, &self.meta_table_offset.to_le_bytes());
        put(&mut b, 64, &self.meta_size.to_le_bytes());
        put(&mut b, 72, &self.inode_count.to_le_bytes());
        put(&mut b, 76, &self.dirent_count.to_le_bytes());
        put(&mut b, 80, &self.extent_count.to_le_bytes());
        // 88: inodes_at is always 0 in version 1.
        put(&mut b, 96, &self.dirents_at.to_le_bytes());
        put(&mut b, 104, &self.extents_at.to_le_bytes());
        put(&mut b, 112, &self.names_at.to_le_bytes());
        put(&mut b, 120, &self.xattrs_at.to_le_bytes());
        put(&mut b, 128, &self.body_digest);
        put(&mut b, 160, &self.tables_checksum.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&b[..SUPERBLOCK_CHECKSUMMED]);
        put(&mut b, SUPERBLOCK_CHECKSUMMED, &sum.to_le_bytes());
        b
    }

    /// Decodes and checks a superblock; `available` is how many bytes the container holds
    /// for this layer, so a truncated layer is caught here.
    pub fn decode(b: &[u8], available: u64) -> Result<Self, LayerError> {
        if b.len() < SUPERBLOCK_SIZE || available < SUPERBLOCK_SIZE as u64 {
            return Err(LayerError::corrupt("layer is shorter than its superblock"));
        }
        if b[..8] != LAYER_MAGIC {
            return Err(LayerError::corrupt("not a layer (bad magic)"));
        }
        let stored = u64_at(b, SUPERBLOCK_CHECKSUMMED);
        let computed = xxhash_rust::xxh3::xxh3_64(&b[..SUPERBLOCK_CHECKSUMMED]);
        if stored != computed && !crate::FUZZING {
            return Err(LayerError::corrupt(format!(
                "superblock checksum mismatch (stored {stored:#018x}, computed {computed:#018x})"
            )));
        }
        let version = u32_at(b, 8);
        if version != LAYER_VERSION {
            return Err(LayerError::corrupt(format!(
                "unsupported layer version {version} (this build reads {LAYER_VERSION})"
            )));
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[128..160]);
        let sb = Superblock {
            flags: u32_at(b, 12),
            layer_size: u64_at(b, 16),
            block_size: u32_at(b, 24),
            data_size: u64_at(b, 32),
            block_table_offset: u64_at(b, 40),
            block_count: u32_at(b, 48),
            meta_page_count: u32_at(b, 52),
            meta_table_offset: u64_at(b, 56),
            meta_size: u64_at(b, 64),
            inode_count: u32_at(b, 72),
            dirent_count: u32_at(b, 76),
            extent_count: u64_at(b, 80),
            dirents_at: u64_at(b, 96),
            extents_at: u64_at(b, 104),
            names_at: u64_at(b, 112),
            xattrs_at: u64_at(b, 120),
            body_digest: digest,
            tables_checksum: u64_at(b, 160),
        };
        sb.check(u32_at(b, 28), u64_at(b, 88), available)?;
        Ok(sb)
    }

    /// Structural checks: every section inside the layer, sizes consistent.
    fn check(&self, meta_page_size: u32, inodes_at: u64, available: u64) -> Result<(), LayerError> {
        let bad = |what: &str| Err(LayerError::corrupt(format!("superblock: {what}")));
        if self.layer_size > available {
            return Err(LayerError::corrupt(format!(
                "layer is truncated: superblock says {} bytes, only {available} present",
                self.layer_size
            )));
        }
        if meta_page_size != META_PAGE_SIZE || inodes_at != 0 {
            return bad("unsupported metadata layout");
        }
        if self.flags != 0 {
            return bad("unknown flags");
        }
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&self.block_size) {
            return bad("block size out of range");
        }
        if self.data_size.div_ceil(u64::from(self.block_size)) != u64::from(self.block_count) {
            return bad("block count does not match data size");
        }
        if self.meta_size.div_ceil(u64::from(META_PAGE_SIZE)) != u64::from(self.meta_page_count) {
            return bad("meta page count does not match metadata size");
        }
        let block_table_end = self
            .block_table_offset
            .checked_add(u64::from(self.block_count) * TABLE_ENTRY_SIZE as u64);
        if block_table_end != Some(self.meta_table_offset) {
            return bad("meta table does not follow the block table");
        }
        let tables_end = self
            .meta_table_offset
            .checked_add(u64::from(self.meta_page_count) * TABLE_ENTRY_SIZE as u64);
        if self.block_table_offset < SUPERBLOCK_SIZE as u64 || tables_end != Some(self.layer_size) {
            return bad("tables do not end the layer");
        }
        if self.inode_count == 0 {
            return bad("no root inode");
        }
        let inodes_end = u64::from(self.inode_count) * INODE_SIZE as u64;
        let dirents_end = self
            .dirents_at
            .checked_add(u64::from(self.dirent_count) * DIRENT_SIZE as u64);
        let extents_end = self
            .extent_count
            .checked_mul(EXTENT_SIZE as u64)
            .and_then(|n| n.checked_add(self.extents_at));
        let ordered = inodes_end <= self.dirents_at
            && dirents_end.is_some_and(|e| e <= self.extents_at)
            && extents_end.is_some_and(|e| e <= self.names_at)
            && self.names_at <= self.xattrs_at
            && self.xattrs_at <= self.meta_size;
        if !ordered {
            return bad("metadata sections out of order or out of bounds");
        }
        Ok(())
    }
}

/// Where one compressed block (data or metadata page) lives and how to check it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableEntry {
    /// Offset of the compressed bytes from the start of the layer.
    pub offset: u64,
    pub compressed_size: u32,
    pub uncompressed_size: u32,
    /// XXH3-64 of the compressed bytes.
    pub checksum: u64,
}

impl TableEntry {
    pub fn encode(&self) -> [u8; TABLE_ENTRY_SIZE] {
        let mut b = [0u8; TABLE_ENTRY_SIZE];
        put(&mut b, 0, &self.offset.to_le_bytes());
        put(&mut b, 8, &self.compressed_size.to_le_bytes());
        put(&mut b, 12, &self.uncompressed_size.to_le_bytes());
        put(&mut b, 16, &self.checksum.to_le_bytes());
        b
    }
    pub fn decode(b: &[u8]) -> Self {
        TableEntry {
            offset: u64_at(b, 0),
            compressed_size: u32_at(b, 8),
            uncompressed_size: u32_at(b, 12),
            checksum: u64_at(b, 16),
        }
    }
}

/// One file-system object: everything `stat` reports plus where its content lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inode {
    /// Full `st_mode`: file type and permission bits (setuid, setgid, sticky included).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub flags: u32,
    /// Regular file: length; symlink: target length; otherwise 0.
    pub size: u64,
    /// Regular file: data-stream offset (or first extent when sparse); directory: first
    /// dirent index; symlink: offset of the target in the names section; device: rdev.
    pub a: u64,
    /// Directory: dirent count; sparse file: extent count; otherwise 0.
    pub b: u32,
    pub xattr_len: u32,
    /// Offset of this inode's xattrs in the xattr section.
    pub xattr_offset: u64,
}

impl Inode {
    pub fn encode(&self) -> [u8; INODE_SIZE] {
        let mut b = [0u8; INODE_SIZE];
        put(&mut b, 0, &self.mode.to_le_bytes());
        put(&mut b, 4, &self.uid.to_le_bytes());
        put(&mut b, 8, &self.gid.to_le_bytes());
        put(&mut b, 12, &self.nlink.to_le_bytes());
        put(&mut b, 16, &self.mtime_sec.to_le_bytes());
        put(&mut b, 24, &self.mtime_nsec.to_le_bytes());
        put(&mut b, 28, &self.flags.to_le_bytes());
        put(&mut b, 32, &self.size.to_le_bytes());
        put(&mut b, 40, &self.a.to_le_bytes());
        put(&mut b, 48, &self.b.to_le_bytes());
        put(&mut b, 52, &self.xattr_len.to_le_bytes());
        put(&mut b, 56, &self.xattr_offset.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, LayerError> {
        let inode = Inode {
            mode: u32_at(b, 0),
            uid: u32_at(b, 4),
            gid: u32_at(b, 8),
            nlink: u32_at(b, 12),
            mtime_sec: i64::from_le_bytes(b[16..24].try_into().unwrap_or_default()),
            mtime_nsec: u32_at(b, 24),
            flags: u32_at(b, 28),
            size: u64_at(b, 32),
            a: u64_at(b, 40),
            b: u32_at(b, 48),
            xattr_len: u32_at(b, 52),
            xattr_offset: u64_at(b, 56),
        };
        if inode.flags & !KNOWN_FLAGS != 0 {
            return Err(LayerError::corrupt("inode has unknown flags"));
        }
        if inode.mtime_nsec >= 1_000_000_000 {
            return Err(LayerError::corrupt("inode mtime nanoseconds out of range"));
        }
        match inode.mode & S_IFMT {
            S_IFREG | S_IFDIR | S_IFLNK | S_IFCHR | S_IFBLK | S_IFIFO | S_IFSOCK => Ok(inode),
            _ => Err(LayerError::corrupt("inode has an unknown file type")),
        }
    }

    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.file_type() == S_IFDIR
    }
    pub fn is_whiteout(&self) -> bool {
        self.flags & FLAG_WHITEOUT != 0
    }
    pub fn is_opaque(&self) -> bool {
        self.flags & FLAG_OPAQUE != 0
    }
    pub fn is_sparse(&self) -> bool {
        self.flags & FLAG_SPARSE != 0
    }
}

/// A name in a directory; a directory's entries are contiguous and sorted by name bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dirent {
    /// Offset of the name in the names section.
    pub name_offset: u32,
    pub ino: u32,
    pub name_len: u16,
}

impl Dirent {
    pub fn encode(&self) -> [u8; DIRENT_SIZE] {
        let mut b = [0u8; DIRENT_SIZE];
        put(&mut b, 0, &self.name_offset.to_le_bytes());
        put(&mut b, 4, &self.ino.to_le_bytes());
        put(&mut b, 8, &self.name_len.to_le_bytes());
        b
    }
    pub fn decode(b: &[u8]) -> Self {
        Dirent {
            name_offset: u32_at(b, 0),
            ino: u32_at(b, 4),
            name_len: u16_at(b, 8),
        }
    }
}

/// A run of stored bytes in a sparse file; anything not covered reads as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub file_offset: u64,
    pub len: u64,
    pub data_offset: u64,
}

impl Extent {
    pub fn encode(&self) -> [u8; EXTENT_SIZE] {
        let mut b = [0u8; EXTENT_SIZE];
        put(&mut b, 0, &self.file_offset.to_le_bytes());
        put(&mut b, 8, &self.len.to_le_bytes());
        put(&mut b, 16, &self.data_offset.to_le_bytes());
        b
    }
    pub fn decode(b: &[u8]) -> Self {
        Extent {
            file_offset: u64_at(b, 0),
            len: u64_at(b, 8),
            data_offset: u64_at(b, 16),
        }
    }
}

/// An entry's extended attributes: `(name, value)` pairs, sorted by name.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Encodes an inode's xattrs: repeated `u16 name_len, u32 value_len, name, value`.
pub fn encode_xattrs(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in xattrs {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(value);
    }
    out
}

/// Decodes what [`encode_xattrs`] wrote; any overrun is corruption.
pub fn decode_xattrs(mut b: &[u8]) -> Result<Xattrs, LayerError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 6 {
            return Err(LayerError::corrupt("truncated xattr record"));
        }
        let name_len = usize::from(u16_at(b, 0));
        let value_len = u32_at(b, 2) as usize;
        let rest = &b[6..];
        if name_len == 0 || rest.len() < name_len + value_len {
            return Err(LayerError::corrupt(
                "xattr record overruns its inode's xattrs",
            ));
        }
        out.push((
            rest[..name_len].to_vec(),
            rest[name_len..name_len + value_len].to_vec(),
        ));
        b = &rest[name_len + value_len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_superblock() -> Superblock {
        Superblock {
            flags: 0,
            layer_size: 256 + 2 * 24 + 24,
            block_size: 1 << 20,
            data_size: (1 << 20) + 5,
            block_table_offset: 256,
            block_count: 2,
            meta_page_count: 1,
            meta_table_offset: 256 + 48,
            meta_size: 64 + 12,
            inode_count: 1,
            dirent_count: 1,
            extent_count: 0,
            dirents_at: 64,
            extents_at: 76,
            names_at: 76,
            xattrs_at: 76,
            body_digest: [7; 32],
            tables_checksum: 0xdead_beef,
        }
    }

    #[test]
    fn superblock_round_trips() {
        let sb = sample_superblock();
        let bytes = sb.encode();
        assert_eq!(&bytes[..8], b"FIMLAYER");
        assert_eq!(Superblock::decode(&bytes, sb.layer_size).unwrap(), sb);
    }

    #[test]
    fn superblock_rejects_every_flipped_byte() {
        let bytes = sample_superblock().encode();
        for at in 0..SUPERBLOCK_SIZE {
            let mut b = bytes;
            b[at] ^= 0x40;
            assert!(
                Superblock::decode(&b, u64::MAX).is_err(),
                "flip at {at} accepted"
            );
        }
    }

    #[test]
    fn superblock_rejects_truncated_layer() {
        let sb = sample_superblock();
        let err = Superblock::decode(&sb.encode(), sb.layer_size - 1).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn superblock_rejects_wrong_magic_before_checksum() {
        let mut b = sample_superblock().encode();
        b[0] = b'X';
        let err = Superblock::decode(&b, u64::MAX).unwrap_err();
        assert!(err.to_string().contains("bad magic"), "{err}");
    }

    #[test]
    fn superblock_rejects_future_version() {
        let mut b = sample_superblock().encode();
        b[8] = 2;
        let sum = xxhash_rust::xxh3::xxh3_64(&b[..SUPERBLOCK_CHECKSUMMED]);
        b[SUPERBLOCK_CHECKSUMMED..].copy_from_slice(&sum.to_le_bytes());
        let err = Superblock::decode(&b, u64::MAX).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn superblock_rejects_block_count_not_matching_data() {
        let mut sb = sample_superblock();
        sb.data_size = 3 << 20;
        let err = Superblock::decode(&sb.encode(), u64::MAX).unwrap_err();
        assert!(err.to_string().contains("block count"), "{err}");
    }

    #[test]
    fn superblock_rejects_overlapping_sections() {
        let mut sb = sample_superblock();
        sb.dirents_at = 10; // inside the inode table
        assert!(Superblock::decode(&sb.encode(), u64::MAX).is_err());
    }

    #[test]
    fn table_entry_round_trips() {
        let e = TableEntry {
            offset: 1 << 40,
            compressed_size: 123,
            uncompressed_size: 1 << 20,
            checksum: u64::MAX - 1,
        };
        assert_eq!(TableEntry::decode(&e.encode()), e);
    }

    #[test]
    fn inode_round_trips_with_setuid_and_nanoseconds() {
        let i = Inode {
            mode: S_IFREG | 0o4755,
            uid: 1000,
            gid: 100,
            nlink: 3,
            mtime_sec: -5,
            mtime_nsec: 999_999_999,
            flags: FLAG_SPARSE,
            size: 5 << 30,
            a: 42,
            b: 2,
            xattr_len: 9,
            xattr_offset: 77,
        };
        assert_eq!(Inode::decode(&i.encode()).unwrap(), i);
    }

    #[test]
    fn inode_rejects_unknown_type_flags_and_nanoseconds() {
        let base = Inode {
            mode: S_IFREG | 0o644,
            ..Default::default()
        };
        let mut bad_type = base;
        bad_type.mode = 0o644;
        assert!(Inode::decode(&bad_type.encode()).is_err());
        let mut bad_flags = base;
        bad_flags.flags = 1 << 9;
        assert!(Inode::decode(&bad_flags.encode()).is_err());
        let mut bad_ns = base;
        bad_ns.mtime_nsec = 1_000_000_000;
        assert!(Inode::decode(&bad_ns.encode()).is_err());
    }

    #[test]
    fn whiteout_and_opaque_are_flags_not_types() {
        let w = Inode {
            mode: S_IFCHR,
            flags: FLAG_WHITEOUT,
            ..Default::default()
        };
        let o = Inode {
            mode: S_IFDIR | 0o755,
            flags: FLAG_OPAQUE,
            ..Default::default()
        };
        assert!(w.is_whiteout() && !w.is_opaque());
        assert!(o.is_opaque() && o.is_dir() && !o.is_whiteout());
    }

    #[test]
    fn dirent_and_extent_round_trip() {
        let d = Dirent {
            name_offset: 9,
            ino: 4_000_000_000,
            name_len: 255,
        };
        assert_eq!(Dirent::decode(&d.encode()), d);
        let e = Extent {
            file_offset: 5 << 30,
            len: 4096,
            data_offset: 12,
        };
        assert_eq!(Extent::decode(&e.encode()), e);
    }

    #[test]
    fn xattrs_round_trip_including_empty_values_and_binary_names() {
        let x = vec![
            (b"user.a".to_vec(), Vec::new()),
            (b"trusted.\xff".to_vec(), vec![0, 1, 2]),
        ];
        assert_eq!(decode_xattrs(&encode_xattrs(&x)).unwrap(), x);
        assert!(decode_xattrs(&[]).unwrap().is_empty());
    }

    #[test]
    fn xattrs_reject_overrun_and_empty_name() {
        let mut b = encode_xattrs(&[(b"user.a".to_vec(), b"value".to_vec())]);
        b.pop();
        assert!(decode_xattrs(&b).is_err());
        assert!(decode_xattrs(&[0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_xattrs(&[1, 0]).is_err());
    }
}
