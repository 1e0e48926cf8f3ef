//! A serializable, human-meaningful view of a block for `fim inspect --json`.

use serde::Serialize;

use crate::flags::Overlay;
use crate::payload::{Bind, BootCommand, EnvVar, Origin};

/// Every field of a block, decoded. Flags are listed by name, the overlay by
/// name or `null`, environment entries as `"KEY=VALUE"` strings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReservedSummary {
    pub layout_version: u32,
    pub block_size: usize,
    /// Hex, e.g. `"0x0123456789abcdef"`, since JSON numbers lose u64 precision.
    pub checksum: String,
    pub permissions: Vec<&'static str>,
    pub notify: bool,
    pub overlay: Option<Overlay>,
    pub casefold: bool,
    /// Runs forget their writes (layout version 3).
    pub ephemeral: bool,
    pub unshare: Vec<&'static str>,
    pub boot: Option<BootCommand>,
    pub environment: Vec<EnvVar>,
    pub binds: Vec<Bind>,
    /// The desktop JSON object itself, not its text.
    pub desktop: Option<serde_json::Value>,
    /// Extension and size only; the image bytes are not useful as JSON.
    pub icon: Option<IconSummary>,
    pub remote: Option<String>,
    /// Where an imported image came from (layout version 2).
    pub origin: Option<Origin>,
    /// How full each region is, so users see how close they are to a limit.
    pub regions: Vec<RegionUsage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IconSummary {
    pub extension: String,
    /// Image size in bytes.
    pub size: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionUsage {
    pub name: &'static str,
    pub offset: usize,
    /// Payload bytes in use.
    pub used: usize,
    pub capacity: usize,
}
