//! csi-driver's `--continue-on-not-ready` and `--pod-readiness-gate`
//! (issue 18), on the real binary and socket: a publish whose pod does not
//! pass its gates mounts an empty, read-only volume at once and makes no
//! request; when the pod passes every gate, the certificate arrives in the
//! mounted volume, judged by openssl and findmnt.

use std::process::Command;
use std::time::Duration;

use cert_csi::volume::keys;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use test_kit::{Env, Options};
use tokio::time::Instant;

const ANNOTATION: &str = "example.com/network-ready";

/// The options of the one mount at `path`, as findmnt reads them.
fn findmnt_options(path: &std::path::Path) -> String {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "OPTIONS", "--mountpoint"])
        .arg(path)
        .output()
        .expect("findmnt runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one mount at {}: {text}", path.display());
    lines[0].trim().to_owned()
}

/// Polls the node plugin's log until it has `count` lines holding `phrase`.
async fn await_log(env: &Env, phrase: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.log().matches(phrase).count() < count {
        assert!(
            Instant::now() < deadline,
            "the node never logged {phrase:?} {count} time(s):\n{}",
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_mounts_before_its_gates_pass_and_gets_its_certificate_after() {
    if !test_kit::require_root(
        "a_volume_mounts_before_its_gates_pass_and_gets_its_certificate_after",
    ) {
        return;
    }
    let env = Env::start_with_args(
        Options::default(),
        &[
            "--continue-on-not-ready",
            &format!("--pod-readiness-gate=pod-annotation:{ANNOTATION}"),
            "--pod-readiness-gate=pod-condition:NetworkAttached",
        ],
    )
    .await;
    let pod = env.create_pod("team-g", "web-0", "web").await;
    let volume = env.volume(
        &pod,
        "tls",
        &[
            (keys::ISSUER_NAME, "ca"),
            (keys::DNS_NAMES, "web-0.team-g.svc"),
        ],
    );
    env.publish_ok(&volume).await;

    // Mounted at once, read-only and empty, with no request made: the
    // node looked at the pod first and logged why it waits.
    let options = findmnt_options(&volume.target());
    for flag in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(
            options.split(',').any(|o| o == flag),
            "{flag} missing: {options}"
        );
    }
    await_log(&env, "volume mounted before its certificate", 1).await;
    assert!(!volume.file("tls.crt").exists());
    assert_eq!(env.count_requests("team-g").await, 0);
    let status = Command::new(env!("CARGO_BIN_EXE_cert-csi"))
        .args(["status", "-o", "json", "--data-root"])
        .arg(&env.data_root)
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(rows[0]["phase"], "deferred", "{rows}");
    let waiting = rows[0]["lastError"].as_str().unwrap_or_default().to_owned();
    assert!(
        waiting.contains(ANNOTATION) && waiting.contains("NetworkAttached"),
        "{waiting}"
    );

    // One gate passes: still no request, and the reason narrows.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "team-g");
    pods.patch(
        "web-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {ANNOTATION: "yes"}}})),
    )
    .await
    .unwrap();
    await_log(&env, "readiness gates not passed yet", 1).await;
    assert!(
        !env.log()
            .lines()
            .any(|l| l.contains("readiness gates not passed yet") && l.contains(ANNOTATION)),
        "the annotation gate passes now"
    );
    assert_eq!(env.count_requests("team-g").await, 0);

    // Both pass: the certificate lands in the mounted volume.
    pods.patch_status(
        "web-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [
            {"type": "NetworkAttached", "status": "True"}
        ]}})),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !volume.file("tls.crt").exists() {
        assert!(
            Instant::now() < deadline,
            "no certificate 30 s after the gates passed:\n{}",
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ca = volume.file("ca.crt");
    let leaf = volume.file("tls.crt");
    test_kit::openssl_ok(&[
        "verify",
        "-CAfile",
        ca.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    let text = test_kit::cert_text(&leaf);
    assert!(text.contains("DNS:web-0.team-g.svc"), "{text}");
    assert_eq!(findmnt_options(&volume.target()), options, "the same mount");
    let state = env.state_json(&volume).unwrap();
    assert!(state.get("deferred").is_none(), "{state}");
    assert!(state["not_after"].is_string(), "{state}");
    env.only_request(&volume).await;

    env.unpublish(&volume.volume_id, &volume.target_path)
        .await
        .unwrap();
    env.assert_no_trace(&volume).await;
    env.finish().await;
}

#[test]
fn gates_without_continue_on_not_ready_are_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_cert-csi"))
        .args(["node", "--node-id", "n", "--pod-readiness-gate=pod-ip:any"])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--continue-on-not-ready"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_cert-csi"))
        .args(["node", "--node-id", "n", "--pod-readiness-gate=pod-ip:ipv5"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("pod-ip takes any, ipv4 or ipv6"),
        "{stderr}"
    );
}
