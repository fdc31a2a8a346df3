//! Sandbox benchmarks (`cargo bench -p kube-sandbox --bench sandbox`).
//! Prints numbers from one run; it asserts nothing.
//!
//! - create throughput: small Secrets POSTed over HTTP/1.1 keep-alive
//!   connections (a minimal client, so the client costs little CPU on the
//!   same two cores), against an in-process sandbox;
//! - watch latency: time from sending a create to reading its ADDED event on
//!   an open watch, one write at a time;
//! - resident memory: VmRSS from /proc/PID/status of a sandbox serving in a
//!   subprocess of its own (this binary, run again with [`SERVE`] set)
//!   before and after 100,000 small Secrets.

use std::time::{Duration, Instant};

use kube_sandbox::{Sandbox, SandboxConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection that sends a request and reads the
/// answer (Content-Length bodies only, which is what the sandbox sends for
/// non-watch requests).
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            stream: BufReader::new(s),
        }
    }

    async fn request(&mut self, method: &str, path: &str, body: &str) -> u16 {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: sandbox\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .unwrap();
        let mut status = String::new();
        self.stream.read_line(&mut status).await.unwrap();
        let code: u16 = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).await.unwrap();
        code
    }
}

fn secret(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Secret","metadata":{{"name":"{name}","labels":{{"app":"bench"}}}},"data":{{"token":"c2VjcmV0LXZhbHVlLTEyMzQ1Ng=="}}}}"#
    )
}

/// Creates `count` Secrets in `ns` over `conns` connections; returns the elapsed time.
async fn create_many(
    addr: std::net::SocketAddr,
    ns: &str,
    prefix: &str,
    count: usize,
    conns: usize,
) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let ns = ns.to_string();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let path = format!("/api/v1/namespaces/{ns}/secrets");
            for i in (c..count).step_by(conns) {
                let code = conn
                    .request("POST", &path, &secret(&format!("{prefix}-{i}")))
                    .await;
                assert_eq!(code, 201, "create {i}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

async fn ensure_namespace(addr: std::net::SocketAddr, ns: &str) {
    let mut c = Conn::open(addr).await;
    let code = c
        .request(
            "POST",
            "/api/v1/namespaces",
            &format!(r#"{{"metadata":{{"name":"{ns}"}}}}"#),
        )
        .await;
    assert_eq!(code, 201);
}

async fn throughput(sb: &Sandbox) {
    let addr = sb.addr();
    ensure_namespace(addr, "tput").await;
    // Warm up, then measure.
    create_many(addr, "tput", "warm", 2_000, 8).await;
    let n = 20_000;
    for conns in [1, 8, 32] {
        let took = create_many(addr, "tput", &format!("c{conns}"), n, conns).await;
        println!(
            "create throughput ({conns} connections): {n} Secrets in {:.2} s = {:.0} creates/s",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
    }
}

async fn watch_latency(sb: &Sandbox) {
    let addr = sb.addr();
    ensure_namespace(addr, "lat").await;
    let watch = TcpStream::connect(addr).await.unwrap();
    watch.set_nodelay(true).unwrap();
    let mut watch = BufReader::new(watch);
    watch
        .get_mut()
        .write_all(b"GET /api/v1/namespaces/lat/secrets?watch=true&resourceVersion=0 HTTP/1.1\r\nHost: sandbox\r\n\r\n")
        .await
        .unwrap();
    // Skip the response head.
    loop {
        let mut line = String::new();
        watch.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let mut conn = Conn::open(addr).await;
    let mut samples = Vec::new();
    for i in 0..2_000 {
        let name = format!("lat-{i}");
        let t0 = Instant::now();
        let code = conn
            .request("POST", "/api/v1/namespaces/lat/secrets", &secret(&name))
            .await;
        assert_eq!(code, 201);
        // Chunked framing: a size line, then the event line.
        loop {
            let mut line = String::new();
            watch.read_line(&mut line).await.unwrap();
            if line.contains(&format!("\"name\":\"{name}\"")) {
                break;
            }
        }
        samples.push(t0.elapsed());
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "watch latency, create sent -> ADDED read ({} samples): p50 {:.3} ms, p99 {:.3} ms (includes the create round trip)",
        samples.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// Set in the environment of the subprocess that only serves a sandbox, so
/// that its memory is the sandbox's and not the benchmark client's.
const SERVE: &str = "KUBE_SANDBOX_BENCH_SERVE";

/// The subprocess: serves until it is killed, after one ready line on stdout.
async fn serve() {
    let sb = Sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        kubeconfig: None,
        crds: Vec::new(),
        watch_window: 10_000,
    })
    .await
    .unwrap();
    println!("sandbox ready: {}", sb.url());
    std::future::pending::<()>().await;
}

async fn memory() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(SERVE, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = Killed(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("sandbox ready: ")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let addr: std::net::SocketAddr = url.strip_prefix("http://").unwrap().parse().unwrap();
    let pid = guard.0.id();
    let before = vm_rss_kib(pid);
    ensure_namespace(addr, "mem").await;
    let n = 100_000;
    let took = create_many(addr, "mem", "s", n, 16).await;
    let after = vm_rss_kib(pid);
    println!(
        "resident memory of a sandbox-only process: {:.1} MiB at start, {:.1} MiB with {n} small Secrets (+{:.2} KiB each; created in {:.1} s = {:.0}/s)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after - before) as f64 / n as f64,
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var_os(SERVE).is_some() {
        rt.block_on(serve());
        return;
    }
    rt.block_on(async {
        let sb = Sandbox::start(SandboxConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            kubeconfig: None,
            crds: Vec::new(),
            watch_window: 10_000,
        })
        .await
        .unwrap();
        throughput(&sb).await;
        watch_latency(&sb).await;
        sb.shutdown().await;
        memory().await;
    });
}
