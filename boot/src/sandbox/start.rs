//! What a run starts, as pure functions: which words a run without a `fim-*` command
//! executes (FlatImage's rule, arguments appended, or Docker's for an image imported from
//! OCI: run-time arguments replace Cmd and keep Entrypoint) and which directory it starts
//! in (the caller's when the image has it, else WorkingDir, else `/`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use fim_reserved::BootCommand;

/// The command a run without `fim-*` executes for `run_args`: the boot program (if any)
/// and its arguments, then `run_args` when there are any, else the stored Cmd. An image
/// with no Cmd gets FlatImage's rule: run-time arguments are appended.
pub fn boot_argv(boot: &BootCommand, run_args: &[OsString]) -> Vec<OsString> {
    let program = (!boot.program.is_empty()).then(|| OsString::from(&boot.program));
    let tail: Vec<OsString> = if run_args.is_empty() {
        boot.cmd.iter().map(OsString::from).collect()
    } else {
        run_args.to_vec()
    };
    program
        .into_iter()
        .chain(boot.args.iter().map(OsString::from))
        .chain(tail)
        .collect()
}

/// Where the app starts: the caller's directory when it is visible inside the image,
/// else the image's working directory when that exists inside, else `/`.
pub fn start_dir(
    caller: Option<PathBuf>,
    workdir: Option<&str>,
    visible: impl Fn(&Path) -> bool,
) -> PathBuf {
    caller
        .filter(|dir| visible(dir))
        .or_else(|| workdir.map(PathBuf::from).filter(|dir| visible(dir)))
        .unwrap_or_else(|| PathBuf::from("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments_replace_cmd_and_keep_entrypoint() {
        let boot =
            BootCommand::from_docker(&["/bin/echo".into(), "hi".into()], &["x".into()], None)
                .unwrap();
        assert_eq!(boot_argv(&boot, &[]), words(&["/bin/echo", "hi", "x"]));
        assert_eq!(
            boot_argv(&boot, &words(&["y"])),
            words(&["/bin/echo", "hi", "y"])
        );
    }

    #[test]
    fn without_entrypoint_arguments_replace_the_whole_command() {
        let boot = BootCommand::from_docker(&[], &["sh".into()], None).unwrap();
        assert_eq!(boot_argv(&boot, &[]), words(&["sh"]));
        assert_eq!(boot_argv(&boot, &words(&["ls", "/"])), words(&["ls", "/"]));
    }

    #[test]
    fn a_flatimage_boot_command_gets_the_arguments_appended() {
        let boot = BootCommand::new("/bin/sh", ["-c"]).unwrap();
        assert_eq!(
            boot_argv(&boot, &words(&["echo"])),
            words(&["/bin/sh", "-c", "echo"])
        );
    }

    #[test]
    fn the_callers_directory_wins_when_the_image_has_it() {
        let inside = |d: &Path| d == Path::new("/home/me") || d == Path::new("/srv");
        let me = Some(PathBuf::from("/home/me"));
        assert_eq!(start_dir(me, Some("/srv"), inside), Path::new("/home/me"));
        let elsewhere = Some(PathBuf::from("/elsewhere"));
        assert_eq!(
            start_dir(elsewhere.clone(), Some("/srv"), inside),
            Path::new("/srv")
        );
        assert_eq!(start_dir(elsewhere.clone(), None, inside), Path::new("/"));
        assert_eq!(
            start_dir(elsewhere, Some("/missing"), inside),
            Path::new("/")
        );
        assert_eq!(start_dir(None, Some("/srv"), inside), Path::new("/srv"));
    }
}
