//! Rotation in place through the real plugin: short-lived certificates are
//! renewed on the same mount while a reader in the "pod" checks that key and
//! certificate always belong together; republish is a no-op.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use cert_csi::volume::{keys, kubelet};
use common::{Env, Options, PodReader, Policy, mounts_at, served_leaf};
use kube::ResourceExt;

/// Waits until `reader` has seen `count` distinct serials, or panics.
async fn wait_for_serials(
    env: &Env,
    reader: &PodReader,
    count: usize,
    limit: Duration,
    what: &str,
) {
    let deadline = Instant::now() + limit;
    while reader.serials().len() < count {
        assert!(
            Instant::now() < deadline,
            "{what}: only {} certificates seen within {limit:?}: {:?}\nlog:\n{}",
            reader.serials().len(),
            reader.serials(),
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_rotate_in_place_without_a_torn_read() {
    if !common::require_root("short_lived_certificates_rotate_in_place_without_a_torn_read") {
        return;
    }
    let env = Env::start_with(Options {
        publish_timeout: "10s",
        policy: Policy::Approve,
        controller: true,
    })
    .await;
    let pod = env.create_pod("rotate", "web-0", "web").await;
    // 30 s certificates renewed 26 s before expiry: a rotation every ~4 s.
    let base = [
        (keys::ISSUER_NAME, "ca"),
        (keys::KEY_ALGORITHM, "ECDSA"),
        (keys::DURATION, "30s"),
        (keys::RENEW_BEFORE, "26s"),
    ];
    let fresh = env.volume(&pod, "fresh", &base);
    let mut reuse_attrs = base.to_vec();
    reuse_attrs.push((keys::REUSE_PRIVATE_KEY, "true"));
    let reuse = env.volume(&pod, "reuse", &reuse_attrs);
    env.publish_ok(&fresh).await;
    env.publish_ok(&reuse).await;

    let mount_of = |v: &common::VolumeRequest| {
        let mounts = mounts_at(&v.target());
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        let meta = std::fs::metadata(v.target()).unwrap();
        (mounts[0].mount_id, mounts[0].device, meta.dev(), meta.ino())
    };
    let mounts_before = [mount_of(&fresh), mount_of(&reuse)];

    let readers = [
        PodReader::start(&fresh, "tls.crt", "tls.key"),
        PodReader::start(&reuse, "tls.crt", "tls.key"),
    ];
    // The first certificate plus three rotations each.
    wait_for_serials(&env, &readers[0], 4, Duration::from_secs(40), "fresh").await;
    wait_for_serials(&env, &readers[1], 4, Duration::from_secs(40), "reuse").await;
    let [fresh_reader, reuse_reader] = readers;
    let fresh_seen = fresh_reader.finish();
    let reuse_seen = reuse_reader.finish();
    println!(
        "reads: fresh {} over {} certificates, reuse {} over {} certificates",
        fresh_seen.reads,
        fresh_seen.serials.len(),
        reuse_seen.reads,
        reuse_seen.serials.len()
    );

    for (name, seen) in [("fresh", &fresh_seen), ("reuse", &reuse_seen)] {
        assert!(
            seen.problems.is_empty(),
            "{name}: the reader saw a torn or expired state: {:?}",
            seen.problems
        );
        assert!(seen.reads > 100, "{name}: only {} reads", seen.reads);
        let mut distinct = seen.serials.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            seen.serials.len(),
            "{name}: a serial came back: {:?}",
            seen.serials
        );
    }
    assert_eq!(
        fresh_seen.public_keys.len(),
        fresh_seen.serials.len(),
        "without reuse-private-key every renewal has a fresh key"
    );
    assert_eq!(
        reuse_seen.public_keys.len(),
        1,
        "reuse-private-key keeps the key across {} certificates",
        reuse_seen.serials.len()
    );

    // The same mount and directory, rotated underneath.
    assert_eq!([mount_of(&fresh), mount_of(&reuse)], mounts_before);
    // Request hygiene: only the newest request per volume is kept.
    for v in [&fresh, &reuse] {
        let left = env.requests_for(v).await;
        assert!(
            left.len() <= 2,
            "{}: {:?}",
            v.volume_name,
            left.iter().map(ResourceExt::name_any).collect::<Vec<_>>()
        );
    }
    let log = env.log();
    assert!(
        !log.contains("certificate renewal failed"),
        "no renewal should fail here; log:\n{log}"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republish_is_a_no_op_and_new_tokens_stay_in_memory() {
    if !common::require_root("republish_is_a_no_op_and_new_tokens_stay_in_memory") {
        return;
    }
    let env = Env::start().await;
    let pod = env.create_pod("republish", "api-0", "api").await;
    let mut volume = env.volume(
        &pod,
        "tls",
        &[(keys::ISSUER_NAME, "ca"), (keys::KEY_ALGORITHM, "ECDSA")],
    );
    volume.set(
        kubelet::SERVICE_ACCOUNT_TOKENS,
        r#"{"vault":{"token":"first-token-value","expirationTimestamp":"2030-01-01T00:00:00Z"}}"#,
    );
    env.publish_ok(&volume).await;
    let request = env.only_request(&volume).await.name_any();
    let serial = served_leaf(&volume, "tls.crt").serial_hex;

    let started = Instant::now();
    for i in 0..50 {
        if i % 10 == 5 {
            // The kubelet refreshes the token it passes on republish.
            volume.set(
                kubelet::SERVICE_ACCOUNT_TOKENS,
                &format!(
                    r#"{{"vault":{{"token":"refreshed-token-{i}","expirationTimestamp":"2030-01-01T00:00:00Z"}}}}"#
                ),
            );
        }
        env.publish_ok(&volume).await;
    }
    let took = started.elapsed();
    println!("50 republishes took {took:?}");
    assert_eq!(env.only_request(&volume).await.name_any(), request);
    assert_eq!(
        env.cluster.checked().await,
        1,
        "50 republishes created requests"
    );
    assert_eq!(served_leaf(&volume, "tls.crt").serial_hex, serial);
    assert_eq!(mounts_at(&volume.target()).len(), 1);

    // Tokens are never written to the node's disk or logged.
    let mut stack = vec![env.data_root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                let bytes = std::fs::read(entry.path()).unwrap();
                let text = String::from_utf8_lossy(&bytes);
                assert!(
                    !text.contains("first-token-value") && !text.contains("refreshed-token"),
                    "a token was written to {}",
                    entry.path().display()
                );
            }
        }
    }
    let log = env.log();
    assert!(!log.contains("first-token-value") && !log.contains("refreshed-token"));
    env.finish().await;
}
