//! `fim-layer`: commit the upper directory as a layer, create a layer file from a
//! directory, add one to the image, list the stack, extract one layer. The commit itself
//! is `crate::commit`; this file takes the locks it needs and parses the words.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use fim_image::{ChangeLock, Image, ImageWriter};
use fim_layers::{BlockCache, BuildOptions, Layer, Stack, extract, hex};

use super::Command;
use super::ephemeral::effective_ephemeral;
use super::image::self_path;
use crate::commit::{self, Target};
use crate::places::Places;
use crate::session;
use crate::view::layer_stack::{self, LayerFile, Origin};

pub const LAYER: Command = Command {
    name: "fim-layer",
    synopsis: "fim-layer commit [--to TARGET] [--exclude PAT]... | create | add | list | extract",
    summary: "Manage the image's read-only layers.",
    help: "fim-layer commit [--to TARGET] [--exclude PAT]... | create DIR OUT | add FILE |\n\
           list | extract N DIR. TARGET: image, layer, or file PATH.\n\
           commit: turn your changes (the data directory's upper directory) into a new layer:\n\
           appended to the image (default), saved as the next managed layer in\n\
           .<image name>.data/layers/ (--to layer), or written to a layer file (--to file\n\
           PATH, which leaves your changes where they are). Deleted files and replaced\n\
           directories stay deleted and replaced. Your changes are emptied only once the\n\
           layer is safely in place; interrupted at any moment, nothing is lost or committed\n\
           twice. Files copied up but left unchanged are not stored again.\n\
           --exclude PAT (repeatable): leave out of the layer the paths that match an\n\
           absolute pattern (* and ? stop at '/'; [a-z]), with everything below a matching\n\
           directory; they go with the rest of your changes once the layer is in place.\n\
           After a package manager, its caches are worth leaving out, e.g. for apt:\n\
           --exclude '/var/cache/apt/archives/*.deb' --exclude '/var/lib/apt/lists/*'\n\
           --exclude '/var/cache/apt/*.bin' (what apt-get clean removes, and the lists):\n\
           apt-get update and install python3 commit 64.0 MiB as is, 14.8 MiB without.\n\
           create: write a layer file from a directory. add: append a layer file to the\n\
           image after checking every byte of it. list: the stack, bottom first, with origin,\n\
           size, entry count and digest. extract: one layer as stored (deletions as .wh.\n\
           files) into a new directory.\n\
           \n\
           The stack, bottom first: the image's layers, the managed layers, then the layer\n\
           files and directories of layer files named by FIM_LAYERS (colon-separated, in that\n\
           order). In a directory, files are ordered by the number their name starts with\n\
           (2.layer before 10.layer). commit and add refuse while instances of the image run\n\
           (saying how many); instances started meanwhile wait for them to finish.",
    run: Some(run),
};

const USAGE: &str = "usage: fim-layer commit [--to image|layer|file PATH] [--exclude PATTERN]... | fim-layer create DIR OUT | fim-layer add FILE | fim-layer list | fim-layer extract N DIR";

fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let image_path = &self_path()?;
    let verb = args.first().and_then(|a| a.to_str());
    let rest = args.get(1..).unwrap_or_default();
    let places = || Places::prepare(image_path, nix::unistd::getuid().as_raw());
    match (verb, rest) {
        (Some("commit"), rest) => {
            let (target, excludes) = commit_args(rest)?;
            refuse_if_ephemeral(&Image::open(image_path)?)?;
            let places = places()?;
            let change = ChangeLock::acquire(&places.image)?;
            let instances = session::refuse_if_running(&places)?;
            let data = session::take_data(&places)?;
            // Files that subordinate ids own in the upper directory are read, and removed
            // once committed, in a user namespace mapped as the sessions are.
            let (uid, gid) = (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            );
            session::namespaces::enter_for_commit(uid, gid)?;
            println!(
                "{}",
                commit::commit(&places, (&change, &instances, &data), &target, &excludes)?
            );
        }
        (Some("create"), [dir, out]) => println!("{}", create(Path::new(dir), Path::new(out))?),
        (Some("add"), [file]) => println!("{}", add(&places()?, Path::new(file))?),
        (Some("list"), []) => list(image_path, &places()?)?,
        (Some("extract"), [index, dir]) => {
            let index = index
                .to_str()
                .and_then(|i| i.parse::<usize>().ok())
                .with_context(|| {
                    format!("fim-layer extract: {index:?} is not a layer index; see fim-layer list")
                })?;
            extract_one(image_path, &places()?, index, Path::new(dir))?;
        }
        _ => bail!("{USAGE}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// An ephemeral run keeps nothing to commit, and its view is not the upper directory.
fn refuse_if_ephemeral(image: &Image) -> anyhow::Result<()> {
    if let (true, source) = effective_ephemeral(image)? {
        let how = match source {
            super::overlay::Source::Environment => "FIM_EPHEMERAL=1 is set",
            _ => "the image is set to run ephemeral (fim-ephemeral on)",
        };
        bail!(
            "fim-layer commit: {how}, so runs keep no changes to commit; to commit the data directory's kept changes, run FIM_EPHEMERAL=0 with it"
        );
    }
    Ok(())
}

/// `commit`'s words: the target, and the `--exclude` patterns in any place among them.
fn commit_args(args: &[OsString]) -> anyhow::Result<(Target, Vec<commit::Exclude>)> {
    let mut rest = Vec::new();
    let mut excludes = Vec::new();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        if word != "--exclude" {
            rest.push(word.clone());
            continue;
        }
        let Some(pattern) = words.next() else {
            bail!(
                "fim-layer commit --exclude needs a PATTERN, e.g. --exclude '/var/cache/apt/archives/*.deb'"
            );
        };
        let Some(pattern) = pattern.to_str() else {
            bail!("fim-layer commit --exclude {pattern:?}: the pattern must be valid UTF-8");
        };
        excludes.push(commit::Exclude::new(pattern)?);
    }
    let words: Vec<Option<&str>> = rest.iter().map(|a| a.to_str()).collect();
    let target = match (words.as_slice(), rest.as_slice()) {
        ([], _) | ([Some("--to"), Some("image")], _) => Target::Image,
        ([Some("--to"), Some("layer")], _) => Target::Managed,
        ([Some("--to"), Some("file")], [_, _]) => bail!("fim-layer commit --to file needs a PATH"),
        ([Some("--to"), Some("file"), _], [_, _, path]) => Target::File(PathBuf::from(path)),
        _ => bail!("{USAGE}"),
    };
    Ok((target, excludes))
}

/// A layer file from a directory, taken literally; written whole or not at all.
fn create(dir: &Path, out: &Path) -> anyhow::Result<String> {
    if !dir.is_dir() {
        bail!("fim-layer create: {} is not a directory", dir.display());
    }
    let options = BuildOptions {
        owner_as_root: layer_stack::own_files_as_root(),
        ..BuildOptions::default()
    };
    let stats = layer_stack::create_layer_file(dir, out, &options)?;
    Ok(format!(
        "created {}: {} entries, {} bytes, digest {}",
        out.display(),
        stats.entries,
        stats.layer_size,
        hex(&stats.digest)
    ))
}

/// Appends a layer file to the image after checking every byte of it.
fn add(places: &Places, file: &Path) -> anyhow::Result<String> {
    let (layer_file, layer) = LayerFile::open(file, Origin::Environment)?;
    layer
        .verify()
        .with_context(|| format!("{} is not a valid layer", file.display()))?;
    let change = ChangeLock::acquire(&places.image)?;
    let _running = session::refuse_if_running(places)?;
    let image = Image::from_file(change.file(), &places.image)?;
    let mut writer = ImageWriter::extend(&image)?;
    writer.add_layer_bytes(&layer_file.map, layer_file.digest)?;
    writer.finish()?;
    Ok(format!(
        "added {} to {} as layer {}",
        file.display(),
        places.image.display(),
        image.layer_entries().len()
    ))
}

/// One row per layer of the stack, bottom first.
fn list(image_path: &Path, places: &Places) -> anyhow::Result<()> {
    let image = Image::open(image_path)?;
    let cache = BlockCache::new(1 << 20);
    println!("INDEX  ORIGIN      SIZE         ENTRIES  DIGEST            SOURCE");
    let mut index = 0;
    for (i, entry) in image.layer_entries().iter().enumerate() {
        let layer = image.layer(i, cache.clone())?;
        row(
            index,
            Origin::Embedded,
            entry.size,
            layer.inode_count(),
            &entry.digest,
            image_path,
        );
        index += 1;
    }
    for extra in layer_stack::extra_layers(&places.data)? {
        row(
            index,
            extra.origin,
            extra.map.len() as u64,
            extra.entries,
            &extra.digest,
            &extra.path,
        );
        index += 1;
    }
    Ok(())
}

fn row(index: usize, origin: Origin, size: u64, entries: u32, digest: &[u8; 32], source: &Path) {
    let digest = hex(digest);
    println!(
        "{index:<6} {:<11} {size:<12} {entries:<8} {}  {}",
        origin.to_string(),
        &digest[..16],
        source.display()
    );
}

/// Extracts layer `index` of the stack as stored: its own entries, deletions as OCI
/// `.wh.` markers.
fn extract_one(image_path: &Path, places: &Places, index: usize, dir: &Path) -> anyhow::Result<()> {
    let image = Image::open(image_path)?;
    let cache = BlockCache::new(64 << 20);
    let embedded = image.layer_entries().len();
    let layer = if index < embedded {
        image.layer(index, cache)?
    } else {
        let extras = layer_stack::extra_layers(&places.data)?;
        let extra = extras.get(index - embedded).with_context(|| {
            format!(
                "fim-layer extract: there is no layer {index} (the stack has {}); see fim-layer list",
                embedded + extras.len()
            )
        })?;
        Layer::open(extra.map.clone(), 0, extra.map.len() as u64, cache)?
    };
    let report = extract(&Stack::new(vec![layer])?, dir, true)?;
    println!(
        "extracted layer {index} to {}: {} entries, {} bytes",
        dir.display(),
        report.entries,
        report.bytes
    );
    for warning in report.warnings {
        eprintln!("fim: {warning}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(args: &[&str]) -> Option<Target> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        commit_args(&args).ok().map(|(target, _)| target)
    }

    #[test]
    fn commit_targets_parse_and_refuse_the_rest() {
        assert_eq!(target(&[]), Some(Target::Image));
        assert_eq!(target(&["--to", "image"]), Some(Target::Image));
        assert_eq!(target(&["--to", "layer"]), Some(Target::Managed));
        assert_eq!(
            target(&["--to", "file", "a b.layer"]),
            Some(Target::File("a b.layer".into()))
        );
        let (parsed, excludes) = commit_args(&[
            "--exclude".into(),
            "/var/lib/apt/lists/*".into(),
            "--to".into(),
            "layer".into(),
            "--exclude".into(),
            "/a/*.deb".into(),
        ])
        .unwrap();
        assert_eq!((parsed, excludes.len()), (Target::Managed, 2));
        for bad in [
            &["--exclude"][..],
            &["--exclude", "relative/*"],
            &["--exclude", "/a/[b"],
        ] {
            assert_eq!(target(bad), None, "{bad:?}");
        }
        for bad in [
            &["--to"][..],
            &["--to", "file"],
            &["--to", "disk"],
            &["image"],
            &["--to", "layer", "extra"],
        ] {
            assert_eq!(target(bad), None, "{bad:?}");
        }
    }
}
