//! `cert-csi sandbox`, the command: it starts, says where it listens and
//! where its kubeconfig is, serves this project's committed cert-manager.io
//! CRDs and example objects to the real kubectl, and refuses to listen
//! beyond loopback. The sandbox's own behaviour (tables, selectors, watches,
//! tokens) is tested in crates/kube-sandbox.
// `cert-csi sandbox` exists only with the `sandbox` feature (on by default).
#![cfg(feature = "sandbox")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// Kills a child process by pid when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

struct Env {
    _sandbox: Killed,
    dir: tempfile::TempDir,
}

impl Env {
    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        // A private HOME keeps kubectl's discovery cache out of the user's.
        c.args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.dir.path())
            .current_dir(repo());
        c
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("kubectl runs");
        assert_ok(args, &out);
        String::from_utf8(out.stdout).unwrap()
    }
}

fn assert_ok(args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "kubectl {} failed: {}\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn kubectl_present() -> bool {
    Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn start_sandbox() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cert-csi"))
        .args([
            "sandbox",
            "--listen",
            "127.0.0.1:0",
            "--no-cert-manager-crds",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cert-csi sandbox starts");
    let stdout = child.stdout.take().unwrap();
    let guard = Killed(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the sandbox prints its ready line");
    let url = line
        .strip_prefix("sandbox ready: ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected ready line {line:?}"));
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    assert!(line.contains(&kubeconfig.display().to_string()), "{line}");
    Env {
        _sandbox: guard,
        dir,
    }
}

/// Removes what the server adds, so an object compares with what was applied.
fn strip_server_fields(v: &mut Value) {
    let m = v["metadata"].as_object_mut().unwrap();
    for k in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
    ] {
        m.remove(k);
    }
    if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

#[test]
fn kubectl_applies_the_cert_manager_crds_and_objects() {
    if !kubectl_present() {
        assert!(std::env::var("CI").is_err(), "kubectl is required in CI");
        eprintln!("skipping: kubectl is not installed");
        return;
    }
    let env = start_sandbox();

    // CRDs from the repository, applied with client-side validation on.
    let out = env.kubectl(&["apply", "-f", "deploy/crds/"]);
    assert!(out.contains("customresourcedefinition.apiextensions.k8s.io/certificaterequests.cert-manager.io created"), "{out}");
    let out = env.kubectl(&["create", "namespace", "sandbox-e2e"]);
    assert_eq!(out.trim(), "namespace/sandbox-e2e created");

    let out = env.kubectl(&["apply", "-f", "tests/fixtures/sandbox/"]);
    for want in [
        "certificaterequest.cert-manager.io/demo-request created",
        "certificate.cert-manager.io/demo-cert created",
        "issuer.cert-manager.io/letsencrypt created",
    ] {
        assert!(out.contains(want), "{want} in {out}");
    }
    // Applying again is a no-op, through the server's patch path.
    let out = env.kubectl(&["apply", "-f", "tests/fixtures/sandbox/"]);
    assert!(
        out.contains("certificate.cert-manager.io/demo-cert unchanged"),
        "{out}"
    );

    // Printer columns come through the server-side Table.
    let out = env.kubectl(&["get", "cr", "-A"]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        vec![
            "NAMESPACE",
            "NAME",
            "APPROVED",
            "DENIED",
            "READY",
            "ISSUER",
            "REQUESTER",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines
        .next()
        .expect("one request")
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..4],
        &[
            "sandbox-e2e",
            "demo-request",
            "letsencrypt",
            "system:serviceaccount:sandbox-e2e:demo"
        ]
    );

    // The Certificate reads back as applied, plus server fields.
    let out = env.kubectl(&[
        "get",
        "cert",
        "demo-cert",
        "-n",
        "sandbox-e2e",
        "-o",
        "yaml",
    ]);
    let mut got: Value = serde_yaml_ng::from_str(&out).unwrap();
    assert!(got["metadata"]["uid"].is_string() && got["metadata"]["resourceVersion"].is_string());
    strip_server_fields(&mut got);
    let want: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/sandbox/certificate.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(got, want);
    // The Issuer's acme block is kept as written (preserve-unknown-fields).
    let out = env.kubectl(&[
        "get",
        "issuer",
        "letsencrypt",
        "-n",
        "sandbox-e2e",
        "-o",
        "json",
    ]);
    let issuer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        issuer["spec"]["acme"]["solvers"][0]["http01"]["ingress"]["ingressClassName"],
        "nginx"
    );
}

/// The sandbox has no authorization, so it refuses to listen beyond
/// loopback unless told to, and writes nothing.
#[test]
fn the_sandbox_refuses_a_non_loopback_listen_address() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let out = Command::new(env!("CARGO_BIN_EXE_cert-csi"))
        .args(["sandbox", "--listen", "0.0.0.0:0", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdin(Stdio::null())
        .output()
        .expect("cert-csi runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains("without authorization") && stderr.contains("--allow-remote"),
        "{stderr}"
    );
    assert!(!kubeconfig.exists(), "a kubeconfig was written");
}
