//! Unary ttrpc over one multiplexed connection: a [`Client`] and a server loop ([`serve`]).
//!
//! The server decodes each request and runs its handler in its own task, so a slow handler
//! never delays the next request (the runtime may call Configure while the plugin still waits
//! for its RegisterPlugin reply). Responses reuse the request's stream id. The client numbers
//! its calls with odd stream ids from 1, as the Go and Rust ttrpc clients do.
//!
//! Invariant: bytes the peer sends that are not a well-formed unary ttrpc exchange end the
//! connection with an [`RpcError`]; nothing here panics on peer input.
//!
//! Limits: streaming calls are not supported, and request deadlines (`timeout_nano`) are not
//! enforced on the server side: the runtime enforces its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::mux::{ConnWriter, MuxConn, MuxError};
use crate::ttrpc::{
    self, message_frames, MessageDecoder, MessageError, Request, Response, StatusProto,
};

/// gRPC status codes used by ttrpc.
pub mod code {
    /// Success.
    pub const OK: i32 = 0;
    /// The request was invalid.
    pub const INVALID_ARGUMENT: i32 = 3;
    /// The deadline passed.
    pub const DEADLINE_EXCEEDED: i32 = 4;
    /// The method is not implemented (the runtime falls back to StateChange on this code).
    pub const UNIMPLEMENTED: i32 = 12;
    /// An internal error.
    pub const INTERNAL: i32 = 13;
}

/// A ttrpc call status (code + message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("status {code}: {message}")]
pub struct Status {
    /// gRPC status code (see [`code`]).
    pub code: i32,
    /// Human-readable message.
    pub message: String,
}

impl Status {
    /// A status with the given code and message.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `Unimplemented` (12).
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(code::UNIMPLEMENTED, message)
    }

    /// `InvalidArgument` (3).
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_ARGUMENT, message)
    }

    /// `Internal` (13).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(code::INTERNAL, message)
    }
}

/// Why a call or a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The trunk failed or closed.
    #[error(transparent)]
    Mux(#[from] MuxError),
    /// The connection ended before the reply.
    #[error("the ttrpc connection closed before {method} was answered")]
    Closed {
        /// Method called.
        method: String,
    },
    /// The peer answered with an error status.
    #[error("{service}/{method} failed: {status}")]
    Status {
        /// Service called.
        service: String,
        /// Method called.
        method: String,
        /// The status.
        status: Status,
    },
    /// No reply within the deadline.
    #[error("{method} got no reply within {timeout:?}")]
    Timeout {
        /// Method called.
        method: String,
        /// The deadline.
        timeout: Duration,
    },
    /// A message was too large or out of sync.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// A protobuf payload did not decode.
    #[error("undecodable {what} on stream {stream_id}: {source}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Stream id of the message.
        stream_id: u32,
        /// The decoder's error.
        #[source]
        source: prost::DecodeError,
    },
    /// A message of a type that is not valid here.
    #[error("unexpected ttrpc message type {msg_type} on stream {stream_id}")]
    UnexpectedMessage {
        /// Stream id of the message.
        stream_id: u32,
        /// The type byte.
        msg_type: u8,
    },
}

/// Serves requests of one connection.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one request and returns the encoded reply or an error status.
    async fn handle(&self, service: &str, method: &str, payload: Bytes) -> Result<Vec<u8>, Status>;
}

/// Serves `conn` until it ends. `Ok` when the trunk ended; an error when the peer sent
/// something that is not a unary ttrpc request.
pub async fn serve(conn: MuxConn, handler: Arc<dyn Handler>) -> Result<(), RpcError> {
    let MuxConn { mut rx, writer, .. } = conn;
    let mut decoder = MessageDecoder::new();
    let mut tasks = JoinSet::new();
    while let Some(chunk) = rx.recv().await {
        decoder.extend(&chunk);
        while let Some(msg) = decoder.decode()? {
            let stream_id = msg.header.stream_id;
            if msg.header.msg_type != ttrpc::TYPE_REQUEST {
                return Err(RpcError::UnexpectedMessage {
                    stream_id,
                    msg_type: msg.header.msg_type,
                });
            }
            let request = Request::decode(msg.payload).map_err(|source| RpcError::Decode {
                what: "ttrpc request",
                stream_id,
                source,
            })?;
            tasks.spawn(answer(handler.clone(), writer.clone(), stream_id, request));
        }
        // Reap finished handlers so the set does not grow with the connection's age.
        while tasks.try_join_next().is_some() {}
    }
    Ok(())
}

async fn answer(handler: Arc<dyn Handler>, writer: ConnWriter, stream_id: u32, request: Request) {
    let reply = handler.handle(
        &request.service,
        &request.method,
        Bytes::from(request.payload),
    );
    let response = match reply.await {
        Ok(payload) => Response {
            status: Some(status_proto(code::OK, "")),
            payload,
        },
        Err(status) => {
            tracing::debug!(method = %request.method, code = status.code, "request failed");
            Response {
                status: Some(status_proto(status.code, &status.message)),
                payload: vec![],
            }
        }
    };
    let frames = message_frames(
        stream_id,
        ttrpc::TYPE_RESPONSE,
        0,
        &response.encode_to_vec(),
    );
    match frames {
        Ok(frames) => {
            if let Err(err) = writer.send(frames).await {
                tracing::debug!(error = %err, method = %request.method, "reply not sent");
            }
        }
        Err(err) => tracing::warn!(error = %err, method = %request.method, "reply too large"),
    }
}

fn status_proto(code: i32, message: &str) -> StatusProto {
    StatusProto {
        code,
        message: message.to_string(),
        details: vec![],
    }
}

type Pending = HashMap<u32, oneshot::Sender<Response>>;

/// A unary ttrpc client over one connection. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    writer: ConnWriter,
    next_stream: Arc<AtomicU32>,
    /// `None` once the connection has ended.
    pending: Arc<Mutex<Option<Pending>>>,
}

impl Client {
    /// Starts a client on `conn` (spawns the task that routes replies).
    pub fn new(conn: MuxConn) -> Client {
        let MuxConn { rx, writer, .. } = conn;
        let pending = Arc::new(Mutex::new(Some(HashMap::new())));
        tokio::spawn(route_replies(rx, pending.clone()));
        Client {
            writer,
            next_stream: Arc::new(AtomicU32::new(1)),
            pending,
        }
    }

    /// Calls `service/method` with an encoded request and returns the encoded reply.
    pub async fn call(
        &self,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        let stream_id = self.next_stream.fetch_add(2, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let closed = || RpcError::Closed {
            method: method.to_string(),
        };
        {
            let mut guard = self.pending.lock().map_err(|_| closed())?;
            guard.as_mut().ok_or_else(closed)?.insert(stream_id, tx);
        }
        let request = Request {
            service: service.to_string(),
            method: method.to_string(),
            payload,
            timeout_nano: i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX),
            metadata: vec![],
        };
        let frames = message_frames(stream_id, ttrpc::TYPE_REQUEST, 0, &request.encode_to_vec())?;
        self.writer.send(frames).await?;
        let response = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(response)) => response,
            Ok(Err(_)) => return Err(closed()),
            Err(_) => {
                self.forget(stream_id);
                return Err(RpcError::Timeout {
                    method: method.to_string(),
                    timeout,
                });
            }
        };
        match response.status {
            Some(s) if s.code != code::OK => Err(RpcError::Status {
                service: service.to_string(),
                method: method.to_string(),
                status: Status::new(s.code, s.message),
            }),
            _ => Ok(Bytes::from(response.payload)),
        }
    }

    fn forget(&self, stream_id: u32) {
        if let Ok(mut guard) = self.pending.lock() {
            if let Some(map) = guard.as_mut() {
                map.remove(&stream_id);
            }
        }
    }
}

async fn route_replies(mut rx: mpsc::Receiver<Bytes>, pending: Arc<Mutex<Option<Pending>>>) {
    let mut decoder = MessageDecoder::new();
    let result = read_replies(&mut rx, &mut decoder, &pending).await;
    if let Err(err) = result {
        tracing::warn!(error = %err, "ttrpc client connection failed");
    }
    // Dropping the senders fails every call still waiting.
    if let Ok(mut guard) = pending.lock() {
        guard.take();
    }
}

async fn read_replies(
    rx: &mut mpsc::Receiver<Bytes>,
    decoder: &mut MessageDecoder,
    pending: &Mutex<Option<Pending>>,
) -> Result<(), RpcError> {
    while let Some(chunk) = rx.recv().await {
        decoder.extend(&chunk);
        while let Some(msg) = decoder.decode()? {
            let stream_id = msg.header.stream_id;
            if msg.header.msg_type != ttrpc::TYPE_RESPONSE {
                return Err(RpcError::UnexpectedMessage {
                    stream_id,
                    msg_type: msg.header.msg_type,
                });
            }
            let response = Response::decode(msg.payload).map_err(|source| RpcError::Decode {
                what: "ttrpc response",
                stream_id,
                source,
            })?;
            let waiter = pending
                .lock()
                .ok()
                .and_then(|mut g| g.as_mut()?.remove(&stream_id));
            match waiter {
                Some(tx) => {
                    let _ = tx.send(response);
                }
                None => tracing::debug!(stream_id, "reply for no pending call dropped"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::Mux;

    struct Echo;

    #[async_trait::async_trait]
    impl Handler for Echo {
        async fn handle(
            &self,
            service: &str,
            method: &str,
            payload: Bytes,
        ) -> Result<Vec<u8>, Status> {
            match (service, method) {
                ("svc", "Echo") => Ok(payload.to_vec()),
                ("svc", "Slow") => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok(b"slow".to_vec())
                }
                _ => Err(Status::unimplemented(format!("{service}/{method}"))),
            }
        }
    }

    fn pair() -> (Client, Mux, Mux) {
        let (a, b) = tokio::net::UnixStream::pair().expect("socketpair");
        let (client_mux, mut client_conns) = Mux::spawn(a, &[2]);
        let (server_mux, mut server_conns) = Mux::spawn(b, &[2]);
        let server_conn = server_conns.pop().expect("conn");
        tokio::spawn(serve(server_conn, Arc::new(Echo)));
        (
            Client::new(client_conns.pop().expect("conn")),
            client_mux,
            server_mux,
        )
    }

    #[tokio::test]
    async fn calls_round_trip_including_large_payloads() {
        let (client, _a, _b) = pair();
        let t = Duration::from_secs(5);
        let reply = client
            .call("svc", "Echo", b"ping".to_vec(), t)
            .await
            .expect("echo");
        assert_eq!(&reply[..], b"ping");
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let reply = client
            .call("svc", "Echo", big.clone(), t)
            .await
            .expect("big echo");
        assert_eq!(reply.to_vec(), big);
    }

    #[tokio::test]
    async fn unknown_methods_get_unimplemented() {
        let (client, _a, _b) = pair();
        let err = client
            .call("svc", "Nope", vec![], Duration::from_secs(5))
            .await
            .expect_err("err");
        match err {
            RpcError::Status { status, .. } => assert_eq!(status.code, code::UNIMPLEMENTED),
            other => panic!("unexpected {other}"),
        }
    }

    #[tokio::test]
    async fn a_slow_request_does_not_delay_the_next() {
        let (client, _a, _b) = pair();
        let t = Duration::from_secs(5);
        let slow = tokio::spawn({
            let client = client.clone();
            async move { client.call("svc", "Slow", vec![], t).await }
        });
        let start = std::time::Instant::now();
        client
            .call("svc", "Echo", b"x".to_vec(), t)
            .await
            .expect("fast");
        assert!(start.elapsed() < Duration::from_millis(150));
        assert_eq!(&slow.await.expect("join").expect("slow")[..], b"slow");
    }

    #[tokio::test]
    async fn times_out_and_reports_closed_connections() {
        let (client, _a, server_mux) = pair();
        let err = client
            .call("svc", "Slow", vec![], Duration::from_millis(20))
            .await
            .expect_err("t");
        assert!(matches!(err, RpcError::Timeout { .. }), "{err}");
        drop(server_mux);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let err = client
            .call("svc", "Echo", vec![], Duration::from_secs(1))
            .await
            .expect_err("c");
        assert!(
            matches!(err, RpcError::Closed { .. } | RpcError::Mux(_)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn server_answers_with_exact_bytes() {
        // A hand-built request on the raw trunk, checked against the exact reply bytes.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut peer) = tokio::net::UnixStream::pair().expect("socketpair");
        let (_mux, mut conns) = Mux::spawn(ours, &[1]);
        tokio::spawn(serve(conns.pop().expect("conn"), Arc::new(Echo)));
        let req = Request {
            service: "svc".into(),
            method: "Echo".into(),
            payload: b"A".to_vec(),
            ..Default::default()
        };
        let body = req.encode_to_vec();
        let mut wire = vec![0, 0, 0, 1, 0, 0, 0, (10 + body.len()) as u8];
        wire.extend_from_slice(&[0, 0, 0, body.len() as u8, 0, 0, 0, 3, 1, 0]);
        wire.extend_from_slice(&body);
        peer.write_all(&wire).await.expect("write");
        // Response{status{code 0}, payload "A"}: status is an empty message (0x0a 0x00).
        let want_body = [0x0a, 0x00, 0x12, 0x01, b'A'];
        let mut want = vec![0, 0, 0, 1, 0, 0, 0, 15, 0, 0, 0, 5, 0, 0, 0, 3, 2, 0];
        want.extend_from_slice(&want_body);
        let mut got = vec![0u8; want.len()];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(got, want);
    }
}
