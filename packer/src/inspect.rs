//! `fim inspect`, `fim verify` and `fim extract`.

use std::path::Path;

use anyhow::Context;
use fim_image::{Image, ImageError};
use fim_layers::{BlockCache, DEFAULT_CACHE_BYTES, Stack, extract as extract_stack, hex};
use serde::Serialize;

use fim_packer::progress::human;

#[derive(Serialize)]
struct Report {
    path: String,
    size: u64,
    format_version: u32,
    launcher: Part,
    reserved: ReservedPart,
    tools: Vec<ToolPart>,
    layers: Vec<LayerPart>,
    trailer: TrailerPart,
}

/// A program the image carries (a static bwrap, fuse-overlayfs, unionfs).
#[derive(Serialize)]
struct ToolPart {
    name: String,
    offset: u64,
    /// Bytes stored: one zstd frame when `compressed`.
    size: u64,
    compressed: bool,
    /// BLAKE3 of the program itself.
    digest: String,
}

#[derive(Serialize)]
struct Part {
    offset: u64,
    size: u64,
    checksum: String,
}

#[derive(Serialize)]
struct ReservedPart {
    offset: u64,
    size: u64,
    fields: fim_reserved::ReservedSummary,
}

#[derive(Serialize)]
struct LayerPart {
    index: usize,
    offset: u64,
    size: u64,
    digest: String,
    entries: u32,
    content_size: u64,
    block_size: u32,
    blocks: u32,
    metadata_size: u64,
}

#[derive(Serialize)]
struct TrailerPart {
    table_offset: u64,
    footer_offset: u64,
    size: u64,
}

/// Names the image in an error, unless the error already names a path.
pub fn in_image(path: &Path, e: ImageError) -> anyhow::Error {
    match e {
        ImageError::Io { .. } => e.into(),
        other => anyhow::Error::new(other).context(path.display().to_string()),
    }
}

pub fn open(path: &Path) -> anyhow::Result<Image> {
    Image::open(path).map_err(|e| in_image(path, e))
}

pub fn inspect(path: &Path, json: bool) -> anyhow::Result<()> {
    let image = open(path)?;
    let f = *image.footer();
    let cache = BlockCache::new(1 << 20);
    let mut layers = Vec::new();
    for (index, e) in image.layer_entries().iter().enumerate() {
        let layer = image
            .layer(index, cache.clone())
            .map_err(|e| in_image(path, e))?;
        let sb = layer.superblock();
        layers.push(LayerPart {
            index,
            offset: e.offset,
            size: e.size,
            digest: hex(&e.digest),
            entries: sb.inode_count,
            content_size: sb.data_size,
            block_size: sb.block_size,
            blocks: sb.block_count,
            metadata_size: sb.meta_size,
        });
    }
    let report = Report {
        path: path.display().to_string(),
        size: image.len(),
        format_version: fim_image::IMAGE_VERSION,
        launcher: Part {
            offset: 0,
            size: f.launcher_size,
            checksum: format!("{:016x}", f.launcher_checksum),
        },
        reserved: ReservedPart {
            offset: f.reserved_offset,
            size: fim_reserved::BLOCK_SIZE as u64,
            fields: image.reserved().summary(),
        },
        tools: image
            .tool_entries()
            .iter()
            .map(|t| ToolPart {
                name: t.name.clone(),
                offset: t.offset,
                size: t.size,
                compressed: t.compressed,
                digest: hex(&t.digest),
            })
            .collect(),
        layers,
        trailer: TrailerPart {
            table_offset: f.table_offset,
            footer_offset: image.len() - fim_image::FOOTER_SIZE as u64,
            size: image.len() - f.table_offset,
        },
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "image      {} ({}, format {})",
        report.path,
        human(report.size),
        report.format_version
    );
    println!(
        "launcher   offset 0, {} bytes, xxh3 {}",
        report.launcher.size, report.launcher.checksum
    );
    println!(
        "reserved   offset {}, {} bytes",
        report.reserved.offset, report.reserved.size
    );
    let fields = serde_json::to_value(&report.reserved.fields)?;
    if let serde_json::Value::Object(map) = fields {
        for (key, value) in map {
            if key != "regions" {
                println!("  {key:<12} {value}");
            }
        }
    }
    for t in &report.tools {
        println!(
            "tool {:<5} offset {}, {} ({} bytes{}), blake3 {}",
            t.name,
            t.offset,
            human(t.size),
            t.size,
            if t.compressed { ", zstd" } else { "" },
            t.digest
        );
    }
    for l in &report.layers {
        println!(
            "layer {:<4} offset {}, {} ({} bytes), {} entries, {} of content in {} blocks of {}, blake3 {}",
            l.index,
            l.offset,
            human(l.size),
            l.size,
            l.entries,
            human(l.content_size),
            l.blocks,
            human(u64::from(l.block_size)),
            l.digest
        );
    }
    println!(
        "trailer    offset {}, {} bytes (layer table + footer)",
        report.trailer.table_offset, report.trailer.size
    );
    Ok(())
}

pub fn verify(path: &Path) -> anyhow::Result<()> {
    let image = open(path)?;
    image.verify().map_err(|e| in_image(path, e))?;
    println!(
        "ok: {}: launcher, reserved block, {} layer(s) and trailer verified",
        path.display(),
        image.layer_entries().len()
    );
    Ok(())
}

pub fn extract(path: &Path, dir: &Path, layer: Option<usize>) -> anyhow::Result<()> {
    let image = open(path)?;
    let cache = BlockCache::new(DEFAULT_CACHE_BYTES);
    let (stack, as_stored) = match layer {
        Some(n) => {
            let count = image.layer_entries().len();
            if n >= count {
                anyhow::bail!("--layer {n}: the image has {count} layer(s), numbered from 0");
            }
            let one = image.layer(n, cache).map_err(|e| in_image(path, e))?;
            (Stack::new(vec![one])?, true)
        }
        None => (image.stack(cache).map_err(|e| in_image(path, e))?, false),
    };
    let report = extract_stack(&stack, dir, as_stored)
        .with_context(|| format!("extracting {} into {}", path.display(), dir.display()))?;
    for w in &report.warnings {
        eprintln!("fim: warning: {w}");
    }
    eprintln!(
        "fim: extracted {} entries, {} of data into {}",
        report.entries,
        human(report.bytes),
        dir.display()
    );
    Ok(())
}
