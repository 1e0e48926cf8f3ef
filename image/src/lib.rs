//! The image container: `[launcher ELF][reserved block][layer 0..N][layer table][footer]`.
//! Shared by the launcher (which reads itself) and the packer (which writes and checks
//! images), so the container format is defined in exactly one place.

pub mod elf;
pub mod error;
pub mod image;
pub mod trailer;
pub mod write;

pub use elf::{IMAGE_MARK, IMAGE_MARK_OFFSET, elf_end};
pub use error::{ImageError, Result};
pub use image::Image;
pub use trailer::{
    ALIGN, FOOTER_SIZE, Footer, IMAGE_VERSION, LAYER_ENTRY_SIZE, LayerEntry, TableEntry, ToolEntry,
};
pub use write::{
    ChangeLock, ImageWriter, SealedImage, Updated, read_launcher, refuse_to_replace_a_non_file,
    update_reserved,
};

#[cfg(test)]
mod tests;

/// True only in the fuzz targets' build (`tools/fuzz` passes `--cfg fuzzing`): checksums
/// and digests are then not compared, so the fuzzer reaches the parsers behind them. They
/// guard against accidents, not attackers (anyone can write a matching XXH3), so what lies
/// behind them must hold against any bytes too.
pub(crate) const FUZZING: bool = cfg!(fuzzing);
