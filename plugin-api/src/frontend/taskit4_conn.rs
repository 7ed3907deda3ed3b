//! One call to a TaskIt 4.0 backend: connect, send one message, read one,
//! close.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{BackendAddr, FrontendConfig, FrontendError};
use crate::wire::{firstbytes, taskit4};

/// The backend could not be reached: safe to try another.
pub(super) struct ConnectFailed;

/// Calls `task` on `addr`; `Err` only if nothing was sent.
pub(super) async fn call(
    addr: &BackendAddr,
    config: &FrontendConfig,
    task: &str,
    args: &[u8],
    kwargs: &[u8],
) -> Result<Result<Vec<u8>, FrontendError>, ConnectFailed> {
    let mut stream =
        match tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr.endpoint()))
            .await
        {
            Ok(Ok(stream)) => stream,
            _ => return Err(ConnectFailed),
        };
    let _ = stream.set_nodelay(true);
    let lost = || FrontendError::ConnectionLost(addr.to_string());
    let protocol = |message: String| FrontendError::Protocol {
        backend: addr.to_string(),
        message,
    };
    let request = firstbytes::encode(&taskit4::encode_request(task, args, kwargs));
    if stream.write_all(&request).await.is_err() {
        // Nothing was answered; but the request may have reached the
        // backend, so it is not retried elsewhere.
        return Ok(Err(lost()));
    }
    let mut decoder = firstbytes::Decoder::new(config.max_reply);
    let mut buf = vec![0u8; 16 << 10];
    while !decoder.is_done() {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(Err(lost())),
            Ok(n) => n,
        };
        if let Err(err) = decoder.feed(&buf[..n]) {
            return Ok(Err(protocol(err.to_string())));
        }
    }
    Ok(match taskit4::parse_reply(&decoder.into_message()) {
        Ok(Ok(result)) => Ok(result.get().as_bytes().to_vec()),
        Ok(Err(remote)) => Err(FrontendError::remote(remote)),
        Err(err) => Err(protocol(err.to_string())),
    })
}
