//! The layer format: build a compressed, deduplicated, read-only layer from a directory,
//! read it in place through mmap, extract it, and serve a stack of layers as one merged
//! read-only FUSE file system. Knows nothing of the image container or the runtime.

mod ahead;
pub mod error;
pub mod extract;
pub mod format;
pub mod fuse;
pub mod reader;
pub mod scan;
pub mod stack;
pub mod writer;

pub use error::{LayerError, Result};
pub use extract::{ExtractReport, extract, extract_reporting};
pub use reader::{BlockCache, DEFAULT_CACHE_BYTES, Layer, hex};
pub use scan::WhiteoutFormat;
pub use stack::{Entry, NodeId, ROOT, Stack};
pub use writer::{
    BuildOptions, BuildStats, ContentOrder, DEFAULT_BLOCK_SIZE, DEFAULT_LEVEL, NoProgress,
    Progress, build_layer,
};

#[cfg(test)]
mod tests;

/// True only in the fuzz targets' build (`tools/fuzz` passes `--cfg fuzzing`): checksums
/// and digests are then not compared, so the fuzzer reaches the parsers behind them. They
/// guard against accidents, not attackers (anyone can write a matching XXH3), so what lies
/// behind them must hold against any bytes too.
pub(crate) const FUZZING: bool = cfg!(fuzzing);
