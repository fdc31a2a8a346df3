//! Two `cert-csi controller` processes on one API server, electing a leader
//! on a `coordination.k8s.io` Lease (issue 18).
//!
//! - The leader is SIGKILLed in the middle of a burst of 1,000
//!   CertificateRequests: the standby takes the Lease once it has gone
//!   unrenewed for the lease duration (not earlier, and within a few retry
//!   periods after), every request ends up signed, and none is signed twice
//!   (a watch sees every certificate each request ever carried).
//! - The leader loses the API (its connection goes through a proxy the test
//!   black-holes) while the standby keeps it: the leader's process has
//!   exited before the time the standby wrote as its acquireTime.
//!
//! Both run on the backend `CERT_CSI_TEST_API` names; hack/test runs them
//! on the real kube-apiserver.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cert_csi::api::{CertificateRequest, ClusterIssuer, IssuerRef};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::watcher;
use test_kit::real::ApiServer;
use test_kit::{Backend, create_namespace};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::signer::{ca_spec, key, make_ca, request};

const CLUSTER_NS: &str = "cert-manager";
const LEASE: &str = "cert-csi-controller";

/// Short timings so the tests take seconds; the same ratios as the
/// defaults' (60s/40s/15s) would make them minutes.
pub(crate) struct Timings {
    pub lease: Duration,
    pub renew: Duration,
    pub retry: Duration,
}

/// One `cert-csi controller` process; SIGKILLed and reaped on drop.
pub(crate) struct Replica {
    name: &'static str,
    child: Arc<Mutex<Child>>,
    log: PathBuf,
}

impl Replica {
    fn start(name: &'static str, kubeconfig: &Path, timings: &Timings) -> Replica {
        Replica::start_with(name, kubeconfig, timings, &[])
    }

    /// [`Replica::start`] with more controller flags.
    pub(crate) fn start_with(
        name: &'static str,
        kubeconfig: &Path,
        timings: &Timings,
        extra: &[String],
    ) -> Replica {
        let log = test_kit::test_log_path(&format!("leader-{name}"));
        let file = std::fs::File::options().append(true).open(&log).unwrap();
        let go = |d: Duration| format!("{}ms", d.as_millis());
        let child = Command::new(env!("CARGO_BIN_EXE_cert-csi"))
            .args(["--log-level", "debug", "controller"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--metrics-address", "127.0.0.1:0"])
            .arg(format!("--cluster-resource-namespace={CLUSTER_NS}"))
            .arg(format!("--leader-election-namespace={CLUSTER_NS}"))
            .arg(format!(
                "--leader-election-lease-duration={}",
                go(timings.lease)
            ))
            .arg(format!(
                "--leader-election-renew-deadline={}",
                go(timings.renew)
            ))
            .arg(format!(
                "--leader-election-retry-period={}",
                go(timings.retry)
            ))
            .args(extra)
            // The Lease's holder identity starts with this.
            .env("POD_NAME", name)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn cert-csi controller");
        Replica {
            name,
            child: Arc::new(Mutex::new(child)),
            log,
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log until it holds `phrase` (or fails after `within`).
    pub(crate) async fn await_log(&self, phrase: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log().contains(phrase) {
            assert!(
                Instant::now() < deadline,
                "{} never logged {phrase:?}:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn running(&self) -> bool {
        self.child.lock().unwrap().try_wait().unwrap().is_none()
    }

    fn kill(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- last lines of {}'s log ----", self.name);
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        self.kill();
    }
}

fn holder(lease: &Lease) -> String {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

fn stamp(t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>) -> jiff::Timestamp {
    t.as_ref().expect("the Lease carries the time").0
}

/// Polls the Lease until `replica` holds it.
async fn await_holder(leases: &Api<Lease>, replica: &str, within: Duration) -> Lease {
    let deadline = Instant::now() + within;
    loop {
        if let Some(lease) = leases.get_opt(LEASE).await.unwrap()
            && holder(&lease).starts_with(&format!("{replica}_"))
        {
            return lease;
        }
        assert!(
            Instant::now() < deadline,
            "{replica} never held the Lease: {:?}",
            leases.get_opt(LEASE).await.unwrap().and_then(|l| l.spec)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An API server with the two namespaces and a CA ClusterIssuer `ca`.
async fn cluster(dir: &Path) -> (ApiServer, kube::Client, PathBuf, String) {
    let (server, client, kubeconfig) = ApiServer::start_in(Backend::from_env(), dir, 100_000).await;
    create_namespace(&client, CLUSTER_NS).await;
    create_namespace(&client, "team").await;
    let ca = make_ca("failover CA", None);
    crate::signer::create_secret(&client, CLUSTER_NS, "ca-key", &ca).await;
    Api::<ClusterIssuer>::all(client.clone())
        .create(
            &PostParams::default(),
            &ClusterIssuer::new("ca", ca_spec("ca-key")),
        )
        .await
        .expect("cluster issuer created");
    (server, client, kubeconfig, ca.cert_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_burst_hands_over_without_signing_twice_or_leaving_any() {
    const REQUESTS: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let (_server, client, kubeconfig, ca_pem) = cluster(dir.path()).await;
    // Short, but with room for the renewals of a replica signing a burst on
    // a loaded 2-core machine (3 s deadlines were missed there).
    let timings = Timings {
        lease: Duration::from_secs(8),
        renew: Duration::from_secs(6),
        retry: Duration::from_secs(2),
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), CLUSTER_NS);
    let a = Replica::start("replica-a", &kubeconfig, &timings);
    await_holder(&leases, "replica-a", Duration::from_secs(60)).await;
    let b = Replica::start("replica-b", &kubeconfig, &timings);
    b.await_log(
        "another replica leads; standing by",
        Duration::from_secs(60),
    )
    .await;

    // Every certificate each request ever carried, from a watch that
    // started before the first request.
    let requests: Api<CertificateRequest> = Api::namespaced(client.clone(), "team");
    let seen: Arc<Mutex<HashMap<String, HashSet<String>>>> = Arc::default();
    let watch = {
        let seen = seen.clone();
        let stream = watcher(requests.clone(), watcher::Config::default());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let objects = match event {
                    Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r)) => vec![r],
                    _ => continue,
                };
                let mut seen = seen.lock().unwrap();
                for r in objects {
                    if let Some(pem) = r
                        .status
                        .as_ref()
                        .and_then(|s| s.certificate_pem().ok().flatten())
                    {
                        seen.entry(r.metadata.name.clone().unwrap())
                            .or_default()
                            .insert(pem.to_owned());
                    }
                }
            }
        })
    };
    let signed = |seen: &Mutex<HashMap<String, HashSet<String>>>| seen.lock().unwrap().len();

    // The burst: created 16 at a time while the leader is killed.
    let issuer = IssuerRef {
        name: "ca".into(),
        kind: Some("ClusterIssuer".into()),
        group: Some("cert-manager.io".into()),
    };
    let create = {
        let requests = requests.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..REQUESTS)
                .map(|i| {
                    let requests = requests.clone();
                    let r = request(&format!("burst-{i:04}"), issuer.clone(), &key(), None, &[]);
                    async move {
                        requests
                            .create(&PostParams::default(), &r)
                            .await
                            .map(|_| ())
                    }
                })
                .buffer_unordered(16)
                .try_collect::<Vec<()>>()
                .await
                .expect("every request is created")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while signed(&seen) < 50 {
        assert!(
            Instant::now() < deadline,
            "the leader signed fewer than 50 requests in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill();
    let at_kill = signed(&seen);
    assert!(
        at_kill < REQUESTS,
        "the leader signed all {REQUESTS} before it was killed; the burst proves nothing"
    );
    // A is dead: the Lease now holds its last renewal for good.
    let last_of_a = leases.get(LEASE).await.unwrap();
    assert!(
        holder(&last_of_a).starts_with("replica-a_"),
        "{:?}",
        last_of_a.spec
    );
    create.await.unwrap();

    let taken = await_holder(&leases, "replica-b", Duration::from_secs(120)).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = signed(&seen);
        if done == REQUESTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {REQUESTS} requests are signed 300 s after the burst; the rest were left unsigned",
            done
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.abort();
    eprintln!("{at_kill} of {REQUESTS} were signed when the leader was killed");

    // Nothing signed twice: each request carried exactly one certificate.
    let twice: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, certs)| certs.len() > 1)
        .map(|(name, certs)| format!("{name}: {} certificates", certs.len()))
        .collect();
    assert!(twice.is_empty(), "signed more than once: {twice:?}");

    // The handover, by the times the two replicas wrote in the Lease: not
    // before A's last renewal had gone unrenewed for the lease duration,
    // and within a few retry periods after it (one to notice the renewal,
    // one to look again, one for the write and a loaded machine).
    let renewed = stamp(&last_of_a.spec.as_ref().unwrap().renew_time);
    let acquired = stamp(&taken.spec.as_ref().unwrap().acquire_time);
    let gap = acquired.duration_since(renewed).unsigned_abs();
    assert!(
        acquired > renewed,
        "B acquired ({acquired}) before A's last renewal ({renewed})"
    );
    assert!(
        gap >= timings.lease,
        "B took the Lease {gap:?} after A's last renewal, before the lease duration {:?}",
        timings.lease
    );
    assert!(
        gap <= timings.lease + 3 * timings.retry,
        "B took the Lease {gap:?} after A's last renewal; expected within the lease duration {:?} and three retry periods",
        timings.lease
    );
    assert_eq!(taken.spec.as_ref().unwrap().lease_transitions, Some(1));

    // Every certificate chains to the CA, judged by openssl.
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("ca.pem"), &ca_pem).unwrap();
    let mut files = Vec::new();
    for (name, certs) in seen.lock().unwrap().iter() {
        let path = scratch.path().join(format!("{name}.pem"));
        std::fs::write(&path, certs.iter().next().unwrap()).unwrap();
        files.push(path.display().to_string());
    }
    let ca_file = scratch.path().join("ca.pem").display().to_string();
    let mut args = vec!["verify", "-CAfile", ca_file.as_str()];
    args.extend(files.iter().map(String::as_str));
    let out = test_kit::openssl_ok(&args);
    assert_eq!(out.matches(": OK").count(), REQUESTS, "{out}");

    // B, the leader now, still runs.
    assert!(
        b.child.lock().unwrap().try_wait().unwrap().is_none(),
        "B exited"
    );
}

/// A TCP proxy in front of the API server that the test can black-hole:
/// after `cut`, open connections stay open and silent, and new ones are
/// accepted and never answered, as when a node loses its network.
struct Proxy {
    addr: SocketAddr,
    cut: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = tokio_util::sync::CancellationToken::new();
        let token = cut.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            let mut held = Vec::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if token.is_cancelled() {
                    held.push(inbound);
                    continue;
                }
                let token = token.clone();
                connections.spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = token.cancelled() => std::future::pending::<()>().await,
                    }
                });
            }
        });
        Proxy { addr, cut, task }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A copy of `kubeconfig` whose server is `via` instead (same scheme; the
/// server's certificate names 127.0.0.1, whatever the port).
fn kubeconfig_via(kubeconfig: &Path, via: SocketAddr, out: &Path) -> SocketAddr {
    let mut config: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    let server = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("the kubeconfig names a server")
        .to_owned();
    let url = url::Url::parse(&server).unwrap();
    let upstream = SocketAddr::new(
        url.host_str()
            .unwrap()
            .parse()
            .expect("the server is an IP address"),
        url.port_or_known_default().unwrap(),
    );
    let mut proxied = url.clone();
    proxied.set_port(Some(via.port())).unwrap();
    config["clusters"][0]["cluster"]["server"] =
        serde_yaml_ng::Value::String(proxied.as_str().trim_end_matches('/').to_owned());
    std::fs::write(out, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    upstream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_stops_before_another_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client, kubeconfig, _) = cluster(dir.path()).await;
    // The margin between the renew deadline and the lease duration is the
    // time the cut-off leader has to stop; 4 s here, as 20 s by default.
    let timings = Timings {
        lease: Duration::from_secs(10),
        renew: Duration::from_secs(6),
        retry: Duration::from_secs(2),
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), CLUSTER_NS);
    // A reaches the API only through the proxy.
    let proxied = dir.path().join("kubeconfig-a");
    let placeholder = kubeconfig_via(&kubeconfig, "127.0.0.1:1".parse().unwrap(), &proxied);
    let proxy = Proxy::start(placeholder).await;
    kubeconfig_via(&kubeconfig, proxy.addr, &proxied);
    let a = Replica::start("replica-a", &proxied, &timings);
    await_holder(&leases, "replica-a", Duration::from_secs(60)).await;
    let b = Replica::start("replica-b", &kubeconfig, &timings);
    b.await_log(
        "another replica leads; standing by",
        Duration::from_secs(60),
    )
    .await;

    // A's exit, timed by the wall clock the Lease's times use (polled
    // every 5 ms, so the time noted is at most that much late: the
    // comparison below can only be made harder by it).
    let exited: Arc<Mutex<Option<(jiff::Timestamp, std::process::ExitStatus)>>> = Arc::default();
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let waiter = {
        let (child, exited, watching) = (a.child.clone(), exited.clone(), watching.clone());
        std::thread::spawn(move || {
            while watching.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(Some(status)) = child.lock().unwrap().try_wait() {
                    *exited.lock().unwrap() = Some((jiff::Timestamp::now(), status));
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    proxy.cut.cancel();

    let taken = await_holder(&leases, "replica-b", Duration::from_secs(60)).await;
    let acquired = stamp(&taken.spec.as_ref().unwrap().acquire_time);
    let deadline = Instant::now() + Duration::from_secs(30);
    while exited.lock().unwrap().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    waiter.join().unwrap();
    let exit = *exited.lock().unwrap();
    let Some((stopped, status)) = exit else {
        panic!("A still runs 30 s after B took the Lease at {acquired}")
    };
    assert!(
        stopped < acquired,
        "A exited at {stopped}, after B acquired the Lease at {acquired}"
    );
    assert!(
        !status.success(),
        "A exited successfully after losing the Lease: {status}"
    );
    a.await_log("leader election lost", Duration::from_secs(1))
        .await;
    eprintln!(
        "A stopped {:?} before B acquired",
        acquired.duration_since(stopped).unsigned_abs()
    );
}
