//! NBD listeners: TCP (`HOST:PORT`) or a Unix socket (`unix:PATH`).

use crate::nbd::server;
use crate::node::Node;
use std::io;
use std::sync::Arc;
use tokio::net::{TcpListener, UnixListener};

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

impl Listener {
    /// Binds synchronously; call from within the tokio runtime.
    pub fn bind(spec: &str) -> io::Result<Listener> {
        if let Some(path) = spec.strip_prefix("unix:") {
            let p = std::path::PathBuf::from(path);
            // A live socket is busy, a stale one is replaced, anything else is left alone.
            remus_proto::ctl_socket::claim_socket_path(&p)?;
            Ok(Listener::Unix(UnixListener::bind(&p)?, p))
        } else {
            let l = std::net::TcpListener::bind(spec)
                .map_err(|e| io::Error::new(e.kind(), format!("listen on {spec}: {e}")))?;
            l.set_nonblocking(true)?;
            Ok(Listener::Tcp(TcpListener::from_std(l)?))
        }
    }

    /// Accepts NBD clients forever, one task per connection.
    pub async fn serve(self, node: Arc<Node>) {
        loop {
            match &self {
                Listener::Tcp(l) => match l.accept().await {
                    Ok((s, peer)) => {
                        let _ = s.set_nodelay(true);
                        spawn_conn(s, node.clone(), peer.to_string());
                    }
                    Err(e) => accept_error(e).await,
                },
                Listener::Unix(l, _) => match l.accept().await {
                    Ok((s, _)) => spawn_conn(s, node.clone(), "unix".into()),
                    Err(e) => accept_error(e).await,
                },
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn accept_error(e: io::Error) {
    tracing::warn!("NBD accept: {e}");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

fn spawn_conn<S>(s: S, node: Arc<Node>, peer: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = server::serve(s, node, peer.clone()).await {
            tracing::info!(%peer, "NBD connection closed: {e}");
        }
    });
}
