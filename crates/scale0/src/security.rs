//! CURVE: key files, allowlists and the ZAP handler that enforces them.
//!
//! A listening socket with [`CurveServer`] encrypts every connection and asks the ZAP
//! handler (RFC 27, `inproc://zeromq.zap.01` of its context) whether the client's public
//! key may connect; the handler answers from the allowlist and names the key in the
//! User-Id it returns, which the broker reads off each message to apply per-key service
//! rules. Connecting sockets take a [`CurveClient`]: the server's public key and their own
//! pair. Refusals are logged here (unknown key) or from the socket monitor (plaintext
//! peer, wrong server key: the handshake fails before ZAP is asked).
//!
//! Key files are text: `NAME.key` holds `public-key = "<Z85>"`, `NAME.key_secret` holds
//! both keys (the layout czmq's certificates use, so either tool reads the other's); a
//! bare 40-character Z85 line is read as a public key too.

use crate::error::{Error, Result, ZmqContext};
use bytes::Bytes;
use scale0_proto::zap::{self, DecodeError, Mechanism, Reply, Status};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use tracing::{info, warn};

/// How often the handler thread looks at its stop flag, in milliseconds.
const ZAP_POLL_MS: i64 = 100;

/// A CURVE public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The key as Z85 text (40 characters).
    pub fn z85(&self) -> String {
        zmq::z85_encode(&self.0).unwrap_or_default()
    }

    /// Parses 40 characters of Z85.
    pub fn from_z85(text: &str) -> Option<Self> {
        decode_key(text).map(Self)
    }

    /// A public key from a key file (`NAME.key` or `NAME.key_secret`), or the Z85 text
    /// itself.
    pub fn load(spec: &str) -> Result<Self> {
        if let Some(key) = Self::from_z85(spec.trim()) {
            return Ok(key);
        }
        let text = read(Path::new(spec))?;
        parse_field(&text, "public-key")
            .or_else(|| bare_key(&text))
            .map(Self)
            .ok_or_else(|| bad_file(Path::new(spec), "no public-key in it"))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.z85())
    }
}

/// A CURVE key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The half others may know.
    pub public: PublicKey,
    secret: [u8; 32],
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh random pair (libsodium's generator, through libzmq).
    pub fn generate() -> Result<Self> {
        let pair = zmq::CurveKeyPair::new().context(|| "generating a CURVE key pair".into())?;
        Ok(Self {
            public: PublicKey(pair.public_key),
            secret: pair.secret_key,
        })
    }

    /// Reads a secret key file (`NAME.key_secret`): both keys.
    pub fn load(path: &Path) -> Result<Self> {
        let text = read(path)?;
        let public = parse_field(&text, "public-key")
            .ok_or_else(|| bad_file(path, "no public-key in it"))?;
        let secret = parse_field(&text, "secret-key")
            .ok_or_else(|| bad_file(path, "no secret-key in it: is this the public half?"))?;
        Ok(Self {
            public: PublicKey(public),
            secret,
        })
    }

    /// Writes `DIR/NAME.key` (public) and `DIR/NAME.key_secret` (both, readable by the
    /// owner only); returns their paths. Existing files are not overwritten.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
        let public = dir.join(format!("{name}.key"));
        let secret = dir.join(format!("{name}.key_secret"));
        let header = |what: &str| {
            format!(
                "# CURVE {what} of {name:?}, written by `scale0 keygen`.\nmetadata\n    name = {name:?}\ncurve\n"
            )
        };
        let public_text = format!(
            "{}    public-key = \"{}\"\n",
            header("public key"),
            self.public.z85()
        );
        let secret_text = format!(
            "{}    public-key = \"{}\"\n    secret-key = \"{}\"\n",
            header("key pair (secret: keep it private)"),
            self.public.z85(),
            zmq::z85_encode(&self.secret).unwrap_or_default()
        );
        write_new(&public, &public_text, 0o644)?;
        write_new(&secret, &secret_text, 0o600)?;
        Ok((public, secret))
    }
}

/// The public keys a server lets in, each with the name rules and logs use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    keys: HashMap<PublicKey, String>,
}

impl Allowlist {
    /// Reads `path`: a directory of key files (every `*.key` in it; the name is the file
    /// name without `.key`), or one file with a key per line (`<Z85> [name]`, `#` starts a
    /// comment line) or a single key file.
    pub fn load(path: &Path) -> Result<Self> {
        let mut list = Self::default();
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| {
                Error::InvalidConfig(format!("reading the key directory {}: {e}", path.display()))
            })?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "key"))
                .collect();
            files.sort();
            for file in files {
                let key = PublicKey::load(&file.display().to_string())?;
                let name = file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| key.z85());
                list.add(key, name);
            }
        } else {
            let text = read(path)?;
            if let Some(key) = parse_field(&text, "public-key") {
                let name = parse_text_field(&text, "name").unwrap_or_else(|| {
                    path.file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default()
                });
                list.add(PublicKey(key), name);
            } else {
                for (n, line) in text.lines().enumerate() {
                    // `#` is a Z85 digit: only whole lines are comments.
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let mut words = line.split_whitespace();
                    let z85 = words.next().unwrap_or_default();
                    let key = PublicKey::from_z85(z85).ok_or_else(|| {
                        bad_file(
                            path,
                            &format!("line {}: {z85:?} is not a 40-character Z85 key", n + 1),
                        )
                    })?;
                    let name = words.next().map_or_else(|| key.z85(), str::to_string);
                    list.add(key, name);
                }
            }
        }
        if list.keys.is_empty() {
            return Err(bad_file(path, "no keys in it: nobody could connect"));
        }
        Ok(list)
    }

    /// Lets `key` in under `name`.
    pub fn add(&mut self, key: PublicKey, name: impl Into<String>) {
        self.keys.insert(key, name.into());
    }

    /// The name of an allowed key.
    pub fn name(&self, key: &PublicKey) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }

    /// Whether some key in the list is called `name`.
    pub fn has_name(&self, name: &str) -> bool {
        self.keys.values().any(|n| n == name)
    }

    /// Keys in the list.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// CURVE for a listening socket: its key pair and who may connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurveServer {
    /// The server's pair; clients are given its public half.
    pub pair: KeyPair,
    /// The client keys let in.
    pub allow: Arc<Allowlist>,
}

/// CURVE for a connecting socket: the server's public key and the peer's own pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurveClient {
    /// The public key of the server connected to.
    pub server: PublicKey,
    /// This peer's pair; the server's allowlist must hold its public half.
    pub pair: KeyPair,
}

impl CurveServer {
    /// Makes `socket` a CURVE server checked by the ZAP handler of its context.
    pub(crate) fn apply(&self, socket: &zmq::Socket) -> Result<()> {
        socket
            .set_curve_server(true)
            .context(|| "setting CURVE_SERVER".into())?;
        socket
            .set_curve_secretkey(&self.pair.secret)
            .context(|| "setting CURVE_SECRETKEY".into())?;
        // A domain makes libzmq ask ZAP for every connection, and names us in its logs.
        socket
            .set_zap_domain("scale0")
            .context(|| "setting ZAP_DOMAIN".into())
    }
}

impl CurveClient {
    /// Makes `socket` a CURVE client of the server whose key this holds.
    pub(crate) fn apply(&self, socket: &zmq::Socket) -> Result<()> {
        socket
            .set_curve_serverkey(&self.server.0)
            .context(|| "setting CURVE_SERVERKEY".into())?;
        socket
            .set_curve_publickey(&self.pair.public.0)
            .context(|| "setting CURVE_PUBLICKEY".into())?;
        socket
            .set_curve_secretkey(&self.pair.secret)
            .context(|| "setting CURVE_SECRETKEY".into())
    }
}

/// Applies an optional client config.
pub(crate) fn apply_client(socket: &zmq::Socket, curve: Option<&CurveClient>) -> Result<()> {
    curve.map_or(Ok(()), |c| c.apply(socket))
}

/// The context for a server's sockets: its own with CURVE (a context has one ZAP
/// handler, so two CURVE servers in one process must not share one), else the
/// process-wide one.
pub(crate) fn server_context(curve: Option<&CurveServer>) -> zmq::Context {
    match curve {
        Some(_) => zmq::Context::new(),
        None => crate::sockets::context(),
    }
}

/// Refuses CURVE on `inproc://` endpoints, which never handshake.
pub(crate) fn check_endpoints<'a>(
    curve: Option<&CurveServer>,
    endpoints: impl IntoIterator<Item = &'a String>,
) -> Result<()> {
    if curve.is_some() && endpoints.into_iter().any(|e| e.starts_with("inproc://")) {
        return Err(Error::InvalidConfig(
            "CURVE secures tcp:// and ipc:// endpoints; inproc:// peers share the process, drop --curve-* or the inproc endpoint".into(),
        ));
    }
    Ok(())
}

/// Puts CURVE on every one of `sockets` (before they bind) and starts the ZAP handler of
/// `ctx`, which also logs the handshake failures of `watched` (those of `sockets` that
/// have no monitor of their own: a socket has one monitor at most). `None` without CURVE.
pub(crate) fn secure(
    curve: Option<&CurveServer>,
    ctx: &zmq::Context,
    sockets: &[&zmq::Socket],
    watched: &[&zmq::Socket],
) -> Result<Option<ZapHandler>> {
    let Some(curve) = curve else {
        return Ok(None);
    };
    for s in sockets {
        curve.apply(s)?;
    }
    ZapHandler::start(ctx, Arc::clone(&curve.allow), watched).map(Some)
}

/// Watches the handshakes of a connecting CURVE socket, so that a peer the server refuses
/// can say why instead of only timing out. The socket's monitor must be stopped
/// (`sockets::stop_monitor`) before this is dropped.
pub(crate) struct HandshakeWatch {
    reader: zmq::Socket,
    refused: Option<String>,
}

impl HandshakeWatch {
    /// Starts watching `socket` (before it connects), whose context is `ctx`.
    pub(crate) fn start(ctx: &zmq::Context, socket: &zmq::Socket) -> Result<Self> {
        let events = HANDSHAKE_FAILURES
            | zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as i32
            | zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32;
        Ok(Self {
            reader: crate::sockets::monitor(ctx, socket, events, "the handshake")?,
            refused: None,
        })
    }

    /// Why the latest handshake failed, if the latest one did.
    pub(crate) fn refusal(&mut self) -> Option<String> {
        while let Ok(event) = self.reader.recv_multipart(zmq::DONTWAIT) {
            if let Some((id, value)) = event.first().and_then(|f| crate::sockets::monitor_event(f))
            {
                self.refused = client_refusal(u32::from(id), value);
            }
        }
        self.refused.clone()
    }
}

/// What a failed handshake means to the connecting side.
fn client_refusal(event: u32, value: u32) -> Option<String> {
    Some(match event {
        e if e == zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u32 => return None,
        e if e == zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as u32 => format!(
            "this client's key is not allowed there (ZAP status {value}): add its public key to the server's --curve-allow"
        ),
        e if e == zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as u32
            && value == MECHANISM_MISMATCH =>
        {
            "one side uses CURVE and the other does not: give both the --curve-* flags, or neither".into()
        }
        e if e == zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as u32 => {
            format!("protocol error {value:#x} in the handshake")
        }
        _ => "the server broke off the handshake: a CURVE server refuses plaintext clients, and one given the wrong --curve-server-key"
            .into(),
    })
}

/// ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH of zmq.h: a plaintext peer met a CURVE one.
const MECHANISM_MISMATCH: u32 = 0x1100_0002;
/// ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC of zmq.h: a hello that did not decrypt.
const CRYPTOGRAPHIC: u32 = 0x1100_0001;

/// Monitor events that mean a peer was refused before ZAP was asked.
pub(crate) const HANDSHAKE_FAILURES: i32 = zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as i32
    | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as i32;

/// Logs the handshake failures read off a CURVE server's monitor, rate-limited.
#[derive(Default)]
pub(crate) struct HandshakeLog {
    quiet: Quiet,
}

impl HandshakeLog {
    /// Logs `event` (a monitor message: event frame, then the address) if it is a
    /// handshake failure; other events are ignored.
    pub(crate) fn event<F: AsRef<[u8]>>(&mut self, event: &[F]) {
        if let [head, address, ..] = event
            && let Some((event, value)) = crate::sockets::monitor_event(head.as_ref())
        {
            let Some((kind, why)) = handshake_failure(event, value) else {
                return;
            };
            let address = String::from_utf8_lossy(address.as_ref());
            self.quiet.log(kind, || {
                warn!(%address, code = format!("{value:#x}"), "refused a connection: {why}");
            });
        }
    }
}

/// The ZAP handler of one context: a thread answering libzmq's authentication requests
/// from an allowlist until dropped.
pub(crate) struct ZapHandler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ZapHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZapHandler")
    }
}

impl ZapHandler {
    /// Binds the ZAP endpoint of `ctx` (one handler per context) and starts answering;
    /// also logs the handshake failures of the `watched` server sockets, which must
    /// be stopped with [`ZapHandler::stop`] before they close.
    pub(crate) fn start(
        ctx: &zmq::Context,
        allow: Arc<Allowlist>,
        watched: &[&zmq::Socket],
    ) -> Result<Self> {
        let socket = ctx
            .socket(zmq::REP)
            .context(|| "creating the ZAP handler's socket".into())?;
        socket.set_linger(0).context(|| "setting LINGER".into())?;
        socket
            .bind(zap::ENDPOINT)
            .context(|| format!("binding {}", zap::ENDPOINT))?;
        // Refusals by the allowlist are logged by `answer`, with the key.
        let monitors = watched
            .iter()
            .map(|s| {
                let events = HANDSHAKE_FAILURES | crate::accepts::ACCEPT_EVENTS;
                crate::sockets::monitor(ctx, s, events, "handshakes")
            })
            .collect::<Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("scale0-zap".into())
            .spawn(move || serve(&socket, &monitors, &allow, &flag))
            .map_err(|error| Error::Spawn {
                what: "the ZAP thread",
                error,
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops watching `watched` (see `sockets::stop_monitor`), then the thread.
    pub(crate) fn stop(self, watched: &[&zmq::Socket]) {
        for s in watched {
            crate::sockets::stop_monitor(s);
        }
        drop(self);
    }
}

impl Drop for ZapHandler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: &zmq::Socket, monitors: &[zmq::Socket], allow: &Allowlist, stop: &AtomicBool) {
    let mut quiet = Quiet::default();
    let mut handshakes = HandshakeLog::default();
    let mut accepts = crate::accepts::AcceptLog::default();
    while !stop.load(Ordering::Relaxed) {
        let mut items = vec![socket.as_poll_item(zmq::POLLIN)];
        items.extend(monitors.iter().map(|m| m.as_poll_item(zmq::POLLIN)));
        if crate::sockets::poll(&mut items, ZAP_POLL_MS).is_err() {
            return;
        }
        let ready: Vec<bool> = items.iter().map(zmq::PollItem::is_readable).collect();
        for (m, _) in monitors.iter().zip(&ready[1..]).filter(|(_, r)| **r) {
            while let Ok(event) = m.recv_multipart(zmq::DONTWAIT) {
                if let Some((id, value)) =
                    event.first().and_then(|f| crate::sockets::monitor_event(f))
                {
                    accepts.event(std::time::Instant::now(), id, value);
                }
                handshakes.event(&event);
            }
        }
        if !ready[0] {
            continue;
        }
        let Ok(request) = socket.recv_multipart(0) else {
            return;
        };
        let reply = answer(&request, allow, &mut quiet);
        if socket.send_multipart(reply, 0).is_err() {
            return;
        }
    }
}

/// Rate limit for refusal logs: a refused peer reconnects every few hundred
/// milliseconds, so each kind of refusal is logged at most once a second, with how
/// many were not.
#[derive(Default)]
struct Quiet {
    last: HashMap<u16, (std::time::Instant, u64)>,
}

/// `Quiet` kinds that are not monitor events.
const REFUSED_KEY: u16 = 0;
const REFUSED_MECHANISM: u16 = 1;

impl Quiet {
    fn log(&mut self, kind: u16, log: impl FnOnce()) {
        let now = std::time::Instant::now();
        match self.last.get_mut(&kind) {
            Some((at, skipped)) if now.duration_since(*at) < std::time::Duration::from_secs(1) => {
                *skipped += 1;
            }
            Some((at, skipped)) => {
                if *skipped > 0 {
                    warn!(
                        count = *skipped,
                        "refusals like the next were not logged in the last second"
                    );
                }
                *at = now;
                *skipped = 0;
                log();
            }
            None => {
                self.last.insert(kind, (now, 0));
                log();
            }
        }
    }
}

/// The reply to one ZAP request (RFC 27): `200` with the key's name as User-Id for an
/// allowed CURVE key, `400` for anything else, `500` for what is not a request.
fn answer(request: &[Vec<u8>], allow: &Allowlist, quiet: &mut Quiet) -> Vec<Vec<u8>> {
    let frames: Vec<Bytes> = request.iter().map(|f| Bytes::copy_from_slice(f)).collect();
    let reply = match zap::Request::decode(&frames) {
        Ok(request) => authenticate(&request, allow, quiet),
        Err(e @ (DecodeError::UnsupportedVersion | DecodeError::MissingFrame)) => {
            warn!(error = %e, "refused a connection: malformed ZAP request");
            let text = "unsupported ZAP version";
            Reply::new(zap::request_id(&frames), Status::InternalError, text)
        }
        Err(e) => {
            let id = zap::request_id(&frames);
            if e == DecodeError::BadCredentials("CURVE") {
                quiet.log(REFUSED_KEY, || {
                    warn!("refused a connection: a CURVE key that is not 32 bytes");
                });
                Reply::new(id, Status::AuthFailure, "key not allowed")
            } else {
                quiet.log(REFUSED_MECHANISM, || {
                    warn!(error = %e, "refused a connection: CURVE required");
                });
                Reply::new(id, Status::AuthFailure, "CURVE required")
            }
        }
    };
    reply.encode().into_iter().map(Vec::from).collect()
}

/// The answer to a well-formed request: only an allowed CURVE key gets in.
fn authenticate(request: &zap::Request, allow: &Allowlist, quiet: &mut Quiet) -> Reply {
    let address = String::from_utf8_lossy(&request.address);
    let id = request.id.clone();
    let Mechanism::Curve { public_key } = request.mechanism else {
        quiet.log(REFUSED_MECHANISM, || {
            warn!(%address, mechanism = request.mechanism.name(), "refused a connection: CURVE required");
        });
        return Reply::new(id, Status::AuthFailure, "CURVE required");
    };
    let key = PublicKey(public_key);
    match allow.name(&key) {
        Some(name) => {
            info!(%address, key = name, "client authenticated");
            let mut reply = Reply::new(id, Status::Success, "OK");
            reply.user_id = Bytes::from(name.to_string());
            reply
        }
        None => {
            quiet.log(REFUSED_KEY, || {
                warn!(%address, key = %key.z85(), "refused a connection: key not in the allowlist");
            });
            Reply::new(id, Status::AuthFailure, "key not allowed")
        }
    }
}

/// What a handshake failure a CURVE server's monitor reports means: plaintext peers and
/// peers with the wrong server key never reach ZAP. A plaintext peer shows either as a
/// mechanism mismatch or, when its side notices first and hangs up, as a broken-off
/// handshake. Returns a rate-limit kind (apart from the `REFUSED_*` ones) and the reason.
fn handshake_failure(event: u16, value: u32) -> Option<(u16, &'static str)> {
    let event32 = u32::from(event);
    if event32 == zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as u32 {
        return Some((
            0x10,
            "the peer broke off the handshake (a plaintext peer, or a network error)",
        ));
    }
    if event32 != zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as u32 {
        return None;
    }
    Some(match value {
        MECHANISM_MISMATCH => (
            0x11,
            "a plaintext peer, or one with another security mechanism",
        ),
        CRYPTOGRAPHIC => (
            0x12,
            "its hello did not decrypt: a peer given a wrong server key",
        ),
        _ => (0x13, "protocol error in the handshake"),
    })
}

fn decode_key(text: &str) -> Option<[u8; 32]> {
    if text.len() != 40 {
        return None;
    }
    zmq::z85_decode(text).ok()?.try_into().ok()
}

/// The Z85 key of a `name = "<Z85>"` line.
fn parse_field(text: &str, name: &str) -> Option<[u8; 32]> {
    parse_text_field(text, name).and_then(|v| decode_key(&v))
}

fn parse_text_field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// A file that is just a Z85 public key.
fn bare_key(text: &str) -> Option<[u8; 32]> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    match lines.as_slice() {
        [one] => decode_key(one),
        _ => None,
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidConfig(format!("reading the key file {}: {e}", path.display())))
}

fn bad_file(path: &Path, why: &str) -> Error {
    Error::InvalidConfig(format!("key file {}: {why}", path.display()))
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::InvalidConfig(format!("writing {}: {e}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(|e| Error::InvalidConfig(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_directories_name_keys() {
        let dir = std::env::temp_dir().join(format!("scale0-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pair = KeyPair::generate().unwrap();
        let (public, secret) = pair.write(&dir, "alice").unwrap();
        assert!(pair.write(&dir, "alice").is_err(), "must not overwrite");
        let back = KeyPair::load(&secret).unwrap();
        assert_eq!(back.public, pair.public);
        assert_eq!(back.secret, pair.secret);
        assert_eq!(
            PublicKey::load(&public.display().to_string()).unwrap(),
            pair.public
        );
        assert_eq!(PublicKey::load(&pair.public.z85()).unwrap(), pair.public);
        assert!(
            KeyPair::load(&public).is_err(),
            "a public file has no secret"
        );
        let list = Allowlist::load(&dir).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list.name(&pair.public), Some("alice"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn answer_once(request: &[Vec<u8>], allow: &Allowlist) -> Vec<Vec<u8>> {
        answer(request, allow, &mut Quiet::default())
    }

    #[test]
    fn handshake_failures_are_told_apart_by_their_protocol_code() {
        let protocol = zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL.to_raw();
        let broken = zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL.to_raw();
        let why = |e, v| handshake_failure(e, v).map(|(_, w)| w).unwrap_or_default();
        assert!(why(protocol, 0x1100_0002).contains("plaintext peer"));
        assert!(why(broken, 104).contains("plaintext peer"));
        assert!(why(protocol, 0x1100_0001).contains("wrong server key"));
        assert!(why(protocol, 0x1000_0013).contains("protocol error"));
        assert!(handshake_failure(zmq::SocketEvent::ACCEPTED.to_raw(), 7).is_none());
        // Each reason is rate-limited on its own, apart from the ZAP refusals.
        let kinds: std::collections::BTreeSet<u16> = [
            (protocol, 0x1100_0002),
            (protocol, 0x1100_0001),
            (protocol, 1),
            (broken, 0),
        ]
        .iter()
        .filter_map(|&(e, v)| handshake_failure(e, v).map(|(k, _)| k))
        .chain([REFUSED_KEY, REFUSED_MECHANISM])
        .collect();
        assert_eq!(kinds.len(), 6);
    }

    #[test]
    fn zap_answers_by_the_allowlist() {
        let pair = KeyPair::generate().unwrap();
        let mut allow = Allowlist::default();
        allow.add(pair.public, "alice");
        let request = |mechanism: &[u8], key: &[u8]| {
            vec![
                b"1.0".to_vec(),
                b"7".to_vec(),
                b"scale0".to_vec(),
                b"127.0.0.1".to_vec(),
                Vec::new(),
                mechanism.to_vec(),
                key.to_vec(),
            ]
        };
        let ok = answer_once(&request(b"CURVE", &pair.public.0), &allow);
        assert_eq!(ok[1], b"7");
        assert_eq!(ok[2], b"200");
        assert_eq!(ok[4], b"alice");
        let stranger = KeyPair::generate().unwrap();
        assert_eq!(
            answer_once(&request(b"CURVE", &stranger.public.0), &allow)[2],
            b"400"
        );
        assert_eq!(answer_once(&request(b"NULL", b""), &allow)[2], b"400");
        assert_eq!(answer_once(&request(b"CURVE", b"short"), &allow)[2], b"400");
        assert_eq!(answer_once(&[b"2.0".to_vec()], &allow)[2], b"500");
        assert_eq!(answer_once(&[], &allow)[2], b"500");
    }

    #[test]
    fn allowlist_files_reject_bad_lines_and_empty_lists() {
        let dir = std::env::temp_dir().join(format!("scale0-allow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap().public;
        let good = dir.join("good");
        std::fs::write(&good, format!("# clients\n{} bob\n\n", key.z85())).unwrap();
        assert_eq!(Allowlist::load(&good).unwrap().name(&key), Some("bob"));
        // Keys with '#' in them (a Z85 digit) are keys, not comments.
        let hashed = loop {
            let k = KeyPair::generate().unwrap().public;
            if k.z85().contains('#') {
                break k;
            }
        };
        std::fs::write(&good, format!("{}\n", hashed.z85())).unwrap();
        assert_eq!(
            Allowlist::load(&good).unwrap().name(&hashed),
            Some(hashed.z85().as_str())
        );
        let bad = dir.join("bad");
        std::fs::write(&bad, "# clients\nnot-a-key bob\n").unwrap();
        let e = Allowlist::load(&bad).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let empty = dir.join("empty");
        std::fs::write(&empty, "# nobody\n").unwrap();
        assert!(Allowlist::load(&empty).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
