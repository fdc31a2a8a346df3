//! The test kit: everything the end-to-end suites share.
//!
//! Every piece is real: an API server (the real kube-apiserver under
//! `CERT_CSI_TEST_API=real`, which `hack/test` sets, or the in-process
//! sandbox), cert-csi's controller, the real `cert-csi node` binary as a
//! subprocess on a real unix socket, real tmpfs and bind mounts, and the
//! simulated kubelet of `cert_csi::csi::kubelet`. Assertions use outside
//! judges (`openssl`, `/proc/self/mountinfo`, kubectl), not the crate's own
//! parsers.
//!
//! - [`real`]: the real control plane, and choosing the backend;
//! - [`cluster`]: the controller and the test's policy approver;
//! - [`env`]: the node environment ([`Env`]);
//! - [`controller`]: the controller suites' environment;
//! - [`assertions`]: logs, mounts, openssl, a pod's reader, metrics;
//! - [`peers`]: upstream csi-driver and cert-manager's controller, run beside
//!   cert-csi or before it on the same node;
//! - [`tls`]: mutual TLS between two identities, judged by openssl.

pub mod assertions;
pub mod cluster;
pub mod controller;
pub mod env;
pub mod peers;
pub mod real;
pub mod tls;

pub use assertions::*;
pub use cluster::*;
pub use controller::{CONTROLLER_TIMEOUT, ControllerEnv, create_namespace};
pub use env::*;
pub use real::{Backend, RealCluster};

/// True when the test may run. Mount tests need root: under `CI=true` a
/// missing root fails the test (a skipped suite would hide a broken
/// runner); elsewhere it skips with a message.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs root for tmpfs and bind mounts, and CI=true");
    }
    eprintln!("skipping {test}: not root (the node plugin's mounts need CAP_SYS_ADMIN)");
    false
}

/// Stops a process the test started, by its pid: SIGTERM (as a DaemonSet
/// rollout or a Deployment does), then SIGKILL after `grace`; always reaped.
pub fn stop_child(child: &mut std::process::Child, grace: std::time::Duration) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The build directory of the running test binary (`target/debug`): cargo
/// runs integration tests from `target/<profile>/deps/`. The kit is a
/// library, so cargo's `CARGO_BIN_EXE_*` and `CARGO_TARGET_TMPDIR`, which
/// only integration tests see, are found from here instead.
pub fn build_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(std::path::Path::parent)
        .unwrap_or_else(|| panic!("{} is not in target/<profile>/deps", exe.display()))
        .to_path_buf()
}

/// The `cert-csi` binary cargo built for these tests (cargo builds a
/// package's binaries before its integration tests).
pub fn cert_csi_binary() -> std::path::PathBuf {
    let binary = build_dir().join("cert-csi");
    assert!(
        binary.is_file(),
        "{} is missing; run the tests with cargo test, which builds it",
        binary.display()
    );
    binary
}

/// `target/tmp`, the directory cargo gives integration tests for scratch
/// files (`CARGO_TARGET_TMPDIR`).
pub fn target_tmp_dir() -> std::path::PathBuf {
    let dir = build_dir()
        .parent()
        .expect("target/<profile> has a parent")
        .join("tmp");
    std::fs::create_dir_all(&dir).expect("create target/tmp");
    dir
}
