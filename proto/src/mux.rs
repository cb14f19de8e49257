//! The NRI connection multiplexer: several logical connections over one unix stream (trunk).
//!
//! Wire format: see [`crate::frame`]. Connection ids are fixed by NRI: [`PLUGIN_SERVICE_CONN`]
//! (the runtime calls the plugin) and [`RUNTIME_SERVICE_CONN`] (the plugin calls the runtime).
//! Opening a connection is local: there are no open or close frames, and frames for an id that
//! is not open are dropped, as containerd/nri does.
//!
//! [`Mux::spawn`] starts one reader task and one writer task. The writer sends each
//! [`ConnWriter::send`] batch as consecutive frames, so one message's frames never interleave
//! with another message of the same connection. The reader hands each connection its payloads
//! in order; a connection is a byte stream and frames carry no message boundaries.
//!
//! Invariants: a malformed frame or an I/O error ends the trunk with a [`MuxError`] (never a
//! panic), and every open connection then sees end-of-stream. Each connection buffers at most
//! [`CONN_QUEUE`] payloads; a connection whose consumer stops draining stalls the trunk (the
//! consumers in this crate always drain).

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::frame::{encode_frame, FrameDecoder, FrameError};

/// Logical connection of the plugin service (the runtime is the client).
pub const PLUGIN_SERVICE_CONN: u32 = 1;
/// Logical connection of the runtime service (the plugin is the client).
pub const RUNTIME_SERVICE_CONN: u32 = 2;
/// Payloads buffered per connection (containerd/nri uses the same queue length).
pub const CONN_QUEUE: usize = 256;

const READ_CHUNK: usize = 64 * 1024;

/// Why the trunk ended.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// Reading from the trunk failed.
    #[error("reading the nri trunk: {0}")]
    Read(#[source] std::io::Error),
    /// Writing to the trunk failed.
    #[error("writing the nri trunk: {0}")]
    Write(#[source] std::io::Error),
    /// The peer sent a frame we cannot accept.
    #[error("malformed frame on the nri trunk: {0}")]
    Frame(#[from] FrameError),
    /// The peer closed the trunk.
    #[error("the runtime closed the nri connection")]
    PeerClosed,
    /// The trunk was closed locally or has already ended.
    #[error("the nri connection is closed")]
    Closed,
}

/// Handle of a running multiplexer. Dropping it closes the trunk.
#[derive(Debug)]
pub struct Mux {
    token: CancellationToken,
    reader: Option<JoinHandle<Result<(), MuxError>>>,
}

/// One logical connection: its incoming byte stream and its writer.
#[derive(Debug)]
pub struct MuxConn {
    /// The connection id.
    pub id: u32,
    /// Incoming payloads in order; `None` once the trunk has ended.
    pub rx: mpsc::Receiver<Bytes>,
    /// Writer for this connection.
    pub writer: ConnWriter,
}

/// Sends payloads on one logical connection. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnWriter {
    id: u32,
    tx: mpsc::Sender<(u32, Vec<Bytes>)>,
}

impl ConnWriter {
    /// Sends `payloads` as consecutive frames, one frame per payload, with nothing of the same
    /// connection in between.
    pub async fn send(&self, payloads: Vec<Bytes>) -> Result<(), MuxError> {
        self.tx
            .send((self.id, payloads))
            .await
            .map_err(|_| MuxError::Closed)
    }
}

impl Mux {
    /// Starts the multiplexer on `stream` with the given connections open.
    pub fn spawn<S>(stream: S, conn_ids: &[u32]) -> (Mux, Vec<MuxConn>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let token = CancellationToken::new();
        let (read_half, write_half) = tokio::io::split(stream);
        let (write_tx, write_rx) = mpsc::channel(CONN_QUEUE);
        let mut routes = std::collections::HashMap::new();
        let mut conns = Vec::with_capacity(conn_ids.len());
        for &id in conn_ids {
            let (tx, rx) = mpsc::channel(CONN_QUEUE);
            routes.insert(id, tx);
            let writer = ConnWriter {
                id,
                tx: write_tx.clone(),
            };
            conns.push(MuxConn { id, rx, writer });
        }
        tokio::spawn(write_loop(write_half, write_rx, token.clone()));
        let reader = tokio::spawn(read_loop(read_half, routes, token.clone()));
        (
            Mux {
                token,
                reader: Some(reader),
            },
            conns,
        )
    }

    /// Closes the trunk: both tasks stop and every connection sees end-of-stream.
    pub fn close(&self) {
        self.token.cancel();
    }

    /// A token cancelled when the trunk ends, for either reason.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Waits until the trunk ends and returns why. `Ok` means closed locally.
    pub async fn closed(&mut self) -> Result<(), MuxError> {
        // Await through a reference so that a caller dropping this future (e.g. a lost
        // `select!` branch) can still ask again later.
        let Some(handle) = self.reader.as_mut() else {
            return Err(MuxError::Closed);
        };
        let result = handle.await.unwrap_or(Err(MuxError::Closed));
        self.reader = None;
        result
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn read_loop<R>(
    mut read: R,
    routes: std::collections::HashMap<u32, mpsc::Sender<Bytes>>,
    token: CancellationToken,
) -> Result<(), MuxError>
where
    R: AsyncRead + Unpin,
{
    let result = tokio::select! {
        _ = token.cancelled() => Ok(()),
        r = pump_frames(&mut read, &routes) => r,
    };
    // Dropping `routes` ends every connection's stream; cancelling stops the writer.
    token.cancel();
    result
}

async fn pump_frames<R>(
    read: &mut R,
    routes: &std::collections::HashMap<u32, mpsc::Sender<Bytes>>,
) -> Result<(), MuxError>
where
    R: AsyncRead + Unpin,
{
    let mut decoder = FrameDecoder::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let n = read.read(&mut chunk).await.map_err(MuxError::Read)?;
        if n == 0 {
            return Err(MuxError::PeerClosed);
        }
        decoder.extend(&chunk[..n]);
        while let Some(frame) = decoder.decode()? {
            match routes.get(&frame.conn_id) {
                Some(tx) => {
                    if tx.send(frame.payload).await.is_err() {
                        tracing::debug!(conn_id = frame.conn_id, "nri connection consumer gone");
                    }
                }
                None => tracing::debug!(conn_id = frame.conn_id, "frame for a closed conn dropped"),
            }
        }
    }
}

async fn write_loop<W>(
    mut write: W,
    mut rx: mpsc::Receiver<(u32, Vec<Bytes>)>,
    token: CancellationToken,
) where
    W: AsyncWrite + Unpin,
{
    loop {
        let item = tokio::select! {
            _ = token.cancelled() => break,
            item = rx.recv() => item,
        };
        let Some((id, payloads)) = item else { break };
        if let Err(err) = write_batch(&mut write, id, &payloads).await {
            tracing::debug!(error = %MuxError::Write(err), "nri trunk writer stopped");
            token.cancel();
            break;
        }
    }
    let _ = write.shutdown().await;
}

async fn write_batch<W>(write: &mut W, id: u32, payloads: &[Bytes]) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    for payload in payloads {
        // One write per frame: the peer's reader sees whole frames either way, and a
        // frame's header and payload are never split by another frame.
        write.write_all(&encode_frame(id, payload)).await?;
    }
    write.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routes_frames_by_connection_and_writes_exact_bytes() {
        let (ours, mut peer) = tokio::io::duplex(1 << 16);
        let (mut mux, mut conns) = Mux::spawn(ours, &[1, 2]);
        let mut c2 = conns.pop().expect("conn 2");
        let mut c1 = conns.pop().expect("conn 1");

        // Peer → us: a frame for 2, one for an unknown id (dropped), one for 1.
        let mut wire = Vec::new();
        wire.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 2, b'h', b'i']);
        wire.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 1, b'x']);
        wire.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 3, b'a', b'b', b'c']);
        peer.write_all(&wire).await.expect("write");
        assert_eq!(
            c2.rx.recv().await.expect("payload"),
            Bytes::from_static(b"hi")
        );
        assert_eq!(
            c1.rx.recv().await.expect("payload"),
            Bytes::from_static(b"abc")
        );

        // Us → peer: two payloads become two consecutive frames.
        c1.writer
            .send(vec![Bytes::from_static(b"12"), Bytes::from_static(b"3")])
            .await
            .expect("send");
        let mut got = [0u8; 19];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(
            got,
            [0, 0, 0, 1, 0, 0, 0, 2, b'1', b'2', 0, 0, 0, 1, 0, 0, 0, 1, b'3']
        );

        // The peer hangs up: both connections end, and the reason is reported.
        drop(peer);
        assert!(c1.rx.recv().await.is_none());
        assert!(c2.rx.recv().await.is_none());
        assert!(matches!(mux.closed().await, Err(MuxError::PeerClosed)));
    }

    #[tokio::test]
    async fn malformed_frame_closes_the_trunk_with_an_error() {
        let (ours, mut peer) = tokio::io::duplex(1 << 16);
        let (mut mux, mut conns) = Mux::spawn(ours, &[1]);
        peer.write_all(&[0, 0, 0, 1, 0x7f, 0, 0, 0])
            .await
            .expect("write");
        let err = mux.closed().await.expect_err("malformed");
        assert!(
            matches!(err, MuxError::Frame(FrameError::TooLarge { .. })),
            "{err}"
        );
        assert!(conns[0].rx.recv().await.is_none());
    }
}
