//! Switching a node from cert-manager's csi-driver to cert-csi in place.
//!
//! The real csi-driver (v0.15.0, `.tools/bin/csi-driver`) publishes pods'
//! volumes through the simulated kubelet on the same kubelet root and API
//! server; it is then stopped with SIGTERM, as deleting its DaemonSet does,
//! and `cert-csi node --adopt-csi-driver-data-root` starts on the same
//! paths. openssl reads the pods' files through their target paths, and
//! the mount table says what is mounted where.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cert_csi::api::CertificateRequest;
use cert_csi::volume::keys;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use test_kit::peers::UpstreamDriver;
use test_kit::{
    Capability, Env, Options, PodReader, Policy, VolumeRequest, mounts_at, openssl_ok, volume_state,
};

/// One volume under test and what its pod expects to find.
struct Case {
    volume: VolumeRequest,
    cert: &'static str,
    key: &'static str,
    gid: Option<u32>,
    reuse_key: bool,
    /// The keystore's name and password.
    pkcs12: Option<(&'static str, &'static str)>,
}

fn options() -> Options {
    Options {
        publish_timeout: "30s",
        policy: Policy::Approve,
        controller: true,
    }
}

/// The generation directory `..data` points at now. Files read from it
/// belong together even if a renewal swaps `..data` meanwhile: the
/// previous generation is kept until the next one.
fn generation(volume: &VolumeRequest) -> PathBuf {
    let link = std::fs::read_link(volume.target().join("..data"))
        .unwrap_or_else(|e| panic!("{}: ..data: {e}", volume.volume_name));
    volume.target().join(link)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// `openssl x509 -serial` of the certificate file.
fn serial(path: &Path) -> String {
    openssl_ok(&["x509", "-noout", "-serial", "-in", path_str(path)])
        .trim()
        .trim_start_matches("serial=")
        .to_owned()
}

/// The public key of a certificate and of a private key, as openssl
/// prints them.
fn cert_public_key(path: &Path) -> String {
    openssl_ok(&["x509", "-noout", "-pubkey", "-in", path_str(path)])
}

fn key_public_key(path: &Path) -> String {
    openssl_ok(&["pkey", "-pubout", "-in", path_str(path)])
}

/// Waits until `done` holds, failing with `what` and the plugin's log
/// after `limit`.
async fn wait_for(env: &Env, limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}; log tail:\n{}",
            env.log()
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The mount on top at the volume's target is csi-driver's bind of the
/// volume's data directory from its tmpfs.
fn assert_csi_driver_bind(csi: &UpstreamDriver, volume: &VolumeRequest) {
    let tmpfs = mounts_at(&csi.tmpfs());
    let tmpfs = tmpfs.last().expect("csi-driver's tmpfs is mounted");
    assert_eq!(tmpfs.fs_type, "tmpfs");
    let at_target = mounts_at(&volume.target());
    let top = at_target
        .last()
        .unwrap_or_else(|| panic!("{}: nothing mounted at the target", volume.volume_name));
    assert_eq!(
        (top.device, top.root.clone()),
        (
            tmpfs.device,
            Path::new("/").join(&volume.volume_id).join("data")
        ),
        "{}: the target shows something else than csi-driver's data directory",
        volume.volume_name
    );
    assert!(
        top.has_mount_option("ro"),
        "{}: not read-only",
        volume.volume_name
    );
}

/// What a request asks the issuer for, in comparable form.
fn request_terms(cr: &CertificateRequest) -> (String, String, String, Duration, bool, Vec<String>) {
    let spec = &cr.spec;
    let mut usages = spec.usages.clone().unwrap_or_default();
    usages.sort();
    (
        spec.issuer_ref.name.clone(),
        spec.issuer_ref.kind.clone().unwrap_or_default(),
        spec.issuer_ref.group.clone().unwrap_or_default(),
        cert_csi::api::duration::parse_go(spec.duration.as_deref().unwrap_or_default())
            .expect("a Go duration"),
        spec.is_ca.unwrap_or(false),
        usages,
    )
}

/// The subject and SAN lines of a request's CSR, as openssl prints them.
fn csr_names(env: &Env, cr: &CertificateRequest) -> Vec<String> {
    let path = env.base.join(format!("{}.csr", cr.name_any()));
    std::fs::write(&path, cr.spec.request.as_bytes()).unwrap();
    let text = openssl_ok(&["req", "-noout", "-text", "-in", path_str(&path)]);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut names: Vec<String> = lines
        .iter()
        .filter(|l| l.starts_with("Subject:") || l.starts_with("Public Key Algorithm:"))
        .map(|l| l.to_string())
        .collect();
    if let Some(i) = lines
        .iter()
        .position(|l| l.starts_with("X509v3 Subject Alternative Name"))
    {
        names.push(lines[i + 1].to_string());
    }
    names
}

/// The requests owned by each pod, by pod name.
async fn requests_by_pod(env: &Env, namespace: &str) -> BTreeMap<String, Vec<CertificateRequest>> {
    let mut by_pod: BTreeMap<String, Vec<CertificateRequest>> = BTreeMap::new();
    for cr in env.requests(namespace).await {
        let owner = cr
            .metadata
            .owner_references
            .as_ref()
            .and_then(|o| o.first())
            .map(|o| o.name.clone())
            .unwrap_or_default();
        by_pod.entry(owner).or_default().push(cr);
    }
    by_pod
}

/// Events on `pod` with `reason`, polled until one is there or 15 s pass.
async fn pod_events(env: &Env, namespace: &str, pod: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(env.client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events: Vec<Event> = api
            .list(&ListParams::default())
            .await
            .expect("listing Events")
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod)
            })
            .collect();
        if !events.is_empty() || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Unpublishes through cert-csi and checks what csi-driver's unpublish
/// would have left: no mount at the target, no volume directory in
/// csi-driver's tmpfs, and no node state of cert-csi's.
async fn unpublish_and_check(env: &Env, csi: &UpstreamDriver, volume: &VolumeRequest) {
    env.unpublish(&volume.volume_id, &volume.target_path)
        .await
        .unwrap_or_else(|s| panic!("unpublish of {}: {}", volume.volume_name, s.message()));
    let left = mounts_at(&volume.target());
    assert!(
        left.is_empty(),
        "{}: still mounted at the target: {left:?}",
        volume.volume_name
    );
    let findmnt = std::process::Command::new("findmnt")
        .arg("--mountpoint")
        .arg(volume.target())
        .output()
        .expect("findmnt");
    assert!(
        !findmnt.status.success(),
        "{}: findmnt still finds the target: {}",
        volume.volume_name,
        String::from_utf8_lossy(&findmnt.stdout)
    );
    assert!(
        !csi.volume_dir(volume).exists(),
        "{}: csi-driver's volume directory {} is left",
        volume.volume_name,
        csi.volume_dir(volume).display()
    );
    assert!(volume_state(&env.data_root, volume).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_driver_volumes_are_adopted_renewed_in_place_and_unpublished() {
    if !test_kit::require_root("csi_driver_volumes_are_adopted_renewed_in_place_and_unpublished") {
        return;
    }
    const NAMESPACE: &str = "migration";
    let mut env = Env::start_without_plugin(options(), &[]).await;
    let mut csi = UpstreamDriver::start_for(&env).await;

    // csi-driver renews at notAfter − renew-before, half a minute after
    // issuance; cert-csi takes the node over well before that and renews
    // every half minute from then on.
    let timing = [(keys::DURATION, "60s"), (keys::RENEW_BEFORE, "30s")];
    let plain = env.create_pod(NAMESPACE, "plain-0", "app").await;
    let reuse = env.create_pod(NAMESPACE, "reuse-0", "app").await;
    let files = env.create_pod(NAMESPACE, "files-0", "app").await;
    let mut cases = vec![
        Case {
            volume: env.volume(
                &plain,
                "tls",
                &[
                    (keys::ISSUER_NAME, "ca"),
                    (keys::KEY_ALGORITHM, "ECDSA"),
                    (keys::COMMON_NAME, "plain"),
                    (keys::DNS_NAMES, "plain.migration.svc"),
                    timing[0],
                    timing[1],
                ],
            ),
            cert: "tls.crt",
            key: "tls.key",
            gid: None,
            reuse_key: false,
            pkcs12: None,
        },
        Case {
            volume: env.volume(
                &reuse,
                "tls",
                &[
                    (keys::ISSUER_NAME, "ca"),
                    (keys::KEY_ALGORITHM, "RSA"),
                    (keys::REUSE_PRIVATE_KEY, "true"),
                    (
                        keys::KEY_USAGES,
                        "digital signature,key encipherment,server auth",
                    ),
                    timing[0],
                    timing[1],
                ],
            ),
            cert: "tls.crt",
            key: "tls.key",
            gid: None,
            reuse_key: true,
            pkcs12: None,
        },
        Case {
            volume: env.volume(
                &files,
                "certs",
                &[
                    (keys::ISSUER_NAME, "ca"),
                    (keys::KEY_ALGORITHM, "ECDSA"),
                    (keys::CERTIFICATE_FILE, "cert.pem"),
                    (keys::PRIVATE_KEY_FILE, "key.pem"),
                    (keys::CA_FILE, "ca.pem"),
                    (keys::PKCS12_ENABLE, "true"),
                    (keys::PKCS12_FILENAME, "store.p12"),
                    (keys::PKCS12_PASSWORD, "changeit"),
                    timing[0],
                    timing[1],
                ],
            ),
            cert: "cert.pem",
            key: "key.pem",
            gid: Some(2000),
            reuse_key: false,
            pkcs12: Some(("store.p12", "changeit")),
        },
    ];
    cases[2].volume.capability = Capability::Mount {
        mount_group: Some(2000),
    };
    for case in &cases {
        csi.publish_ok(&case.volume).await;
        assert_csi_driver_bind(&csi, &case.volume);
    }
    let first_serials: Vec<String> = cases
        .iter()
        .map(|c| serial(&generation(&c.volume).join(c.cert)))
        .collect();
    let first_keys: Vec<String> = cases
        .iter()
        .map(|c| key_public_key(&generation(&c.volume).join(c.key)))
        .collect();
    let upstream_requests = requests_by_pod(&env, NAMESPACE).await;
    for case in &cases {
        assert_eq!(
            upstream_requests.get(&case.volume.pod.name).map(Vec::len),
            Some(1),
            "csi-driver made one request for {}",
            case.volume.pod.name
        );
    }

    // Deleting csi-driver's DaemonSet: SIGTERM. Its mounts stay.
    csi.stop();
    for case in &cases {
        assert_csi_driver_bind(&csi, &case.volume);
    }
    env.add_plugin_args(&["--adopt-csi-driver-data-root", path_str(&csi.data_root)]);
    env.start_plugin().await;
    for case in &cases {
        let state = volume_state(&env.data_root, &case.volume).unwrap_or_else(|| {
            panic!(
                "{}: not adopted; log:\n{}",
                case.volume.volume_name,
                env.log()
            )
        });
        let adopted = state.adopted.expect("recorded as adopted");
        assert_eq!(adopted.csi_driver_data_root, csi.data_root);
        assert!(state.request.is_none(), "adoption makes no request");
    }
    assert_eq!(env.log().matches("adopted a csi-driver volume").count(), 3);

    // Readers in the pods never see a key and a certificate that disagree.
    let readers: Vec<PodReader> = cases
        .iter()
        .map(|c| PodReader::start(&c.volume, c.cert, c.key))
        .collect();
    let ca = env.base.join("test-ca.pem");
    std::fs::write(&ca, env.cluster.ca_pem()).unwrap();
    let mut seen: Vec<Vec<String>> = first_serials.iter().map(|s| vec![s.clone()]).collect();
    let mut checked = 0;
    wait_for(
        &env,
        Duration::from_secs(180),
        "two renewals of every volume",
        || {
            for (i, case) in cases.iter().enumerate() {
                let generation = generation(&case.volume);
                let cert = generation.join(case.cert);
                let current = serial(&cert);
                if seen[i].contains(&current) {
                    continue;
                }
                // A new certificate, judged by openssl through the target.
                let verified = openssl_ok(&["verify", "-CAfile", path_str(&ca), path_str(&cert)]);
                assert!(verified.contains(": OK"), "{verified}");
                let key = generation.join(case.key);
                assert_eq!(
                    cert_public_key(&cert),
                    key_public_key(&key),
                    "{}: key and certificate disagree",
                    case.volume.volume_name
                );
                if case.reuse_key {
                    assert_eq!(key_public_key(&key), first_keys[i], "reuse-private-key");
                } else {
                    assert_ne!(key_public_key(&key), first_keys[i], "a fresh key");
                }
                // csi-lib's file modes and group, under csi-lib's names.
                for name in [case.cert, case.key]
                    .into_iter()
                    .chain(case.pkcs12.map(|(file, _)| file))
                {
                    let meta = std::fs::metadata(generation.join(name)).unwrap();
                    assert_eq!(meta.mode() & 0o7777, 0o440, "{name}");
                    assert_eq!(meta.gid(), case.gid.unwrap_or(0), "{name}");
                }
                if let Some((file, password)) = case.pkcs12 {
                    let out = env.base.join(format!("p12-{i}-{checked}.pem"));
                    openssl_ok(&[
                        "pkcs12",
                        "-in",
                        path_str(&generation.join(file)),
                        "-passin",
                        &format!("pass:{password}"),
                        "-nokeys",
                        "-clcerts",
                        // LegacyRC2, as csi-driver writes it (and cert-csi).
                        "-legacy",
                        "-out",
                        path_str(&out),
                    ]);
                    assert_eq!(
                        serial(&out),
                        current,
                        "the keystore holds the new certificate"
                    );
                }
                assert_csi_driver_bind(&csi, &case.volume);
                seen[i].push(current);
                checked += 1;
            }
            seen.iter().all(|s| s.len() >= 3)
        },
    )
    .await;
    for (reader, case) in readers.into_iter().zip(&cases) {
        let report = reader.finish();
        assert!(
            report.problems.is_empty(),
            "{}: a reader saw {:?}",
            case.volume.volume_name,
            report.problems
        );
        assert!(report.serials.len() >= 3, "{:?}", report.serials);
    }

    // cert-csi's requests ask for what csi-driver's did.
    for case in &cases {
        let upstream = &upstream_requests[&case.volume.pod.name][0];
        let ours = env.requests_for(&case.volume).await;
        assert!(
            !ours.is_empty(),
            "{}: no request of cert-csi's",
            case.volume.volume_name
        );
        for cr in &ours {
            assert_eq!(
                request_terms(cr),
                request_terms(upstream),
                "{}",
                cr.name_any()
            );
            assert_eq!(
                csr_names(&env, cr),
                csr_names(&env, upstream),
                "{}",
                cr.name_any()
            );
        }
    }

    for case in &cases {
        unpublish_and_check(&env, &csi, &case.volume).await;
    }
    drop(csi);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_adoption_requests_nothing_and_refused_volumes_still_unpublish() {
    if !test_kit::require_root(
        "a_restart_after_adoption_requests_nothing_and_refused_volumes_still_unpublish",
    ) {
        return;
    }
    const NAMESPACE: &str = "migration-restart";
    // One SAN per volume at most: the third volume asks for two, which
    // csi-driver accepts and cert-csi refuses to take over.
    let mut env = Env::start_without_plugin(options(), &["--max-sans", "1"]).await;
    let mut csi = UpstreamDriver::start_for(&env).await;
    let mut fresh = Vec::new();
    for p in 0..2 {
        let pod = env
            .create_pod(NAMESPACE, &format!("fresh-{p}"), "app")
            .await;
        fresh.push(env.volume(
            &pod,
            "tls",
            &[
                (keys::ISSUER_NAME, "ca"),
                (keys::KEY_ALGORITHM, "ECDSA"),
                (keys::DURATION, "1h"),
            ],
        ));
    }
    let pod = env.create_pod(NAMESPACE, "refused-0", "app").await;
    let refused = env.volume(
        &pod,
        "tls",
        &[
            (keys::ISSUER_NAME, "ca"),
            (keys::KEY_ALGORITHM, "ECDSA"),
            (keys::DNS_NAMES, "a.example.com,b.example.com"),
        ],
    );
    for volume in fresh.iter().chain([&refused]) {
        csi.publish_ok(volume).await;
    }
    let mut upstream: Vec<String> = env
        .requests(NAMESPACE)
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    upstream.sort();
    assert_eq!(upstream.len(), 3);
    csi.stop();

    env.add_plugin_args(&["--adopt-csi-driver-data-root", path_str(&csi.data_root)]);
    env.start_plugin().await;
    let adopted: Vec<_> = fresh
        .iter()
        .map(|v| volume_state(&env.data_root, v).expect("adopted"))
        .collect();
    for state in &adopted {
        let next = state.next_renewal.expect("scheduled");
        assert!(
            next > jiff::Timestamp::now() + jiff::SignedDuration::from_mins(30),
            "a fresh 1h certificate renews after two thirds of its life, not {next}"
        );
    }
    assert!(volume_state(&env.data_root, &refused).is_none());
    let events = pod_events(&env, NAMESPACE, "refused-0", "AdoptionRefused").await;
    let note = events
        .first()
        .and_then(|e| e.note.clone())
        .unwrap_or_else(|| panic!("no AdoptionRefused Event; log:\n{}", env.log()));
    assert!(note.contains("--max-sans"), "{note}");
    // csi-driver's bind stays until the kubelet unpublishes.
    assert_csi_driver_bind(&csi, &refused);

    // A restart recovers the adopted volumes from node state: no request,
    // and nothing adopted twice.
    env.restart_plugin().await;
    let log = env.log();
    let reports: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("csi-driver volumes adopted"))
        .collect();
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert!(
        reports[0].contains("adopted=2") && reports[0].contains("refused=1"),
        "{}",
        reports[0]
    );
    assert!(
        reports[1].contains("adopted=0") && reports[1].contains("known=2"),
        "{}",
        reports[1]
    );
    let mut now: Vec<String> = env
        .requests(NAMESPACE)
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    now.sort();
    assert_eq!(now, upstream, "a restart made or removed requests");
    for (volume, before) in fresh.iter().zip(&adopted) {
        let after = volume_state(&env.data_root, volume).expect("still recorded");
        assert_eq!(
            &after, before,
            "{}: state changed on restart",
            volume.volume_name
        );
        assert_csi_driver_bind(&csi, volume);
    }

    // Unpublish takes every csi-driver volume away as csi-driver would,
    // adopted or not.
    for volume in fresh.iter().chain([&refused]) {
        unpublish_and_check(&env, &csi, volume).await;
    }
    drop(csi);
    env.finish().await;
}
