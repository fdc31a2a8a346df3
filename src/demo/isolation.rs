//! Running the demo as a normal user: a private user and mount namespace
//! makes the process root over its own mounts only, so the demo can mount
//! tmpfs and bind mounts like a real node without touching the host's mount
//! table, and every mount disappears with the process.

use std::fmt;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{Gid, Uid, getegid, geteuid};

/// How the demo gets the right to mount.
#[derive(Debug)]
pub enum Isolation {
    /// Already root: real mounts on the host, cleaned up by the demo.
    Root,
    /// A normal user inside a private user and mount namespace.
    UserNamespace { uid: Uid, gid: Gid },
    /// No right to mount (the kernel refused the namespace, or `--no-mounts`);
    /// the reason says why.
    Unavailable(String),
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Isolation::Root => write!(f, "running as root: real mounts, removed at the end"),
            Isolation::UserNamespace { uid, gid } => write!(
                f,
                "running as uid {uid} (gid {gid}) inside a private user and mount namespace: real mounts, visible only to this process"
            ),
            Isolation::Unavailable(reason) => write!(f, "not mounting: {reason}"),
        }
    }
}

/// Must be called while the process is single-threaded (before the async
/// runtime starts): the kernel refuses `unshare(CLONE_NEWUSER)` otherwise.
pub fn enter() -> Isolation {
    let (uid, gid) = (geteuid(), getegid());
    if uid.is_root() {
        return Isolation::Root;
    }
    if let Err(errno) = unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS) {
        return Isolation::Unavailable(format!(
            "this kernel does not let a normal user create a user namespace ({errno}); run the demo as root for real mounts"
        ));
    }
    // Map our own ids to root inside; setgroups must be denied first for an
    // unprivileged gid map.
    let maps = [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("0 {uid} 1")),
        ("/proc/self/gid_map", format!("0 {gid} 1")),
    ];
    for (path, content) in maps {
        if let Err(e) = std::fs::write(path, content) {
            return Isolation::Unavailable(format!("writing {path}: {e}"));
        }
    }
    // Keep our mounts from propagating anywhere.
    if let Err(errno) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    ) {
        return Isolation::Unavailable(format!("making the mount namespace private: {errno}"));
    }
    Isolation::UserNamespace { uid, gid }
}
