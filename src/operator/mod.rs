//! Commands for the people who run cert-csi, in the spirit of cmctl:
//! - [`status`]: every volume on this node, read from the node's own state;
//! - [`inspect`]: a readable summary of a certificate chain in a Secret, a
//!   CertificateRequest or a volume directory;
//! - [`requests`]: approve or deny a CertificateRequest, renew a
//!   Certificate.
//!
//! None of them prints key material: a key is only ever checked against
//! the certificate it belongs to.

pub mod inspect;
pub mod requests;
pub mod status;

use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The node plugin's --data-root on this node.
    #[arg(long, env = "DATA_ROOT", default_value = "/var/lib/cert-csi")]
    pub data_root: PathBuf,
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// secret/<namespace>/<name>, certificaterequest/<namespace>/<name>
    /// (or cr/...), or a volume directory or PEM file on this machine.
    pub target: String,
    /// kubeconfig to use for Secrets and requests; in-cluster when absent.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DecisionArgs {
    /// The CertificateRequest's name.
    pub name: String,
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// The condition's reason (cmctl's default).
    #[arg(long, default_value = requests::DEFAULT_REASON)]
    pub reason: String,
    /// The condition's message; by default `manually approved by "cert-csi"`
    /// (or denied).
    #[arg(long)]
    pub message: Option<String>,
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The Certificates to re-issue now.
    #[arg(required = true)]
    pub names: Vec<String>,
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

pub fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let rows = status::rows(&args.data_root)?;
    match args.output {
        Output::Text => print!("{}", status::render_text(&rows, SystemTime::now())),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&status::render_json(&rows))?
        ),
    }
    Ok(())
}

pub async fn run_inspect(args: InspectArgs) -> anyhow::Result<()> {
    let target = inspect::Target::parse(&args.target)?;
    let client = if target.needs_api() {
        Some(crate::kubernetes::kube_client(args.kubeconfig.as_ref()).await?)
    } else {
        None
    };
    let files = inspect::fetch(client, &target).await?;
    print!(
        "{}",
        inspect::summarize(&args.target, &files, SystemTime::now())?
    );
    Ok(())
}

pub async fn run_decision(args: DecisionArgs, approve: bool) -> anyhow::Result<()> {
    let client = crate::kubernetes::kube_client(args.kubeconfig.as_ref()).await?;
    let verb = if approve { "approved" } else { "denied" };
    let message = args
        .message
        .unwrap_or_else(|| format!("manually {verb} by \"cert-csi\""));
    requests::decide(
        client,
        &args.namespace,
        &args.name,
        approve,
        &args.reason,
        &message,
    )
    .await?;
    println!("{verb} certificaterequest {}/{}", args.namespace, args.name);
    Ok(())
}

pub async fn run_renew(args: RenewArgs) -> anyhow::Result<()> {
    let client = crate::kubernetes::kube_client(args.kubeconfig.as_ref()).await?;
    for name in &args.names {
        match requests::renew(client.clone(), &args.namespace, name).await? {
            requests::Renewal::Triggered => {
                println!(
                    "manually triggered issuance of certificate {}/{name}",
                    args.namespace
                )
            }
            requests::Renewal::AlreadyIssuing => {
                println!(
                    "certificate {}/{name} is already being issued",
                    args.namespace
                )
            }
        }
    }
    Ok(())
}

/// A time as RFC 3339 in UTC, to the second.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| "?".into())
}

/// How far `t` lies from `now`, as "in 3h12m" or "5m ago".
pub(crate) fn relative(t: SystemTime, now: SystemTime) -> String {
    let (span, future) = match t.duration_since(now) {
        Ok(d) => (d, true),
        Err(e) => (e.duration(), false),
    };
    let secs = span.as_secs();
    let text = if secs >= 86_400 {
        format!("{}d{}h", secs / 86_400, secs % 86_400 / 3600)
    } else if secs >= 3600 {
        format!("{}h{}m", secs / 3600, secs % 3600 / 60)
    } else if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn relative_times_read_naturally() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            relative(now + Duration::from_secs(3 * 3600 + 720), now),
            "in 3h12m"
        );
        assert_eq!(relative(now - Duration::from_secs(300), now), "5m0s ago");
        assert_eq!(
            relative(now + Duration::from_secs(2 * 86_400 + 3600), now),
            "in 2d1h"
        );
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
