//! Raw TCP connections to the gateway's HTTP listeners (web chat, Claude's hook), for the
//! admission bounds: idle, half-sent and trickled connections.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// Reads until the server closes the connection; what it sent before closing. Fails after
/// [`super::WAIT`].
pub async fn until_closed(what: &str, conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    super::within(what, async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether the server still holds the connection open (nothing to read, no EOF) for a moment.
pub async fn still_open(conn: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(100), conn.read(&mut buf))
        .await
        .is_err()
}
