//! Rootless: a user namespace where the caller is root. With subordinate id ranges
//! (/etc/subuid, /etc/subgid) and newuidmap/newgidmap, ids 1.. inside map to the caller's range,
//! so files the container gives to other users keep an owner; without them, only the caller's
//! own id is mapped.

use std::path::Path;
use std::process::Command;

use rustix::process::{WaitOptions, waitpid};
use rustix::thread::UnshareFlags;

use super::RunError;
use super::handshake::{self, Msg};
use crate::sys::{self, Forked};

fn ns_err(step: &'static str) -> impl FnOnce(std::io::Error) -> RunError {
    move |cause| RunError::Namespace { step, cause }
}

/// The caller's range in a /etc/subuid-style file: `name-or-id:start:count`.
fn subid_range(file: &str, name: Option<&str>, id: u32) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        let ours = Some(who) == name || who.parse::<u32>().ok() == Some(id);
        ours.then(|| Some((start.parse().ok()?, count.parse().ok()?)))?
    })
}

/// The caller's user name, from /etc/passwd.
fn user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    crate::passwd::users(&text)
        .find(|u| u.uid == Some(uid))
        .map(|u| u.name.to_owned())
}

/// Whether the namespace got the subordinate ranges (true) or only the caller's id (false).
pub fn enter() -> Result<bool, RunError> {
    let (uid, gid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    let name = user_name(uid);
    let ranges = subid_range("/etc/subuid", name.as_deref(), uid).zip(subid_range(
        "/etc/subgid",
        name.as_deref(),
        uid,
    ));
    let tools = ["/usr/bin/newuidmap", "/usr/bin/newgidmap"]
        .iter()
        .all(|t| Path::new(t).exists());
    let helper = match ranges.filter(|_| tools) {
        // The maps of a namespace with ranges must be written from outside it, by the setuid
        // helpers: a child waits for us to unshare, then runs them on our pid.
        Some(((us, uc), (gs, gc))) => {
            let (rd, wr) = sys::pipe().map_err(ns_err("a pipe for the id maps"))?;
            let me = rustix::process::getpid().as_raw_nonzero().get().to_string();
            match sys::fork().map_err(ns_err("forking the id-map helper"))? {
                Forked::Child => {
                    drop(wr);
                    if handshake::recv(&mut std::fs::File::from(rd)) != Msg::Go {
                        std::process::exit(1);
                    }
                    let map = |tool: &str, id: u32, start: u32, count: u32| {
                        Command::new(tool)
                            .args([&me, "0", &id.to_string(), "1", "1"])
                            .args([start.to_string(), count.to_string()])
                            .status()
                            .is_ok_and(|s| s.success())
                    };
                    let ok = map("/usr/bin/newuidmap", uid, us, uc)
                        && map("/usr/bin/newgidmap", gid, gs, gc);
                    std::process::exit(if ok { 0 } else { 1 });
                }
                Forked::Parent(pid) => Some((pid, std::fs::File::from(wr))),
            }
        }
        None => None,
    };
    let unshared = sys::unshare(UnshareFlags::NEWUSER | UnshareFlags::NEWNS);
    if let Some((pid, mut wr)) = helper {
        // The helper maps our ids only once we are in the new namespace.
        let msg = match &unshared {
            Ok(()) => Msg::Go,
            Err(e) => Msg::Fail(e.to_string()),
        };
        let _ = handshake::send(&mut wr, &msg);
        drop(wr);
        let ok = matches!(
            waitpid(Some(pid), WaitOptions::empty()),
            Ok(Some((_, st))) if st.exit_status() == Some(0)
        );
        unshared.map_err(ns_err("user and mount"))?;
        if ok {
            return Ok(true);
        }
        eprintln!("strata: warning: newuidmap/newgidmap failed; mapping only your own id");
    } else {
        unshared.map_err(ns_err("user and mount"))?;
    }
    let w = |file: &str, s: String| std::fs::write(file, s).map_err(ns_err("writing the id maps"));
    w("/proc/self/setgroups", "deny".into())?;
    w("/proc/self/uid_map", format!("0 {uid} 1"))?;
    w("/proc/self/gid_map", format!("0 {gid} 1"))?;
    Ok(false)
}
