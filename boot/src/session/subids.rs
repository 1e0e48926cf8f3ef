//! Subordinate ids: the uids and gids `/etc/subuid` and `/etc/subgid` give a user, mapped
//! into a user namespace by the setuid `newuidmap` and `newgidmap` (package `uidmap`), as
//! podman, buildah and Apptainer's fakeroot do. With them the namespace holds root (the
//! user) and the whole range: `_apt`, `messagebus` and every other system id exist inside,
//! set-id calls work, and files keep their owners in the upper directory and in commits.
//! Without them (no range, no tools, or the tools refuse), the namespace maps the user
//! alone and `fim-root` makes set-id calls no-ops (`crate::sandbox::noop_ids`).
//!
//! Only a process outside the namespace may write its maps with more than one id, so a
//! helper is forked before `unshare`: it waits until the namespace exists, runs the two
//! tools on its parent, and reports.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork, pipe};

/// The most lines a kernel id map takes (`/proc/PID/uid_map`).
const MAX_MAP_LINES: usize = 340;

/// A range of subordinate ids: `count` ids from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u32,
    pub count: u32,
}

/// The ranges that `text`, in the format of `/etc/subuid` (`OWNER:START:COUNT` lines, the
/// owner a user name or a numeric id), gives the user `name` or id `id`, in file order.
/// Lines that do not parse, empty ranges and ranges past the largest id are left out, as
/// `newuidmap` leaves them out.
pub fn ranges(text: &str, name: Option<&str>, id: u32) -> Vec<Range> {
    let id = id.to_string();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().split(':');
            let (owner, start, count) = (fields.next()?, fields.next()?, fields.next()?);
            if fields.next().is_some() || !(Some(owner) == name || owner == id) {
                return None;
            }
            let (start, count) = (start.parse::<u32>().ok()?, count.parse::<u32>().ok()?);
            (count > 0 && start.checked_add(count - 1).is_some()).then_some(Range { start, count })
        })
        .collect()
}

/// The lines of a map, `(inside, outside, count)`: the user's own id as 0, then each
/// range from inside id 1 on. A range holding the user's own id is left out (the kernel
/// refuses ranges that overlap outside), and so is whatever does not fit the kernel's map.
pub fn map_lines(own: u32, ranges: &[Range]) -> Vec<(u32, u32, u32)> {
    let mut lines = vec![(0, own, 1)];
    let mut next: u32 = 1;
    for range in ranges {
        let holds_own = own >= range.start && own - range.start < range.count;
        let end = |start: u32, count: u32| u64::from(start) + u64::from(count);
        let overlaps = lines[1..].iter().any(|&(_, start, count)| {
            u64::from(range.start) < end(start, count)
                && u64::from(start) < end(range.start, range.count)
        });
        if holds_own || overlaps || lines.len() == MAX_MAP_LINES {
            continue;
        }
        let Some(end) = next.checked_add(range.count) else {
            break;
        };
        lines.push((next, range.start, range.count));
        next = end;
    }
    lines
}

/// How many ids a map holds.
pub fn mapped(lines: &[(u32, u32, u32)]) -> u64 {
    lines.iter().map(|&(_, _, count)| u64::from(count)).sum()
}

/// What `newuidmap` and `newgidmap` will be asked to map.
#[derive(Debug)]
pub struct Plan {
    newuidmap: PathBuf,
    newgidmap: PathBuf,
    pub uids: Vec<(u32, u32, u32)>,
    pub gids: Vec<(u32, u32, u32)>,
}

/// The maps for the user `uid`/`gid`, or why there are none (a phrase for the debug log).
pub fn plan(uid: u32, gid: u32) -> Result<Plan, String> {
    let name = nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name);
    let group = nix::unistd::Group::from_gid(gid.into())
        .ok()
        .flatten()
        .map(|g| g.name);
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let who = name.clone().unwrap_or_else(|| uid.to_string());
    let uids = map_lines(uid, &ranges(&read("/etc/subuid"), name.as_deref(), uid));
    if uids.len() == 1 {
        return Err(format!("/etc/subuid gives {who} no range"));
    }
    // newgidmap checks /etc/subgid for the user's name (not the group's) or uid.
    let mut gid_ranges = ranges(&read("/etc/subgid"), name.as_deref(), uid);
    if gid_ranges.is_empty() && group.is_some() {
        gid_ranges = ranges(&read("/etc/subgid"), group.as_deref(), gid);
    }
    let gids = map_lines(gid, &gid_ranges);
    if gids.len() == 1 {
        return Err(format!("/etc/subgid gives {who} no range"));
    }
    let tool = |name: &str| {
        crate::places::find_program(name)
            .or_else(|| {
                ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
                    .iter()
                    .map(|dir| PathBuf::from(dir).join(name))
                    .find(|p| p.is_file())
            })
            .ok_or_else(|| format!("{name} is not installed (package uidmap)"))
    };
    Ok(Plan {
        newuidmap: tool("newuidmap")?,
        newgidmap: tool("newgidmap")?,
        uids,
        gids,
    })
}

/// A helper forked before the namespace is created, waiting to map it.
pub struct Helper {
    child: Pid,
    /// Closed without a word, it tells the helper to end without mapping.
    go: Option<File>,
    report: File,
}

impl Helper {
    /// Forks the helper. The caller must be single-threaded (as `unshare` of a user
    /// namespace needs it to be anyway).
    pub fn fork(plan: &Plan) -> anyhow::Result<Helper> {
        let (go_read, go_write) = pipe().context("cannot create a pipe")?;
        let (report_read, report_write) = pipe().context("cannot create a pipe")?;
        let parent = nix::unistd::getpid();
        // SAFETY: the caller is single-threaded, so the child may allocate and spawn.
        match unsafe { fork() }.context("cannot fork the id-mapping helper")? {
            ForkResult::Child => {
                drop((go_write, report_read));
                let status = helper_main(plan, parent, go_read, report_write);
                // SAFETY: ends the forked child without running the parent's exit handlers.
                unsafe { libc::_exit(status) }
            }
            ForkResult::Parent { child } => Ok(Helper {
                child,
                go: Some(File::from(go_write)),
                report: File::from(report_read),
            }),
        }
    }

    /// Asks the helper to map the caller's new user namespace; returns what failed, if
    /// anything did.
    pub fn map(mut self) -> Result<(), String> {
        let sent = match self.go.take() {
            Some(mut go) => go.write_all(b"m"),
            None => Ok(()),
        };
        let mut report = String::new();
        let read = self.report.read_to_string(&mut report);
        match (sent, read) {
            (Err(e), _) | (_, Err(e)) => Err(format!("the id-mapping helper died ({e})")),
            _ if report.is_empty() => Err("the id-mapping helper died".into()),
            _ if report == "ok" => Ok(()),
            _ => Err(report),
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        drop(self.go.take());
        let _ = waitpid(self.child, None);
    }
}

/// The helper: waits for the word, runs newgidmap then newuidmap on `parent`, reports.
fn helper_main(plan: &Plan, parent: Pid, go: OwnedFd, report: OwnedFd) -> i32 {
    let mut word = [0u8; 1];
    if File::from(go).read(&mut word).unwrap_or(0) == 0 {
        return 0;
    }
    let mut report = File::from(report);
    let result = [(&plan.newgidmap, &plan.gids), (&plan.newuidmap, &plan.uids)]
        .into_iter()
        .try_for_each(|(tool, lines)| run_tool(tool, parent, lines));
    let text = match result {
        Ok(()) => "ok".to_string(),
        Err(why) => why,
    };
    let _ = report.write_all(text.as_bytes());
    0
}

fn run_tool(tool: &PathBuf, pid: Pid, lines: &[(u32, u32, u32)]) -> Result<(), String> {
    let mut cmd = Command::new(tool);
    cmd.arg(pid.to_string());
    for &(inside, outside, count) in lines {
        cmd.args([inside.to_string(), outside.to_string(), count.to_string()]);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    Err(format!(
        "{} failed ({}): {}",
        tool.display(),
        out.status,
        said.trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: fn(u32, u32) -> Range = |start, count| Range { start, count };

    #[test]
    fn a_line_for_the_name_or_the_numeric_id_gives_a_range() {
        let text = "alice:100000:65536\n1000:300000:10\nbob:200000:65536\n";
        assert_eq!(
            ranges(text, Some("alice"), 1000),
            vec![R(100000, 65536), R(300000, 10)]
        );
        assert_eq!(ranges(text, None, 1000), vec![R(300000, 10)]);
        assert_eq!(ranges(text, Some("carol"), 1002), vec![]);
    }

    #[test]
    fn malformed_empty_and_overflowing_lines_are_left_out() {
        let text = "alice:x:10\nalice:5\nalice:1:2:3\nalice:7:0\nalice:4294967295:2\n\nalice:9:1\n";
        assert_eq!(ranges(text, Some("alice"), 1), vec![R(9, 1)]);
    }

    #[test]
    fn the_user_is_root_and_ranges_follow_from_one() {
        let lines = map_lines(1000, &[R(100000, 65536), R(300000, 10)]);
        assert_eq!(
            lines,
            vec![(0, 1000, 1), (1, 100000, 65536), (65537, 300000, 10)]
        );
        assert_eq!(mapped(&lines), 65547);
    }

    #[test]
    fn a_range_holding_the_user_or_overlapping_another_is_left_out() {
        let lines = map_lines(1000, &[R(900, 200), R(5000, 100), R(5050, 100), R(7000, 1)]);
        assert_eq!(lines, vec![(0, 1000, 1), (1, 5000, 100), (101, 7000, 1)]);
    }

    #[test]
    fn no_range_leaves_the_user_alone() {
        assert_eq!(map_lines(1000, &[]), vec![(0, 1000, 1)]);
    }

    #[test]
    fn a_map_stops_at_the_kernels_line_limit() {
        let many: Vec<Range> = (0..400).map(|i| R(100000 + i * 10, 10)).collect();
        assert_eq!(map_lines(1000, &many).len(), MAX_MAP_LINES);
    }
}
