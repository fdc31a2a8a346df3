//! The operator's commands on a node (issue 18): `cert-csi status` reads
//! the plugin's state and `cert-csi inspect` a volume directory, both as
//! the real binary, judged by openssl's reading of the same files.

use std::process::Command;

use cert_csi::volume::keys;
use test_kit::Env;

/// Runs `cert-csi <args>` and returns stdout; fails the test on an error.
pub(crate) fn cert_csi(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cert-csi"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("DATA_ROOT")
        .output()
        .expect("cert-csi runs");
    assert!(
        out.status.success(),
        "cert-csi {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What openssl says of a certificate file: `-serial` and `-enddate` with
/// ISO 8601 dates.
fn openssl_facts(path: &std::path::Path) -> (String, String) {
    let text = test_kit::openssl_ok(&[
        "x509",
        "-in",
        path.to_str().unwrap(),
        "-noout",
        "-serial",
        "-enddate",
        "-dateopt",
        "iso_8601",
    ]);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("openssl printed no {name}: {text}"))
            .trim()
            .to_owned()
    };
    (field("serial="), field("notAfter="))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_inspect_show_a_published_volume_without_its_key() {
    if !test_kit::require_root("status_and_inspect_show_a_published_volume_without_its_key") {
        return;
    }
    let env = Env::start().await;
    let pod = env.create_pod("team-o", "web-0", "web").await;
    let volume = env.volume(
        &pod,
        "tls",
        &[
            (keys::ISSUER_NAME, "ca"),
            (keys::DNS_NAMES, "${POD_NAME}.${POD_NAMESPACE}.svc"),
        ],
    );
    env.publish_ok(&volume).await;
    let (serial, not_after) = openssl_facts(&volume.file("tls.crt"));

    // status: the volume, its pod, its request and its expiry as openssl
    // reads it (`2026-12-08 01:02:03Z` there, RFC 3339 here).
    let data_root = env.data_root.display().to_string();
    let json: serde_json::Value = serde_json::from_str(&cert_csi(&[
        "status",
        "--data-root",
        &data_root,
        "-o",
        "json",
    ]))
    .unwrap();
    let rows = json.as_array().expect("a list");
    assert_eq!(rows.len(), 1, "{json}");
    let row = &rows[0];
    assert_eq!(row["pod"], "team-o/web-0");
    assert_eq!(row["volumeId"], volume.volume_id.as_str());
    assert_eq!(row["phase"], "issued");
    let request = env.only_request(&volume).await;
    assert_eq!(
        row["request"],
        format!("team-o/{}", request.metadata.name.unwrap())
    );
    assert_eq!(row["notAfter"], not_after.replace(' ', "T"));
    assert!(row["nextRenewal"].is_string(), "{row}");
    assert_eq!(row["lastError"], serde_json::Value::Null);
    let text = cert_csi(&["status", "--data-root", &data_root]);
    assert!(
        text.contains("team-o/web-0") && text.contains("1 volume(s)"),
        "{text}"
    );

    // inspect: the pod's files, with the serial openssl reads, the leaf
    // chained to ca.crt, and the key checked but never printed.
    let summary = cert_csi(&["inspect", &volume.target_path]);
    assert!(summary.contains(&format!("serial: {serial}")), "{summary}");
    assert!(
        summary.contains("tls.crt verifies against ca.crt"),
        "{summary}"
    );
    assert!(
        summary.contains("tls.key: private key (not shown) matches the leaf of tls.crt"),
        "{summary}"
    );
    assert!(summary.contains("DNS:web-0.team-o.svc"), "{summary}");
    for output in [&summary, &text] {
        assert!(test_kit::secret_lines(output).is_empty(), "{output}");
    }

    // A directory that is not a data root is refused, naming the flag.
    let out = Command::new(env!("CARGO_BIN_EXE_cert-csi"))
        .args([
            "status",
            "--data-root",
            &env.kubelet_root.display().to_string(),
        ])
        .env_remove("DATA_ROOT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data-root"));
    env.finish().await;
}
