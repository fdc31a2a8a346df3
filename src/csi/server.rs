//! Serving CSI on a unix socket the way the kubelet expects.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use futures::TryStreamExt as _;
use thiserror::Error;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use super::authority::FixAuthority;

use crate::shutdown::CancellationToken;

#[derive(Debug, Error)]
pub enum EndpointError {
    #[error(
        "--endpoint {0:?} is not a unix socket address; use unix:///path/to/csi.sock (CSI allows only unix sockets)"
    )]
    NotUnix(String),
    #[error("--endpoint {0:?} must name an absolute socket path, e.g. unix:///csi/csi.sock")]
    NotAbsolute(String),
    #[error(
        "{0} exists and is not a socket; refusing to remove it. Point --endpoint at another path or remove it yourself"
    )]
    NotASocket(PathBuf),
    #[error("cannot prepare socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Parses `unix:///abs/path`, `unix:/abs/path` or a bare absolute path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, EndpointError> {
    let path = if let Some(rest) = endpoint.strip_prefix("unix://") {
        rest
    } else if let Some(rest) = endpoint.strip_prefix("unix:") {
        rest
    } else if endpoint.contains("://") {
        return Err(EndpointError::NotUnix(endpoint.to_string()));
    } else {
        endpoint
    };
    if !path.starts_with('/') {
        return Err(EndpointError::NotAbsolute(endpoint.to_string()));
    }
    Ok(PathBuf::from(path))
}

/// Binds the socket with mode 0600: only root (the kubelet and its sidecars)
/// may call a plugin that mints identities. A leftover socket from a previous
/// run is removed, but nothing else is: a regular file at that path is more
/// likely a mistake in `--endpoint` than something of ours.
pub fn bind(path: &Path) -> Result<UnixListener, EndpointError> {
    let io_err = |source| EndpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(io_err)?,
        Ok(_) => return Err(EndpointError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
}

/// Serves `router` on `listener` until `shutdown` fires, then stops accepting
/// and waits for in-flight calls to finish (tonic's graceful shutdown), so a
/// SIGTERM never cuts a publish in half. Each connection goes through
/// [`FixAuthority`], so clients that name the socket path as `:authority`
/// (grpcio, grpc-java, csc) are served like grpc-go's `localhost`.
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: UnixListener,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let incoming = UnixListenerStream::new(listener).map_ok(FixAuthority::new);
    router
        .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("/csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert!(matches!(
            socket_path("tcp://127.0.0.1:1"),
            Err(EndpointError::NotUnix(_))
        ));
        assert!(matches!(
            socket_path("unix://csi.sock"),
            Err(EndpointError::NotAbsolute(_))
        ));
        assert!(matches!(
            socket_path("csi.sock"),
            Err(EndpointError::NotAbsolute(_))
        ));
    }

    #[tokio::test]
    async fn bind_sets_0600_and_replaces_only_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("csi.sock");
        let first = bind(&sock).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(first);
        // A stale socket from a previous run is replaced.
        bind(&sock).unwrap();

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(bind(&file), Err(EndpointError::NotASocket(_))));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
