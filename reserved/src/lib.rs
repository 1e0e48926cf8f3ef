//! The fixed-size reserved config block embedded in a fim image.
//!
//! The block is [`BLOCK_SIZE`] bytes at a fixed place in the file, so
//! changing the config rewrites it in place and never moves the layers.
//! This crate only describes, encodes and validates those bytes; reading and
//! writing the file is the caller's job. See `docs/reserved-block.md` for the
//! byte-level format.
//!
//! ```
//! use fim_reserved::{Overlay, Permissions, Reserved};
//!
//! let mut block = Reserved::new();
//! block.set_permissions(Permissions::home | Permissions::network);
//! block.set_overlay(Some(Overlay::Unionfs));
//! let bytes = block.to_bytes();
//! let back = Reserved::decode(&bytes)?;
//! assert_eq!(back.permissions(), Permissions::home | Permissions::network);
//! # Ok::<(), fim_reserved::ReservedError>(())
//! ```

mod block;
mod error;
mod flags;
mod layout;
mod payload;
mod summary;

/// True only in the fuzz targets' build (`tools/fuzz` passes `--cfg fuzzing`): checksums
/// and digests are then not compared, so the fuzzer reaches the parsers behind them. They
/// guard against accidents, not attackers (anyone can write a matching XXH3), so what lies
/// behind them must hold against any bytes too.
pub(crate) const FUZZING: bool = cfg!(fuzzing);

pub use block::Reserved;
pub use error::ReservedError;
pub use flags::{Overlay, Permissions, Unshare};
pub use layout::*;
pub use payload::{Bind, BindKind, BootCommand, EnvVar, Icon, Origin};
pub use summary::{IconSummary, RegionUsage, ReservedSummary};
