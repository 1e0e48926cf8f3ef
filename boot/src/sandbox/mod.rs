//! The sandbox: everything about one run of a command, from the session's writable view
//! to the app's exit status. Data flows through it in one direction:
//!
//! ```text
//! run         joins the session, then asks:
//!   identity      who the app is (uid, gid, HOME, /etc/passwd and /etc/group lines)
//!   environment   what it inherits (expand: ${NAME} in settings, never by a shell)
//!   perms         what each granted permission opens on the host
//!   binds         the image's fim-bind entries
//!   inside        which of those can be mounted in the view (no symlink escapes)
//!   noop_ids      fim-root with one id: set-id and chown calls made no-ops (seccomp)
//!   bwrap         the bubblewrap command line built from all of that (pure)
//!   supervise     runs it, relays signals, returns the exit status
//!   shim          the first program inside: restores signals, closes descriptors, execs
//! start       which words the boot command runs and in which directory (Docker's rules
//!             for images imported from OCI)
//! instance    the records of running instances, and entering one (fim-instance exec)
//! notify      the start notification (fim-notify)
//! ```
//!
//! The sandbox reads the session and the view; nothing below it reads the sandbox.

pub mod binds;
pub mod bwrap;
pub mod environment;
pub mod expand;
pub mod identity;
pub mod inside;
pub mod instance;
pub mod noop_ids;
pub mod notify;
pub mod perms;
pub mod run;
pub mod shim;
pub mod start;
pub mod supervise;
