//! Control socket client used by the CLI.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::proto::Request;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the gateway is not running (no answer on {0})")]
    NotRunning(String),
    #[error("talking to the gateway failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the gateway did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the gateway sent an unreadable answer: {0}")]
    BadResponse(String),
}

/// Sends one request and returns the response object (`ok` may be false).
pub async fn request(
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<Value, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|_| ClientError::NotRunning(socket.display().to_string()))?;
    let exchange = async {
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_string(req).expect("requests serialize");
        line.push('\n');
        write.write_all(line.as_bytes()).await?;
        let mut answer = String::new();
        BufReader::new(read).read_line(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout(timeout))??;
    serde_json::from_str(&answer).map_err(|_| ClientError::BadResponse(answer.trim().to_string()))
}
