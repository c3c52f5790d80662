//! Reading a request's body whole, before its first attempt (so a retry can send it again,
//! as nginx buffers it): within `body_timeout`, at most `max_body_bytes`, chunked bodies
//! decoded, `Expect: 100-continue` answered.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{ClientConnection, ClientStream, READ_CHUNK};
use crate::http1::{ChunkedBody, Framing, RequestHead};

/// Why a request's body could not be read.
pub(super) enum BodyFault {
    TooLarge,
    TimedOut,
    /// The client went away or broke its body's framing.
    Gone,
    Unparsable,
}

impl<S: ClientStream> ClientConnection<'_, S> {
    /// Reads the request's body whole (within `body_timeout` of the head's end, at most
    /// `max_body_bytes`), answering `Expect: 100-continue` first.
    pub(super) async fn read_body(&mut self, head: &RequestHead) -> Result<Bytes, BodyFault> {
        let limits = self.relay.limits;
        let max = self.balancer().config.max_body_bytes;
        let deadline = Instant::now() + limits.body_timeout;
        match head.framing {
            Framing::None | Framing::UntilClose => Ok(Bytes::new()),
            Framing::Length(length) => {
                let length = usize::try_from(length).unwrap_or(usize::MAX);
                if length > max {
                    return Err(BodyFault::TooLarge);
                }
                if self.input.len() < length {
                    if head.expects_continue {
                        self.continue_body().await?;
                    }
                    self.input.reserve(length - self.input.len());
                }
                while self.input.len() < length {
                    self.read_client(deadline).await?;
                }
                Ok(self.input.split_to(length).freeze())
            }
            Framing::Chunked => {
                if self.input.is_empty() && head.expects_continue {
                    self.continue_body().await?;
                }
                let mut chunked = ChunkedBody::default();
                let mut body = BytesMut::new();
                loop {
                    let used = chunked
                        .advance(&self.input, |data| body.extend_from_slice(data))
                        .map_err(|_| BodyFault::Unparsable)?;
                    self.input.advance(used);
                    if body.len() > max {
                        return Err(BodyFault::TooLarge);
                    }
                    if chunked.is_done() {
                        return Ok(body.freeze());
                    }
                    self.read_client(deadline).await?;
                }
            }
        }
    }

    async fn continue_body(&mut self) -> Result<(), BodyFault> {
        self.stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| BodyFault::Gone)
    }

    async fn read_client(&mut self, deadline: Instant) -> Result<(), BodyFault> {
        self.input.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.input)).await {
            Err(_) => Err(BodyFault::TimedOut),
            Ok(Ok(n)) if n > 0 => Ok(()),
            Ok(_) => Err(BodyFault::Gone),
        }
    }
}
