//! CSI clients other than grpc-go, against the real `cert-csi node` binary
//! on its real unix socket: grpcio (gRPC's C core, as Python and csi tools
//! built on it use), with the `:authority` each kind of client sends over a
//! unix socket. grpcio since 1.57 sends the percent-encoded socket path and
//! grpc-java and csc the raw path; neither is a valid authority, and h2 alone
//! answers both with PROTOCOL_ERROR (src/csi/authority.rs is the fix).
//!
//! grpcio and grpcio-tools come from PyPI (hack/test installs them); the
//! stubs are generated from proto/csi.proto at test time by grpc_tools.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use test_kit::{Env, Options};

const CLIENT: &str = "tests/fixtures/grpc/csi_client.py";
const PACKAGES: &str = "grpcio==1.85.4 grpcio-tools==1.85.4";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Generates csi_pb2.py and csi_pb2_grpc.py into `dir`. `false` when
/// grpcio-tools is missing and the test may skip (never under CI=true:
/// hack/test installs it).
fn generate_stubs(dir: &Path) -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        let why = match probe {
            Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
            Err(e) => format!("cannot run python3: {e}"),
        };
        let message = format!(
            "grpcio is not available ({}); hack/test installs it, by hand: pip install {PACKAGES}",
            why.trim()
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message}");
        }
        eprintln!("skipping: {message}");
        return false;
    }
    let proto = repo().join("proto");
    let out = Command::new("python3")
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto.display()))
        .arg(format!("--python_out={}", dir.display()))
        .arg(format!("--grpc_python_out={}", dir.display()))
        .arg(proto.join("csi.proto"))
        .output()
        .expect("run grpc_tools.protoc");
    assert!(
        out.status.success(),
        "grpc_tools.protoc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// Runs the grpcio client; with `trace`, gRPC's HTTP/2 trace goes to stderr
/// (it prints the headers each call sends).
fn call(stubs: &Path, socket: &Path, authority: Option<&str>, trace: bool) -> Output {
    let mut command = Command::new("python3");
    command.arg(repo().join(CLIENT)).arg(stubs).arg(socket);
    if let Some(authority) = authority {
        command.arg(authority);
    }
    if trace {
        command
            .env("GRPC_TRACE", "http")
            .env("GRPC_VERBOSITY", "debug");
    }
    command.output().expect("run the grpcio client")
}

fn answer(out: &Output, what: &str) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpcio, {what}: the calls failed: {stdout}\n{}",
        // The trace is long; its end has the reset, if any.
        tail(&String::from_utf8_lossy(&out.stderr), 4000)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{what}: {e}: {stdout}"))
}

fn tail(text: &str, bytes: usize) -> &str {
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_clients_are_served_whatever_authority_they_send() {
    if !test_kit::require_root("grpcio_clients_are_served_whatever_authority_they_send") {
        return;
    }
    let stubs = tempfile::tempdir().unwrap();
    if !generate_stubs(stubs.path()) {
        return;
    }
    let env = Env::start_with(Options::default()).await;
    let socket: PathBuf = env.socket.clone();

    // grpcio's own default first, with its HTTP/2 trace: the test is only
    // worth something if the client really sends the socket path.
    let out = call(stubs.path(), &socket, None, true);
    let trace = String::from_utf8_lossy(&out.stderr);
    let sent: Vec<&str> = trace
        .split(":authority: ")
        .skip(1)
        .filter_map(|rest| rest.split([',', ' ']).next())
        .collect();
    let encoded = socket
        .to_str()
        .unwrap()
        .trim_start_matches('/')
        .replace('/', "%2F");
    assert!(
        !sent.is_empty() && sent.iter().all(|a| *a == encoded),
        "grpcio sent :authority {sent:?}, not the encoded socket path {encoded}"
    );
    let mut answers = vec![(
        "grpcio's default (the encoded path)",
        answer(&out, "default"),
    )];

    // What grpc-java and csc send, and what grpc-go sends.
    let raw = socket.to_str().unwrap();
    for (what, authority) in [("the raw socket path", raw), ("localhost", "localhost")] {
        let out = call(stubs.path(), &socket, Some(authority), false);
        answers.push((what, answer(&out, what)));
    }

    for (what, answer) in &answers {
        assert_eq!(answer["name"], "csi.cert-manager.io", "{what}: {answer}");
        assert_eq!(
            answer["vendor_version"],
            env!("CARGO_PKG_VERSION"),
            "{what}: {answer}"
        );
        assert_eq!(
            answer["capabilities"],
            serde_json::json!(["VOLUME_MOUNT_GROUP"]),
            "{what}: {answer}"
        );
    }
    env.finish().await;
}
