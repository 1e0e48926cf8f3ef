//! Desktop integration of an image, as `fim-desktop` and `fim build --desktop` do it:
//!
//! ```text
//! settings   the packager's JSON (FlatImage's keys and ours) and the form it is stored in,
//!            in the reserved block's desktop region
//! icon       the packager's PNG or SVG checked and stored; PNGs rendered per size
//! entry      the menu entry (`applications/<id>.desktop`), quoted as the spec says
//! mime       the shared-mime-info package: the image's own type and the app's documents
//! install    the files under `$XDG_DATA_HOME`, their manifest, stale entries and the caches
//! ```
//!
//! This crate writes nothing but the files of an integration; when to integrate (every run,
//! cheaply) is the launcher's business.

mod entry;
mod error;
mod icon;
mod install;
mod mime;
mod settings;

use entry::desktop_entry;
pub use error::DesktopError;
pub use icon::{ICON_SIZES, IconKind, read_icon, render_png};
pub use install::{
    Installed, Integration, Manifest, clean_stale, data_home, desktop_id, list_integrations,
    opted_out, remove,
};
pub use mime::IMAGE_TYPE;
use mime::mime_package;
pub use settings::{DocumentType, Integrations, OwnType, Settings, SetupFile};
