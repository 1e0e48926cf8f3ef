//! Building images and finding their parts.

use std::ffi::OsStr;
use std::path::Path;

use crate::run::{Output, fim};

/// `fim build INPUTS... -o OUT --level 3`, which must succeed.
pub fn build(inputs: &[&Path], out: &Path) -> Output {
    build_with(inputs, out, &["--level", "3"])
}

/// `fim build INPUTS... -o OUT EXTRA...`, which must succeed.
pub fn build_with(inputs: &[&Path], out: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&OsStr> = vec![OsStr::new("build")];
    args.extend(inputs.iter().map(|p| p.as_os_str()));
    args.push(OsStr::new("-o"));
    args.push(out.as_os_str());
    args.extend(extra.iter().map(OsStr::new));
    let out = fim(&args);
    out.assert_ok();
    out
}

/// Where the parts of an image are, from `fim inspect --json`.
#[derive(Debug, Clone)]
pub struct Layout {
    pub size: u64,
    pub launcher_size: u64,
    /// Absolute offset of the reserved block.
    pub reserved_offset: u64,
    pub reserved_size: u64,
    /// `(offset, size)` of each layer, bottom first.
    pub layers: Vec<(u64, u64)>,
    pub table_offset: u64,
    pub footer_offset: u64,
}

fn field(v: &serde_json::Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("fim inspect --json: no number at {pointer} in {v}"))
}

/// The JSON of `fim inspect IMAGE --json`, which must succeed.
pub fn inspect_json(image: &Path) -> serde_json::Value {
    let out = fim([
        OsStr::new("inspect"),
        image.as_os_str(),
        OsStr::new("--json"),
    ]);
    out.assert_ok();
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "fim inspect --json printed invalid JSON ({e}): {}",
            out.stdout
        )
    })
}

/// The layout of `image`, read with `fim inspect --json`.
pub fn layout(image: &Path) -> Layout {
    let v = inspect_json(image);
    let count = v
        .pointer("/layers")
        .and_then(serde_json::Value::as_array)
        .map_or(0, Vec::len);
    Layout {
        size: field(&v, "/size"),
        launcher_size: field(&v, "/launcher/size"),
        reserved_offset: field(&v, "/reserved/offset"),
        reserved_size: field(&v, "/reserved/size"),
        layers: (0..count)
            .map(|i| {
                (
                    field(&v, &format!("/layers/{i}/offset")),
                    field(&v, &format!("/layers/{i}/size")),
                )
            })
            .collect(),
        table_offset: field(&v, "/trailer/table_offset"),
        footer_offset: field(&v, "/trailer/footer_offset"),
    }
}
