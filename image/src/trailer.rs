//! The trailer at the end of an image: where the reserved block and every layer are.
//! Read first, from the end of the file, so appending a layer only rewrites the tail.

use crate::error::ImageError;

/// Magic of the footer, the last bytes of every image.
pub const FOOTER_MAGIC: [u8; 8] = *b"FIMIMAGE";
/// Image format version this crate writes. Version 2 added embedded tools (table entries
/// of kind 1, stored as they are); version 3 stores them zstd-compressed (kind 2). Version 1
/// and 2 files are still read.
pub const IMAGE_VERSION: u32 = 3;
/// Oldest image format version this crate reads.
pub const OLDEST_READABLE_VERSION: u32 = 1;
/// Longest name of an embedded tool (the rest of a table entry).
pub const TOOL_NAME_MAX: usize = 15;
/// Size of the footer at the very end of the file.
pub const FOOTER_SIZE: usize = 64;
/// Size of one layer-table entry.
pub const LAYER_ENTRY_SIZE: usize = 64;
/// Alignment of the reserved block and of every layer.
pub const ALIGN: u64 = 4096;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The fixed footer: the entry point of a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Entries of the table: layers and embedded tools.
    pub layer_count: u32,
    /// Bytes of the launcher ELF (its computed end, before padding).
    pub launcher_size: u64,
    /// XXH3-64 of the launcher bytes `[0, launcher_size)`.
    pub launcher_checksum: u64,
    pub reserved_offset: u64,
    pub table_offset: u64,
    /// XXH3-64 of the layer table.
    pub table_checksum: u64,
}

impl Footer {
    pub fn encode(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[0..8].copy_from_slice(&FOOTER_MAGIC);
        b[8..12].copy_from_slice(&IMAGE_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.layer_count.to_le_bytes());
        b[16..24].copy_from_slice(&self.launcher_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.launcher_checksum.to_le_bytes());
        b[32..40].copy_from_slice(&self.reserved_offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.table_offset.to_le_bytes());
        b[48..56].copy_from_slice(&self.table_checksum.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&b[..56]);
        b[56..64].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Decodes the footer from the last [`FOOTER_SIZE`] bytes of a file of `file_len` bytes.
    pub fn decode(b: &[u8], file_len: u64) -> Result<Self, ImageError> {
        if b.len() != FOOTER_SIZE {
            return Err(ImageError::NotAnImage("file is too small".into()));
        }
        if b[0..8] != FOOTER_MAGIC {
            return Err(ImageError::NotAnImage(
                "no image trailer at the end of the file (not an image, or truncated)".into(),
            ));
        }
        let stored = u64_at(b, 56);
        let computed = xxhash_rust::xxh3::xxh3_64(&b[..56]);
        if stored != computed && !crate::FUZZING {
            return Err(ImageError::corrupt(format!(
                "trailer checksum mismatch (stored {stored:#018x}, computed {computed:#018x})"
            )));
        }
        let version = u32_at(b, 8);
        if !(OLDEST_READABLE_VERSION..=IMAGE_VERSION).contains(&version) {
            return Err(ImageError::corrupt(format!(
                "unsupported image version {version} (this build reads {OLDEST_READABLE_VERSION} to {IMAGE_VERSION})"
            )));
        }
        let f = Footer {
            layer_count: u32_at(b, 12),
            launcher_size: u64_at(b, 16),
            launcher_checksum: u64_at(b, 24),
            reserved_offset: u64_at(b, 32),
            table_offset: u64_at(b, 40),
            table_checksum: u64_at(b, 48),
        };
        let table_end = u64::from(f.layer_count)
            .checked_mul(LAYER_ENTRY_SIZE as u64)
            .and_then(|n| n.checked_add(f.table_offset));
        let footer_at = file_len.checked_sub(FOOTER_SIZE as u64);
        if table_end.is_none() || table_end != footer_at {
            return Err(ImageError::corrupt(
                "trailer: layer table does not end where the footer starts",
            ));
        }
        if f.launcher_size.checked_next_multiple_of(ALIGN) != Some(f.reserved_offset) {
            return Err(ImageError::corrupt(
                "trailer: reserved block is not right after the launcher",
            ));
        }
        Ok(f)
    }
}

/// Where one layer lives in the image, and its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerEntry {
    pub offset: u64,
    pub size: u64,
    /// BLAKE3 of the layer's body, equal to the digest in its superblock.
    pub digest: [u8; 32],
}

/// A program carried by the image (a static bwrap), stored as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolEntry {
    pub offset: u64,
    pub size: u64,
    /// BLAKE3 of the program's bytes (after decompression when compressed).
    pub digest: [u8; 32],
    /// At most [`TOOL_NAME_MAX`] bytes of `[a-z0-9._-]`.
    pub name: String,
    /// Stored as one zstd frame (kind 2) rather than as is (kind 1).
    pub compressed: bool,
}

/// One entry of the table: byte 48 tells its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableEntry {
    /// Kind 0; bytes 49..64 are zero.
    Layer(LayerEntry),
    /// Kind 1; bytes 49..64 hold the name, zero-padded.
    Tool(ToolEntry),
}

/// Whether `name` can name an embedded tool.
pub fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOOL_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

impl TableEntry {
    pub fn offset(&self) -> u64 {
        match self {
            TableEntry::Layer(l) => l.offset,
            TableEntry::Tool(t) => t.offset,
        }
    }

    pub fn size(&self) -> u64 {
        match self {
            TableEntry::Layer(l) => l.size,
            TableEntry::Tool(t) => t.size,
        }
    }

    pub fn encode(&self) -> [u8; LAYER_ENTRY_SIZE] {
        let mut b = [0u8; LAYER_ENTRY_SIZE];
        let (offset, size, digest) = match self {
            TableEntry::Layer(l) => (l.offset, l.size, l.digest),
            TableEntry::Tool(t) => {
                b[48] = if t.compressed { 2 } else { 1 };
                let name = t.name.as_bytes();
                let n = name.len().min(TOOL_NAME_MAX);
                b[49..49 + n].copy_from_slice(&name[..n]);
                (t.offset, t.size, t.digest)
            }
        };
        b[0..8].copy_from_slice(&offset.to_le_bytes());
        b[8..16].copy_from_slice(&size.to_le_bytes());
        b[16..48].copy_from_slice(&digest);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, ImageError> {
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[16..48]);
        let (offset, size) = (u64_at(b, 0), u64_at(b, 8));
        match b[48] {
            0 if b[49..64].iter().all(|&x| x == 0) => Ok(TableEntry::Layer(LayerEntry {
                offset,
                size,
                digest,
            })),
            0 => Err(ImageError::corrupt(
                "layer table entry has non-zero padding",
            )),
            kind @ (1 | 2) => {
                let raw = &b[49..64];
                let len = raw.iter().position(|&x| x == 0).unwrap_or(raw.len());
                let name = std::str::from_utf8(&raw[..len])
                    .ok()
                    .filter(|n| valid_tool_name(n) && raw[len..].iter().all(|&x| x == 0))
                    .ok_or_else(|| ImageError::corrupt("tool entry has an invalid name"))?;
                Ok(TableEntry::Tool(ToolEntry {
                    offset,
                    size,
                    digest,
                    name: name.to_string(),
                    compressed: kind == 2,
                }))
            }
            kind => Err(ImageError::corrupt(format!(
                "table entry of unknown kind {kind}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer() -> Footer {
        Footer {
            layer_count: 2,
            launcher_size: 5000,
            launcher_checksum: 1,
            reserved_offset: 8192,
            table_offset: 10_000,
            table_checksum: 2,
        }
    }
    const LEN: u64 = 10_000 + 2 * 64 + 64;

    #[test]
    fn table_entries_round_trip_by_kind() {
        let layer = TableEntry::Layer(LayerEntry {
            offset: 4096,
            size: 10,
            digest: [7; 32],
        });
        let tool = TableEntry::Tool(ToolEntry {
            offset: 8192,
            size: 20,
            digest: [9; 32],
            name: "bwrap".into(),
            compressed: false,
        });
        let compressed = TableEntry::Tool(ToolEntry {
            offset: 12288,
            size: 30,
            digest: [5; 32],
            name: "unionfs".into(),
            compressed: true,
        });
        assert_eq!(tool.encode()[48], 1);
        assert_eq!(compressed.encode()[48], 2);
        for entry in [layer, tool, compressed] {
            assert_eq!(TableEntry::decode(&entry.encode()).unwrap(), entry);
        }
    }

    #[test]
    fn table_entries_refuse_unknown_kinds_and_bad_names() {
        let mut b = [0u8; LAYER_ENTRY_SIZE];
        b[48] = 3;
        assert!(TableEntry::decode(&b).is_err(), "kind 3");
        b[48] = 0;
        b[60] = 1;
        assert!(TableEntry::decode(&b).is_err(), "layer padding");
        for name in [&b""[..], b"Bwrap", b"a b", b"bw\0rap"] {
            let mut b = [0u8; LAYER_ENTRY_SIZE];
            b[48] = 1;
            b[49..49 + name.len()].copy_from_slice(name);
            assert!(TableEntry::decode(&b).is_err(), "{name:?}");
        }
        assert!(!valid_tool_name("sixteen-letters!"));
        assert!(valid_tool_name("fuse-overlayfs"));
    }

    #[test]
    fn footer_round_trips() {
        let f = footer();
        let b = f.encode();
        assert_eq!(&b[..8], b"FIMIMAGE");
        assert_eq!(Footer::decode(&b, LEN).unwrap(), f);
    }

    #[test]
    fn footer_rejects_each_flipped_byte() {
        let b = footer().encode();
        for at in 0..FOOTER_SIZE {
            let mut c = b;
            c[at] ^= 0x10;
            assert!(Footer::decode(&c, LEN).is_err(), "flip at {at} accepted");
        }
    }

    #[test]
    fn footer_of_a_truncated_file_is_not_found() {
        let err = Footer::decode(&[0u8; FOOTER_SIZE], LEN).unwrap_err();
        assert!(matches!(err, ImageError::NotAnImage(_)), "{err}");
    }

    #[test]
    fn footer_rejects_table_not_ending_at_footer() {
        let err = Footer::decode(&footer().encode(), LEN + 1).unwrap_err();
        assert!(err.to_string().contains("layer table"), "{err}");
    }

    #[test]
    fn footer_rejects_reserved_block_away_from_launcher_end() {
        let mut f = footer();
        f.reserved_offset = 4096;
        let err = Footer::decode(&f.encode(), LEN).unwrap_err();
        assert!(err.to_string().contains("reserved block"), "{err}");
    }

    #[test]
    fn footer_with_an_overflowing_launcher_size_is_rejected() {
        let mut f = footer();
        f.launcher_size = u64::MAX;
        f.reserved_offset = 0;
        assert!(Footer::decode(&f.encode(), LEN).is_err());
    }
}
