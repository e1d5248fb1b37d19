//! A tiny TCP forwarder: what a proxy in front of a Galera cluster does
//! (HAProxy, MaxScale, ProxySQL), reduced to failover. Each accepted
//! connection goes to the current backend; when that backend refuses a
//! connection, the next one in the list becomes current, and stays so
//! (no failback: a node that comes back is not used again by this
//! forwarder, so a node still joining, which refuses statements with
//! error 1047, is never handed connections).
//!
//! A connection whose backend dies is closed on both sides, so the
//! client's pool sees the loss and its next connection goes to the next
//! backend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running forwarder on 127.0.0.1; stops when dropped.
#[derive(Debug)]
pub struct Forwarder {
    /// The port it listens on.
    pub port: u16,
    backends: Vec<SocketAddr>,
    current: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Forwarder {
    /// Listens on a free port of 127.0.0.1 and forwards to `backends`, the
    /// first one first.
    pub async fn start(backends: Vec<SocketAddr>) -> std::io::Result<Forwarder> {
        assert!(!backends.is_empty(), "a forwarder needs a backend");
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let current = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept(listener, backends.clone(), current.clone()));
        Ok(Forwarder {
            port,
            backends,
            current,
            task,
        })
    }

    /// The backend new connections go to now.
    pub fn current(&self) -> SocketAddr {
        self.backends[self.current.load(Ordering::SeqCst) % self.backends.len()]
    }

    /// `url` (`mysql://user:pass@host:port/db`) with this forwarder's
    /// address in place of its host and port.
    pub fn url(&self, url: &str) -> String {
        let (scheme_user, rest) = url.split_once('@').expect("a URL with user@host");
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        format!("{scheme_user}@127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, backends: Vec<SocketAddr>, current: Arc<AtomicUsize>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let backends = backends.clone();
        let current = current.clone();
        tokio::spawn(async move {
            let Some(mut server) = connect(&backends, &current).await else {
                return; // every backend refused: the client sees a closed connection
            };
            let mut client = client;
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
}

/// A connection to the current backend, or to the next ones in turn (the
/// first that accepts becomes current).
async fn connect(backends: &[SocketAddr], current: &AtomicUsize) -> Option<TcpStream> {
    let start = current.load(Ordering::SeqCst);
    for k in 0..backends.len() {
        let i = (start + k) % backends.len();
        let attempt =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(backends[i])).await;
        if let Ok(Ok(stream)) = attempt {
            if i != start {
                // Only move forward from where we started (another
                // connection may have moved it already).
                let _ = current.compare_exchange(start, i, Ordering::SeqCst, Ordering::SeqCst);
                eprintln!(
                    "forwarder: backend {} refused; now {}",
                    backends[start], backends[i]
                );
            }
            return Some(stream);
        }
    }
    None
}
