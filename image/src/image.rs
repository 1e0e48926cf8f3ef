//! Opening an image: the trailer, the reserved block and the layers, all from one mmap.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fim_layers::{BlockCache, Layer, Stack};
use fim_reserved::Reserved;
use memmap2::Mmap;

use crate::error::{ImageError, Result};
use crate::trailer::{
    ALIGN, FOOTER_SIZE, Footer, LAYER_ENTRY_SIZE, LayerEntry, TableEntry, ToolEntry,
};

/// An opened image. The map stays valid even if the file is replaced on disk: mutations
/// write a new file and rename it over, so a running instance never sees torn bytes.
pub struct Image {
    path: PathBuf,
    map: Arc<Mmap>,
    footer: Footer,
    layers: Vec<LayerEntry>,
    tools: Vec<ToolEntry>,
    /// Shared: a run keeps it while the image itself may be opened again.
    reserved: Arc<Reserved>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("path", &self.path)
            .field("footer", &self.footer)
            .finish_non_exhaustive()
    }
}

impl Image {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ImageError::io(path, e))?;
        Self::from_file(&file, path)
    }

    /// Opens the image held by `file` (`path` is for messages and later rewrites).
    pub fn from_file(file: &File, path: &Path) -> Result<Self> {
        let len = file.metadata().map_err(|e| ImageError::io(path, e))?.len();
        if len < FOOTER_SIZE as u64 {
            return Err(ImageError::NotAnImage(format!(
                "file is {len} bytes, too small to be an image"
            )));
        }
        // SAFETY: images are never modified in place (every mutation writes a new file and
        // renames it over), so the mapped bytes cannot change under us.
        let map = unsafe { Mmap::map(file) }.map_err(|e| ImageError::io(path, e))?;
        Self::from_map(Arc::new(map), path)
    }

    pub fn from_map(map: Arc<Mmap>, path: &Path) -> Result<Self> {
        let len = map.len() as u64;
        if len < FOOTER_SIZE as u64 {
            return Err(ImageError::NotAnImage(
                "file is too small to be an image".into(),
            ));
        }
        let footer = Footer::decode(&map[map.len() - FOOTER_SIZE..], len)?;
        let table = &map[footer.table_offset as usize..map.len() - FOOTER_SIZE];
        let sum = xxhash_rust::xxh3::xxh3_64(table);
        if sum != footer.table_checksum && !crate::FUZZING {
            return Err(ImageError::corrupt(format!(
                "layer table checksum mismatch (stored {:#018x}, computed {sum:#018x})",
                footer.table_checksum
            )));
        }
        let entries = table
            .chunks_exact(LAYER_ENTRY_SIZE)
            .map(TableEntry::decode)
            .collect::<Result<Vec<_>>>()?;
        let reserved_end = footer
            .reserved_offset
            .checked_add(fim_reserved::BLOCK_SIZE as u64)
            .filter(|&end| end <= footer.table_offset)
            .ok_or_else(|| ImageError::corrupt("reserved block extends past the layer table"))?;
        let mut expected_start = reserved_end.next_multiple_of(ALIGN);
        for (index, e) in entries.iter().enumerate() {
            let end = e.offset().checked_add(e.size());
            if e.offset() < expected_start || e.offset() % ALIGN != 0 || end.is_none() {
                return Err(ImageError::corrupt(format!(
                    "entry {index} is misplaced in the layer table"
                )));
            }
            expected_start = end.unwrap_or(u64::MAX);
        }
        let (mut layers, mut tools) = (Vec::new(), Vec::new());
        for entry in entries {
            match entry {
                TableEntry::Layer(l) => layers.push(l),
                TableEntry::Tool(t) if tools.iter().any(|o: &ToolEntry| o.name == t.name) => {
                    return Err(ImageError::corrupt(format!(
                        "the tool {} is embedded twice",
                        t.name
                    )));
                }
                TableEntry::Tool(t) => tools.push(t),
            }
        }
        if expected_start > footer.table_offset {
            return Err(ImageError::corrupt("layers overlap the layer table"));
        }
        let reserved = Arc::new(Reserved::decode(
            &map[footer.reserved_offset as usize..reserved_end as usize],
        )?);
        Ok(Image {
            path: path.to_owned(),
            map,
            footer,
            layers,
            tools,
            reserved,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn footer(&self) -> &Footer {
        &self.footer
    }
    pub fn layer_entries(&self) -> &[LayerEntry] {
        &self.layers
    }
    pub fn tool_entries(&self) -> &[ToolEntry] {
        &self.tools
    }

    /// The bytes of the embedded tool `name` (decompressed when stored compressed),
    /// checked against its digest.
    pub fn tool(&self, name: &str) -> Result<Option<Cow<'_, [u8]>>> {
        let Some(t) = self.tools.iter().find(|t| t.name == name) else {
            return Ok(None);
        };
        let stored = &self.map[t.offset as usize..(t.offset + t.size) as usize];
        let bytes = if t.compressed {
            Cow::Owned(decompress_tool(name, stored)?)
        } else {
            Cow::Borrowed(stored)
        };
        if *blake3::hash(&bytes).as_bytes() != t.digest && !crate::FUZZING {
            return Err(ImageError::corrupt(format!(
                "the embedded {name} does not match its digest"
            )));
        }
        Ok(Some(bytes))
    }

    pub fn reserved(&self) -> &Reserved {
        &self.reserved
    }
    /// The reserved block, shared rather than copied (512 KiB).
    pub fn reserved_shared(&self) -> Arc<Reserved> {
        self.reserved.clone()
    }
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Opens layer `index` (superblock and tables checked, data read lazily).
    pub fn layer(&self, index: usize, cache: Arc<BlockCache>) -> Result<Layer> {
        let e = self
            .layers
            .get(index)
            .ok_or_else(|| ImageError::corrupt(format!("no layer {index}")))?;
        let layer = Layer::open(self.map.clone(), e.offset, e.size, cache)
            .map_err(|err| ImageError::layer(index, err))?;
        if layer.digest() != e.digest && !crate::FUZZING {
            return Err(ImageError::layer(
                index,
                fim_layers::LayerError::corrupt("digest differs from the image's layer table"),
            ));
        }
        Ok(layer)
    }

    /// Every layer, bottom first.
    pub fn open_layers(&self, cache: Arc<BlockCache>) -> Result<Vec<Layer>> {
        (0..self.layers.len())
            .map(|i| self.layer(i, cache.clone()))
            .collect()
    }

    /// The merged read-only view of every layer.
    pub fn stack(&self, cache: Arc<BlockCache>) -> Result<Stack> {
        Stack::new(self.open_layers(cache)?).map_err(|e| ImageError::layer(0, e))
    }

    /// Checks every byte: launcher checksum and ELF end, padding, reserved block, and
    /// every layer in full (digest, blocks, pages, records).
    pub fn verify(&self) -> Result<()> {
        let f = &self.footer;
        let launcher = &self.map[..f.launcher_size as usize];
        let sum = xxhash_rust::xxh3::xxh3_64(launcher);
        if sum != f.launcher_checksum && !crate::FUZZING {
            return Err(ImageError::corrupt(format!(
                "launcher checksum mismatch (stored {:#018x}, computed {sum:#018x})",
                f.launcher_checksum
            )));
        }
        if crate::elf::elf_end(launcher)? != f.launcher_size {
            return Err(ImageError::corrupt(
                "launcher size differs from its ELF end",
            ));
        }
        let reserved_end = f.reserved_offset + fim_reserved::BLOCK_SIZE as u64;
        self.check_zero(
            f.launcher_size,
            f.reserved_offset,
            "padding after the launcher",
        )?;
        let mut pos = reserved_end;
        for t in &self.tools {
            self.check_zero(
                pos,
                t.offset,
                &format!("padding before the tool {}", t.name),
            )?;
            self.tool(&t.name)?;
            pos = t.offset + t.size;
        }
        for (index, e) in self.layers.iter().enumerate() {
            self.check_zero(pos, e.offset, &format!("padding before layer {index}"))?;
            let layer = self.layer(index, BlockCache::new(64 << 20))?;
            if layer.superblock().layer_size != e.size {
                return Err(ImageError::layer(
                    index,
                    fim_layers::LayerError::corrupt("size differs from the image's layer table"),
                ));
            }
            layer
                .verify()
                .map_err(|err| ImageError::layer(index, err))?;
            pos = e.offset + e.size;
        }
        self.check_zero(pos, f.table_offset, "padding before the layer table")?;
        Ok(())
    }

    fn check_zero(&self, from: u64, to: u64, what: &str) -> Result<()> {
        if self.map[from as usize..to as usize].iter().any(|&b| b != 0) {
            return Err(ImageError::corrupt(format!("{what} is not zero")));
        }
        Ok(())
    }
}

/// Largest program a compressed tool entry may expand to: a static FUSE backend is a few
/// MiB; anything far larger is a crafted entry, refused before memory is spent on it.
pub const TOOL_SIZE_MAX: u64 = 64 << 20;

/// One zstd frame of a compressed tool, whose header must give its size.
fn decompress_tool(name: &str, stored: &[u8]) -> Result<Vec<u8>> {
    let bad = |why: String| ImageError::corrupt(format!("the embedded {name} {why}"));
    let size = zstd::zstd_safe::get_frame_content_size(stored)
        .ok()
        .flatten()
        .ok_or_else(|| bad("is not a zstd frame with its size".into()))?;
    if size > TOOL_SIZE_MAX {
        return Err(bad(format!(
            "claims {size} bytes, more than {TOOL_SIZE_MAX}"
        )));
    }
    let bytes = zstd::bulk::decompress(stored, size as usize)
        .map_err(|e| bad(format!("does not decompress: {e}")))?;
    if bytes.len() as u64 != size {
        return Err(bad("is shorter than its frame says".into()));
    }
    Ok(bytes)
}
