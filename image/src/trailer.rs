//! The trailer at the end of an image: where the reserved block and every layer are.
//! Read first, from the end of the file, so appending a layer only rewrites the tail.

use crate::error::ImageError;

/// Magic of the footer, the last bytes of every image.
pub const FOOTER_MAGIC: [u8; 8] = *b"FIMIMAGE";
/// Image format version this crate reads and writes.
pub const IMAGE_VERSION: u32 = 1;
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
        if stored != computed {
            return Err(ImageError::corrupt(format!(
                "trailer checksum mismatch (stored {stored:#018x}, computed {computed:#018x})"
            )));
        }
        let version = u32_at(b, 8);
        if version != IMAGE_VERSION {
            return Err(ImageError::corrupt(format!(
                "unsupported image version {version} (this build reads {IMAGE_VERSION})"
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

impl LayerEntry {
    pub fn encode(&self) -> [u8; LAYER_ENTRY_SIZE] {
        let mut b = [0u8; LAYER_ENTRY_SIZE];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..48].copy_from_slice(&self.digest);
        b
    }
    pub fn decode(b: &[u8]) -> Result<Self, ImageError> {
        if b[48..64].iter().any(|&x| x != 0) {
            return Err(ImageError::corrupt(
                "layer table entry has non-zero padding",
            ));
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[16..48]);
        Ok(LayerEntry {
            offset: u64_at(b, 0),
            size: u64_at(b, 8),
            digest,
        })
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

    #[test]
    fn layer_entry_round_trips_and_rejects_padding() {
        let e = LayerEntry {
            offset: 1 << 33,
            size: 77,
            digest: [3; 32],
        };
        let mut b = e.encode();
        assert_eq!(LayerEntry::decode(&b).unwrap(), e);
        b[63] = 1;
        assert!(LayerEntry::decode(&b).is_err());
    }
}
