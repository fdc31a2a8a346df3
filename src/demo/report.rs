//! How the demo talks to a person: numbered steps with elapsed time, in
//! colour on a terminal and plain otherwise.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use super::mtls::Exchange;
use crate::pki::inspect::parse_chain;

pub struct Report {
    started: Instant,
    step: u32,
    color: bool,
}

impl Report {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            step: 0,
            color: std::io::stdout().is_terminal(),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn step(&mut self, text: &str) {
        self.step += 1;
        let time = format!("{:>6.2}s", self.started.elapsed().as_secs_f64());
        println!(
            "{} {} {}",
            self.paint("2", &time),
            self.paint("32;1", &format!("[{}]", self.step)),
            text
        );
    }

    fn detail(&self, label: &str, value: &str) {
        println!(
            "          {} {}",
            self.paint("36", &format!("{label:>12}:")),
            value
        );
    }

    /// Prints the leaf certificate mounted at `dir` the way a person reads
    /// one: who it is, who vouches for it, and for how long.
    pub fn certificate(&self, pod: &str, dir: &Path) -> anyhow::Result<()> {
        let pem = std::fs::read(dir.join("tls.crt"))?;
        let chain = parse_chain(&pem)?;
        let leaf = chain
            .first()
            .ok_or_else(|| anyhow::anyhow!("{pod}'s tls.crt holds no certificate"))?;
        let subject = if leaf.subject.is_empty() {
            "(empty)"
        } else {
            leaf.subject.as_str()
        };
        let kind = if dir.is_symlink() {
            "plain files, not mounted"
        } else {
            "read-only tmpfs"
        };
        self.detail(
            "files",
            &format!("{} (tls.crt, tls.key, ca.crt; {kind})", dir.display()),
        );
        self.detail("subject", subject);
        self.detail("DNS SANs", &leaf.sans.dns_names.join(", "));
        self.detail("issuer", &leaf.issuer);
        let fmt = |t: std::time::SystemTime| {
            jiff::Timestamp::try_from(t)
                .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_default()
        };
        self.detail(
            "valid",
            &format!("{} → {}", fmt(leaf.not_before), fmt(leaf.not_after)),
        );
        self.detail("key", &leaf.key_type);
        self.detail("serial", &leaf.serial_hex);
        self.detail("sha256", &leaf.sha256_fingerprint);
        Ok(())
    }

    pub fn handshake(&mut self, exchange: &Exchange) {
        self.step(
            "mutual TLS between alice (client) and bob (server), using only their mounted files",
        );
        let c = &exchange.server_saw_client;
        let s = &exchange.client_saw_server;
        self.detail(
            "bob verified",
            &format!(
                "client certificate of {} (serial {}) against ca.crt",
                c.dns_names.join(","),
                c.serial_hex
            ),
        );
        self.detail(
            "alice verified",
            &format!(
                "server {} (serial {}) against ca.crt, over {}",
                s.dns_names.join(","),
                s.serial_hex,
                s.protocol
            ),
        );
        self.detail("reply", &exchange.reply);
    }

    pub fn keep(&mut self, kubeconfig: &Path) {
        self.step("--keep: everything stays up until Ctrl-C");
        self.detail("kubeconfig", &kubeconfig.display().to_string());
        self.detail(
            "try",
            &format!("KUBECONFIG={} kubectl get cr -A", kubeconfig.display()),
        );
    }
}
