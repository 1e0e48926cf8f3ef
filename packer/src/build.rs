//! `fim build`: root filesystems (directories or tarballs), or one Docker or OCI image,
//! become one image.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use fim_image::{ImageWriter, read_launcher};
use fim_layers::{BuildOptions, ContentOrder, DEFAULT_LEVEL, WhiteoutFormat};
use fim_reserved::{BootCommand, Reserved};

use fim_packer::progress::{Bar, human, report_layer};
use fim_packer::{oci, tarball};

use crate::Whiteouts;

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Root filesystem: a directory or a .tar, .tar.gz, .tar.zst or .tar.xz file. Several
    /// inputs become several layers, bottom first. Or one Docker/OCI image: a `docker
    /// save` archive, an OCI image layout directory or an oci-archive tar.

    #[arg(required = true, value_name = "ROOTFS")]
    rootfs: Vec<PathBuf>,
    /// The image to write (replaced atomically if it exists).
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// zstd compression level, 1-22.
    #[arg(long, default_value_t = DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
    level: i32,
    /// Uncompressed size of a data block: a power of two from 4K to 64M (suffix K or M).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    block_size: u32,
    /// Deletion markers to honour in the inputs.
    #[arg(long, value_enum, default_value = "none")]
    whiteouts: Whiteouts,
    /// Order of file contents in the data stream.
    #[arg(long, value_enum, default_value = "similarity")]
    order: Order,
    /// Launcher ELF to put at the head of the image (default: the fim-boot next to fim).
    #[arg(long, value_name = "FILE")]
    launcher: Option<PathBuf>,
    /// Static bwrap to embed, so the host needs none (default: the bwrap next to fim,
    /// from tools/build-bwrap).
    #[arg(long, value_name = "FILE", conflicts_with = "no_embed_tools")]
    bwrap: Option<PathBuf>,
    /// Static fuse-overlayfs to embed for the overlayfs backend (default: the one next to
    /// fim, from tools/build-fuse-overlayfs, if there is one).
    #[arg(long, value_name = "FILE", conflicts_with = "no_embed_tools")]
    fuse_overlayfs: Option<PathBuf>,
    /// Static unionfs to embed for the unionfs backend (default: the one next to fim, from
    /// tools/build-unionfs, if there is one).
    #[arg(long, value_name = "FILE", conflicts_with = "no_embed_tools")]
    unionfs: Option<PathBuf>,
    /// Embed no tools: the image then uses the host's bwrap, fuse-overlayfs and unionfs.
    #[arg(long)]
    no_embed_tools: bool,
    /// Docker/OCI input: the tagged image to import when the archive holds several.
    #[arg(long, value_name = "TAG")]
    tag: Option<String>,
    /// Docker/OCI input: the platform to import from a multi-platform index.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", value_parser = oci::Platform::parse)]
    platform: Option<oci::Platform>,
    /// Docker/OCI input: merge the image's layers into one fim layer.
    #[arg(long)]
    squash: bool,
    /// Desktop integration settings and icon, as `fim-desktop setup FILE.json` takes them.
    #[arg(long, value_name = "FILE.json")]
    desktop: Option<PathBuf>,
    /// The command the image runs by default, with its arguments. Must come last.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "PROG ARGS")]
    boot: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Order {
    /// Path order, with files that share a name gathered where the first is.
    Similarity,
    /// Depth-first path order.
    Path,
}

fn parse_size(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let (digits, factor) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1u64 << 20),
        _ => (t, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 128K, 1M)"))?;
    let size = n * factor;
    if !(4096..=64 << 20).contains(&size) || !size.is_power_of_two() {
        return Err(format!(
            "block size {text} must be a power of two from 4K to 64M"
        ));
    }
    Ok(size as u32)
}

/// `name` next to the fim executable (where tools/build puts the launcher and bwrap).
fn beside_fim(name: &str, hint: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the fim executable")?;
    let candidate = exe.with_file_name(name);
    if !candidate.is_file() {
        bail!("no {name}: {} does not exist; {hint}", candidate.display());
    }
    Ok(candidate)
}

fn default_launcher() -> anyhow::Result<PathBuf> {
    beside_fim(
        "fim-boot",
        "pass --launcher FILE (tools/build puts one in dist/)",
    )
}

/// A program to embed: its name in the tool table, and its bytes.
type Tool = (&'static str, Vec<u8>);

/// The static programs to embed, by name: bwrap (`--bwrap`, else the one beside fim,
/// required), fuse-overlayfs and unionfs (the option, else the one beside fim if there
/// is one). Each must be a static ELF, since it runs on hosts whose libraries are unknown.
/// Also returns what the build should say once it succeeded (a backend left to the host).
fn tools_to_embed(args: &BuildArgs) -> anyhow::Result<(Vec<Tool>, Vec<String>)> {
    let mut notes = Vec::new();
    if args.no_embed_tools {
        return Ok((Vec::new(), notes));
    }
    let bwrap = match &args.bwrap {
        Some(p) => p.clone(),
        None => beside_fim(
            "bwrap",
            "build it with tools/build-bwrap, pass --bwrap FILE, or --no-embed-tools",
        )?,
    };
    let mut chosen = vec![("bwrap", bwrap)];
    for (name, given, script) in [
        (
            "fuse-overlayfs",
            &args.fuse_overlayfs,
            "tools/build-fuse-overlayfs",
        ),
        ("unionfs", &args.unionfs, "tools/build-unionfs"),
    ] {
        match given {
            Some(path) => chosen.push((name, path.clone())),
            None => match beside_fim(name, "") {
                Ok(path) => chosen.push((name, path)),
                Err(_) => notes.push(format!(
                    "no static {name} beside fim ({script} builds one): the image's {name} backend will need the host's"
                )),
            },
        }
    }
    let mut tools = Vec::new();
    for (name, path) in chosen {
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let is_static = fim_image::elf::is_static_executable(&bytes)
            .with_context(|| format!("{} is not an x86_64 executable", path.display()))?;
        if !is_static {
            bail!(
                "{} is dynamically linked; an embedded {name} must be static (tools/build makes one)",
                path.display()
            );
        }
        tools.push((name, bytes));
    }
    Ok((tools, notes))
}

pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.output.is_dir() {
        bail!(
            "{} is a directory; -o names the image file to write",
            args.output.display()
        );
    }
    // Every input checked before any work, so a typo fails at once.
    for input in &args.rootfs {
        std::fs::metadata(input).with_context(|| format!("{}", input.display()))?;
    }
    let mut image_input = None;
    for input in &args.rootfs {
        if let Some(source) = oci::detect(input, &args.output)? {
            if args.rootfs.len() > 1 {
                bail!(
                    "{} is a Docker/OCI image: build it alone (its layers become the image's layers)",
                    input.display()
                );
            }
            image_input = Some(source);
        }
    }
    if image_input.is_none() && (args.tag.is_some() || args.platform.is_some() || args.squash) {
        bail!(
            "--tag, --platform and --squash apply to a Docker or OCI image input; {} is a root filesystem",
            args.rootfs[0].display()
        );
    }
    let plan = match image_input {
        Some(source) => {
            let request = oci::Request {
                tag: args.tag.as_deref(),
                platform: args.platform.clone(),
            };
            let plan = oci::plan(source, &request)
                .with_context(|| format!("{}", args.rootfs[0].display()))?;
            eprintln!("fim: importing {}", plan.describe());
            Some(plan)
        }
        None => None,
    };
    let launcher_path = match &args.launcher {
        Some(p) => p.clone(),
        None => default_launcher()?,
    };
    let launcher = read_launcher(&launcher_path)
        .with_context(|| format!("launcher {}", launcher_path.display()))?;

    let mut reserved = Reserved::new();
    if let Some(plan) = &plan {
        plan.apply(&mut reserved)?;
    }
    if let Some(boot) = &args.boot {
        let (program, rest) = boot.split_first().context("--boot needs a program")?;
        let mut command = BootCommand::new(program.clone(), rest.to_vec())
            .map_err(|e| anyhow::anyhow!("--boot: {e}"))?;
        command.workdir = plan.as_ref().and_then(oci::Plan::workdir);
        reserved
            .set_boot(Some(&command))
            .map_err(|e| anyhow::anyhow!("--boot: {e}"))?;
    }
    if let Some(file) = &args.desktop {
        let (settings, icon) = fim_desktop::SetupFile::load(file, None)
            .map_err(|e| anyhow::anyhow!("--desktop: {e}"))?;
        settings
            .store(&mut reserved, Some(&icon))
            .map_err(|e| anyhow::anyhow!("--desktop: {e}"))?;
    }

    let options = BuildOptions {
        level: args.level,
        block_size: args.block_size,
        whiteouts: match args.whiteouts {
            Whiteouts::None => WhiteoutFormat::None,
            Whiteouts::Oci => WhiteoutFormat::Oci,
            Whiteouts::Overlay => WhiteoutFormat::Overlay,
        },
        order: match args.order {
            Order::Similarity => ContentOrder::Similarity,
            Order::Path => ContentOrder::Path,
        },
        exclude: Vec::new(),
        // A normal user's own files are root's inside, as in a rootless container build:
        // the image's sessions map that user to root, and the files stay theirs to write.
        owner_as_root: packer_if_not_root(),
    };

    let (tools, notes) = tools_to_embed(&args)?;
    let mut writer = ImageWriter::create(&args.output, &launcher, &reserved)
        .with_context(|| format!("creating {}", args.output.display()))?;
    for (name, bytes) in &tools {
        writer.add_tool(name, bytes)?;
    }
    let mut total_in = 0u64;
    if let Some(plan) = &plan {
        total_in = plan.write_layers(&mut writer, &options, args.squash, &args.output)?;
    }
    let rootfs = if plan.is_some() {
        &[][..]
    } else {
        &args.rootfs[..]
    };
    for (index, input) in rootfs.iter().enumerate() {
        let staged = stage(input, &args.output)?;
        let bar = Bar::new(&format!("layer {index}"));
        let stats = writer
            .add_layer_from_dir(staged.dir(), &options, &bar)
            .with_context(|| format!("building a layer from {}", input.display()))?;
        bar.finish();
        total_in += stats.content_bytes;
        report_layer(index, &stats);
    }
    writer
        .finish()
        .with_context(|| format!("writing {}", args.output.display()))?;
    let size = std::fs::metadata(&args.output)
        .with_context(|| format!("{}", args.output.display()))?
        .len();
    eprintln!(
        "fim: built {} ({}, from {} of content) in {:.1} s",
        args.output.display(),
        human(size),
        human(total_in),
        started.elapsed().as_secs_f64()
    );
    for note in notes {
        eprintln!("fim: {note}");
    }
    Ok(())
}

/// A build input as a directory: the directory itself, or a tarball unpacked next to the
/// output (same file system, not a possibly small /tmp), removed when dropped.
enum Staged {
    Dir(PathBuf),
    Unpacked(tempfile::TempDir),
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Staged::Unpacked(t) = self {
            tarball::make_removable(t.path());
        }
    }
}

impl Staged {
    fn dir(&self) -> &Path {
        match self {
            Staged::Dir(p) => p,
            Staged::Unpacked(t) => t.path(),
        }
    }
}

fn stage(input: &Path, output: &Path) -> anyhow::Result<Staged> {
    let meta = std::fs::metadata(input).with_context(|| format!("{}", input.display()))?;
    if meta.is_dir() {
        return Ok(Staged::Dir(input.to_owned()));
    }
    if !meta.is_file() {
        bail!("{}: not a directory or a tarball", input.display());
    }
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let dir = tempfile::Builder::new()
        .prefix(".fim-rootfs")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a staging directory in {}", parent.display()))?;
    tarball::unpack(input, dir.path()).with_context(|| format!("unpacking {}", input.display()))?;
    Ok(Staged::Unpacked(dir))
}

/// The packer's uid and gid, unless it is root.
fn packer_if_not_root() -> Option<(u32, u32)> {
    // SAFETY: geteuid and getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    (euid != 0).then_some((euid, egid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes_and_reject_non_powers_of_two() {
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("128K"), Ok(128 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("3M").is_err());
        assert!(parse_size("1K").is_err());
        assert!(parse_size("128M").is_err());
        assert!(parse_size("lots").is_err());
    }
}
