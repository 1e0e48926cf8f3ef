//! What can go wrong with desktop settings, icons and the files of an integration.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    /// The packager's JSON cannot be used; the text says which key and why.
    #[error("{0}")]
    Settings(String),
    /// The icon file cannot be used; the text says why and what would do.
    #[error("icon {path}: {reason}")]
    Icon { path: PathBuf, reason: String },
    /// A stored icon no longer decodes (the image was changed by hand).
    #[error("the stored icon cannot be decoded: {0}")]
    StoredIcon(String),
    /// The image's path cannot appear in a desktop entry.
    #[error(
        "the image path {0} cannot be written in a desktop entry (it is not UTF-8 or holds a control character)"
    )]
    UnusablePath(PathBuf),
    /// Reading or writing a file of the integration failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DesktopError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DesktopError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn settings(text: impl Into<String>) -> Self {
        DesktopError::Settings(text.into())
    }
}
