//! What a publish answers when the input is wrong, or when the request is
//! denied, fails, is slow, or is never decided; and that nothing is left
//! behind when it fails.

use std::time::{Duration, Instant};

use cert_csi::volume::{keys, kubelet};
use kube::ResourceExt;
use test_kit::{Capability, Env, Options, Policy, VolumeRequest, assert_status};
use tonic::Code;

/// One bad input: how to break a valid request, and the attribute (or
/// request field) its error message must name.
struct Case {
    name: &'static str,
    names: &'static str,
    breaks: fn(&mut VolumeRequest),
}

fn case(name: &'static str, names: &'static str, breaks: fn(&mut VolumeRequest)) -> Case {
    Case {
        name,
        names,
        breaks,
    }
}

fn cases() -> Vec<Case> {
    vec![
        case("missing issuer-name", keys::ISSUER_NAME, |v| {
            v.remove(keys::ISSUER_NAME);
        }),
        case("bad issuer-kind", keys::ISSUER_KIND, |v| {
            v.set(keys::ISSUER_KIND, "Vault");
        }),
        case("RSA key-size too small", keys::KEY_SIZE, |v| {
            v.set(keys::KEY_SIZE, "1024");
        }),
        case("RSA key-size too large", keys::KEY_SIZE, |v| {
            v.set(keys::KEY_SIZE, "8193");
        }),
        case("RSA key-size not a number", keys::KEY_SIZE, |v| {
            v.set(keys::KEY_SIZE, "big");
        }),
        case("ECDSA key-size", keys::KEY_SIZE, |v| {
            v.set(keys::KEY_ALGORITHM, "ECDSA")
                .set(keys::KEY_SIZE, "2048");
        }),
        case("key-size with Ed25519", keys::KEY_SIZE, |v| {
            v.set(keys::KEY_ALGORITHM, "Ed25519")
                .set(keys::KEY_SIZE, "256");
        }),
        case("unknown key-algorithm", keys::KEY_ALGORITHM, |v| {
            v.set(keys::KEY_ALGORITHM, "DSA");
        }),
        case("PKCS1 with ECDSA", keys::KEY_ENCODING, |v| {
            v.set(keys::KEY_ALGORITHM, "ECDSA")
                .set(keys::KEY_ENCODING, "PKCS1");
        }),
        case("unknown key-encoding", keys::KEY_ENCODING, |v| {
            v.set(keys::KEY_ENCODING, "DER");
        }),
        case("bad duration", keys::DURATION, |v| {
            v.set(keys::DURATION, "90 days");
        }),
        case("zero duration", keys::DURATION, |v| {
            v.set(keys::DURATION, "0s");
        }),
        case("bad renew-before", keys::RENEW_BEFORE, |v| {
            v.set(keys::RENEW_BEFORE, "soon");
        }),
        case("bad is-ca", keys::IS_CA, |v| {
            v.set(keys::IS_CA, "yes");
        }),
        case("bad reuse-private-key", keys::REUSE_PRIVATE_KEY, |v| {
            v.set(keys::REUSE_PRIVATE_KEY, "sometimes");
        }),
        case("unknown key usage", keys::KEY_USAGES, |v| {
            v.set(keys::KEY_USAGES, "digital signature,world domination");
        }),
        case("bad ip", keys::IP_SANS, |v| {
            v.set(keys::IP_SANS, "10.0.0.1,300.1.1.1");
        }),
        case("bad uri", keys::URI_SANS, |v| {
            v.set(keys::URI_SANS, "not a uri");
        }),
        case("file name ../x", keys::CERTIFICATE_FILE, |v| {
            v.set(keys::CERTIFICATE_FILE, "../x");
        }),
        case("absolute file name", keys::PRIVATE_KEY_FILE, |v| {
            v.set(keys::PRIVATE_KEY_FILE, "/etc/shadow");
        }),
        case("file name with a slash", keys::CA_FILE, |v| {
            v.set(keys::CA_FILE, "a/b");
        }),
        case(
            "file name with a leading space",
            keys::CERTIFICATE_FILE,
            |v| {
                v.set(keys::CERTIFICATE_FILE, " tls.crt");
            },
        ),
        case("duplicate file names", keys::PRIVATE_KEY_FILE, |v| {
            v.set(keys::PRIVATE_KEY_FILE, "tls.crt");
        }),
        case("unknown variable", keys::DNS_NAMES, |v| {
            v.set(keys::DNS_NAMES, "${FOO}.example");
        }),
        case("$$ in a common name", keys::COMMON_NAME, |v| {
            v.set(keys::COMMON_NAME, "price$$");
        }),
        case("bare quote in a subject list", keys::ORGANIZATIONS, |v| {
            v.set(keys::ORGANIZATIONS, "Example \"Inc\"");
        }),
        case("pkcs12 without password", keys::PKCS12_PASSWORD, |v| {
            v.set(keys::PKCS12_ENABLE, "true");
        }),
        case(
            "pkcs12-filename without pkcs12-enable",
            keys::PKCS12_FILENAME,
            |v| {
                v.set(keys::PKCS12_FILENAME, "store.p12");
            },
        ),
        case("fs-group not a number", keys::FS_GROUP, |v| {
            v.set(keys::FS_GROUP, "wheel");
        }),
        case("fs-group zero", keys::FS_GROUP, |v| {
            v.set(keys::FS_GROUP, "0");
        }),
        case("readonly=false", "readonly", |v| v.readonly = false),
        case("ephemeral missing", kubelet::EPHEMERAL, |v| {
            v.remove(kubelet::EPHEMERAL);
        }),
        case("pod name missing", kubelet::POD_NAME, |v| {
            v.remove(kubelet::POD_NAME);
        }),
        case("bad literal subject", keys::LITERAL_SUBJECT, |v| {
            v.set(keys::LITERAL_SUBJECT, "this is not a DN");
        }),
        case(
            "literal subject with an unknown attribute type",
            keys::LITERAL_SUBJECT,
            |v| {
                v.set(keys::LITERAL_SUBJECT, "CN=app,FAVOURITECOLOUR=blue");
            },
        ),
        case("non-ASCII DNS name", keys::DNS_NAMES, |v| {
            v.set(keys::DNS_NAMES, "bücher.example");
        }),
        case("reserved prefix", "cert-csi.io/mode", |v| {
            v.set("cert-csi.io/mode", "fast");
        }),
        case("relative target path", "target_path", |v| {
            v.target_path = v.target_path.trim_start_matches('/').to_string();
        }),
        case("unclean target path", "target_path", |v| {
            let t = v.target();
            let parent = t.parent().unwrap();
            v.target_path = format!(
                "{}/../{}/mount",
                parent.display(),
                parent.file_name().unwrap().to_string_lossy()
            );
        }),
        case("block capability", "volume_capability", |v| {
            v.capability = Capability::Block
        }),
        case("no capability", "volume_capability", |v| {
            v.capability = Capability::Missing
        }),
        case("empty volume id", "volume_id", |v| v.volume_id.clear()),
        case("a megabyte of attributes", "volume_context", |v| {
            v.set("example.com/blob", &"b".repeat(1 << 20));
        }),
        case("more SANs than --max-sans", keys::DNS_NAMES, |v| {
            let names: Vec<String> = (0..300).map(|i| format!("n{i}.example")).collect();
            v.set(keys::DNS_NAMES, &names.join(","));
        }),
        case(
            "file name with a right-to-left override",
            keys::CERTIFICATE_FILE,
            |v| {
                v.set(keys::CERTIFICATE_FILE, "tls.key\u{202E}crt.");
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_with_the_attribute_named_and_leave_nothing() {
    if !test_kit::require_root("bad_inputs_are_refused_with_the_attribute_named_and_leave_nothing")
    {
        return;
    }
    let env = Env::start().await;
    let pod = env.create_pod("bad", "bad-0", "default").await;
    let base = [
        (keys::ISSUER_NAME, "ca"),
        (keys::DNS_NAMES, "${POD_NAME}.example"),
        (keys::KEY_ALGORITHM, "RSA"),
    ];
    let cases = cases();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let mut v = env.volume(&pod, &format!("bad-{i}"), &base);
        (c.breaks)(&mut v);
        match env.publish(&v).await {
            Ok(()) => failures.push(format!("{}: accepted", c.name)),
            Err(s) if s.code() != Code::InvalidArgument => failures.push(format!(
                "{}: {:?} instead of InvalidArgument: {}",
                c.name,
                s.code(),
                s.message()
            )),
            Err(s) if !s.message().contains(c.names) => failures.push(format!(
                "{}: message does not name {}: {}",
                c.name,
                c.names,
                s.message()
            )),
            Err(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "bad inputs handled wrongly:\n{}",
        failures.join("\n")
    );

    // A huge bad value is quoted by a short prefix only, in the status the
    // kubelet shows and in the node's log (it once echoed 1.3 MB into a
    // gRPC header and 2 MB into one log line).
    let huge = format!("{}!", "x".repeat(60_000));
    let mut long = env.volume(&pod, "long", &base);
    long.set(keys::URI_SANS, &huge);
    let status = assert_status(
        env.publish(&long).await,
        Code::InvalidArgument,
        keys::URI_SANS,
        "huge value",
    );
    assert!(
        status.message().len() < 1024,
        "a {} byte status message",
        status.message().len()
    );
    assert!(
        !env.log().contains(&"x".repeat(1024)),
        "the node's log quotes the whole value"
    );
    // The keystore password is never echoed.
    let mut secret = env.volume(&pod, "secret", &base);
    secret.set(keys::PKCS12_PASSWORD, "hunter2-very-secret");
    let status = assert_status(
        env.publish(&secret).await,
        Code::InvalidArgument,
        keys::PKCS12_PASSWORD,
        "password",
    );
    assert!(
        !status.message().contains("hunter2"),
        "{}",
        status.message()
    );
    assert!(
        !env.log().contains("hunter2"),
        "the password reached the log"
    );

    // Validation happens before anything: no request, no mount, no state.
    assert_eq!(env.count_requests("bad").await, 0);
    let mounted = test_kit::mounts_under(&env.kubelet_root);
    assert!(
        mounted.is_empty(),
        "mounted under the kubelet root: {mounted:?}"
    );
    assert!(
        env.volume_dirs().is_empty(),
        "left under the data root: {:?}",
        env.volume_dirs()
    );
    assert_eq!(env.cluster.checked().await, 0);

    // The base itself is valid, so each failure above came from its one change.
    let control = env.volume(&pod, "control", &base);
    env.publish_ok(&control).await;
    assert_eq!(env.count_requests("bad").await, 1);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_failed_and_slow_requests() {
    if !test_kit::require_root("denied_failed_and_slow_requests") {
        return;
    }
    let env = Env::start_with(Options {
        publish_timeout: "5s",
        policy: Policy::Deny {
            reason: "policy.example.com".into(),
            message: "team-x may not use issuer ca".into(),
        },
        controller: true,
    })
    .await;
    let pod = env.create_pod("outcomes", "out-0", "default").await;
    let attrs = [(keys::ISSUER_NAME, "ca"), (keys::KEY_ALGORITHM, "ECDSA")];

    // Denied: PermissionDenied with the approver's words; nothing left.
    let denied = env.volume(&pod, "denied", &attrs);
    let status = assert_status(
        env.publish(&denied).await,
        Code::PermissionDenied,
        "policy.example.com",
        "denied",
    );
    assert!(
        status.message().contains("team-x may not use issuer ca"),
        "{}",
        status.message()
    );
    env.assert_no_trace(&denied).await;
    assert!(
        !denied.target().exists(),
        "the target directory was left behind"
    );
    assert_eq!(
        env.cluster.checked().await,
        1,
        "the denied request never reached the signer"
    );

    // Failed: FailedPrecondition with the issuer's message; nothing left.
    // cert-csi's signer fails only requests that no CSR from the plugin
    // produces, so the volume names an external issuer, played by the
    // harness.
    env.cluster.set_policy(Policy::Fail {
        message: "the CA secret is missing".into(),
    });
    let mut failed = env.volume(&pod, "failed", &attrs);
    failed.set(keys::ISSUER_GROUP, test_kit::EXTERNAL_GROUP);
    let status = assert_status(
        env.publish(&failed).await,
        Code::FailedPrecondition,
        "the CA secret is missing",
        "failed",
    );
    assert!(status.message().contains("Failed"), "{}", status.message());
    env.assert_no_trace(&failed).await;

    // Approval after 2 s, within the 5 s publish timeout: success.
    env.cluster
        .set_policy(Policy::ApproveAfter(Duration::from_secs(2)));
    let slow = env.volume(&pod, "slow", &attrs);
    let started = Instant::now();
    env.publish_ok(&slow).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "published in {took:?}, before the approval"
    );
    assert_eq!(env.requests_for(&slow).await.len(), 1);
    assert!(slow.file("tls.crt").exists());

    assert_eq!(
        env.count_requests("outcomes").await,
        1,
        "only the slow volume's request remains"
    );
    assert!(env.volume_dirs().len() == 1, "{:?}", env.volume_dirs());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_publish_is_resumed_with_the_same_request() {
    if !test_kit::require_root("a_timed_out_publish_is_resumed_with_the_same_request") {
        return;
    }
    let env = Env::start_with(Options {
        publish_timeout: "3s",
        policy: Policy::Ignore,
        controller: true,
    })
    .await;
    let pod = env.create_pod("timeout", "slow-0", "default").await;
    let volume = env.volume(
        &pod,
        "tls",
        &[(keys::ISSUER_NAME, "ca"), (keys::KEY_ALGORITHM, "ECDSA")],
    );

    let started = Instant::now();
    let status = assert_status(
        env.publish(&volume).await,
        Code::DeadlineExceeded,
        "Approved",
        "undecided",
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(15),
        "timed out after {took:?}"
    );
    assert!(
        status.message().contains("not approved"),
        "{}",
        status.message()
    );
    let first = env.only_request(&volume).await.name_any();
    assert!(
        test_kit::mounts_at(&volume.target()).is_empty(),
        "mounted before issuance"
    );

    // A second undecided attempt keeps waiting on the same request.
    assert_status(
        env.publish(&volume).await,
        Code::DeadlineExceeded,
        "Approved",
        "still undecided",
    );
    assert_eq!(env.only_request(&volume).await.name_any(), first);

    // The pod of a second volume goes away while its request is undecided:
    // unpublish removes the pending request, the key's tmpfs and the state.
    let abandoned = env.volume(
        &pod,
        "abandoned",
        &[(keys::ISSUER_NAME, "ca"), (keys::KEY_ALGORITHM, "ECDSA")],
    );
    assert_status(
        env.publish(&abandoned).await,
        Code::DeadlineExceeded,
        "Approved",
        "abandoned",
    );
    assert_eq!(env.requests_for(&abandoned).await.len(), 1);
    assert!(
        env.state_json(&abandoned).is_some(),
        "a timed-out publish keeps its state for the retry"
    );
    env.unpublish(&abandoned.volume_id, &abandoned.target_path)
        .await
        .expect("unpublish of a pending volume");
    env.assert_no_trace(&abandoned).await;

    // An approver appears; the kubelet's retry resumes the same request.
    env.cluster.set_policy(Policy::Approve);
    env.publish_ok(&volume).await;
    assert_eq!(
        env.only_request(&volume).await.name_any(),
        first,
        "the retry made a new request"
    );
    assert_eq!(env.count_requests("timeout").await, 1);
    assert_eq!(env.cluster.signed().await, 1);
    let out = test_kit::openssl_ok(&[
        "verify",
        "-CAfile",
        volume.file("ca.crt").to_str().unwrap(),
        volume.file("tls.crt").to_str().unwrap(),
    ]);
    assert!(out.contains(": OK"), "{out}");
    let from_key = test_kit::openssl_ok(&[
        "pkey",
        "-pubout",
        "-in",
        volume.file("tls.key").to_str().unwrap(),
    ]);
    let from_cert = test_kit::openssl_ok(&[
        "x509",
        "-noout",
        "-pubkey",
        "-in",
        volume.file("tls.crt").to_str().unwrap(),
    ]);
    assert_eq!(
        from_key, from_cert,
        "the resumed key does not match the certificate"
    );
    env.finish().await;
}

// -- target paths (issue 16) --------------------------------------------------

/// A valid certificate volume's attributes for the target-path tests.
const TARGET_BASE: [(&str, &str); 1] = [(keys::ISSUER_NAME, "ca")];

/// Whether anything is mounted at or below `path`, read from
/// /proc/self/mountinfo (the plugin shares the test's mount namespace).
fn mounted_at_or_below(path: &std::path::Path) -> Vec<cert_csi::store::MountEntry> {
    test_kit::mounts_under(path)
}

/// A tmpfs cert-csi never made, holding one file, mounted at `path`.
fn foreign_tmpfs(path: &std::path::Path) {
    std::fs::create_dir_all(path).unwrap();
    nix::mount::mount(
        Some("foreign"),
        path,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64k"),
    )
    .unwrap();
    std::fs::write(path.join("theirs"), "foreign data").unwrap();
}

fn unmount(path: &std::path::Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_over_a_non_empty_directory_outside_the_kubelet_tree_is_refused() {
    if !test_kit::require_root("publish_over_a_non_empty_directory_outside_the_kubelet_tree") {
        return;
    }
    let env = Env::start().await;
    let pod = env.create_pod("outside", "outside-0", "default").await;
    let outside = env.base.join("etc-like");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("passwd"), "root:x:0:0").unwrap();

    let mut v = env.volume(&pod, "tls", &TARGET_BASE);
    v.target_path = outside.display().to_string();
    let status = assert_status(
        env.publish(&v).await,
        Code::InvalidArgument,
        "target_path",
        "target outside the kubelet tree",
    );
    for fragment in ["is not below the kubelet root", "--kubelet-root-dir"] {
        assert!(status.message().contains(fragment), "{}", status.message());
    }
    assert_eq!(
        std::fs::read_to_string(outside.join("passwd")).unwrap(),
        "root:x:0:0"
    );
    assert!(mounted_at_or_below(&outside).is_empty());

    // Inside the tree too, a directory with someone's files is not hidden.
    let inside = env.volume(&pod, "full", &TARGET_BASE);
    std::fs::create_dir(inside.target()).unwrap();
    std::fs::write(inside.target().join("keep"), "x").unwrap();
    assert_status(
        env.publish(&inside).await,
        Code::FailedPrecondition,
        "not empty",
        "non-empty mount directory",
    );
    assert_eq!(
        std::fs::read_to_string(inside.target().join("keep")).unwrap(),
        "x"
    );

    // The pod uid in the path must be the pod's.
    let other = env.create_pod("outside", "outside-1", "default").await;
    let mut swapped = env.volume(&pod, "swapped", &TARGET_BASE);
    swapped.target_path = env.volume(&other, "swapped", &TARGET_BASE).target_path;
    assert_status(
        env.publish(&swapped).await,
        Code::InvalidArgument,
        "csi.storage.k8s.io/pod.uid",
        "another pod's directory",
    );

    // Nothing was created: no request, no state, no mount.
    assert_eq!(env.count_requests("outside").await, 0);
    assert!(env.volume_dirs().is_empty(), "{:?}", env.volume_dirs());
    assert!(mounted_at_or_below(&env.kubelet_root).is_empty());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_in_the_target_path_is_refused_and_nothing_is_mounted_at_its_destination() {
    if !test_kit::require_root("a_symlink_in_the_target_path_is_refused") {
        return;
    }
    let env = Env::start().await;
    let pod = env.create_pod("links", "links-0", "default").await;
    let destination = env.base.join("destination");
    std::fs::create_dir_all(&destination).unwrap();
    std::fs::write(destination.join("keep"), "x").unwrap();

    // The volume's own directory (the target's parent) is a symlink.
    let v = env.volume(&pod, "tls", &TARGET_BASE);
    let parent = v.target().parent().unwrap().to_path_buf();
    std::fs::remove_dir(&parent).unwrap();
    std::os::unix::fs::symlink(&destination, &parent).unwrap();
    let status = assert_status(
        env.publish(&v).await,
        Code::InvalidArgument,
        "target_path",
        "symlink parent",
    );
    assert!(
        status.message().contains("symbolic link"),
        "{}",
        status.message()
    );

    // A symlink higher up (the pod's volumes directory) is refused too.
    let other = env.create_pod("links", "links-1", "default").await;
    let w = env.volume(&other, "tls", &TARGET_BASE);
    let volumes = w.target().ancestors().nth(3).unwrap().to_path_buf();
    assert!(volumes.ends_with("volumes"), "{}", volumes.display());
    std::fs::remove_dir_all(&volumes).unwrap();
    let elsewhere = env.base.join("elsewhere");
    std::fs::create_dir_all(elsewhere.join("kubernetes.io~csi").join("tls")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &volumes).unwrap();
    assert_status(
        env.publish(&w).await,
        Code::InvalidArgument,
        "symbolic link",
        "symlink higher up",
    );

    // The target itself may not be a symlink either.
    let third = env.volume(&pod, "direct", &TARGET_BASE);
    std::os::unix::fs::symlink(&destination, third.target()).unwrap();
    assert_status(
        env.publish(&third).await,
        Code::InvalidArgument,
        "symbolic link",
        "symlink target",
    );

    // Nothing was mounted at a destination, per the mount table, and
    // nothing was created there.
    for dir in [&destination, &elsewhere] {
        let mounted = mounted_at_or_below(dir);
        assert!(
            mounted.is_empty(),
            "mounted at {}: {mounted:?}",
            dir.display()
        );
    }
    assert!(!destination.join("mount").exists());
    assert!(!elsewhere.join("kubernetes.io~csi/tls/mount").exists());
    assert_eq!(
        std::fs::read_to_string(destination.join("keep")).unwrap(),
        "x"
    );
    assert!(mounted_at_or_below(&env.kubelet_root).is_empty());
    assert_eq!(env.count_requests("links").await, 0);
    assert!(env.volume_dirs().is_empty(), "{:?}", env.volume_dirs());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_with_an_unrelated_volume_id_leaves_foreign_mounts_and_directories() {
    if !test_kit::require_root("unpublish_with_an_unrelated_volume_id") {
        return;
    }
    let env = Env::start().await;
    let pod = env.create_pod("foreign", "foreign-0", "default").await;
    let ours = env.volume(&pod, "tls", &TARGET_BASE);
    env.publish_ok(&ours).await;

    // Another driver's tmpfs in the kubelet tree, busy (a process holds a
    // file open in it), and a directory with files next to it.
    let theirs = env.volume(&pod, "other-driver", &TARGET_BASE);
    foreign_tmpfs(&theirs.target());
    let busy = std::fs::File::open(theirs.target().join("theirs")).unwrap();
    let dir_only = env.volume(&pod, "plain", &TARGET_BASE);
    std::fs::create_dir(dir_only.target()).unwrap();
    std::fs::write(dir_only.target().join("file"), "x").unwrap();
    let empty = env.volume(&pod, "empty", &TARGET_BASE);
    std::fs::create_dir(empty.target()).unwrap();

    let unrelated = test_kit::kubelet_volume_id("no-such-pod", "no-such-volume");
    for target in [&theirs, &dir_only, &empty, &ours] {
        // Nothing of an unknown volume is there: success, nothing touched.
        env.unpublish(&unrelated, &target.target_path)
            .await
            .unwrap_or_else(|s| panic!("{}: {}", target.volume_name, s.message()));
    }
    // A known volume id with another volume's target is refused.
    for target in [&theirs, &dir_only, &empty] {
        assert_status(
            env.unpublish(&ours.volume_id, &target.target_path).await,
            Code::InvalidArgument,
            "published at another target path",
            "known id, other target",
        );
    }

    let mounted = test_kit::mounts_at(&theirs.target());
    assert_eq!(
        mounted.len(),
        1,
        "the foreign tmpfs is still mounted: {mounted:?}"
    );
    assert_eq!(mounted[0].source, "foreign");
    assert_eq!(
        std::fs::read_to_string(theirs.target().join("theirs")).unwrap(),
        "foreign data"
    );
    assert!(dir_only.target().join("file").exists());
    assert!(
        empty.target().is_dir(),
        "an empty directory of nobody's stays"
    );
    assert_eq!(
        test_kit::mounts_at(&ours.target()).len(),
        1,
        "our volume stays"
    );
    assert!(ours.target().join("tls.crt").exists());

    // The real unpublish still works, and touches only its own mount.
    env.unpublish(&ours.volume_id, &ours.target_path)
        .await
        .unwrap();
    assert!(test_kit::mounts_at(&ours.target()).is_empty());
    assert!(!ours.target().exists());
    assert_eq!(test_kit::mounts_at(&theirs.target()).len(), 1);

    drop(busy);
    unmount(&theirs.target());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_outside_the_kubelet_tree_removes_nothing() {
    if !test_kit::require_root("unpublish_outside_the_kubelet_tree_removes_nothing") {
        return;
    }
    let env = Env::start().await;
    let pod = env.create_pod("away", "away-0", "default").await;
    let ours = env.volume(&pod, "tls", &TARGET_BASE);
    env.publish_ok(&ours).await;

    let empty = env.base.join("some-empty-dir");
    std::fs::create_dir_all(&empty).unwrap();
    let mounted = env.base.join("some-tmpfs");
    foreign_tmpfs(&mounted);
    // Outside the tree, and in the tree through a symlink to the outside.
    let link = env.volume(&pod, "link", &TARGET_BASE);
    let link_parent = link.target().parent().unwrap().to_path_buf();
    std::fs::remove_dir(&link_parent).unwrap();
    std::os::unix::fs::symlink(env.base.join("linked"), &link_parent).unwrap();
    std::fs::create_dir_all(env.base.join("linked").join("mount")).unwrap();

    for id in [
        ours.volume_id.clone(),
        test_kit::kubelet_volume_id("nobody", "nothing"),
    ] {
        for path in [&empty, &mounted] {
            let status = assert_status(
                env.unpublish(&id, &path.display().to_string()).await,
                Code::InvalidArgument,
                "target_path",
                "outside the tree",
            );
            assert!(
                status.message().contains("is not below the kubelet root"),
                "{}",
                status.message()
            );
        }
        // The symlinked path is never followed: nothing of ours is there.
        let _ = env.unpublish(&id, &link.target_path).await;
    }
    assert!(empty.is_dir(), "the empty directory outside stays");
    assert_eq!(
        test_kit::mounts_at(&mounted).len(),
        1,
        "the tmpfs outside stays"
    );
    assert!(mounted.join("theirs").exists());
    assert!(env.base.join("linked").join("mount").is_dir());
    assert_eq!(
        test_kit::mounts_at(&ours.target()).len(),
        1,
        "our volume stays"
    );

    env.unpublish(&ours.volume_id, &ours.target_path)
        .await
        .unwrap();
    assert!(test_kit::mounts_at(&ours.target()).is_empty());
    unmount(&mounted);
    env.finish().await;
}
