//! One error type for decoding a block and for rejecting bad setter input, so
//! the CLI can print any failure as a single clear line.

/// Everything that can be wrong with a block or with a value for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReservedError {
    // --- decoding a whole block ---
    #[error("reserved block: wrong length {actual} bytes (expected {expected})")]
    WrongLength { actual: usize, expected: usize },

    #[error("reserved block: bad magic {found:02x?} (expected \"FIMCONF\\0\")")]
    BadMagic { found: [u8; 8] },

    #[error(
        "reserved block: unsupported layout version {found} (this build reads versions 1 to {supported})"
    )]
    UnsupportedVersion { found: u32, supported: u32 },

    /// A block records the lowest layout version that describes it.
    #[error("reserved block: layout version {found} recorded where {expected} describes the block")]
    WrongVersion { found: u32, expected: u32 },

    #[error("reserved block: recorded block size {found} does not match {expected}")]
    BlockSizeMismatch { found: u32, expected: usize },

    #[error("reserved block: checksum mismatch (stored {stored:#018x}, computed {computed:#018x})")]
    ChecksumMismatch { stored: u64, computed: u64 },

    #[error("reserved block: non-zero byte at offset {offset} in {field} padding (must be zero)")]
    NonZeroPadding { field: &'static str, offset: usize },

    #[error("reserved block: invalid {field} byte {value:#04x} (expected 0 or 1)")]
    InvalidBool { field: &'static str, value: u8 },

    #[error("reserved block: unknown overlay byte {0:#04x} (expected 0x00, 0x02, 0x04 or 0x08)")]
    UnknownOverlayByte(u8),

    #[error("reserved block: unknown permission bits {0:#x}")]
    UnknownPermissionBits(u64),

    #[error("reserved block: unknown unshare bits {0:#x}")]
    UnknownUnshareBits(u16),

    #[error("reserved block: {field} region length {length} exceeds capacity {capacity}")]
    RegionOverflow {
        field: &'static str,
        length: usize,
        capacity: usize,
    },

    /// A region's payload failed the same validation a setter applies.
    #[error("reserved block: {field} region is invalid: {error}")]
    InvalidRegion {
        field: &'static str,
        error: Box<ReservedError>,
    },

    // --- rejecting a value ---
    #[error("{field} does not fit: {length} bytes, capacity {capacity}")]
    DoesNotFit {
        field: &'static str,
        length: usize,
        capacity: usize,
    },

    #[error("unknown overlay type '{0}' (expected bwrap, overlayfs or unionfs)")]
    UnknownOverlay(String),

    #[error("unknown permission '{name}' (expected one of: {expected})")]
    UnknownPermission { name: String, expected: String },

    #[error("unknown unshare namespace '{name}' (expected one of: {expected})")]
    UnknownUnshare { name: String, expected: String },

    #[error("unknown bind type '{0}' (expected ro, rw or dev)")]
    UnknownBindKind(String),

    #[error("invalid boot command: {0}")]
    InvalidBoot(String),

    #[error("invalid environment variable '{entry}': {reason}")]
    InvalidEnvVar { entry: String, reason: String },

    #[error("invalid bind '{src}' -> '{dst}': {reason}")]
    InvalidBind {
        src: String,
        dst: String,
        reason: String,
    },

    #[error("invalid desktop entry: {0}")]
    InvalidDesktop(String),

    #[error("invalid origin: {0}")]
    InvalidOrigin(String),

    #[error("invalid icon: {0}")]
    InvalidIcon(String),

    #[error("invalid remote URL '{url}': {reason}")]
    InvalidRemote { url: String, reason: String },

    /// A region's bytes are not the JSON shape the layout promises.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
}
