//! A CSI client over a unix socket: what the kubelet, node-driver-registrar
//! and livenessprobe do. Used by the demo (which plays the kubelet) and tests.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use super::proto::identity_client::IdentityClient;
use super::proto::node_client::NodeClient;

/// Connects to the plugin's socket. The URI is a placeholder that tonic
/// requires; every connection goes to `socket`.
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket: PathBuf = socket.to_path_buf();
    Endpoint::try_from("http://[::1]:1")?
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

pub async fn node(socket: &Path) -> Result<NodeClient<Channel>, tonic::transport::Error> {
    Ok(NodeClient::new(connect(socket).await?))
}

pub async fn identity(socket: &Path) -> Result<IdentityClient<Channel>, tonic::transport::Error> {
    Ok(IdentityClient::new(connect(socket).await?))
}
