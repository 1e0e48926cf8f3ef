//! Typed errors of the image container. A variant's message is its own context only;
//! the underlying error is its `source`, so `{:#}` (anyhow) prints each part once.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file is not an image at all (or lost its tail).
    #[error("not an image: {0}")]
    NotAnImage(String),
    /// The container structure is damaged; the message names the part.
    #[error("corrupt image: {0}")]
    Corrupt(String),
    #[error("layer {index}")]
    Layer {
        index: usize,
        #[source]
        source: fim_layers::LayerError,
    },
    #[error(transparent)]
    Reserved(#[from] fim_reserved::ReservedError),
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("launcher is not a usable ELF executable: {0}")]
    Launcher(String),
    /// The output path holds something an image must not replace (what it holds); the
    /// caller names the path.
    #[error("{0}; name a new file or an existing image")]
    NotAFile(&'static str),
}

impl ImageError {
    pub fn corrupt(msg: impl Into<String>) -> Self {
        ImageError::Corrupt(msg.into())
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn layer(index: usize, source: fim_layers::LayerError) -> Self {
        ImageError::Layer { index, source }
    }
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;
