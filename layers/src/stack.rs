//! A stack of layers seen as one read-only tree: upper layers win, whiteouts hide what is
//! below them, opaque directories hide the directories of the same name below them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use crate::error::{LayerError, Result};
use crate::format::{Inode, S_IFREG};
use crate::reader::Layer;

/// Identifies an object of the merged tree. Stable for the life of the stack, and equal
/// for two names of one hardlinked file, so `st_ino` tells hardlinks apart correctly.
pub type NodeId = u64;
/// The merged root directory.
pub const ROOT: NodeId = 1;

fn node_id(layer: usize, ino: u32) -> NodeId {
    ((layer as u64 + 1) << 32) | u64::from(ino)
}

fn split(id: NodeId) -> (usize, u32) {
    (((id >> 32) - 1) as usize, id as u32)
}

/// A resolved object: its id, its inode and the layer holding that inode.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub id: NodeId,
    pub layer: usize,
    pub inode: Inode,
}

/// Layer index and inode of each directory merged into one directory, topmost first.
type Sources = Arc<[(usize, u32)]>;

pub struct Stack {
    /// Bottom layer first.
    layers: Vec<Layer>,
    root: Sources,
    /// Directories that merge more than one layer; all others have one source, themselves.
    merged: RwLock<HashMap<NodeId, Sources>>,
}

impl Stack {
    /// Builds the merged view of `layers` (bottom first; at least one).
    pub fn new(layers: Vec<Layer>) -> Result<Self> {
        if layers.is_empty() {
            return Err(LayerError::corrupt("an image needs at least one layer"));
        }
        let mut root = Vec::new();
        for (index, layer) in layers.iter().enumerate().rev() {
            root.push((index, 0));
            if layer.inode(0)?.is_opaque() {
                break;
            }
        }
        Ok(Stack {
            layers,
            root: root.into(),
            merged: RwLock::new(HashMap::new()),
        })
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Whether any layer has an xattr on any inode.
    pub fn has_xattrs(&self) -> bool {
        self.layers.iter().any(Layer::has_xattrs)
    }

    fn sources(&self, dir: NodeId) -> Result<Sources> {
        if dir == ROOT {
            return Ok(self.root.clone());
        }
        if let Ok(map) = self.merged.read()
            && let Some(s) = map.get(&dir)
        {
            return Ok(s.clone());
        }
        let (layer, ino) = self.checked_split(dir)?;
        Ok(Arc::from([(layer, ino)]))
    }

    fn checked_split(&self, id: NodeId) -> Result<(usize, u32)> {
        if id < (1 << 32) {
            return Err(LayerError::corrupt(format!("no such node {id}")));
        }
        let (layer, ino) = split(id);
        if layer >= self.layers.len() || ino >= self.layers[layer].inode_count() {
            return Err(LayerError::corrupt(format!("no such node {id}")));
        }
        Ok((layer, ino))
    }

    /// The object `id` stands for.
    pub fn entry(&self, id: NodeId) -> Result<Entry> {
        let (layer, ino) = if id == ROOT {
            self.root[0]
        } else {
            self.checked_split(id)?
        };
        Ok(Entry {
            id,
            layer,
            inode: self.layers[layer].inode(ino)?,
        })
    }

    /// Resolves `name` in directory `parent` through every layer.
    pub fn lookup(&self, parent: NodeId, name: &[u8]) -> Result<Option<Entry>> {
        let mut found: Option<Entry> = None;
        let mut dirs = Vec::new();
        for &(layer, dir_ino) in self.sources(parent)?.iter() {
            let l = &self.layers[layer];
            let Some(child) = l.lookup(&l.inode(dir_ino)?, name)? else {
                continue;
            };
            let inode = l.inode(child)?;
            if inode.is_whiteout() {
                break;
            }
            if found.is_none() {
                found = Some(Entry {
                    id: node_id(layer, child),
                    layer,
                    inode,
                });
            }
            if !inode.is_dir() {
                break;
            }
            dirs.push((layer, child));
            if inode.is_opaque() {
                break;
            }
        }
        if let Some(entry) = &found
            && dirs.len() > 1
            && let Ok(mut map) = self.merged.write()
        {
            map.insert(entry.id, dirs.into());
        }
        Ok(found)
    }

    /// The merged entries of directory `dir`, sorted by name, whiteouts resolved.
    pub fn read_dir(&self, dir: NodeId) -> Result<Vec<(Vec<u8>, Entry)>> {
        self.read_dir_with(dir, false)
    }

    /// Like [`Stack::read_dir`]; with `keep_whiteouts` the whiteout entries themselves are
    /// listed too (used to extract one layer as it is stored).
    pub fn read_dir_with(
        &self,
        dir: NodeId,
        keep_whiteouts: bool,
    ) -> Result<Vec<(Vec<u8>, Entry)>> {
        let sources = self.sources(dir)?;
        let mut merged: BTreeMap<Vec<u8>, Option<Entry>> = BTreeMap::new();
        for &(layer, dir_ino) in sources.iter() {
            let l = &self.layers[layer];
            for d in l.read_dir(&l.inode(dir_ino)?)? {
                if merged.contains_key(&d.name) {
                    continue;
                }
                let inode = l.inode(d.ino)?;
                let entry = Entry {
                    id: node_id(layer, d.ino),
                    layer,
                    inode,
                };
                let visible = !inode.is_whiteout() || keep_whiteouts;
                merged.insert(d.name, visible.then_some(entry));
            }
        }
        let mut out = Vec::with_capacity(merged.len());
        for (name, entry) in merged {
            let Some(entry) = entry else { continue };
            if sources.len() > 1 && entry.inode.is_dir() {
                // Registers the child's own merge so later lookups by id see every layer.
                self.lookup(dir, &name)?;
            }
            out.push((name, entry));
        }
        Ok(out)
    }

    pub fn read(&self, entry: &Entry, offset: u64, out: &mut [u8]) -> Result<usize> {
        self.layers[entry.layer].read(&entry.inode, offset, out)
    }

    /// See [`Layer::read_in_place`].
    pub fn read_in_place(
        &self,
        entry: &Entry,
        offset: u64,
        len: usize,
    ) -> Result<Option<crate::reader::InPlace>> {
        self.layers[entry.layer].read_in_place(&entry.inode, offset, len)
    }

    pub fn read_link(&self, entry: &Entry) -> Result<Vec<u8>> {
        self.layers[entry.layer].read_link(&entry.inode)
    }

    pub fn xattrs(&self, entry: &Entry) -> Result<crate::format::Xattrs> {
        self.layers[entry.layer].xattrs(&entry.inode)
    }

    /// Data runs `(file offset, len)` of a regular file; holes are the gaps.
    pub fn data_runs(&self, entry: &Entry) -> Result<Vec<(u64, u64)>> {
        if entry.inode.file_type() != S_IFREG {
            return Ok(Vec::new());
        }
        Ok(self.layers[entry.layer]
            .extents(&entry.inode)?
            .into_iter()
            .filter(|e| e.len > 0)
            .map(|e| (e.file_offset, e.len))
            .collect())
    }

    /// Total inodes over all layers, for `statfs`.
    pub fn inode_total(&self) -> u64 {
        self.layers.iter().map(|l| u64::from(l.inode_count())).sum()
    }

    /// Total stored bytes over all layers, for `statfs`.
    pub fn stored_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.superblock().layer_size).sum()
    }
}
