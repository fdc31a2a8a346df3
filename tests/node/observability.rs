//! What users and operators see: the node plugin's and the controller's
//! `/metrics`, `/readyz` beside the Probe RPC, the Events a denied request
//! leaves on its pod, and JSON logs.
//!
//! The node plugin runs as the real binary over its real socket (see
//! the test kit); the controller runs as the real binary too, so its JSON
//! log is what a cluster would collect.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cert_csi::api::{Certificate, Issuer};
use cert_csi::csi::proto::ProbeRequest;
use cert_csi::csi::proto::identity_client::IdentityClient;
use cert_csi::volume::keys;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use test_kit::{Env, Options, Policy, http_get, sample};

fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Every line of `path` is one JSON object with a level and a message.
fn assert_json_lines(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", path.display()));
        assert!(
            value["level"].is_string() && value.get("message").is_some(),
            "{}: a log line without level or message: {line}",
            path.display()
        );
        lines += 1;
    }
    assert!(lines > 5, "{}: only {lines} log lines", path.display());
}

/// The denied volume's pod Events with `reason`, once the background
/// recorder has written `count` occurrences (or the deadline passed).
async fn pod_events(env: &Env, namespace: &str, pod: &str, reason: &str, count: i32) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(env.client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events: Vec<Event> = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod)
            })
            .collect();
        let seen: i32 = events
            .iter()
            .map(|e| e.series.as_ref().map_or(1, |s| s.count))
            .sum();
        if seen >= count || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_metrics_readiness_events_and_json_logs() {
    if !test_kit::require_root("node_metrics_readiness_events_and_json_logs") {
        return;
    }
    let env = Env::start_with_args(
        Options {
            publish_timeout: "5s",
            policy: Policy::Approve,
            controller: true,
        },
        &["--log-format", "json"],
    )
    .await;
    let metrics = env.metrics_url();

    // /readyz and Probe read one flag: both say ready now.
    let (code, body) = http_get(&metrics, "/readyz").await;
    let channel = cert_csi::csi::client::connect(&env.socket).await.unwrap();
    let probe = IdentityClient::new(channel)
        .probe(ProbeRequest {})
        .await
        .unwrap()
        .into_inner()
        .ready;
    assert_eq!((code, probe), (200, Some(true)), "/readyz said {body:?}");
    assert_eq!(http_get(&metrics, "/healthz").await.0, 200);

    let attrs = [(keys::ISSUER_NAME, "ca"), (keys::KEY_ALGORITHM, "ECDSA")];
    let pod = env.create_pod("observed", "web-0", "default").await;
    let mut published = Vec::new();
    for name in ["a", "b", "c"] {
        let volume = env.volume(&pod, name, &attrs);
        env.publish_ok(&volume).await;
        published.push(volume);
    }
    let gone = published.remove(0);
    env.unpublish(&gone.volume_id, &gone.target().to_string_lossy())
        .await
        .unwrap();

    // The same denied volume, published three times as the kubelet
    // retries: three denials, one Event series.
    const DENIALS: i32 = 3;
    env.cluster.set_policy(Policy::Deny {
        reason: "policy.example.com".into(),
        message: "web-0 may not use issuer ca".into(),
    });
    let denied_pod = env.create_pod("observed", "denied-0", "default").await;
    let denied = env.volume(&denied_pod, "tls", &attrs);
    for _ in 0..DENIALS {
        let status = env.publish(&denied).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    }

    let (code, scrape) = http_get(&metrics, "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(
        sample(&scrape, "certmanager_csi_managed_volume_count", &[]),
        2.0
    );
    assert_eq!(
        sample(&scrape, "certmanager_csi_issue_requests_total", &[]),
        f64::from(3 + DENIALS)
    );
    assert_eq!(
        sample(
            &scrape,
            "certmanager_csi_issue_errors_total",
            &[("reason", "denied")]
        ),
        f64::from(DENIALS)
    );
    assert_eq!(
        sample(
            &scrape,
            "certmanager_csi_issue_errors_total",
            &[("reason", "failed")]
        ),
        0.0
    );
    assert_eq!(sample(&scrape, "cert_csi_issuance_queue_depth", &[]), 0.0);
    assert_eq!(
        sample(
            &scrape,
            "cert_csi_issuance_duration_seconds_count",
            &[("kind", "first")]
        ),
        3.0
    );
    // Each kept volume's expiry is its mounted certificate's notAfter; the
    // unpublished volume has no series left.
    for volume in &published {
        let leaf = test_kit::served_leaf(volume, "tls.crt");
        let hash = cert_csi::store::id_hash(&volume.volume_id);
        let value = sample(
            &scrape,
            "certmanager_csi_certificate_request_expiration_timestamp_seconds",
            &[("volume_id_hash", &hash), ("pod_name", "web-0")],
        );
        assert!(
            (value - unix_seconds(leaf.not_after)).abs() < 0.001,
            "expiry {value} but the mounted certificate's notAfter is {}",
            unix_seconds(leaf.not_after)
        );
    }
    let gone_hash = cert_csi::store::id_hash(&gone.volume_id);
    assert!(
        !scrape.contains(&gone_hash),
        "the unpublished volume still has series:\n{scrape}"
    );
    // Only the two kept volumes' requests remain, each Ready=True.
    assert_eq!(
        sample(
            &scrape,
            "certmanager_csi_managed_certificate_request_count",
            &[]
        ),
        2.0
    );

    // Exactly one Event on the denied pod, counting every denial.
    let events = pod_events(&env, "observed", "denied-0", "IssuanceDenied", DENIALS).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.series.as_ref().map(|s| s.count),
        Some(DENIALS),
        "{event:#?}"
    );
    let note = event.note.as_deref().unwrap_or_default();
    assert!(
        note.contains("policy.example.com") && note.contains("web-0 may not use issuer ca"),
        "the note must carry the approver's reason: {note}"
    );
    assert_eq!(event.reporting_controller.as_deref(), Some("cert-csi-node"));
    let regarding = event.regarding.as_ref().unwrap();
    assert_eq!(regarding.kind.as_deref(), Some("Pod"));
    assert_eq!(regarding.uid.as_deref(), Some(denied_pod.uid.as_str()));
    // The kept pod got no Event.
    assert!(
        pod_events(&env, "observed", "web-0", "IssuanceDenied", 0)
            .await
            .is_empty()
    );

    assert_json_lines(&env.log_path);
    env.finish().await;
}

/// `cert-csi controller` as a subprocess, killed by pid on drop.
struct ControllerProcess {
    child: Child,
    log: PathBuf,
}

impl ControllerProcess {
    fn start(kubeconfig: &Path, extra: &[&str]) -> ControllerProcess {
        let log = test_kit::test_log_path("controller");
        let file = std::fs::File::options().append(true).open(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cert-csi"))
            .args(["--log-format", "json", "--log-level", "debug", "controller"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--metrics-address", "127.0.0.1:0"])
            .args(extra)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn cert-csi controller");
        ControllerProcess { child, log }
    }

    /// The announced metrics address, once the log names it.
    async fn metrics_url(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let address = text.lines().find_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                v["metrics_address"].as_str().map(str::to_owned)
            });
            if let Some(address) = address {
                return format!("http://{address}");
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the controller exited ({status}):\n{text}");
            }
            assert!(Instant::now() < deadline, "no metrics address:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then wait; SIGKILL if it lingers.
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_metrics_events_and_json_logs() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (server, client, kubeconfig) =
        test_kit::real::ApiServer::start_in(test_kit::Backend::from_env(), dir.path(), 10_000)
            .await;
    for ns in ["cert-manager", "team"] {
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
    }
    let mut controller = ControllerProcess::start(&kubeconfig, &[]);
    let metrics = controller.metrics_url().await;

    let issuer: Issuer = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Issuer",
        "metadata": {"name": "selfsigned", "namespace": "team"},
        "spec": {"selfSigned": {}},
    }))
    .unwrap();
    Api::<Issuer>::namespaced(client.clone(), "team")
        .create(&PostParams::default(), &issuer)
        .await
        .unwrap();
    let certificate: Certificate = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": "web", "namespace": "team"},
        "spec": {
            "secretName": "web-tls",
            "commonName": "web.team.svc",
            "dnsNames": ["web.team.svc"],
            "duration": "2h",
            "issuerRef": {"name": "selfsigned", "kind": "Issuer"},
        },
    }))
    .unwrap();
    let certificates: Api<Certificate> = Api::namespaced(client.clone(), "team");
    certificates
        .create(&PostParams::default(), &certificate)
        .await
        .unwrap();

    // Ready in the API, then the same in the scrape.
    let deadline = Instant::now() + Duration::from_secs(30);
    let not_after = loop {
        let current = certificates.get("web").await.unwrap();
        if current.is_ready()
            && let Some(t) = current.status.as_ref().and_then(|s| s.not_after.clone())
        {
            break t.0;
        }
        assert!(
            Instant::now() < deadline,
            "the Certificate never became Ready: {:?}",
            current.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let labels = [
        ("name", "web"),
        ("namespace", "team"),
        ("issuer_name", "selfsigned"),
        ("issuer_kind", "Issuer"),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let (code, scrape) = http_get(&metrics, "/metrics").await;
        assert_eq!(code, 200);
        if scrape.contains("certmanager_certificate_expiration_timestamp_seconds{")
            || Instant::now() > deadline
        {
            break scrape;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let expiry = sample(
        &scrape,
        "certmanager_certificate_expiration_timestamp_seconds",
        &labels,
    );
    assert!(
        (expiry - not_after.as_millisecond() as f64 / 1000.0).abs() < 0.001,
        "expiry {expiry}, status.notAfter {not_after}"
    );
    // cert-manager's other per-Certificate times, from the same status.
    let current = certificates.get("web").await.unwrap();
    let status = current.status.as_ref().unwrap();
    for (name, at) in [
        (
            "certmanager_certificate_not_after_timestamp_seconds",
            status.not_after.as_ref(),
        ),
        (
            "certmanager_certificate_not_before_timestamp_seconds",
            status.not_before.as_ref(),
        ),
        (
            "certmanager_certificate_renewal_timestamp_seconds",
            status.renewal_time.as_ref(),
        ),
    ] {
        let want = at.unwrap_or_else(|| panic!("status lacks {name}'s time")).0;
        let got = sample(&scrape, name, &labels);
        assert!(
            (got - want.as_millisecond() as f64 / 1000.0).abs() < 0.001,
            "{name} {got}, status {want}"
        );
    }
    // The Issuer's readiness, as cert-manager's collector reports it.
    let issuer_ready = |condition| {
        sample(
            &scrape,
            "certmanager_issuer_ready_status",
            &[
                ("name", "selfsigned"),
                ("namespace", "team"),
                ("condition", condition),
            ],
        )
    };
    assert_eq!((issuer_ready("True"), issuer_ready("False")), (1.0, 0.0));
    // Every loop reconciled, by cert-manager's controller label.
    for controller in [
        "certificates",
        "issuers",
        "certificaterequests-approver",
        "certificaterequests-issuer",
    ] {
        assert!(
            sample(
                &scrape,
                "certmanager_controller_sync_call_count",
                &[("controller", controller)]
            ) >= 1.0,
            "{controller} never synced"
        );
    }
    let mut ready = labels.to_vec();
    ready.push(("condition", "True"));
    assert_eq!(
        sample(&scrape, "certmanager_certificate_ready_status", &ready),
        1.0
    );
    ready.pop();
    ready.push(("condition", "False"));
    assert_eq!(
        sample(&scrape, "certmanager_certificate_ready_status", &ready),
        0.0
    );
    assert!(
        sample(
            &scrape,
            "cert_csi_approver_decisions_total",
            &[("decision", "approved")]
        ) >= 1.0
    );
    assert!(
        sample(
            &scrape,
            "cert_csi_signer_requests_total",
            &[("issuer_kind", "Issuer"), ("result", "issued")]
        ) >= 1.0
    );
    // Readiness follows the loops' first lists; it is not ordered against the
    // Certificate's status, so allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = http_get(&metrics, "/readyz").await;
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {code}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The controller's decisions as Events: the Certificate was issued,
    // its request approved and signed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = Api::<Event>::namespaced(client.clone(), "team")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        let has = |kind: &str, reason: &str| {
            events.iter().any(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some(kind)
                    && e.reporting_controller.as_deref() == Some("cert-csi-controller")
            })
        };
        let all = has("Certificate", "Issued")
            && has("CertificateRequest", "Approved")
            && has("CertificateRequest", "Issued");
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing controller Events: {:#?}",
            events
                .iter()
                .map(|e| (
                    e.regarding.as_ref().and_then(|r| r.kind.clone()),
                    e.reason.clone()
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Deleting the Certificate removes its series.
    certificates
        .delete("web", &Default::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, scrape) = http_get(&metrics, "/metrics").await;
        if !scrape.contains("name=\"web\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted Certificate's series remain:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    controller.stop();
    assert_json_lines(&controller.log);
    test_kit::assert_no_secrets_in_log(&controller.log);
    server.stop().await;
}

/// What the test reads of a process from `/proc` by itself (not through
/// the crate's collector): CPU seconds, start time since the epoch, and the
/// soft open-files limit.
struct ProcView {
    cpu_seconds: f64,
    start_time: f64,
    max_fds: Option<f64>,
}

fn proc_view(pid: u32) -> ProcView {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .expect("CLK_TCK") as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15, starttime 22.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let field = |n: usize| fields[n - 3].parse::<f64>().unwrap();
    let boot: f64 = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap();
    ProcView {
        cpu_seconds: (field(14) + field(15)) / ticks,
        start_time: boot + field(22) / ticks,
        max_fds: soft.parse().ok(),
    }
}

/// The standard process metrics in a scrape of `pid`'s endpoint, judged
/// against /proc read before and after the scrape.
async fn check_process_metrics(what: &str, pid: u32, metrics: &str) {
    let before = proc_view(pid);
    let (code, scrape) = http_get(metrics, "/metrics").await;
    assert_eq!(code, 200, "{what}");
    let after = proc_view(pid);
    for (name, kind) in [
        ("process_cpu_seconds", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
    ] {
        assert!(
            scrape.contains(&format!("# TYPE {name} {kind}\n")),
            "{what}: no {kind} {name}:\n{scrape}"
        );
    }
    // CPU time only grows: the scraped value lies between the two reads.
    let cpu = sample(&scrape, "process_cpu_seconds_total", &[]);
    assert!(
        before.cpu_seconds <= cpu && cpu <= after.cpu_seconds && cpu > 0.0,
        "{what}: cpu {cpu}, /proc said {} then {}",
        before.cpu_seconds,
        after.cpu_seconds
    );
    // The start time is the process's own, to the clock tick.
    let start = sample(&scrape, "process_start_time_seconds", &[]);
    assert!(
        (start - before.start_time).abs() < 0.02,
        "{what}: start {start}, /proc says {}",
        before.start_time
    );
    let resident = sample(&scrape, "process_resident_memory_bytes", &[]);
    let virtual_ = sample(&scrape, "process_virtual_memory_bytes", &[]);
    assert!(
        resident > 1_000_000.0 && virtual_ > resident,
        "{what}: resident {resident}, virtual {virtual_}"
    );
    let open = sample(&scrape, "process_open_fds", &[]);
    let max = sample(&scrape, "process_max_fds", &[]);
    assert_eq!(Some(max), before.max_fds, "{what}: the soft RLIMIT_NOFILE");
    // stdin, stdout, stderr, the sockets, the epoll instance...
    assert!(open > 3.0 && open <= max, "{what}: {open} open of {max}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_metrics_on_both_endpoints() {
    if !test_kit::require_root("process_metrics_on_both_endpoints") {
        return;
    }
    let env = Env::start_with(Options {
        controller: false,
        ..Options::default()
    })
    .await;
    let node_pid = env.plugin_pid().expect("the node plugin runs");
    check_process_metrics("node plugin", node_pid, &env.metrics_url()).await;

    let mut controller = ControllerProcess::start(&env.kubeconfig, &[]);
    let metrics = controller.metrics_url().await;
    check_process_metrics("controller", controller.child.id(), &metrics).await;
    controller.stop();
    env.finish().await;
}
