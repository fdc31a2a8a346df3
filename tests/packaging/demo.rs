//! Runs the built `cert-csi demo` the way a newcomer (and CI) does, and
//! checks that it tells the whole story and leaves nothing behind.
// `cert-csi demo` exists only with the `sandbox` feature (on by default).
#![cfg(feature = "sandbox")]

use std::path::Path;
use std::process::Command;

fn mounts_below(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&dir))
        .collect()
}

#[test]
fn demo_issues_handshakes_rotates_and_cleans_up() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the demo test needs root for mounts, and CI runs as root"
        );
        eprintln!("skipping: not root");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("demo");
    let output = Command::new(env!("CARGO_BIN_EXE_cert-csi"))
        .args(["demo", "--dir"])
        .arg(&dir)
        .output()
        .expect("cert-csi demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );

    // Both pods got identities with their expanded names.
    assert!(stdout.contains("DNS SANs: alice.demo.svc"), "{stdout}");
    assert!(stdout.contains("DNS SANs: bob.demo.svc"), "{stdout}");
    // The handshake lines: each side names what it verified about the other.
    assert!(
        stdout.contains("bob verified: client certificate of alice.demo.svc"),
        "{stdout}"
    );
    assert!(
        stdout.contains("alice verified: server bob.demo.svc"),
        "{stdout}"
    );
    assert!(stdout.contains("you said ping"), "{stdout}");
    // The rotation line carries two different serials.
    let rotation = stdout
        .lines()
        .find(|l| l.contains("rotated in place"))
        .unwrap_or_else(|| panic!("no rotation line:\n{stdout}"));
    let serials: Vec<&str> = rotation
        .split_whitespace()
        .filter(|w| w.len() >= 16 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    assert_eq!(serials.len(), 2, "{rotation}");
    assert_ne!(serials[0], serials[1], "{rotation}");
    // Nothing left mounted or running: no mounts, no socket, no directory.
    assert!(
        mounts_below(scratch.path()).is_empty(),
        "mounts left behind"
    );
    assert!(!dir.exists(), "the demo directory was removed");
    // The default log level keeps the person's screen to the story.
    assert!(
        !stderr.contains(" INFO "),
        "info logs leaked onto the screen:\n{stderr}"
    );
}

/// As a normal user the demo isolates itself in a user and mount namespace;
/// where the kernel forbids that, it says so plainly instead of half-working.
#[test]
fn demo_runs_as_a_normal_user_or_says_why_not() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "this test switches users, which needs root"
        );
        return;
    }
    // A world-readable copy of the binary and a world-writable directory,
    // so user `nobody` can run it wherever the checkout lives.
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let binary = scratch.path().join("cert-csi");
    std::fs::copy(env!("CARGO_BIN_EXE_cert-csi"), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = scratch.path().join("demo");
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary)
        .args(["demo", "--dir"])
        .arg(&dir)
        .output()
        .expect("setpriv (util-linux) runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("does not let a normal user create a user namespace") {
        assert!(!output.status.success());
        return;
    }
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout
            .contains("running as uid 65534 (gid 65534) inside a private user and mount namespace"),
        "{stdout}"
    );
    assert!(stdout.contains("rotated in place"), "{stdout}");
    assert!(mounts_below(scratch.path()).is_empty());
}

/// Where a normal user may not mount at all, the demo falls back to plain
/// files (`--no-mounts` forces that path here) and says so plainly.
#[test]
fn demo_without_mount_rights_falls_back_to_plain_files_and_says_so() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "this test switches users, which needs root"
        );
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let binary = scratch.path().join("cert-csi");
    std::fs::copy(env!("CARGO_BIN_EXE_cert-csi"), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary)
        .args(["demo", "--no-mounts", "--dir"])
        .arg(scratch.path().join("demo"))
        .output()
        .expect("setpriv (util-linux) runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("falling back to plain files without mounting"),
        "{stdout}"
    );
    assert!(stdout.contains("plain files, not mounted"), "{stdout}");
    assert!(
        stdout.contains("alice verified: server bob.demo.svc"),
        "{stdout}"
    );
    assert!(stdout.contains("rotated in place"), "{stdout}");
    assert!(mounts_below(scratch.path()).is_empty());
    assert!(
        !Path::new("/dev/shm/cert-csi-demo-65534").exists(),
        "the fallback directory was removed"
    );
}
