//! The launcher at the head of every image. It reads its own payload (trailer, reserved
//! block, layers) from `/proc/self/exe` and dispatches the `fim-*` commands.

mod binds;
mod commands;
mod commit;
mod daemon;
mod debug;
mod durable;
mod environment;
mod expand;
mod extracted;
mod help;
mod identity;
mod inside;
mod instance;
mod layer_cmd;
mod layer_stack;
mod markers;
mod namespaces;
mod notify;
mod oci_boot;
mod overlay;
mod perms;
mod places;
mod run;
mod sandbox;
mod session;
mod settings;
mod shim;
mod supervise;
mod tools;

use std::process::ExitCode;

/// Exit status of the launcher's own failures, as FlatImage and `env(1)` use it.
pub const RUNTIME_ERROR: u8 = 125;

fn main() -> ExitCode {
    open_standard_descriptors();
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == shim::SHIM_COMMAND) {
        return shim::exec(&args[1..]);
    }
    match commands::dispatch(&args) {
        Ok(code) => code,
        Err(e) => {
            let program = std::env::args()
                .next()
                .and_then(|a| {
                    std::path::Path::new(&a)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                })
                .unwrap_or_else(|| "fim-boot".into());
            eprintln!("{program}: {e:#}");
            ExitCode::from(RUNTIME_ERROR)
        }
    }
}

/// Opens /dev/null on any of stdin, stdout and stderr that is closed, so no file the
/// launcher opens takes their place (and ends up written to, or closed, as one of them).
fn open_standard_descriptors() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: opening a constant path; the lowest free descriptor is `fd`.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}
