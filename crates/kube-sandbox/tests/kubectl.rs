//! The real kubectl against the sandbox: the independent check that the
//! sandbox speaks real Kubernetes. kubectl is a separate process, so the
//! sandbox can serve from this test process, on a runtime of its own.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kube_sandbox::{Sandbox, SandboxConfig};
use serde_json::Value;

/// Kills a child process by pid when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// The sandbox and the runtime it serves on; both stop when dropped.
struct Served {
    runtime: tokio::runtime::Runtime,
    sandbox: Option<Sandbox>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(sandbox) = self.sandbox.take() {
            self.runtime.block_on(sandbox.shutdown());
        }
    }
}

struct Env {
    served: Served,
    dir: tempfile::TempDir,
}

impl Env {
    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        // A private HOME keeps kubectl's discovery cache out of the user's.
        c.args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.dir.path())
            .current_dir(crate_dir());
        c
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("kubectl runs");
        assert_ok(args, &out);
        String::from_utf8(out.stdout).unwrap()
    }
}

fn assert_ok(args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "kubectl {} failed: {}\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The crate's directory, which kubectl runs in and fixture paths start from.
fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn kubectl_present() -> bool {
    Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn start_sandbox() -> Env {
    let dir = tempfile::tempdir().unwrap();
    // Worker threads keep serving kubectl while the test thread waits on it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sandbox = runtime
        .block_on(Sandbox::start(SandboxConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            kubeconfig: Some(dir.path().join("kubeconfig")),
            crds: Vec::new(),
            watch_window: 10_000,
        }))
        .expect("the sandbox starts");
    Env {
        served: Served {
            runtime,
            sandbox: Some(sandbox),
        },
        dir,
    }
}

/// Removes what the server adds, so an object compares with what was applied.
fn strip_server_fields(v: &mut Value) {
    let m = v["metadata"].as_object_mut().unwrap();
    for k in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
    ] {
        m.remove(k);
    }
    if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

#[test]
fn kubectl_drives_the_sandbox() {
    if !kubectl_present() {
        assert!(std::env::var("CI").is_err(), "kubectl is required in CI");
        eprintln!("skipping: kubectl is not installed");
        return;
    }
    let env = start_sandbox();

    let out = env.kubectl(&["version", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["serverVersion"]["gitVersion"], "v1.33.0+cert-csi-sandbox",
        "the sandbox says what it is"
    );

    // CRDs applied with client-side validation on.
    let out = env.kubectl(&["apply", "-f", "tests/fixtures/crds/"]);
    for want in [
        "customresourcedefinition.apiextensions.k8s.io/orders.shop.example.com created",
        "customresourcedefinition.apiextensions.k8s.io/warehouses.shop.example.com created",
    ] {
        assert!(out.contains(want), "{want} in {out}");
    }
    let out = env.kubectl(&["create", "namespace", "shop"]);
    assert_eq!(out.trim(), "namespace/shop created");

    let out = env.kubectl(&["apply", "-f", "tests/fixtures/objects/"]);
    for want in [
        "order.shop.example.com/first-order created",
        "warehouse.shop.example.com/north created",
    ] {
        assert!(out.contains(want), "{want} in {out}");
    }
    // Applying again is a no-op, through the server's patch path.
    let out = env.kubectl(&["apply", "-f", "tests/fixtures/objects/"]);
    assert!(
        out.contains("warehouse.shop.example.com/north unchanged"),
        "{out}"
    );
    // Printer columns come through the server-side Table; the Ready column
    // of an Order without status is empty.
    let out = env.kubectl(&["get", "ord", "-A"]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        vec!["NAMESPACE", "NAME", "READY", "CUSTOMER", "QUANTITY", "AGE"]
    );
    let row: Vec<&str> = lines
        .next()
        .expect("one order")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..4], &["shop", "first-order", "alice", "3"]);

    // The Warehouse reads back as applied, plus server fields.
    let out = env.kubectl(&["get", "wh", "north", "-n", "shop", "-o", "yaml"]);
    let mut got: Value = serde_yaml_ng::from_str(&out).unwrap();
    assert!(got["metadata"]["uid"].is_string() && got["metadata"]["resourceVersion"].is_string());
    strip_server_fields(&mut got);
    let want: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(crate_dir().join("tests/fixtures/objects/warehouse.yaml"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(got, want);
    // The robots block is kept as written (preserve-unknown-fields).
    assert_eq!(got["spec"]["robots"]["fleet"][0]["lift"]["kg"], 500);

    // Label selectors.
    let out = env.kubectl(&[
        "get",
        "ord,wh",
        "-n",
        "shop",
        "-l",
        "tier=frontend",
        "-o",
        "name",
    ]);
    assert_eq!(out.trim(), "warehouse.shop.example.com/north");
    let out = env.kubectl(&[
        "get",
        "ord,wh",
        "-n",
        "shop",
        "-l",
        "tier notin (frontend)",
        "-o",
        "name",
    ]);
    assert_eq!(out.trim(), "order.shop.example.com/first-order");

    // A watch sees a Secret created by another client (kube::Client).
    let mut watch = env.command(&["get", "secrets", "-n", "shop", "--watch"]);
    let mut child = watch
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let watch_guard = Killed(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Give kubectl time to list and open its watch before the write.
    std::thread::sleep(Duration::from_millis(1500));
    env.served.runtime.block_on(async {
        let client = env.served.sandbox.as_ref().unwrap().client();
        let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(client, "shop");
        let s = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "watched-secret"}, "stringData": {"a": "b"}}),
        )
        .unwrap();
        api.create(&Default::default(), &s).await.unwrap();
    });
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(line) => {
                let hit = line.contains("watched-secret");
                seen.push(line);
                if hit {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    drop(watch_guard);
    assert!(found, "kubectl --watch printed: {seen:?}");
    assert!(
        seen.iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["NAME", "TYPE", "DATA", "AGE"]),
        "{seen:?}"
    );

    // Delete, then it is gone.
    let out = env.kubectl(&["delete", "wh", "north", "-n", "shop"]);
    assert_eq!(out.trim(), r#"warehouse.shop.example.com "north" deleted"#);
    let out = env
        .command(&["get", "wh", "north", "-n", "shop"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"warehouses.shop.example.com "north" not found"#),
        "{err}"
    );
}

#[test]
fn kubectl_creates_service_account_tokens() {
    if !kubectl_present() {
        return;
    }
    let env = start_sandbox();
    let token = env.kubectl(&["create", "token", "default", "-n", "default"]);
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "JWT-shaped: {token}");
    // kubectl (client-go) sends credentials only over TLS, so against the
    // plain-HTTP sandbox a --token is dropped and requests stay anonymous;
    // tests/auth.rs uses tokens through kube::Client instead.
    let out = env
        .command(&["create", "token", "nobody", "-n", "default"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"serviceaccounts "nobody" not found"#),
        "{err}"
    );
    let log: Value =
        serde_json::from_str(&env.kubectl(&["get", "--raw", "/sandbox/requests"])).unwrap();
    assert!(
        log.as_array().unwrap().iter().any(|r| r["verb"] == "create"
            && r["resource"] == "serviceaccounts"
            && r["subresource"] == "token"),
        "{log}"
    );
    assert!(
        !log.to_string().contains(token),
        "the log never holds a token"
    );
    let out = env.kubectl(&[
        "get",
        "mutatingwebhookconfigurations,validatingwebhookconfigurations",
    ]);
    assert!(out.trim().is_empty(), "{out}");
}
