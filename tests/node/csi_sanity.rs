//! csi-sanity (kubernetes-csi/csi-test, the version pinned in
//! hack/tools/csi-sanity and built by hack/build-tools) against the real
//! `cert-csi node` binary on its socket, as root, under both driver names.
//!
//! Every spec that applies to a node-only driver of CSI inline ephemeral
//! volumes runs and must pass. Specs are left out only when they need a
//! capability cert-csi does not advertise: [`FILTERED`] lists those that
//! csi-sanity would run anyway (they call the Controller service without
//! asking first) and that are kept out with `-ginkgo.skip`;
//! [`SELF_SKIPPED`] lists those csi-sanity skips by itself after reading
//! GetPluginCapabilities and NodeGetCapabilities, with the skip message it
//! must give. Anything else skipped, or any spec passing that is not in
//! [`EXPECTED_PASSED`], fails the test.
//!
//! No spec publishes a volume successfully, and none can: csi-sanity's
//! NodePublishVolume calls that are meant to succeed all publish a volume
//! it first made with CreateVolume. Their `volume_context` is that
//! CreateVolume answer's (`-csi.testvolumeparameters` fills only
//! CreateVolumeRequest.parameters), so the kubelet's pod keys
//! (`csi.storage.k8s.io/pod.name`, `…/ephemeral`, …) never reach the
//! plugin, and they never set `readonly`, which cert-csi requires (as
//! csi-lib does) for its read-only certificate volumes. csi-sanity has no
//! mode for ephemeral inline volumes. Successful publishes are covered by
//! the simulated kubelet in tests/node_*.rs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use test_kit::{Env, Options, mounts_under};

/// The csi-sanity binary, relative to the repository root.
const SANITY: &str = ".tools/bin/csi-sanity";

/// The version the spec lists below were written against. Another version
/// has other specs: re-read its pkg/sanity/*.go and update the lists.
const SANITY_VERSION: &str = "v5.6.0";

/// How long the whole csi-sanity run may take (it takes about a second).
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// Specs kept out with `-ginkgo.skip`, by a plain substring of their full
/// name, and why. csi-sanity would run these without first checking that
/// the driver offers what they need, so they fail against any node-only
/// driver.
const FILTERED: &[(&str, &str)] = &[
    (
        "[Controller Server]",
        "they call the Controller service (ControllerGetCapabilities, CreateVolume, \
         ListSnapshots, …) unconditionally; cert-csi is node-only: GetPluginCapabilities \
         advertises no CONTROLLER_SERVICE and the plugin serves no Controller service",
    ),
    (
        "Node Service NodeUnpublishVolume should remove target path",
        "it publishes a volume made with CreateVolume (no capability check first); \
         ephemeral inline volumes are never created through CreateVolume, and the node-only \
         plugin has no Controller service",
    ),
];

/// Specs csi-sanity skips by itself once it has read the plugin's
/// capabilities: a prefix of their full name, the skip message csi-sanity
/// must give, and why cert-csi does not advertise that capability.
const SELF_SKIPPED: &[(&str, &str, &str)] = &[
    (
        "Node Service NodePublishVolume with single node multi writer capability ",
        "Service does not have single node multi writer capability",
        "no SINGLE_NODE_MULTI_WRITER: an inline volume belongs to one pod and is published once",
    ),
    (
        "Node Service NodeStageVolume ",
        "NodeStageVolume not supported",
        "no STAGE_UNSTAGE_VOLUME: ephemeral inline volumes are never staged",
    ),
    (
        "Node Service NodeUnstageVolume ",
        "NodeUnstageVolume not supported",
        "no STAGE_UNSTAGE_VOLUME: ephemeral inline volumes are never staged",
    ),
    (
        "Node Service NodeGetVolumeStats ",
        "NodeGetVolume not supported",
        "no GET_VOLUME_STATS: a few certificate files on a tmpfs have no capacity to report",
    ),
    (
        "Node Service NodeExpandVolume ",
        "NodeExpandVolume not supported",
        "no EXPAND_VOLUME: certificate volumes have no size to expand",
    ),
    (
        "Node Service NodeGetVolumeHealth ",
        "NodeGetVolumeHealth not supported",
        "no GET_VOLUME_HEALTH: certificate health is reported by Events and metrics",
    ),
    (
        "Node Service NodeGetStorageHealth ",
        "NodeGetStorageHealth not supported",
        "no GET_STORAGE_HEALTH: there is no backing storage",
    ),
    (
        "Node Service should work",
        "Controller Service not provided: CreateVolume not supported",
        "needs CreateVolume: no CONTROLLER_SERVICE",
    ),
    (
        "Node Service should be idempotent",
        "Controller Service not provided: CreateVolume not supported",
        "needs CreateVolume: no CONTROLLER_SERVICE",
    ),
    (
        "GroupController Service ",
        "GroupControllerService not supported",
        "no GROUP_CONTROLLER_SERVICE: there are no volume group snapshots",
    ),
];

/// Every spec that applies to a node-only driver of ephemeral inline
/// volumes; all must run and pass.
const EXPECTED_PASSED: &[&str] = &[
    "Identity Service GetPluginCapabilities should return appropriate capabilities",
    "Identity Service Probe should return appropriate information",
    "Identity Service GetPluginInfo should return appropriate information",
    "Node Service NodeGetCapabilities should return appropriate capabilities",
    "Node Service NodeGetInfo should return appropriate values",
    "Node Service NodePublishVolume should fail when no volume id is provided",
    "Node Service NodePublishVolume should fail when no target path is provided",
    "Node Service NodePublishVolume should fail when no volume capability is provided",
    "Node Service NodeUnpublishVolume should fail when no volume id is provided",
    "Node Service NodeUnpublishVolume should fail when no target path is provided",
];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The csi-sanity binary; panics with what to do when it is missing or of
/// another version than the spec lists were written for.
fn sanity_binary() -> PathBuf {
    let path = repo_root().join(SANITY);
    assert!(
        path.is_file(),
        "{} is missing: build it with hack/build-tools csi-sanity (needs Go)",
        path.display()
    );
    let out = std::process::Command::new(&path)
        .arg("-version")
        .output()
        .unwrap_or_else(|e| panic!("running {} -version: {e}", path.display()));
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && version.trim() == format!("Version = {SANITY_VERSION}"),
        "{} says {:?}; tests/csi_sanity.rs lists the specs of {SANITY_VERSION}. Rebuild with \
         hack/build-tools csi-sanity, or update the lists for the new version",
        path.display(),
        version.trim()
    );
    path
}

/// Escapes `text` for Go's regexp (ginkgo's -skip).
fn go_regex_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Ginkgo's closing summary: `Ran R of T Specs in …` and
/// `SUCCESS! -- P Passed | F Failed | N Pending | S Skipped` (FAIL! on
/// failure).
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    ran: usize,
    total: usize,
    passed: usize,
    failed: usize,
    pending: usize,
    skipped: usize,
}

fn parse_summary(output: &str) -> Option<Summary> {
    let ran_line = output.lines().rev().find(|l| l.starts_with("Ran "))?;
    let mut words = ran_line.split_whitespace();
    let (_, ran, _, total) = (words.next()?, words.next()?, words.next()?, words.next()?);
    let counts_line = output.lines().rev().find(|l| l.contains(" Passed | "))?;
    let counts = counts_line.split_once("-- ")?.1;
    let mut summary = Summary {
        ran: ran.parse().ok()?,
        total: total.parse().ok()?,
        passed: 0,
        failed: 0,
        pending: 0,
        skipped: 0,
    };
    for part in counts.split('|') {
        let (n, what) = part.trim().split_once(' ')?;
        let n: usize = n.parse().ok()?;
        match what.trim() {
            "Passed" => summary.passed = n,
            "Failed" => summary.failed = n,
            "Pending" => summary.pending = n,
            "Skipped" => summary.skipped = n,
            // "Flaked" appears only with retries, which are off.
            _ => return None,
        }
    }
    Some(summary)
}

/// One spec of ginkgo's JSON report.
#[derive(Debug)]
struct Spec {
    name: String,
    state: String,
    /// The failure or skip message.
    message: String,
    location: String,
}

fn read_report(path: &Path) -> Vec<Spec> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading csi-sanity's JSON report {}: {e}", path.display()));
    let suites: serde_json::Value = serde_json::from_str(&text).expect("ginkgo's JSON report");
    let mut specs = Vec::new();
    for suite in suites.as_array().expect("an array of suite reports") {
        for spec in suite["SpecReports"].as_array().into_iter().flatten() {
            if spec["LeafNodeType"] != "It" {
                // Suite-level nodes (csi-sanity has none); a failure there
                // fails the exit status check.
                continue;
            }
            let mut parts: Vec<&str> = spec["ContainerHierarchyTexts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str())
                .collect();
            parts.push(spec["LeafNodeText"].as_str().unwrap_or_default());
            let failure = &spec["Failure"];
            specs.push(Spec {
                name: parts.join(" "),
                state: spec["State"].as_str().unwrap_or_default().to_string(),
                message: failure["Message"].as_str().unwrap_or_default().to_string(),
                location: format!(
                    "{}:{}",
                    failure["Location"]["FileName"].as_str().unwrap_or_default(),
                    failure["Location"]["LineNumber"]
                ),
            });
        }
    }
    specs
}

/// Why `spec` may be skipped, or None when it must not be.
fn allowed_skip(spec: &Spec) -> Option<&'static str> {
    if let Some((_, reason)) = FILTERED.iter().find(|(s, _)| spec.name.contains(s)) {
        return Some(reason);
    }
    SELF_SKIPPED
        .iter()
        .find(|(prefix, message, _)| spec.name.starts_with(prefix) && spec.message == *message)
        .map(|(_, _, reason)| *reason)
}

/// Runs csi-sanity against `env`'s plugin and checks the outcome spec by
/// spec. `driver` is the name GetPluginInfo must report.
async fn run_sanity(sanity: &Path, env: Env, driver: &str) {
    // NodePublishVolume's target paths go where the kubelet puts them:
    // under a real pod's volume directory. csi-sanity creates and removes
    // `<mountdir>` around every spec and publishes at `<mountdir>/target`.
    let pod = env.create_pod("csi-sanity", "sanity-0", "sanity").await;
    let volumes = env
        .kubelet_root
        .join("pods")
        .join(&pod.uid)
        .join("volumes")
        .join("kubernetes.io~csi");
    std::fs::create_dir_all(&volumes).unwrap();
    let mount_dir = volumes.join("sanity");
    // Created and removed around every spec by csi-sanity, never passed to
    // the plugin (no STAGE_UNSTAGE_VOLUME).
    let staging_dir = env.base.join("csi-sanity-staging");
    let report = env.base.join("csi-sanity-report.json");
    let skip = FILTERED
        .iter()
        .map(|(s, _)| go_regex_literal(s))
        .collect::<Vec<_>>()
        .join("|");

    let args = [
        format!("-csi.endpoint=unix://{}", env.socket.display()),
        format!("-csi.mountdir={}", mount_dir.display()),
        format!("-csi.stagingdir={}", staging_dir.display()),
        "-csi.testvolumeaccesstype=mount".to_string(),
        format!("-ginkgo.skip={skip}"),
        format!("-ginkgo.json-report={}", report.display()),
        format!("-ginkgo.timeout={}s", RUN_LIMIT.as_secs()),
        "-ginkgo.no-color".to_string(),
        "-ginkgo.v".to_string(),
    ];
    eprintln!("running {} {}", sanity.display(), args.join(" "));
    let child = tokio::process::Command::new(sanity)
        .args(&args)
        .current_dir(&env.base)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn csi-sanity");
    let out = tokio::time::timeout(
        RUN_LIMIT + Duration::from_secs(30),
        child.wait_with_output(),
    )
    .await
    .unwrap_or_else(|_| panic!("csi-sanity did not finish within {RUN_LIMIT:?}"))
    .expect("csi-sanity's output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = format!("csi-sanity stdout:\n{stdout}\ncsi-sanity stderr:\n{stderr}");

    assert!(
        report.is_file(),
        "csi-sanity ({}) wrote no JSON report\n{shown}",
        out.status
    );
    let specs = read_report(&report);
    let failed: Vec<String> = specs
        .iter()
        .filter(|s| !matches!(s.state.as_str(), "passed" | "skipped" | "pending"))
        .map(|s| format!("{} [{}] at {}: {}", s.name, s.state, s.location, s.message))
        .collect();
    assert!(
        out.status.success() && failed.is_empty(),
        "csi-sanity exited with {}; failed specs:\n{}\n{shown}",
        out.status,
        failed.join("\n")
    );

    let summary = parse_summary(&stdout)
        .unwrap_or_else(|| panic!("no ginkgo summary in csi-sanity's output\n{shown}"));
    assert_eq!(
        (summary.passed, summary.failed, summary.ran),
        (EXPECTED_PASSED.len(), 0, EXPECTED_PASSED.len()),
        "ginkgo's summary {summary:?}\n{shown}"
    );
    assert_eq!(
        summary.total,
        summary.passed + summary.pending + summary.skipped,
        "ginkgo's summary {summary:?} does not add up\n{shown}"
    );
    assert_eq!(summary.total, specs.len(), "specs in the JSON report");

    let passed: BTreeSet<&str> = specs
        .iter()
        .filter(|s| s.state == "passed")
        .map(|s| s.name.as_str())
        .collect();
    let expected: BTreeSet<&str> = EXPECTED_PASSED.iter().copied().collect();
    assert_eq!(passed, expected, "the specs that passed\n{shown}");

    let mut unexplained = Vec::new();
    let mut by_reason: Vec<(&str, usize)> = Vec::new();
    for spec in specs.iter().filter(|s| s.state != "passed") {
        match allowed_skip(spec) {
            Some(reason) => match by_reason.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, n)) => *n += 1,
                None => by_reason.push((reason, 1)),
            },
            None => unexplained.push(format!("{} [{}]: {}", spec.name, spec.state, spec.message)),
        }
    }
    eprintln!("csi-sanity: {summary:?}; not run:");
    for (reason, n) in &by_reason {
        eprintln!("  {n:>3} specs: {reason}");
    }
    assert!(
        unexplained.is_empty(),
        "specs skipped for no listed reason (a capability cert-csi now advertises, or a new \
         csi-sanity spec):\n{}\n{shown}",
        unexplained.join("\n")
    );
    // Every listed self-skip still happens: a stale entry would hide a
    // spec that stopped being skipped for that reason.
    for (prefix, message, _) in SELF_SKIPPED {
        assert!(
            specs.iter().any(|s| s.name.starts_with(prefix)
                && s.state == "skipped"
                && s.message == *message),
            "no spec under {prefix:?} was skipped with {message:?}\n{shown}"
        );
    }

    // The name csi-sanity checked (GetPluginInfo) is this driver's.
    let info = cert_csi::csi::client::identity(&env.socket)
        .await
        .expect("connect to the plugin")
        .get_plugin_info(cert_csi::csi::proto::GetPluginInfoRequest {})
        .await
        .expect("GetPluginInfo")
        .into_inner();
    assert_eq!(info.name, driver);

    // The invalid requests left nothing behind: no CertificateRequest, no
    // volume state, no mount, and csi-sanity removed its directories.
    assert_eq!(env.count_requests(&pod.namespace).await, 0);
    assert!(env.volume_dirs().is_empty(), "{:?}", env.volume_dirs());
    assert!(mounts_under(&env.kubelet_root).is_empty());
    assert!(!mount_dir.exists() && !staging_dir.exists());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_sanity_passes_for_the_node_plugin() {
    if !test_kit::require_root("csi_sanity_passes_for_the_node_plugin") {
        return;
    }
    let sanity = sanity_binary();
    let env = Env::start().await;
    run_sanity(&sanity, env, "csi.cert-manager.io").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_sanity_passes_for_the_spiffe_driver() {
    if !test_kit::require_root("csi_sanity_passes_for_the_spiffe_driver") {
        return;
    }
    let sanity = sanity_binary();
    let env = Env::start_with_args(
        Options::default(),
        &[
            "--driver-name",
            cert_csi::spiffe_id::DRIVER_NAME,
            "--spiffe-trust-domain",
            "example.org",
            "--spiffe-issuer-name",
            "spiffe-ca",
            "--spiffe-request-mode",
            "node-account",
        ],
    )
    .await;
    run_sanity(&sanity, env, cert_csi::spiffe_id::DRIVER_NAME).await;
}

#[test]
fn the_summary_parses() {
    let output = "…\nRan 10 of 103 Specs in 0.412 seconds\n\
                  SUCCESS! -- 10 Passed | 0 Failed | 1 Pending | 92 Skipped\nPASS\n";
    assert_eq!(
        parse_summary(output),
        Some(Summary {
            ran: 10,
            total: 103,
            passed: 10,
            failed: 0,
            pending: 1,
            skipped: 92,
        })
    );
    let failed =
        "Ran 3 of 103 Specs in 1 seconds\nFAIL! -- 2 Passed | 1 Failed | 1 Pending | 99 Skipped\n";
    assert_eq!(parse_summary(failed).map(|s| s.failed), Some(1));
    assert_eq!(parse_summary("no summary"), None);
    assert_eq!(
        go_regex_literal("[Controller Server]|a.b"),
        r"\[Controller Server\]\|a\.b"
    );
}
