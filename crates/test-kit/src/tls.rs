//! A TLS handshake judged by OpenSSL's own client and server: the outside
//! check that issued identities work for mutual TLS, not just that
//! `openssl verify` accepts each.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// One side's files: certificate chain and private key.
pub struct Identity<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// Runs `openssl s_server` with `server` and `openssl s_client` with
/// `client`, each trusting only `ca`, the server requiring a client
/// certificate. Ok when the client verified the server and the server,
/// having verified the client, received a line; else what OpenSSL said.
pub fn mutual_tls(server: &Identity<'_>, client: &Identity<'_>, ca: &Path) -> Result<(), String> {
    // A free port: bind, note it, release it for s_server.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))?
        .port();
    let mut server_process = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-naccept",
            "1",
        ])
        .arg("-cert")
        .arg(server.cert)
        .arg("-key")
        .arg(server.key)
        .arg("-CAfile")
        .arg(ca)
        .args(["-Verify", "2", "-verify_return_error"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting openssl s_server: {e}"))?;
    // s_server prints ACCEPT once it listens; everything it prints is
    // kept for the verdict.
    let stdout = server_process.stdout.take().expect("piped stdout");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut server_text = String::new();
    loop {
        match lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => {
                let ready = line.contains("ACCEPT");
                server_text.push_str(&line);
                server_text.push('\n');
                if ready {
                    break;
                }
            }
            Err(_) => {
                let _ = server_process.kill();
                return Err(format!("openssl s_server did not listen:\n{server_text}"));
            }
        }
    }
    let mut client_process = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .arg("-cert")
        .arg(client.cert)
        .arg("-key")
        .arg(client.key)
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-servername", "localhost"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting openssl s_client: {e}"))?;
    // The line, then end of input: s_client sends it and closes.
    let _ = client_process
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(b"hello from the client\n");
    let client_out = client_process
        .wait_with_output()
        .map_err(|e| format!("openssl s_client: {e}"))?;
    let client_text = format!(
        "{}{}",
        String::from_utf8_lossy(&client_out.stdout),
        String::from_utf8_lossy(&client_out.stderr)
    );
    // With -naccept 1 the server exits after this one connection.
    let status = server_process
        .wait()
        .map_err(|e| format!("openssl s_server: {e}"))?;
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(1)) {
        server_text.push_str(&line);
        server_text.push('\n');
    }
    if let Some(mut stderr) = server_process.stderr.take() {
        let _ = stderr.read_to_string(&mut server_text);
    }
    let client_ok = client_text.contains("Verify return code: 0 (ok)");
    let server_ok = server_text.contains("hello from the client");
    if client_ok && server_ok {
        Ok(())
    } else {
        Err(format!(
            "mutual TLS failed (s_server {status})\n--- s_client:\n{client_text}\n--- s_server:\n{server_text}"
        ))
    }
}
