//! Trust bundles (issue 9): a bundle from a ConfigMap, a Secret or a file
//! is every volume's CA file, and a change of the source reaches every
//! mounted volume atomically within seconds, without a new request.

use std::path::Path;
use std::time::{Duration, Instant};

use cert_csi::pki::{
    CsrOptions, Curve, KeyAlgorithm, PrivateKey, SanSpec, SignParams, SubjectSpec,
};
use cert_csi::volume::{CREDENTIAL_BUNDLE_FILE, keys};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use test_kit::{Env, Options, PodFiles, VolumeRequest, openssl_ok};

/// A self-signed CA certificate (PEM) that is not the signer's.
fn other_ca(name: &str) -> String {
    let key = PrivateKey::generate(KeyAlgorithm::Ecdsa(Curve::P256)).unwrap();
    let subject = SubjectSpec {
        common_name: Some(name.into()),
        ..Default::default()
    };
    let csr = cert_csi::pki::build_csr(&key, &subject, &SanSpec::default(), &CsrOptions::default())
        .unwrap();
    cert_csi::pki::sign_self_signed(
        csr.pem.as_bytes(),
        &key,
        &SignParams {
            is_ca: true,
            duration: Some(Duration::from_secs(24 * 3600)),
            ..Default::default()
        },
    )
    .unwrap()
    .certificate_pem
}

async fn create_namespace(env: &Env, name: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

async fn apply_configmap(env: &Env, bundle: &str) {
    let api: Api<ConfigMap> = Api::namespaced(env.client.clone(), "trust");
    api.patch(
        "bundle",
        &PatchParams::apply("cert-csi-tests").force(),
        &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "bundle", "namespace": "trust"},
            "data": {"ca.crt": bundle},
        })),
    )
    .await
    .expect("applying the trust ConfigMap");
}

/// Publishes, retrying while the plugin has not loaded the bundle yet (it
/// answers then, before any request is made).
async fn publish_when_loaded(env: &Env, volume: &VolumeRequest) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match env.publish(volume).await {
            Ok(()) => return,
            Err(s) if s.message().contains("has not been loaded") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("publish failed: {s:?}\nlog:\n{}", env.log()),
        }
    }
}

/// Waits until every volume's `ca.crt` is `bundle`; returns how long.
async fn wait_for_bundle(volumes: &[VolumeRequest], bundle: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let stale: Vec<&str> = volumes
            .iter()
            .filter(|v| v.read_string("ca.crt") != bundle)
            .map(|v| v.volume_name.as_str())
            .collect();
        if stale.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{} of {} volumes still have the old bundle after {limit:?}: {stale:?}",
            stale.len(),
            volumes.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_change_reaches_50_volumes_within_5s_with_no_new_request() {
    if !test_kit::require_root(
        "a_configmap_change_reaches_50_volumes_within_5s_with_no_new_request",
    ) {
        return;
    }
    let env = Env::start_with_args(
        Options::default(),
        &[
            "--trust-bundle-configmap",
            "trust/bundle:ca.crt",
            "--max-request-rate",
            "1000",
        ],
    )
    .await;
    create_namespace(&env, "trust").await;
    // The signer's CA plus another: pods verify with the first and trust
    // both, as during a CA migration.
    let first = format!("{}{}", env.cluster.ca_pem(), other_ca("next root"));
    apply_configmap(&env, &first).await;

    let pod = env.create_pod("shop", "web-0", "web").await;
    let volumes: Vec<VolumeRequest> = (0..50)
        .map(|i| {
            env.volume(
                &pod,
                &format!("tls-{i}"),
                &[
                    (keys::ISSUER_NAME, "ca"),
                    (keys::KEY_ALGORITHM, "ECDSA"),
                    (keys::DNS_NAMES, "web.shop.svc"),
                ],
            )
        })
        .collect();
    publish_when_loaded(&env, &volumes[0]).await;
    futures::future::join_all(volumes[1..].iter().map(|v| env.publish_ok(v))).await;
    wait_for_bundle(&volumes, &first, Duration::from_secs(1)).await;
    let verified = openssl_ok(&[
        "verify",
        "-CAfile",
        path_str(&volumes[7].file("ca.crt")),
        path_str(&volumes[7].file("tls.crt")),
    ]);
    assert!(verified.contains(": OK"), "{verified}");
    let requests = env.count_requests("shop").await;
    let signed = env.cluster.signed().await;
    assert_eq!(requests, 50);
    let certs_before: Vec<Vec<u8>> = volumes.iter().map(|v| v.read("tls.crt")).collect();
    let keys_before: Vec<Vec<u8>> = volumes.iter().map(|v| v.read("tls.key")).collect();

    // A pod reading its volume during the swap sees either the old or the
    // new bundle, whole, with its own certificate.
    let reader = test_kit::PodReader::start(&volumes[3], "tls.crt", "tls.key");
    let second = format!("{}{}", env.cluster.ca_pem(), other_ca("newer root"));
    apply_configmap(&env, &second).await;
    let took = wait_for_bundle(&volumes, &second, Duration::from_secs(5)).await;
    eprintln!("trust bundle reached 50 volumes in {took:?}");
    let report = reader.finish();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.reads > 0, "the reader read nothing");

    assert_eq!(env.count_requests("shop").await, requests, "new requests");
    assert_eq!(env.cluster.signed().await, signed, "new signatures");
    for (i, v) in volumes.iter().enumerate() {
        assert_eq!(v.read("tls.crt"), certs_before[i], "{}", v.volume_name);
        assert_eq!(v.read("tls.key"), keys_before[i], "{}", v.volume_name);
    }

    // A broken bundle is refused; the volumes keep the last good one.
    apply_configmap(&env, "-----BEGIN CERTIFICATE-----\nnot base64\n").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for_bundle(&volumes, &second, Duration::from_millis(1)).await;
    assert!(
        env.log().contains("trust bundle refused"),
        "no log of the refusal"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_bundle_is_the_ca_of_new_and_renewed_files() {
    if !test_kit::require_root("a_secret_bundle_is_the_ca_of_new_and_renewed_files") {
        return;
    }
    let env = Env::start_with_args(
        Options::default(),
        &["--trust-bundle-secret", "trust/bundle:ca.crt"],
    )
    .await;
    create_namespace(&env, "trust").await;
    let bundle = format!("{}{}", other_ca("secret root"), env.cluster.ca_pem());
    let api: Api<Secret> = Api::namespaced(env.client.clone(), "trust");
    let secret = serde_json::from_value(json!({
        "metadata": {"name": "bundle", "namespace": "trust"},
        "data": {"ca.crt": base64_encode(bundle.as_bytes())},
    }))
    .unwrap();
    api.create(&PostParams::default(), &secret).await.unwrap();

    let pod = env.create_pod("shop", "api-0", "api").await;
    let volume = env.volume(
        &pod,
        "tls",
        &[
            (keys::ISSUER_NAME, "ca"),
            (keys::KEY_ALGORITHM, "ECDSA"),
            (keys::DNS_NAMES, "api.shop.svc"),
            // Short, so a renewal happens during the test.
            (keys::DURATION, "6s"),
            (keys::RENEW_BEFORE, "4s"),
            (CREDENTIAL_BUNDLE_FILE, "credentials.pem"),
        ],
    );
    publish_when_loaded(&env, &volume).await;
    assert_eq!(volume.read_string("ca.crt"), bundle);
    let first_serial = test_kit::served_leaf(&volume, "tls.crt").serial_hex;

    // The renewal writes the bundle too, not the request's status.ca.
    let deadline = Instant::now() + Duration::from_secs(20);
    while test_kit::served_leaf(&volume, "tls.crt").serial_hex == first_serial {
        assert!(
            Instant::now() < deadline,
            "no renewal within 20s\n{}",
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(volume.read_string("ca.crt"), bundle);
    // The credential bundle follows the renewal: key then chain, matching.
    let bytes = volume.read("credentials.pem");
    let blocks = pem::parse_many(&bytes).unwrap();
    assert_eq!(blocks[0].tag(), "PRIVATE KEY");
    let key = PrivateKey::from_pem(&bytes).unwrap();
    let leaf = cert_csi::pki::inspect::parse_certificate(blocks[1].contents()).unwrap();
    assert!(cert_csi::pki::key_matches_certificate(&key, &leaf));
    assert_ne!(leaf.serial_hex, first_serial);
    env.finish().await;
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_configmap_file_is_followed_by_the_spiffe_driver() {
    if !test_kit::require_root("a_mounted_configmap_file_is_followed_by_the_spiffe_driver") {
        return;
    }
    // The kubelet's layout of a ConfigMap volume: ca.crt -> ..data/ca.crt,
    // ..data -> a timestamped directory, swapped by rename.
    let dir = tempfile::tempdir().unwrap();
    let trust = dir.path().canonicalize().unwrap();
    let swap = |generation: &str, content: &str| {
        std::fs::create_dir(trust.join(generation)).unwrap();
        std::fs::write(trust.join(generation).join("ca.crt"), content).unwrap();
        std::os::unix::fs::symlink(generation, trust.join("..data_tmp")).unwrap();
        std::fs::rename(trust.join("..data_tmp"), trust.join("..data")).unwrap();
    };
    let first = other_ca("file root one");
    swap("..2026_01", &first);
    std::os::unix::fs::symlink("..data/ca.crt", trust.join("ca.crt")).unwrap();
    let file = trust.join("ca.crt");
    let env = Env::start_with_args(
        Options::default(),
        &[
            "--driver-name",
            cert_csi::spiffe_id::DRIVER_NAME,
            "--spiffe-issuer-name",
            "spiffe-ca",
            "--spiffe-request-mode",
            "node-account",
            "--trust-bundle-file",
            path_str(&file),
        ],
    )
    .await;
    let mut volumes = Vec::new();
    for i in 0..3 {
        let pod = env
            .create_pod("shop", &format!("billing-{i}"), "billing")
            .await;
        let volume = env.volume(&pod, "spiffe", &[]);
        publish_when_loaded(&env, &volume).await;
        volumes.push(volume);
    }
    wait_for_bundle(&volumes, &first, Duration::from_millis(1)).await;
    let requests = env.count_requests("shop").await;

    let second = format!("{first}{}", env.cluster.ca_pem());
    swap("..2026_02", &second);
    let took = wait_for_bundle(&volumes, &second, Duration::from_secs(5)).await;
    eprintln!("file trust bundle reached 3 volumes in {took:?}");
    assert_eq!(env.count_requests("shop").await, requests);
    env.finish().await;
}
