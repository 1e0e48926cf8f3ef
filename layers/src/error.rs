//! Typed errors of the layer crate. A variant's message is its own context only; the
//! underlying error is its `source`, so `{:#}` (anyhow) prints each part once.

use std::path::PathBuf;

/// Everything that can go wrong building, reading or serving a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The bytes do not form a valid layer; the message names the part that failed.
    #[error("corrupt layer: {0}")]
    Corrupt(String),
    /// An I/O operation on a named path failed.
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An I/O operation without a meaningful path failed.
    #[error("{context}")]
    Other {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The input cannot be represented in the format (e.g. more than 2^32 inodes).
    #[error("cannot build layer: {0}")]
    Unsupported(String),
}

impl LayerError {
    pub fn corrupt(msg: impl Into<String>) -> Self {
        LayerError::Corrupt(msg.into())
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LayerError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn other(context: impl Into<String>, source: std::io::Error) -> Self {
        LayerError::Other {
            context: context.into(),
            source,
        }
    }
    /// The errno a FUSE reply should carry for this error.
    pub fn errno(&self) -> i32 {
        match self {
            LayerError::Io { source, .. } | LayerError::Other { source, .. } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            _ => libc::EIO,
        }
    }
}

pub type Result<T, E = LayerError> = std::result::Result<T, E>;
