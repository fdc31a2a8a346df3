//! The requester-identity webhook on two controller replicas behind one
//! address, with lifetimes short enough that both leaves and CAs rotate
//! while the API server keeps calling it (issue 18).
//!
//! A round-robin TCP proxy stands in for the Service in front of the
//! replicas (no kube-proxy runs here), and the configuration's URL names
//! it. For 40 s:
//! - every 250 ms, a dry-run CertificateRequest create through the API
//!   server must come back mutated by the webhook: not one may fail;
//! - every second, each replica's serving certificate must verify with
//!   `openssl s_client` against the `caBundle` the configuration holds at
//!   that moment, for the address the API server calls.
//!
//! Then each replica must have served several leaves from at least two
//! CAs, and the CAs the replicas started with, expired by then, must be
//! gone from the bundle.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Api;
use test_kit::real::ApiServer;
use test_kit::{Backend, create_namespace};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::leader::{Replica, Timings};

const CONFIGURATION: &str = "cert-csi-webhook";

/// A free loopback port (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Hands each connection to the next backend in turn, as a Service does.
async fn round_robin(backends: Vec<SocketAddr>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut next = 0;
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let backend = backends[next % backends.len()];
            next += 1;
            connections.spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, task)
}

/// The PEM bundle of the webhook configuration now.
async fn bundle(api: &Api<MutatingWebhookConfiguration>) -> Option<String> {
    let config = api.get_opt(CONFIGURATION).await.unwrap()?;
    let hook = config.webhooks?.into_iter().next()?;
    Some(String::from_utf8(hook.client_config.ca_bundle?.0).unwrap())
}

/// The certificates of a PEM bundle, base64 DER each (to compare).
fn members(pem_text: &str) -> BTreeSet<String> {
    pem::parse_many(pem_text.as_bytes())
        .unwrap()
        .iter()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(p.contents()))
        .collect()
}

/// What `openssl s_client` makes of `port`, verified against `bundle` for
/// the IP address 127.0.0.1: the leaf's serial and issuer, or why not.
fn served_leaf(port: u16, bundle_file: &std::path::Path) -> Result<(String, String), String> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .arg("-CAfile")
        .arg(bundle_file)
        .args(["-verify_return_error", "-verify_ip", "127.0.0.1"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || !text.contains("Verify return code: 0 (ok)") {
        return Err(format!(
            "{}{}",
            text.lines()
                .filter(|l| l.contains("erify"))
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = text.find("-----END CERTIFICATE-----").expect("its end") + 25;
    let dir = tempfile::tempdir().unwrap();
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&leaf, &text[start..end]).unwrap();
    let facts = test_kit::openssl_ok(&[
        "x509",
        "-in",
        leaf.to_str().unwrap(),
        "-noout",
        "-serial",
        "-issuer",
    ]);
    let field = |name: &str| {
        facts
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    Ok((field("serial="), field("issuer=")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_through_leaf_and_ca_rotations_without_a_failed_call() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client, kubeconfig) =
        ApiServer::start_in(Backend::from_env(), dir.path(), 10_000).await;
    create_namespace(&client, test_kit::CLUSTER_NS).await;
    let ports = [free_port(), free_port()];
    let (service, _proxy) = round_robin(
        ports
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect(),
    )
    .await;
    // A CA lives 30 s (renewed after 20, used 3 s after it is published);
    // a leaf 9 s (renewed after 6).
    let timings = Timings {
        lease: Duration::from_secs(4),
        renew: Duration::from_secs(3),
        retry: Duration::from_secs(1),
    };
    let replicas: Vec<Replica> = [("replica-a", ports[0]), ("replica-b", ports[1])]
        .into_iter()
        .map(|(name, port)| {
            Replica::start_with(
                name,
                &kubeconfig,
                &timings,
                &[
                    "--webhook".into(),
                    "--webhook-configure".into(),
                    format!("--webhook-address=127.0.0.1:{port}"),
                    format!("--webhook-url=https://{service}/mutate-certificaterequests"),
                    "--webhook-ca-duration=30s".into(),
                    "--webhook-leaf-duration=9s".into(),
                ],
            )
        })
        .collect();
    for r in &replicas {
        r.await_log("webhook serving", Duration::from_secs(60))
            .await;
    }
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let first = bundle(&configurations)
        .await
        .expect("the configuration has a bundle");
    let first_cas = members(&first);
    assert_eq!(first_cas.len(), 2, "one CA per replica:\n{first}");
    test_kit::await_webhook(&client).await;

    let scratch = tempfile::tempdir().unwrap();
    let bundle_file = scratch.path().join("bundle.pem");
    let mut served: HashMap<u16, Vec<(String, String)>> = HashMap::new();
    let mut calls = 0;
    let mut failures = Vec::new();
    let end = Instant::now() + Duration::from_secs(40);
    let mut next_check = Instant::now();
    while Instant::now() < end {
        if let Err(why) = test_kit::probe_webhook(&client).await {
            failures.push(why);
        }
        calls += 1;
        if Instant::now() >= next_check {
            next_check += Duration::from_secs(1);
            let now = bundle(&configurations).await.expect("the bundle stays");
            std::fs::write(&bundle_file, &now).unwrap();
            for port in ports {
                match served_leaf(port, &bundle_file) {
                    Ok(leaf) => served.entry(port).or_default().push(leaf),
                    Err(why) => panic!(
                        "replica on port {port} serves a certificate the bundle does not verify: {why}\nbundle:\n{now}"
                    ),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {calls} webhook calls through the API server failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    for (port, leaves) in &served {
        let serials: BTreeSet<&String> = leaves.iter().map(|(s, _)| s).collect();
        let issuers: BTreeSet<&String> = leaves.iter().map(|(_, i)| i).collect();
        assert!(
            serials.len() >= 4,
            "port {port} served {} leaves in 40 s, expected one per 6 s: {serials:?}",
            serials.len()
        );
        assert!(
            issuers.len() >= 2,
            "port {port} served leaves of {} CA(s); the CA never rotated: {issuers:?}",
            issuers.len()
        );
    }
    let last = members(&bundle(&configurations).await.unwrap());
    assert!(
        last.is_disjoint(&first_cas),
        "the first CAs expired 30 s in, and are still in the bundle"
    );
    for r in &replicas {
        assert!(r.running(), "{} stopped:\n{}", "a replica", r.log());
    }
    let counts: Vec<String> = served
        .iter()
        .map(|(port, leaves)| {
            let serials: BTreeSet<&String> = leaves.iter().map(|(s, _)| s).collect();
            format!("port {port}: {} leaves", serials.len())
        })
        .collect();
    eprintln!("{calls} webhook calls, none failed; {counts:?}");
}
