//! Locating the binaries under test.

use std::path::PathBuf;

/// The directory holding `fim` and `fim-boot`: `$FIM_DIST` if set (relative paths are
/// taken from the current directory), else `dist/` at the root of the workspace.
pub fn dist_dir() -> PathBuf {
    match std::env::var_os("FIM_DIST") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                std::env::current_dir()
                    .map(|cwd| cwd.join(&dir))
                    .unwrap_or(dir)
            }
        }
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist"),
    }
}

fn binary(name: &str) -> PathBuf {
    let path = dist_dir().join(name);
    if !path.is_file() {
        panic!(
            "{} does not exist: run tools/build first (or set FIM_DIST to the directory \
             holding fim and fim-boot)",
            path.display()
        );
    }
    path
}

/// The packer, `dist/fim`. Panics with "run tools/build first" when it is missing.
pub fn fim_path() -> PathBuf {
    binary("fim")
}

/// The launcher, `dist/fim-boot`. Panics with "run tools/build first" when it is missing.
pub fn fim_boot_path() -> PathBuf {
    binary("fim-boot")
}
