//! A mutual-TLS exchange between two pods, using nothing but the files
//! cert-csi mounted into each pod: the server verifies the client's
//! certificate against its ca.crt, and the client verifies the server's.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::pki::inspect::parse_certificate;

/// The credentials one pod finds in its volume.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

impl Identity {
    /// Reads `tls.crt`, `tls.key` and `ca.crt` from a mounted volume. The
    /// files are read through the generation `..data` points at, resolved
    /// once, so a rotation landing between two reads cannot pair one
    /// generation's key with another's certificate.
    pub fn load(volume: &Path) -> anyhow::Result<Self> {
        let dir = match std::fs::read_link(volume.join("..data")) {
            Ok(generation) => volume.join(generation),
            Err(_) => volume.to_path_buf(),
        };
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        let chain = CertificateDer::pem_slice_iter(&read("tls.crt")?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("tls.crt: {e:?}"))?;
        let key = PrivateKeyDer::from_pem_slice(&read("tls.key")?)
            .map_err(|e| anyhow!("tls.key: {e:?}"))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&read("ca.crt")?) {
            roots.add(ca.map_err(|e| anyhow!("ca.crt: {e:?}"))?)?;
        }
        Ok(Self {
            chain,
            key,
            roots: Arc::new(roots),
        })
    }

    fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let verifier = WebPkiClientVerifier::builder(self.roots.clone()).build()?;
        Ok(ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?)
    }

    fn client_config(&self) -> anyhow::Result<ClientConfig> {
        Ok(ClientConfig::builder()
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?)
    }
}

/// What one side learned about the other from a completed handshake.
#[derive(Debug, Clone)]
pub struct PeerView {
    pub subject: String,
    pub dns_names: Vec<String>,
    pub serial_hex: String,
    pub protocol: String,
}

/// The outcome of one exchange, as seen from both ends.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub server_saw_client: PeerView,
    pub client_saw_server: PeerView,
    pub reply: String,
}

fn peer_view(
    certs: Option<&[CertificateDer<'_>]>,
    protocol: Option<rustls::ProtocolVersion>,
) -> anyhow::Result<PeerView> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or_else(|| anyhow!("the peer presented no certificate"))?;
    let info = parse_certificate(leaf.as_ref())?;
    Ok(PeerView {
        subject: info.subject.clone(),
        dns_names: info.sans.dns_names.clone(),
        serial_hex: info.serial_hex.clone(),
        protocol: protocol.map(|p| format!("{p:?}")).unwrap_or_default(),
    })
}

/// One request and reply over TLS 1.3 with client authentication. The
/// server is `server` (answering as `server_name`), the client `client`.
pub async fn exchange(
    server: &Identity,
    client: &Identity,
    server_name: &str,
) -> anyhow::Result<Exchange> {
    let acceptor = TlsAcceptor::from(Arc::new(server.server_config()?));
    let connector = TlsConnector::from(Arc::new(client.client_config()?));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;

    let serve = async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await.context("server handshake")?;
        let (_, conn) = tls.get_ref();
        let seen = peer_view(conn.peer_certificates(), conn.protocol_version())?;
        let mut line = String::new();
        BufReader::new(&mut tls).read_line(&mut line).await?;
        tls.write_all(
            format!(
                "hello {}, you said {}",
                seen.dns_names.join(","),
                line.trim()
            )
            .as_bytes(),
        )
        .await?;
        tls.write_all(b"\n").await?;
        tls.shutdown().await?;
        anyhow::Ok(seen)
    };
    let call = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(server_name.to_string())?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .context("client handshake")?;
        let (_, conn) = tls.get_ref();
        let seen = peer_view(conn.peer_certificates(), conn.protocol_version())?;
        tls.write_all(b"ping\n").await?;
        let mut reply = String::new();
        BufReader::new(&mut tls).read_line(&mut reply).await?;
        anyhow::Ok((seen, reply.trim().to_string()))
    };
    let (server_seen, client_result) = tokio::try_join!(serve, call)?;
    let (client_seen, reply) = client_result;
    Ok(Exchange {
        server_saw_client: server_seen,
        client_saw_server: client_seen,
        reply,
    })
}
