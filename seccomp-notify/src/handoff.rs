//! The hand-off socket: where runc and crun deliver a notify fd with the container's state.
//!
//! Protocol (OCI runtime-spec `config-linux.md`, observed with runc 1.1.5/1.1.15/1.3.6 and
//! crun): one connection per process that gets the filter; the first `sendmsg` carries the
//! JSON `ContainerProcessState` and the notify fd (`SCM_RIGHTS`); the JSON may continue over
//! more reads. runc 1.1.x keeps its end open until it exits, so the reader stops as soon as
//! the JSON is complete and never waits for EOF.
//!
//! Invariants: the peer must be uid 0 (`SO_PEERCRED`, checked before reading); a message is at
//! most [`MAX_STATE_LEN`] bytes; unknown JSON fields are ignored; fds beyond the one named
//! `seccompFd` are closed.

use std::collections::BTreeMap;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use serde::Deserialize;
use thiserror::Error;
use tokio::io::Interest;
use tokio::net::UnixStream;

/// Largest accepted state message (annotations can be large).
pub const MAX_STATE_LEN: usize = 1 << 20;
/// How long a runtime may take to finish its message.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// `ContainerProcessState` as the runtime sends it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ProcessState {
    /// Names of the fds, in `SCM_RIGHTS` order.
    #[serde(default)]
    pub fds: Vec<String>,
    /// Host pid of the process the filter was installed for.
    #[serde(default)]
    pub pid: i64,
    /// `listenerMetadata` of the profile.
    #[serde(default)]
    pub metadata: String,
    /// The container's state.
    pub state: ContainerState,
}

/// The OCI state of the container.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ContainerState {
    /// Container id.
    pub id: String,
    /// `creating` for init, `running` for `runc exec`.
    #[serde(default)]
    pub status: String,
    /// Container init pid.
    #[serde(default)]
    pub pid: i64,
    /// Bundle directory.
    #[serde(default)]
    pub bundle: PathBuf,
    /// OCI annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A received hand-off: the raw JSON (kept verbatim for the fd holder) and the notify fd.
#[derive(Debug)]
pub struct Handoff {
    /// The parsed state.
    pub state: ProcessState,
    /// The JSON bytes as received.
    pub raw: Vec<u8>,
    /// The seccomp notify fd.
    pub notify_fd: OwnedFd,
}

/// Why a hand-off was refused.
#[derive(Debug, Error)]
pub enum HandoffError {
    /// The peer is not root.
    #[error("hand-off from uid {uid} (pid {pid}) refused: only root may hand off notify fds")]
    NotRoot {
        /// Peer uid.
        uid: u32,
        /// Peer pid.
        pid: i32,
    },
    /// The message carried no fd.
    #[error("hand-off message carried no file descriptor")]
    NoFd,
    /// The JSON is malformed.
    #[error("hand-off state is not valid ContainerProcessState JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Message too large.
    #[error("hand-off state exceeds {MAX_STATE_LEN} bytes")]
    TooLarge,
    /// The runtime closed or stalled before the JSON was complete.
    #[error("hand-off state incomplete after {0} bytes")]
    Incomplete(usize),
    /// The runtime sent no complete state within the read timeout.
    #[error("hand-off state not complete within {READ_TIMEOUT:?}")]
    TimedOut,
    /// Socket error.
    #[error("hand-off socket: {0}")]
    Io(#[from] io::Error),
}

/// Reads one hand-off from an accepted connection.
pub async fn receive(stream: &UnixStream) -> Result<Handoff, HandoffError> {
    let cred = rustix::net::sockopt::socket_peercred(stream).map_err(io::Error::from)?;
    if cred.uid.as_raw() != 0 {
        return Err(HandoffError::NotRoot {
            uid: cred.uid.as_raw(),
            pid: cred.pid.as_raw_nonzero().get(),
        });
    }
    tokio::time::timeout(READ_TIMEOUT, read_message(stream))
        .await
        .map_err(|_| HandoffError::TimedOut)?
}

async fn read_message(stream: &UnixStream) -> Result<Handoff, HandoffError> {
    let mut raw = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = stream
            .async_io(Interest::READABLE, || {
                recv_chunk(stream, &mut chunk, &mut fds)
            })
            .await?;
        if n == 0 {
            return Err(HandoffError::Incomplete(raw.len()));
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX_STATE_LEN {
            return Err(HandoffError::TooLarge);
        }
        match serde_json::from_slice::<ProcessState>(&raw) {
            Ok(state) => return finish(state, raw, fds),
            Err(err) if err.is_eof() => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

fn finish(state: ProcessState, raw: Vec<u8>, fds: Vec<OwnedFd>) -> Result<Handoff, HandoffError> {
    let index = state
        .fds
        .iter()
        .position(|name| name == "seccompFd")
        .unwrap_or(0);
    let notify_fd = fds.into_iter().nth(index).ok_or(HandoffError::NoFd)?;
    Ok(Handoff {
        state,
        raw,
        notify_fd,
    })
}

fn recv_chunk(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = rustix::net::recvmsg(
        stream,
        &mut iov,
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    )?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    Ok(msg.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_runc_and_crun_messages() {
        let runc = br#"{"ociVersion":"1.0.2-dev","fds":["seccompFd"],"pid":27104,"metadata":"demo","state":{"ociVersion":"1.0.2-dev","id":"raw-115","status":"creating","pid":27104,"bundle":"/b"}}"#;
        let state: ProcessState = serde_json::from_slice(runc).expect("runc");
        assert_eq!(state.state.id, "raw-115");
        assert_eq!(state.metadata, "demo");
        let crun = br#"{ "ociVersion": "0.2.0", "fds": [ "seccompFd" ], "pid": 5, "future": 1,
            "state": { "id": "c", "status": "running", "pid": 4, "bundle": "\/tmp\/b",
            "annotations": { "a": "b" } } }"#;
        let state: ProcessState = serde_json::from_slice(crun).expect("crun");
        assert_eq!(state.state.bundle, PathBuf::from("/tmp/b"));
        assert_eq!(state.state.annotations["a"], "b");
    }
}
