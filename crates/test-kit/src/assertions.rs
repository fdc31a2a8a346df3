//! Independent checks: logs scanned for secrets, mounts read from
//! `/proc/self/mountinfo`, certificates judged by `openssl`, a reader that
//! reads a volume the way a pod does, and metrics scraped over plain HTTP.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use cert_csi::api::CertificateRequest;
use cert_csi::pki::PrivateKey;
use cert_csi::store::MountEntry;
use tonic::Status;

use crate::env::*;

/// Where every test's plugin and controller logs go, so one scan covers
/// the whole suite's logs: `target/tmp/test-logs/`.
pub fn test_log_dir() -> PathBuf {
    let dir = crate::target_tmp_dir().join("test-logs");
    std::fs::create_dir_all(&dir).expect("create target/tmp/test-logs");
    dir
}

/// A fresh log file in [`test_log_dir`], named after the test binary, the
/// process and `label`, so parallel tests never share one.
pub fn test_log_path(label: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "test".into());
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = test_log_dir().join(format!("{binary}-{}-{n}-{label}.log", std::process::id()));
    File::create(&path).expect("log file");
    path
}

/// Lines of `text` that hold key material or a token: a PEM private key
/// header, or a JWT (service account tokens are JWTs: `header.payload.sig`,
/// base64url parts, the header the base64 of `{"`, which is `eyJ`). A list
/// call's `continue` token is base64url JSON as well, but has no dots.
pub fn secret_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains("PRIVATE KEY") || has_jwt(l))
        .map(|l| l.chars().take(200).collect())
        .collect()
}

/// Whether `line` holds `eyJ<10+ base64url>.<10+ base64url>.`, a JWT's
/// header and payload (the same shape hack/test's scan looks for).
fn has_jwt(line: &str) -> bool {
    let b64 = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    line.match_indices("eyJ").any(|(at, _)| {
        let rest = &line[at..];
        let header = rest.chars().take_while(|&c| b64(c)).count();
        let Some(after) = rest.get(header..).and_then(|r| r.strip_prefix('.')) else {
            return false;
        };
        let payload = after.chars().take_while(|&c| b64(c)).count();
        header >= 13 && payload >= 10 && after[payload..].starts_with('.')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwts_are_found_and_continue_tokens_are_not() {
        let jwt = "token=eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsiYXBpIl19.c2lnbmF0dXJl rest";
        assert_eq!(secret_lines(jwt).len(), 1);
        let continue_token =
            "GET /apis?limit=500&continue=eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6MTMzOH0 ok";
        assert!(secret_lines(continue_token).is_empty());
        assert_eq!(secret_lines("-----BEGIN PRIVATE KEY-----").len(), 1);
    }
}

/// Panics, naming the lines, when the log at `path` holds a private key or
/// a token.
pub fn assert_no_secrets_in_log(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let found = secret_lines(&text);
    assert!(
        found.is_empty(),
        "{} holds key material or a token:\n{}",
        path.display(),
        found.join("\n")
    );
}

/// Mounts at or below `path`, from this process's mount table (the plugin
/// shares the test's mount namespace).
pub fn mounts_under(path: &Path) -> Vec<MountEntry> {
    cert_csi::store::read_mountinfo()
        .expect("reading /proc/self/mountinfo")
        .into_iter()
        .filter(|m| m.mount_point.starts_with(path))
        .collect()
}

/// The mounts exactly at `path`, bottom first.
pub fn mounts_at(path: &Path) -> Vec<MountEntry> {
    cert_csi::store::read_mountinfo()
        .expect("reading /proc/self/mountinfo")
        .into_iter()
        .filter(|m| m.mount_point == path)
        .collect()
}

pub fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is on PATH")
}

/// Runs openssl, asserts success, and returns stdout and stderr together.
pub fn openssl_ok(args: &[&str]) -> String {
    let out = openssl(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?} failed: {text}");
    text
}

/// `openssl x509 -noout -text` of the first certificate in `path`.
pub fn cert_text(path: &Path) -> String {
    openssl_ok(&["x509", "-noout", "-text", "-in", path.to_str().unwrap()])
}

/// Annotations of a request, for pass-through checks.
pub fn annotations(cr: &CertificateRequest) -> BTreeMap<String, String> {
    cr.metadata.annotations.clone().unwrap_or_default()
}

/// Asserts a CSI error: the code, and that the message contains `needle`.
pub fn assert_status(
    result: Result<(), Status>,
    code: tonic::Code,
    needle: &str,
    what: &str,
) -> Status {
    match result {
        Ok(()) => panic!("{what}: expected {code:?} mentioning {needle:?}, but the call succeeded"),
        Err(status) => {
            assert_eq!(
                status.code(),
                code,
                "{what}: wrong code; message: {}",
                status.message()
            );
            assert!(
                status.message().contains(needle),
                "{what}: message does not mention {needle:?}: {}",
                status.message()
            );
            status
        }
    }
}

// Reading a volume the way a pod does, during rotation

/// What a [`PodReader`] saw.
#[derive(Debug, Default)]
pub struct ReaderReport {
    /// Complete reads of key and certificate.
    pub reads: u64,
    /// Torn reads: a missing file, a key that does not match its
    /// certificate, an unparsable file, or an expired certificate.
    pub problems: Vec<String>,
    /// Leaf serials in the order first seen.
    pub serials: Vec<String>,
    /// Leaf public keys (DER) in the order first seen.
    pub public_keys: Vec<Vec<u8>>,
}

/// A thread that reads key and certificate in a tight loop, as an
/// application in the pod would: it opens `..data` once per iteration and
/// reads both files relative to that directory, then checks they belong
/// together and that the certificate has not expired.
pub struct PodReader {
    stop: Arc<std::sync::atomic::AtomicBool>,
    report: Arc<Mutex<ReaderReport>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl PodReader {
    pub fn start(volume: &VolumeRequest, cert_file: &str, key_file: &str) -> PodReader {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let report = Arc::new(Mutex::new(ReaderReport::default()));
        let data = volume.target().join("..data");
        let (cert_file, key_file) = (cert_file.to_string(), key_file.to_string());
        let handle = std::thread::spawn({
            let stop = stop.clone();
            let report = report.clone();
            move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let result = read_pair(&data, &cert_file, &key_file);
                    let mut report = report.lock().unwrap();
                    match result {
                        Ok((serial, spki, expired)) => {
                            report.reads += 1;
                            if expired {
                                report
                                    .problems
                                    .push(format!("expired certificate {serial} served"));
                            }
                            if report.serials.last() != Some(&serial) {
                                report.serials.push(serial);
                            }
                            if !report.public_keys.contains(&spki) {
                                report.public_keys.push(spki);
                            }
                        }
                        Err(problem) => {
                            if report.problems.len() < 100 {
                                report.problems.push(problem);
                            }
                        }
                    }
                }
            }
        });
        PodReader {
            stop,
            report,
            handle: Some(handle),
        }
    }

    /// A copy of the report so far.
    pub fn serials(&self) -> Vec<String> {
        self.report.lock().unwrap().serials.clone()
    }

    pub fn finish(mut self) -> ReaderReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("reader thread");
        }
        std::mem::take(&mut *self.report.lock().unwrap())
    }
}

impl Drop for PodReader {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn read_pair(
    data: &Path,
    cert_file: &str,
    key_file: &str,
) -> Result<(String, Vec<u8>, bool), String> {
    use nix::fcntl::{OFlag, open, openat};
    use nix::sys::stat::Mode;
    use std::io::Read;
    let dir = open(data, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
        .map_err(|e| format!("open {}: {e}", data.display()))?;
    let read = |name: &str| -> Result<Vec<u8>, String> {
        let fd = openat(&dir, name, OFlag::O_RDONLY, Mode::empty())
            .map_err(|e| format!("open {name} in ..data: {e}"))?;
        let mut bytes = Vec::new();
        File::from(fd)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("read {name}: {e}"))?;
        Ok(bytes)
    };
    let cert = read(cert_file)?;
    let key = read(key_file)?;
    let chain = cert_csi::pki::parse_chain(&cert).map_err(|e| format!("{cert_file}: {e}"))?;
    let leaf = chain.first().ok_or_else(|| format!("{cert_file}: empty"))?;
    let key = PrivateKey::from_pem(&key).map_err(|e| format!("{key_file}: {e}"))?;
    if !cert_csi::pki::key_matches_certificate(&key, leaf) {
        return Err(format!(
            "{key_file} does not match {cert_file} (serial {})",
            leaf.serial_hex
        ));
    }
    let expired = !leaf.is_valid_at(std::time::SystemTime::now());
    Ok((leaf.serial_hex.clone(), leaf.spki_der.clone(), expired))
}

/// The leaf certificate a volume serves now.
pub fn served_leaf(volume: &VolumeRequest, cert_file: &str) -> cert_csi::pki::CertInfo {
    let chain = cert_csi::pki::parse_chain(&volume.read(cert_file)).expect("a PEM chain");
    chain.into_iter().next().expect("a leaf")
}

/// The node state of a volume, typed.
pub fn volume_state(
    data_root: &Path,
    volume: &VolumeRequest,
) -> Option<cert_csi::store::VolumeState> {
    let path = data_root
        .join("volumes")
        .join(&volume.volume_id)
        .join("state.json");
    match std::fs::read(&path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).expect("state.json decodes")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("reading {}: {e}", path.display()),
    }
}

// Metrics over plain HTTP

/// `GET path` over plain HTTP/1.0; the status code and the body.
pub async fn http_get(base: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header end in {response:?}"));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {head:?}"));
    (code, body.to_owned())
}

/// The value of the one sample named `name` whose labels include every
/// `label="value"` in `labels`; panics when there is none or several.
pub fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no value in {l:?}"))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one sample {name}{labels:?}, found {found:?} in:\n{scrape}"
    );
    found[0]
}
