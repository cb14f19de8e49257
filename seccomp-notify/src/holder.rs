//! The fd holder: a tiny process that keeps a duplicate of every notify fd.
//!
//! The kernel fails every exec of a filter with `ENOSYS` once the last holder of its notify fd
//! closes it, and a runtime never sends the fd again. The holder keeps a duplicate and the
//! container's hand-off state, so a supervisor crash or upgrade costs waiting time, not failed
//! execs: pending execs wait in the kernel until the next supervisor takes the fds back.
//!
//! Protocol, over a `SOCK_SEQPACKET` unix socket (one datagram per message, fds attached):
//! - `{"op":"put","state":<base64-free raw JSON as a string>}` + one fd → `{"ok":true}`;
//! - `{"op":"list"}` → one `{"op":"entry","state":...}` + fd per held fd, then
//!   `{"op":"end","count":N}`;
//! - `{"op":"keeplistener","path":P,"dev":D,"ino":I}` + the supervisor's listening hand-off
//!   socket → `{"op":"ok"}` (replaces any listener kept before);
//! - `{"op":"takelistener"}` → `{"op":"listener",…}` + a duplicate of the kept listener, or
//!   `{"op":"end","count":0}` when none is kept;
//! - `{"op":"status"}` → `{"op":"instance","id":…,"count":N}`: an id that differs for every
//!   holder process, so a supervisor can tell that the holder was restarted (and lost what it
//!   held) even when its socket file got the same inode number.
//!
//! Keeping the listening socket is what lets a runtime hand off while no supervisor runs: a
//! `runc exec` (an exec probe, `kubectl exec`) connects and sends its notify fd into the
//! socket's backlog instead of failing with "connection refused", and its process waits in the
//! kernel until the next supervisor accepts the connection. The holder never accepts on it.
//!
//! The holder never reads from a notify fd: it polls them for `POLLHUP` only and drops an fd
//! when no task uses its filter any more. Peers must be root.
//!
//! A holder restarted while the supervisor runs is given everything again by the supervisor
//! (it polls `status`); see `Supervisor::run`.
//!
//! Limits: the holder itself is a single point: if it dies while the supervisor is also down,
//! the fds are lost, and so are the hand-offs waiting in the kept listener's backlog (the
//! backlog holds at most `somaxconn` connections; more runtimes get "resource temporarily
//! unavailable"). It keeps state only in memory.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::net::{
    self as rnet, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// Largest message (state JSON plus framing).
const MAX_MESSAGE: usize = (1 << 20) + 4096;
/// Client-side timeout for each reply.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Message {
    Put { state: String },
    List,
    Entry { state: String },
    End { count: usize },
    KeepListener { path: String, dev: u64, ino: u64 },
    TakeListener,
    Listener { path: String, dev: u64, ino: u64 },
    Status,
    Instance { id: String, count: usize },
    Ok,
    Error { reason: String },
}

fn send(socket: impl AsFd, message: &Message, fd: Option<&OwnedFd>) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd.as_fd()];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("control buffer too small"));
        }
    }
    rnet::sendmsg(
        socket,
        &[IoSlice::new(&body)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

fn recv(socket: impl AsFd) -> io::Result<Option<(Message, Option<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let got = rnet::recvmsg(socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut fd = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for received in fds {
                fd.get_or_insert(received);
            }
        }
    }
    if got.bytes == 0 {
        return Ok(None);
    }
    let message = serde_json::from_slice(&buf[..got.bytes]).map_err(io::Error::other)?;
    Ok(Some((message, fd)))
}

fn connect(path: &Path) -> io::Result<OwnedFd> {
    let socket = rnet::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let timeout = Some(CLIENT_TIMEOUT);
    rnet::sockopt::set_socket_timeout(&socket, rnet::sockopt::Timeout::Recv, timeout)?;
    rnet::connect(&socket, &SocketAddrUnix::new(path)?)?;
    Ok(socket)
}

/// Gives the holder a duplicate of a notify fd with its hand-off state.
pub fn put(path: &Path, state: &[u8], fd: OwnedFd) -> io::Result<()> {
    let socket = connect(path)?;
    let state = String::from_utf8_lossy(state).into_owned();
    send(&socket, &Message::Put { state }, Some(&fd))?;
    match recv(&socket)? {
        Some((Message::Ok, _)) => Ok(()),
        Some((Message::Error { reason }, _)) => Err(io::Error::other(reason)),
        other => Err(io::Error::other(format!(
            "unexpected holder reply {other:?}"
        ))),
    }
}

/// Takes back (duplicates of) every held fd with its state.
pub fn list(path: &Path) -> io::Result<Vec<(Vec<u8>, OwnedFd)>> {
    let socket = connect(path)?;
    send(&socket, &Message::List, None)?;
    let mut out = Vec::new();
    loop {
        match recv(&socket)? {
            Some((Message::Entry { state }, Some(fd))) => out.push((state.into_bytes(), fd)),
            Some((Message::End { .. }, _)) => return Ok(out),
            other => {
                return Err(io::Error::other(format!(
                    "unexpected holder reply {other:?}"
                )))
            }
        }
    }
}

struct Held {
    state: String,
    fd: OwnedFd,
}

/// A listening hand-off socket kept by the holder, with the identity of the socket file it was
/// bound to (so a supervisor can tell whether the path still names it).
#[derive(Debug)]
pub struct KeptListener {
    /// The path it was bound to.
    pub path: String,
    /// `st_dev` of the socket file right after `bind`.
    pub dev: u64,
    /// `st_ino` of the socket file right after `bind`.
    pub ino: u64,
    /// The listening socket.
    pub fd: OwnedFd,
}

/// Gives the holder a duplicate of the listening hand-off socket.
pub fn keep_listener(path: &Path, listener: &KeptListener) -> io::Result<()> {
    let socket = connect(path)?;
    let message = Message::KeepListener {
        path: listener.path.clone(),
        dev: listener.dev,
        ino: listener.ino,
    };
    send(&socket, &message, Some(&listener.fd))?;
    match recv(&socket)? {
        Some((Message::Ok, _)) => Ok(()),
        Some((Message::Error { reason }, _)) => Err(io::Error::other(reason)),
        other => Err(io::Error::other(format!(
            "unexpected holder reply {other:?}"
        ))),
    }
}

/// A duplicate of the listening hand-off socket the holder keeps, if any.
pub fn take_listener(path: &Path) -> io::Result<Option<KeptListener>> {
    let socket = connect(path)?;
    send(&socket, &Message::TakeListener, None)?;
    match recv(&socket)? {
        Some((Message::Listener { path, dev, ino }, Some(fd))) => {
            Ok(Some(KeptListener { path, dev, ino, fd }))
        }
        Some((Message::End { .. }, _)) => Ok(None),
        other => Err(io::Error::other(format!(
            "unexpected holder reply {other:?}"
        ))),
    }
}

/// The id of the holder process answering on `path` (see the module documentation).
pub fn instance(path: &Path) -> io::Result<String> {
    let socket = connect(path)?;
    send(&socket, &Message::Status, None)?;
    match recv(&socket)? {
        Some((Message::Instance { id, .. }, _)) => Ok(id),
        other => Err(io::Error::other(format!(
            "unexpected holder reply {other:?}"
        ))),
    }
}

/// Whether a holder answers on `path` (connects and closes, which the holder ignores).
pub fn is_running(path: &Path) -> bool {
    connect(path).is_ok()
}

/// Serves the holder on `path` until the process is killed.
pub fn run_holder(path: &Path) -> io::Result<()> {
    let listener = bind_seqpacket(path)?;
    info!(socket = %path.display(), "fd holder listening");
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let instance = format!("{}-{started}", std::process::id());
    let mut held: Vec<Held> = Vec::new();
    // Never polled: pending hand-offs in its backlog are for the next supervisor.
    let mut kept: Option<KeptListener> = None;
    loop {
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(held.len() + 1);
        fds.push(PollFd::new(&listener, PollFlags::IN));
        // Empty interest: only POLLHUP/POLLERR are reported, pending notifications are not.
        fds.extend(held.iter().map(|h| PollFd::new(&h.fd, PollFlags::empty())));
        rustix::event::poll(&mut fds, None)?;
        let hung: Vec<usize> = fds[1..]
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.revents().is_empty())
            .map(|(i, _)| i)
            .collect();
        let accept_ready = fds[0].revents().contains(PollFlags::IN);
        drop(fds);
        for index in hung.into_iter().rev() {
            held.swap_remove(index);
        }
        if accept_ready {
            if let Err(err) = serve_client(&listener, &instance, &mut held, &mut kept) {
                warn!(error = %err, "fd holder client failed");
            }
        }
    }
}

fn bind_seqpacket(path: &Path) -> io::Result<OwnedFd> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let socket = rnet::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rnet::bind(&socket, &SocketAddrUnix::new(path)?)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    rnet::listen(&socket, 64)?;
    Ok(socket)
}

fn serve_client(
    listener: &OwnedFd,
    instance: &str,
    held: &mut Vec<Held>,
    kept: &mut Option<KeptListener>,
) -> io::Result<()> {
    let client = rnet::accept_with(listener, SocketFlags::CLOEXEC)?;
    rnet::sockopt::set_socket_timeout(&client, rnet::sockopt::Timeout::Recv, Some(CLIENT_TIMEOUT))?;
    let cred = rnet::sockopt::socket_peercred(&client)?;
    if cred.uid.as_raw() != 0 {
        warn!(
            uid = cred.uid.as_raw(),
            "fd holder client refused: not root"
        );
        return Ok(());
    }
    match recv(&client)? {
        Some((Message::Put { state }, Some(fd))) => {
            held.push(Held { state, fd });
            info!(held = held.len(), "fd holder took a notify fd");
            send(&client, &Message::Ok, None)
        }
        Some((Message::List, _)) => {
            for entry in held.iter() {
                send(
                    &client,
                    &Message::Entry {
                        state: entry.state.clone(),
                    },
                    Some(&entry.fd),
                )?;
            }
            send(&client, &Message::End { count: held.len() }, None)
        }
        Some((Message::KeepListener { path, dev, ino }, Some(fd))) => {
            info!(socket = %path, "fd holder keeps the hand-off listener");
            *kept = Some(KeptListener { path, dev, ino, fd });
            send(&client, &Message::Ok, None)
        }
        Some((Message::TakeListener, _)) => match kept {
            Some(listener) => {
                let message = Message::Listener {
                    path: listener.path.clone(),
                    dev: listener.dev,
                    ino: listener.ino,
                };
                send(&client, &message, Some(&listener.fd))
            }
            None => send(&client, &Message::End { count: 0 }, None),
        },
        Some((Message::Status, _)) => {
            let message = Message::Instance {
                id: instance.to_string(),
                count: held.len(),
            };
            send(&client, &message, None)
        }
        // A client that connects and closes (a liveness probe) gets nothing.
        None => Ok(()),
        other => {
            let reason = format!("unexpected request {other:?}");
            send(&client, &Message::Error { reason }, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_and_returns_fds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h/holder.sock");
        let p = path.clone();
        std::thread::spawn(move || run_holder(&p));
        for _ in 0..100 {
            if path.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // A pipe's read end stands in for a notify fd: it hangs up when the write end closes.
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        put(&path, br#"{"state":{"id":"a"}}"#, read).expect("put");
        let listed = list(&path).expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, br#"{"state":{"id":"a"}}"#.to_vec());
        drop(listed);
        drop(write);
        let mut empty = false;
        for _ in 0..100 {
            if list(&path).expect("list").is_empty() {
                empty = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(empty, "the holder drops an fd that hung up");

        assert!(take_listener(&path).expect("take").is_none());
        let (read, _write) = rustix::pipe::pipe().expect("pipe");
        let listener = KeptListener {
            path: "/run/x.sock".into(),
            dev: 7,
            ino: 9,
            fd: read,
        };
        keep_listener(&path, &listener).expect("keep");
        let back = take_listener(&path).expect("take").expect("kept");
        assert_eq!(
            (back.path.as_str(), back.dev, back.ino),
            ("/run/x.sock", 7, 9)
        );
        // Taking it leaves the holder's copy in place for the next supervisor.
        assert!(take_listener(&path).expect("take again").is_some());
        let id = instance(&path).expect("status");
        assert_eq!(instance(&path).expect("status"), id, "one process, one id");
    }
}
