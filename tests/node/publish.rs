//! A pod gets its certificate: the files verify, the mount is hardened,
//! modes and groups are right, and the kubelet's repeated, concurrent and
//! unpublish calls behave (issue "Node plugin: a certificate on every mount").

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use cert_csi::volume::{keys, kubelet};
use kube::ResourceExt;
use test_kit::{Env, PodFiles, Policy, VolumeRequest, assert_status, mounts_at, openssl_ok};

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// `openssl pkey -pubout` of the key equals `openssl x509 -pubkey` of the
/// certificate: the pod's key and certificate belong together. Returns the
/// public key.
fn assert_key_matches(volume: &VolumeRequest, cert: &str, key: &str) -> String {
    let from_key = openssl_ok(&["pkey", "-pubout", "-in", path_str(&volume.file(key))]);
    let from_cert = openssl_ok(&[
        "x509",
        "-noout",
        "-pubkey",
        "-in",
        path_str(&volume.file(cert)),
    ]);
    assert_eq!(
        from_key, from_cert,
        "{}: key and certificate differ",
        volume.volume_name
    );
    from_key
}

fn assert_verifies(volume: &VolumeRequest, ca: &str, cert: &str) {
    let out = openssl_ok(&[
        "verify",
        "-CAfile",
        path_str(&volume.file(ca)),
        path_str(&volume.file(cert)),
    ]);
    assert!(out.contains(": OK"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_gets_a_verifiable_certificate_on_a_hardened_read_only_mount() {
    if !test_kit::require_root("a_pod_gets_a_verifiable_certificate_on_a_hardened_read_only_mount")
    {
        return;
    }
    let env = Env::start().await;
    let pod = env.create_pod("team-a", "web-0", "web").await;
    let volume = env.volume(
        &pod,
        "tls",
        &[
            (keys::ISSUER_NAME, "ca"),
            (keys::DNS_NAMES, "${POD_NAME}.${POD_NAMESPACE}.svc"),
            (keys::KEY_ALGORITHM, "ECDSA"),
        ],
    );
    env.publish_ok(&volume).await;

    // The three files, chained to the CA the signer used.
    assert_verifies(&volume, "ca.crt", "tls.crt");
    assert_eq!(volume.read_string("ca.crt"), env.cluster.ca_pem());
    assert_key_matches(&volume, "tls.crt", "tls.key");
    let san = openssl_ok(&[
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        path_str(&volume.file("tls.crt")),
    ]);
    assert!(
        san.contains("DNS:web-0.team-a.svc"),
        "variables not expanded: {san}"
    );
    assert!(!san.contains('$'), "{san}");
    let key_pem = volume.read_string("tls.key");
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "ECDSA keys are PKCS#8"
    );

    // A tmpfs of the volume's own, mounted read-only and hardened.
    let target = volume.target();
    let mounts = mounts_at(&target);
    let top = mounts
        .last()
        .unwrap_or_else(|| panic!("nothing mounted at {}", target.display()));
    assert_eq!(top.fs_type, "tmpfs", "{top:?}");
    assert_eq!(
        top.source,
        cert_csi::store::TMPFS_SOURCE,
        "not the volume's own tmpfs: {top:?}"
    );
    assert!(
        top.super_option("size").is_some(),
        "the tmpfs has no size limit: {top:?}"
    );
    assert_eq!(mounts.len(), 1, "mounts stacked at the target: {mounts:?}");
    for opt in ["ro", "nodev", "noexec", "nosuid"] {
        assert!(top.has_mount_option(opt), "mount lacks {opt}: {top:?}");
    }
    let write = std::fs::write(target.join("evil"), b"x");
    let err = write.expect_err("writing into the pod's volume must fail");
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS), "{err}");
    let overwrite = std::fs::OpenOptions::new()
        .write(true)
        .open(volume.file("tls.crt"));
    assert!(overwrite.is_err(), "tls.crt opened for writing");

    // Without a group: 0440 files in a 0550 directory, owned by root.
    let dir = std::fs::metadata(&target).unwrap();
    assert_eq!(dir.permissions().mode() & 0o7777, 0o550);
    assert_eq!(dir.gid(), 0);
    for name in ["tls.crt", "tls.key", "ca.crt"] {
        let meta = std::fs::metadata(volume.file(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o440, "{name}");
        assert_eq!(meta.gid(), 0, "{name}");
    }

    // fs-group attribute, and the kubelet's volume_mount_group: 0640 and
    // group-owned by that gid.
    let mut with_attr = env.volume(
        &pod,
        "tls-group-attr",
        &[
            (keys::ISSUER_NAME, "ca"),
            (keys::KEY_ALGORITHM, "ECDSA"),
            (keys::FS_GROUP, "2000"),
        ],
    );
    with_attr.capability = test_kit::Capability::Mount {
        mount_group: Some(3000),
    };
    let mut with_mount_group = env.volume(
        &pod,
        "tls-group-kubelet",
        &[(keys::ISSUER_NAME, "ca"), (keys::KEY_ALGORITHM, "ECDSA")],
    );
    with_mount_group.capability = test_kit::Capability::Mount {
        mount_group: Some(3000),
    };
    env.publish_ok(&with_attr).await;
    env.publish_ok(&with_mount_group).await;
    // The attribute overrides the kubelet's group.
    for (volume, gid) in [(&with_attr, 2000), (&with_mount_group, 3000)] {
        let dir = std::fs::metadata(volume.target()).unwrap();
        assert_eq!(
            dir.permissions().mode() & 0o7777,
            0o550,
            "{}",
            volume.volume_name
        );
        assert_eq!(dir.gid(), gid, "{}", volume.volume_name);
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            let meta = std::fs::metadata(volume.file(name)).unwrap();
            assert_eq!(
                meta.permissions().mode() & 0o7777,
                0o440,
                "{} {name}",
                volume.volume_name
            );
            assert_eq!(meta.gid(), gid, "{} {name}", volume.volume_name);
        }
        assert_verifies(volume, "ca.crt", "tls.crt");
    }
    assert_eq!(env.count_requests("team-a").await, 3);
    env.finish().await;
}

/// The classic bootstrap, end to end: the harness made its CA the
/// cert-manager way (SelfSigned ClusterIssuer → CA Certificate → CA
/// ClusterIssuer), and cert-csi's own signer signs a node volume that
/// names the CA ClusterIssuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_from_the_ca_cluster_issuer_verifies_against_the_bootstrapped_ca() {
    if !test_kit::require_root(
        "a_volume_from_the_ca_cluster_issuer_verifies_against_the_bootstrapped_ca",
    ) {
        return;
    }
    let env = Env::start().await;
    let pod = env.create_pod("team-c", "api-0", "api").await;
    let volume = env.volume(
        &pod,
        "tls",
        &[
            (keys::ISSUER_NAME, "ca"),
            (keys::ISSUER_KIND, "ClusterIssuer"),
            (keys::DNS_NAMES, "${POD_NAME}.${POD_NAMESPACE}.svc"),
            (keys::KEY_ALGORITHM, "ECDSA"),
        ],
    );
    env.publish_ok(&volume).await;

    let request = env.only_request(&volume).await;
    assert_eq!(request.spec.issuer_ref.name, "ca");
    assert_eq!(
        request.spec.issuer_ref.kind.as_deref(),
        Some("ClusterIssuer")
    );
    assert!(request.is_issued(), "{:?}", request.status);
    assert_eq!(env.cluster.signed().await, 1);

    // The CA certificate as the CA Certificate's Secret holds it, not as
    // the volume tells it.
    let ca_file = env.base.join("bootstrapped-ca.crt");
    std::fs::write(&ca_file, env.cluster.ca_pem()).unwrap();
    let out = openssl_ok(&[
        "verify",
        "-CAfile",
        path_str(&ca_file),
        path_str(&volume.file("tls.crt")),
    ]);
    assert!(out.contains(": OK"), "{out}");
    assert_verifies(&volume, "ca.crt", "tls.crt");
    assert_key_matches(&volume, "tls.crt", "tls.key");
    let text = test_kit::cert_text(&volume.file("tls.crt"));
    assert!(
        text.contains("Issuer: O = cert-csi tests, CN = cert-csi test root CA"),
        "not signed by the bootstrapped CA: {text}"
    );
    assert!(text.contains("DNS:api-0.team-c.svc"), "{text}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_of_one_volume_share_one_request() {
    if !test_kit::require_root("concurrent_publishes_of_one_volume_share_one_request") {
        return;
    }
    let env = std::sync::Arc::new(Env::start().await);
    let pod = env.create_pod("team-b", "api-0", "api").await;
    let volume = env.volume(
        &pod,
        "tls",
        &[(keys::ISSUER_NAME, "ca"), (keys::KEY_ALGORITHM, "ECDSA")],
    );
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let env = env.clone();
        let volume = volume.clone();
        tasks.push(tokio::spawn(async move {
            env.publish(&volume)
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
            // What this caller's pod would see the moment its call returns.
            Ok::<_, String>(
                ["tls.crt", "tls.key", "ca.crt"]
                    .map(|n| std::fs::read(volume.file(n)).map_err(|e| format!("{n}: {e}"))),
            )
        }));
    }
    let mut seen = Vec::new();
    for task in tasks {
        let files = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("a concurrent publish failed: {e}"));
        let files: Vec<Vec<u8>> = files
            .into_iter()
            .map(|f| f.unwrap_or_else(|e| panic!("file missing right after publish: {e}")))
            .collect();
        assert!(
            files.iter().all(|f| !f.is_empty()),
            "an empty file was served"
        );
        seen.push(files);
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "callers saw different files"
    );
    assert_eq!(
        mounts_at(&volume.target()).len(),
        1,
        "mounts stacked at the target"
    );
    let requests = env.requests("team-b").await;
    assert_eq!(
        requests.len(),
        1,
        "{:?}",
        requests.iter().map(|r| r.name_any()).collect::<Vec<_>>()
    );
    assert_eq!(env.cluster.signed().await, 1);
    let env = std::sync::Arc::into_inner(env).expect("all tasks finished");
    env.finish().await;
}

/// The RSA key pool (issue 17): after a first RSA publish asks for it, the
/// pool fills; concurrent publishes then take ready keys, and no key is
/// ever handed out twice. Judged by openssl on the mounted files and by the
/// pool's own counters on `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_keys_from_the_pool_go_to_one_volume_each() {
    if !test_kit::require_root("rsa_keys_from_the_pool_go_to_one_volume_each") {
        return;
    }
    let env = std::sync::Arc::new(
        Env::start_with_args(test_kit::Options::default(), &["--rsa-key-pool-size", "4"]).await,
    );
    let pod = env.create_pod("pool", "rsa-0", "rsa").await;
    let rsa = |name: &str| {
        env.volume(
            &pod,
            name,
            &[(keys::ISSUER_NAME, "ca"), (keys::KEY_ALGORITHM, "RSA")],
        )
    };
    let first = rsa("first");
    env.publish(&first).await.expect("first RSA publish");
    let metrics = env.metrics_url();
    let pool = [("key_size", "2048")];
    // The first publish found the pool empty and started it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (_, scrape) = test_kit::http_get(&metrics, "/metrics").await;
        if test_kit::sample(&scrape, "cert_csi_rsa_key_pool_keys", &pool) == 4.0 {
            assert_eq!(
                test_kit::sample(&scrape, "cert_csi_rsa_key_pool_misses_total", &pool),
                1.0
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pool never filled: {}",
            scrape
                .lines()
                .filter(|l| l.contains("key_pool"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let volumes: Vec<VolumeRequest> = (0..10).map(|i| rsa(&format!("v{i}"))).collect();
    let mut tasks = Vec::new();
    for volume in volumes.clone() {
        let env = env.clone();
        tasks.push(tokio::spawn(async move { env.publish(&volume).await }));
    }
    for task in tasks {
        task.await
            .unwrap()
            .unwrap_or_else(|s| panic!("{:?}: {}", s.code(), s.message()));
    }
    let mut public_keys = std::collections::HashSet::new();
    for volume in std::iter::once(&first).chain(&volumes) {
        let public = assert_key_matches(volume, "tls.crt", "tls.key");
        let text = openssl_ok(&[
            "pkey",
            "-noout",
            "-text",
            "-in",
            path_str(&volume.file("tls.key")),
        ]);
        assert!(
            text.contains("(2048 bit"),
            "{}",
            &text[..text.len().min(200)]
        );
        assert!(
            public_keys.insert(public),
            "{}: its key was handed to another volume too",
            volume.volume_name
        );
    }
    let (_, scrape) = test_kit::http_get(&metrics, "/metrics").await;
    let hits = test_kit::sample(&scrape, "cert_csi_rsa_key_pool_hits_total", &pool);
    let misses = test_kit::sample(&scrape, "cert_csi_rsa_key_pool_misses_total", &pool);
    assert!(hits >= 4.0, "the four ready keys were used: {hits} hits");
    assert_eq!(
        hits + misses,
        11.0,
        "every first publish asked the pool once"
    );
    let env = std::sync::Arc::into_inner(env).expect("all tasks finished");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_publish_answers_at_once_without_a_new_request() {
    if !test_kit::require_root("a_repeated_publish_answers_at_once_without_a_new_request") {
        return;
    }
    let env = Env::start().await;
    let pod = env.create_pod("team-c", "worker-0", "worker").await;
    let mut volume = env.volume(
        &pod,
        "tls",
        &[(keys::ISSUER_NAME, "ca"), (keys::KEY_ALGORITHM, "ECDSA")],
    );
    // With tokenRequests the kubelet sends fresh service account tokens on
    // every republish; they must not count as changed attributes, and must
    // never be stored or logged.
    let tokens = |t: &str| {
        format!(r#"{{"vault":{{"token":"{t}","expirationTimestamp":"2030-01-01T00:00:00Z"}}}}"#)
    };
    volume.set(
        kubelet::SERVICE_ACCOUNT_TOKENS,
        &tokens("sa-token-first-0123456789"),
    );
    env.publish_ok(&volume).await;
    let first = env.only_request(&volume).await.name_any();
    let cert = volume.read("tls.crt");

    // If the plugin issued again it would now wait for the 5 s publish
    // timeout and fail, since nobody approves any more.
    env.cluster.set_policy(Policy::Ignore);
    volume.set(
        kubelet::SERVICE_ACCOUNT_TOKENS,
        &tokens("sa-token-second-0123456789"),
    );
    // No clock: a republish that issued again would fail this publish.
    env.publish_ok(&volume).await;
    assert_eq!(env.only_request(&volume).await.name_any(), first);
    assert_eq!(
        volume.read("tls.crt"),
        cert,
        "a republish changed the certificate"
    );
    assert_eq!(
        mounts_at(&volume.target()).len(),
        1,
        "a republish stacked a mount"
    );

    let state = env.state_json(&volume).expect("node state").to_string();
    for secret in ["sa-token-first", "sa-token-second"] {
        assert!(
            !state.contains(secret),
            "a service account token is in the node state"
        );
        assert!(
            !env.log().contains(secret),
            "a service account token is in the log"
        );
    }

    // Changed attributes on a published volume are refused, not applied.
    let mut changed = volume.clone();
    changed.set(keys::DNS_NAMES, "other.example");
    assert_status(
        env.publish(&changed).await,
        tonic::Code::AlreadyExists,
        "different attributes",
        "republish with changed attributes",
    );
    assert_eq!(env.only_request(&volume).await.name_any(), first);

    // The same volume id at another target of the pod (issue 16: a known
    // id at a different target took the volume over) is refused before
    // anything is touched: the volume stays where it is, as it was.
    let elsewhere = env.volume(&pod, "other", &[]);
    let mut moved = volume.clone();
    moved.target_path = elsewhere.target_path.clone();
    assert_status(
        env.publish(&moved).await,
        tonic::Code::FailedPrecondition,
        "published at one target only",
        "publish of a known volume id at another target",
    );
    assert!(
        mounts_at(&elsewhere.target()).is_empty(),
        "the other target was mounted"
    );
    assert!(!elsewhere.target().exists(), "the other target was created");
    assert_eq!(mounts_at(&volume.target()).len(), 1);
    assert_eq!(volume.read("tls.crt"), cert);
    assert_eq!(env.only_request(&volume).await.name_any(), first);
    // Its unpublish at the wrong target is refused and leaves the volume
    // alone too.
    assert_status(
        env.unpublish(&moved.volume_id, &moved.target_path).await,
        tonic::Code::InvalidArgument,
        "published at another target path",
        "unpublish of a known volume id at another target",
    );
    assert_eq!(mounts_at(&volume.target()).len(), 1);
    assert_eq!(volume.read("tls.crt"), cert);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_removes_everything_and_is_idempotent() {
    if !test_kit::require_root("unpublish_removes_everything_and_is_idempotent") {
        return;
    }
    let env = Env::start().await;
    let pod = env.create_pod("team-d", "job-0", "job").await;
    let volume = env.volume(
        &pod,
        "tls",
        &[(keys::ISSUER_NAME, "ca"), (keys::KEY_ALGORITHM, "ECDSA")],
    );
    let other = env.volume(
        &pod,
        "tls-other",
        &[(keys::ISSUER_NAME, "ca"), (keys::KEY_ALGORITHM, "ECDSA")],
    );
    env.publish_ok(&volume).await;
    env.publish_ok(&other).await;
    assert!(
        env.state_json(&volume).is_some(),
        "no node state after publish"
    );
    assert_eq!(env.requests_for(&volume).await.len(), 1);

    env.unpublish(&volume.volume_id, &volume.target_path)
        .await
        .expect("first unpublish");
    env.unpublish(&volume.volume_id, &volume.target_path)
        .await
        .expect("second unpublish");
    env.assert_no_trace(&volume).await;
    assert!(
        !volume.target().exists(),
        "the target directory was left behind"
    );

    // A volume the plugin never saw (the kubelet retries after a restart).
    let unknown = env.volume(&pod, "never-published", &[]);
    env.unpublish(&unknown.volume_id, &unknown.target_path)
        .await
        .expect("unpublish of an unknown volume");
    env.assert_no_trace(&unknown).await;

    // The other volume of the same pod is untouched.
    assert_eq!(mounts_at(&other.target()).len(), 1);
    assert_eq!(env.requests_for(&other).await.len(), 1);
    assert_verifies(&other, "ca.crt", "tls.crt");
    env.unpublish(&other.volume_id, &other.target_path)
        .await
        .expect("unpublish other");
    env.assert_no_trace(&other).await;
    assert!(
        env.volume_dirs().is_empty(),
        "left under the data root: {:?}",
        env.volume_dirs()
    );
    assert_eq!(env.count_requests("team-d").await, 0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_plugin_keeps_its_volumes_and_resumes_pending_requests() {
    if !test_kit::require_root("a_restarted_plugin_keeps_its_volumes_and_resumes_pending_requests")
    {
        return;
    }
    let mut env = Env::start_with(test_kit::Options {
        publish_timeout: "3s",
        policy: Policy::Approve,
        controller: true,
    })
    .await;
    let pod = env.create_pod("restart", "db-0", "db").await;
    let attrs = [(keys::ISSUER_NAME, "ca"), (keys::KEY_ALGORITHM, "ECDSA")];
    let done = env.volume(&pod, "done", &attrs);
    env.publish_ok(&done).await;
    let done_request = env.only_request(&done).await.name_any();
    let done_cert = done.read("tls.crt");

    env.cluster.set_policy(Policy::Ignore);
    let pending = env.volume(&pod, "pending", &attrs);
    assert_status(
        env.publish(&pending).await,
        tonic::Code::DeadlineExceeded,
        "Approved",
        "undecided before the restart",
    );
    let pending_request = env.only_request(&pending).await.name_any();

    env.restart_plugin().await;

    // The issued volume is still served and a republish is a no-op.
    assert_verifies(&done, "ca.crt", "tls.crt");
    // Nobody approves now: issuing again would fail this publish.
    env.publish_ok(&done).await;
    assert_eq!(env.only_request(&done).await.name_any(), done_request);
    assert_eq!(done.read("tls.crt"), done_cert);
    assert_eq!(mounts_at(&done.target()).len(), 1);

    // The pending request is resumed with the key kept in its tmpfs.
    env.cluster.set_policy(Policy::Approve);
    env.publish_ok(&pending).await;
    assert_eq!(
        env.only_request(&pending).await.name_any(),
        pending_request,
        "a new request after the restart"
    );
    assert_verifies(&pending, "ca.crt", "tls.crt");
    assert_key_matches(&pending, "tls.crt", "tls.key");

    for v in [&done, &pending] {
        env.unpublish(&v.volume_id, &v.target_path)
            .await
            .expect("unpublish after restart");
        env.assert_no_trace(v).await;
    }
    assert!(env.volume_dirs().is_empty(), "{:?}", env.volume_dirs());
    env.finish().await;
}

/// State is written without fsync (see `store::state::write_atomically`): a
/// power loss may leave `state.json` unreadable, and it also takes the
/// volume's tmpfs. The kubelet's republish after the reboot must then issue
/// afresh instead of failing on the file forever; with the tmpfs still
/// mounted the same file is an error that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_state_after_a_power_loss_starts_the_volume_afresh() {
    if !test_kit::require_root("an_unreadable_state_after_a_power_loss_starts_the_volume_afresh") {
        return;
    }
    let mut env = Env::start_with(test_kit::Options {
        publish_timeout: "5s",
        policy: Policy::Approve,
        controller: true,
    })
    .await;
    let pod = env.create_pod("power", "web-0", "web").await;
    let attrs = [(keys::ISSUER_NAME, "ca"), (keys::KEY_ALGORITHM, "ECDSA")];
    let volume = env.volume(&pod, "tls", &attrs);
    env.publish_ok(&volume).await;
    let first = env.only_request(&volume).await.name_any();
    let state = env
        .data_root
        .join("volumes")
        .join(&volume.volume_id)
        .join("state.json");

    // Torn by something other than a power loss: the tmpfs is still there,
    // so the publish refuses and says which file is wrong.
    env.kill_plugin();
    std::fs::write(&state, b"{\"version\": 1, \"volu").unwrap();
    env.start_plugin().await;
    let status = env.publish(&volume).await;
    assert_status(
        status,
        tonic::Code::FailedPrecondition,
        "state.json",
        "a torn state with the tmpfs still mounted",
    );

    // The power loss: the plugin dies, and the reboot drops every mount
    // (target bind and tmpfs) and leaves the torn file on disk.
    env.kill_plugin();
    for path in [
        volume.target(),
        env.data_root
            .join("volumes")
            .join(&volume.volume_id)
            .join("mnt"),
    ] {
        nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH)
            .unwrap_or_else(|e| panic!("unmounting {}: {e}", path.display()));
    }
    assert!(mounts_at(&volume.target()).is_empty());
    env.start_plugin().await;

    env.publish_ok(&volume).await;
    assert_verifies(&volume, "ca.crt", "tls.crt");
    assert_key_matches(&volume, "tls.crt", "tls.key");
    assert_eq!(mounts_at(&volume.target()).len(), 1);
    let fresh = env.requests_for(&volume).await;
    assert!(
        fresh.iter().any(|r| r.name_any() != first),
        "a new request after the power loss: {:?}",
        fresh.iter().map(ResourceExt::name_any).collect::<Vec<_>>()
    );
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(
        saved.contains("\"volume_id\""),
        "state rewritten whole: {saved}"
    );

    env.unpublish(&volume.volume_id, &volume.target_path)
        .await
        .expect("unpublish");
    env.assert_no_trace(&volume).await;
    env.finish().await;
}

/// csi-driver's `--kube-api-qps` and `--kube-api-burst`: every request the
/// node sends passes a token bucket first. With 1 per second and a burst of
/// 1, four pods published at once need four CertificateRequest creates, so
/// the last cannot be sent before three seconds have passed (a lower bound,
/// which load can only lengthen); without the limit they take milliseconds.
/// Each certificate still verifies with openssl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_side_api_limit_paces_the_node_and_still_publishes() {
    if !test_kit::require_root("a_client_side_api_limit_paces_the_node_and_still_publishes") {
        return;
    }
    let env = Env::start_with_args(
        test_kit::Options::default(),
        &["--kube-api-qps", "1", "--kube-api-burst", "1"],
    )
    .await;
    let pod = env.create_pod("qps", "app-0", "app").await;
    let volumes: Vec<VolumeRequest> = (0..4)
        .map(|i| env.volume(&pod, &format!("tls-{i}"), &[(keys::ISSUER_NAME, "ca")]))
        .collect();
    let started = std::time::Instant::now();
    let outcomes = futures::future::join_all(volumes.iter().map(|v| env.publish(v))).await;
    let took = started.elapsed();
    for (volume, outcome) in volumes.iter().zip(outcomes) {
        outcome.unwrap_or_else(|e| panic!("{}: {e:?}", volume.volume_name));
        assert_verifies(volume, "ca.crt", "tls.crt");
        assert_key_matches(volume, "tls.crt", "tls.key");
    }
    assert!(
        took >= std::time::Duration::from_millis(2900),
        "four creates at 1 per second went in {took:?}: the limit was not applied"
    );
}
