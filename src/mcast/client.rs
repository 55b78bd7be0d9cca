//! `restore --source mcast://HOST[:PORT]`: joins a `reimage server`
//! stream. The control connection brings the manifest and session key; a
//! receiver thread collects RaptorQ symbols per chunk and decodes each
//! chunk as soon as it has enough; chunks reach the restore pipeline in
//! whatever order they decode, each checked against its manifest digest.

use std::collections::HashMap;
use std::fmt;
use std::io::IoSliceMut;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use socket2::{Domain, Protocol, Socket, Type};

use super::fec;
use super::wire::{self, Key, Msg, SYMBOL_SIZE};
use crate::image::format::{self, Codec, HEADER_LEN, ImageHead};
use crate::source::{ChunkSource, ImageInfo, Piece, Slot, SourceOptions, StreamStatus};

pub const DEFAULT_PORT: u16 = 7800;

/// Memory for symbols of chunks not yet decoded. Chunks normally decode
/// within their own transmission, so this holds only the few that lost
/// too much; symbols of further chunks wait for the next pass.
const COLLECT_LIMIT: usize = 128 << 20;

/// How often the client tells the server what it still needs.
const REPORT_EVERY: Duration = Duration::from_millis(250);

/// Counters the receiver keeps and the reporter sends.
#[derive(Default)]
struct Stats {
    received: AtomicU64,
    expected: AtomicU64,
    overflows: AtomicU64,
    written: AtomicU64,
    /// Milliseconds since `epoch` at the last valid datagram.
    last_data_ms: AtomicU64,
    /// Passes of the stream seen, counted from the first one received.
    passes: AtomicU32,
}

struct Shared {
    /// Per chunk: decoded (and not refused by the digest check since).
    held: Vec<AtomicBool>,
    stats: Stats,
    epoch: Instant,
    stop: AtomicBool,
    /// Why the control connection ended, if it did.
    control_lost: Mutex<Option<String>>,
    /// The control connection (None in tests).
    control: Mutex<Option<TcpStream>>,
}

/// A mutex's guard, poisoned or not: a panicked thread's last word on
/// these (counters, a connection, a message) is still the best there is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Chunk `i` failed its digest check after decoding: the receiver
    /// collects it again (it drops symbols of held chunks only).
    fn forget(&self, i: usize) {
        self.held[i].store(false, Ordering::Relaxed);
    }

    fn missing(&self) -> Vec<(u32, u32)> {
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for (i, h) in self.held.iter().enumerate() {
            if h.load(Ordering::Relaxed) {
                continue;
            }
            let i = i as u32;
            match ranges.last_mut() {
                Some((_, end)) if *end == i => *end = i + 1,
                _ => ranges.push((i, i + 1)),
            }
        }
        ranges
    }

    fn send(&self, m: &Msg) -> std::io::Result<()> {
        let mut c = lock(&self.control);
        let c = c.as_mut().ok_or(std::io::ErrorKind::NotConnected)?;
        wire::write_msg(c, m)
    }
}

pub struct MulticastSource {
    spec: String,
    server: SocketAddr,
    info: ImageInfo,
    welcome: wire::Welcome,
    key: Key,
    local: Ipv4Addr,
    shared: Arc<Shared>,
    timeout: Option<Duration>,
    /// Decoded payloads from the receiver, not yet checked.
    decoded: Option<Receiver<(usize, Vec<u8>)>>,
    /// Payload buffers done with, back to the receiver for new chunks.
    spare: Option<Sender<Vec<u8>>>,
    remaining: usize,
    dctx: zstd::bulk::Decompressor<'static>,
    done_sent: bool,
}

/// Splits `mcast://host[:port]` into host and port.
fn parse_url(spec: &str) -> Result<(String, u16)> {
    let rest = spec
        .strip_prefix("mcast://")
        .ok_or_else(|| anyhow!("{spec}: not an mcast:// URL"))?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        bail!("{spec}: expected mcast://HOST[:PORT]");
    }
    match rest.rsplit_once(':') {
        Some((host, port)) => {
            let port: u16 = port
                .parse()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| anyhow!("{spec}: bad port {port:?}"))?;
            Ok((host.to_owned(), port))
        }
        None => Ok((rest.to_owned(), DEFAULT_PORT)),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "client".into())
}

/// What a control connection's handshake brings: the session it joins.
struct Session {
    conn: TcpStream,
    welcome: wire::Welcome,
    key: Key,
    head: ImageHead,
    /// This machine's address facing the server.
    local: Ipv4Addr,
}

/// Connects to the server, says hello and reads the welcome and manifest.
fn handshake(spec: &str, server: SocketAddr) -> Result<Session> {
    let mut conn = TcpStream::connect_timeout(&server, Duration::from_secs(10))
        .with_context(|| format!("connecting to the multicast server at {server}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.set_nodelay(true)?;
    let hello = Msg::Hello(wire::Hello {
        version: wire::PROTOCOL_VERSION,
        client: hostname(),
    });
    wire::write_msg(&mut conn, &hello).with_context(|| format!("talking to {server}"))?;
    let welcome = match wire::read_msg(&mut conn, 64 << 10).with_context(|| spec.to_owned())? {
        Some(Msg::Welcome(w)) => w,
        Some(Msg::Error(e)) => bail!("{spec}: the server refused: {e}"),
        _ => bail!("{spec}: the server did not answer with a welcome"),
    };
    let key = check_welcome(spec, &welcome)?;
    let head = match wire::read_msg(&mut conn, wire::MAX_FRAME).with_context(|| spec.to_owned())? {
        Some(Msg::Head(bytes)) => parse_head(spec, bytes)?,
        _ => bail!("{spec}: the server did not send the image's manifest"),
    };
    let local = match conn.local_addr()? {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(_) => bail!("{spec}: multicast needs IPv4"),
    };
    Ok(Session {
        conn,
        welcome,
        key,
        head,
        local,
    })
}

pub fn open(spec: &str, opts: &SourceOptions) -> Result<Box<dyn ChunkSource>> {
    let (host, port) = parse_url(spec)?;
    let ip = crate::source::lookup_ipv4(&host).with_context(|| spec.to_owned())?;
    let server = SocketAddr::from((ip, port));
    let Session {
        conn,
        welcome,
        key,
        head,
        local,
    } = handshake(spec, server)?;
    let n = head.manifest.extents.len();
    let mut info = crate::source::prepared_info(head);
    info.signature = welcome.signature.clone();
    let shared = Arc::new(Shared {
        held: (0..n).map(|_| AtomicBool::new(false)).collect(),
        stats: Stats::default(),
        epoch: Instant::now(),
        stop: AtomicBool::new(false),
        control_lost: Mutex::new(None),
        control: Mutex::new(Some(conn)),
    });
    Ok(Box::new(MulticastSource {
        spec: spec.to_owned(),
        server,
        info,
        welcome,
        key,
        local,
        shared,
        timeout: opts.timeout,
        decoded: None,
        spare: None,
        remaining: n,
        dctx: zstd::bulk::Decompressor::new()?,
        done_sent: false,
    }))
}

fn check_welcome(spec: &str, w: &wire::Welcome) -> Result<Key> {
    if w.version != wire::PROTOCOL_VERSION {
        bail!(
            "{spec}: the server speaks protocol version {}, this reimage {}",
            w.version,
            wire::PROTOCOL_VERSION
        );
    }
    if !w.group.is_multicast() || w.port == 0 || w.symbol_size != SYMBOL_SIZE {
        bail!("{spec}: the server sent unusable stream parameters");
    }
    let mut key = [0u8; 32];
    let hex = w.key.as_bytes();
    if hex.len() != 64 {
        bail!("{spec}: the server sent a malformed session key");
    }
    for (i, b) in key.iter_mut().enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        match (digit(hex[2 * i]), digit(hex[2 * i + 1])) {
            (Some(h), Some(l)) => *b = (h * 16 + l) as u8,
            _ => bail!("{spec}: the server sent a malformed session key"),
        }
    }
    Ok(key)
}

fn parse_head(spec: &str, bytes: Vec<u8>) -> Result<ImageHead> {
    if bytes.len() < HEADER_LEN {
        bail!("{spec}: the manifest the server sent is truncated");
    }
    let header = format::Header::decode(&bytes[..HEADER_LEN]).with_context(|| spec.to_owned())?;
    let head = format::parse_head(header, bytes[HEADER_LEN..].to_vec())
        .with_context(|| format!("{spec}: the manifest the server sent"))?;
    if let Some(i) = head
        .manifest
        .extents
        .iter()
        .position(|e| fec::source_symbols(u64::from(e.payload_len)) > fec::MAX_SYMBOLS)
    {
        bail!("{spec}: chunk {i} is too large to multicast");
    }
    Ok(head)
}

impl MulticastSource {
    /// Joins the group and starts the receiver and the reporter. Deferred
    /// until the first piece is wanted: nothing is received before the
    /// target has passed preflight.
    fn start(&mut self) -> Result<()> {
        let w = &self.welcome;
        let socket = join(w.group, w.port, self.local)
            .with_context(|| format!("joining {}:{} on {}", w.group, w.port, self.local))?;
        let (decoded_tx, decoded_rx) = bounded(4);
        let (spare_tx, spare_rx) = bounded(SPARE_BUFFERS);
        let (rekey_tx, rekey_rx) = unbounded();
        let head = self
            .info
            .head
            .clone()
            .expect("multicast sources have a head");
        let rejoin = Rejoin {
            spec: self.spec.clone(),
            server: self.server,
            digest: head.digest(),
            stream: (w.group, w.port, self.local),
            session: w.session,
            rekey: rekey_tx,
        };
        let receiver = ReceiveLoop {
            socket,
            assembler: Assembler::new(self.key, w.session, head, self.shared.clone(), spare_rx),
            decoded: decoded_tx,
            rekey: rekey_rx,
        };
        std::thread::Builder::new()
            .name("mcast-receive".into())
            .spawn(move || receiver.run())?;
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("mcast-report".into())
            .spawn(move || report_loop(&shared))?;
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("mcast-control".into())
            .spawn(move || watch_control(&shared, rejoin))?;
        self.decoded = Some(decoded_rx);
        self.spare = Some(spare_tx);
        Ok(())
    }

    fn silence(&self) -> Duration {
        let last = self.shared.stats.last_data_ms.load(Ordering::Relaxed);
        self.shared
            .epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }

    fn finish(&mut self, error: Option<String>) {
        if self.done_sent {
            return;
        }
        self.done_sent = true;
        self.shared.stop.store(true, Ordering::Relaxed);
        let done = Msg::Done(wire::Done::after(error));
        let _ = self.shared.send(&done);
    }
}

impl Drop for MulticastSource {
    fn drop(&mut self) {
        self.finish(Some("the restore stopped".into()));
    }
}

impl fmt::Display for MulticastSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.info.head.as_ref().expect("has a head").manifest;
        write!(
            f,
            "multicast stream \"{}\" from {} (group {})",
            m.name, self.spec, self.welcome.group
        )
    }
}

impl ChunkSource for MulticastSource {
    fn info(&self) -> &ImageInfo {
        &self.info
    }

    fn stream_status(&self) -> Option<Arc<dyn StreamStatus>> {
        Some(self.shared.clone())
    }

    fn position(&self) -> u64 {
        self.shared.stats.written.load(Ordering::Relaxed)
    }

    fn next_piece(&mut self, slot: &mut Slot) -> Result<Option<Piece>> {
        if self.remaining == 0 {
            self.finish(None);
            return Ok(None);
        }
        if self.decoded.is_none() {
            self.start()?;
            self.shared.stats.last_data_ms.store(
                self.shared.epoch.elapsed().as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        let decoded = self.decoded.clone().expect("started above");
        loop {
            let (i, mut payload) = match decoded.recv_timeout(Duration::from_millis(200)) {
                Ok(x) => x,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if let Some(t) = self.timeout.filter(|t| self.silence() > *t) {
                        let why = lock(&self.shared.control_lost)
                            .clone()
                            .map_or_else(String::new, |w| format!(" ({w})"));
                        bail!(
                            "no data from {} for {} s{why}; giving up",
                            self.spec,
                            t.as_secs()
                        );
                    }
                    continue;
                }
                Err(_) => bail!("{}: the receiver stopped", self.spec),
            };
            let head = self.info.head.as_ref().expect("has a head");
            let e = &head.manifest.extents[i];
            match e.codec {
                Codec::Zstd => std::mem::swap(&mut slot.input, &mut payload),
                Codec::Stored => slot.data[..payload.len()].copy_from_slice(&payload),
            }
            // The slot's old input (or the copied payload) collects a later
            // chunk: fresh 1 MiB buffers cost page faults (a fifth of the
            // receiver's CPU in a profile).
            if let Some(spare) = &self.spare {
                let _ = spare.try_send(payload);
            }
            match crate::source::unpack_extent(&head.manifest, i, slot, &mut self.dctx) {
                Ok(_) => {
                    self.remaining -= 1;
                    self.shared
                        .stats
                        .written
                        .fetch_add(u64::from(e.payload_len), Ordering::Relaxed);
                    return Ok(Some(Piece::Checked(i)));
                }
                // Only a sender holding the session key gets this far: a
                // client of the same session forging symbols. Collect the
                // chunk again from the server's next symbols.
                Err(err) => {
                    eprintln!(
                        "{}: chunk {i} refused ({err:#}); collecting it again",
                        self.spec
                    );
                    self.shared.forget(i);
                }
            }
        }
    }
}

/// A UDP socket that receives the group's datagrams on the interface
/// facing the server, and nothing else.
fn join(group: Ipv4Addr, port: u16, local: Ipv4Addr) -> Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    // Without this, a socket bound to a port gets every joined group's
    // datagrams for that port, other sessions' included.
    s.set_multicast_all_v4(false)?;
    // Room for a second of stream while the thread decodes a chunk.
    if s.set_recv_buffer_size(32 << 20).is_err() || s.recv_buffer_size()? < (8 << 20) {
        let _ = force_recv_buffer(&s, 32 << 20);
    }
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RxqOvfl, &1)?;
    // UDP GRO: the kernel may hand over a run of the stream's datagrams
    // (all one size) in one receive, cutting the per-datagram cost of the
    // stack. A kernel without it (before 5.0) delivers them one by one.
    let _ = nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::UdpGroSegment, &true);
    s.bind(&SocketAddr::V4(SocketAddrV4::new(group, port)).into())?;
    s.join_multicast_v4(&group, &local)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(s.into())
}

/// SO_RCVBUFFORCE: as root, a receive buffer above the sysctl limit.
fn force_recv_buffer(s: &Socket, bytes: i32) -> std::io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const bytes).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The symbols of one chunk received so far. Source symbols go straight
/// into the padded payload, so a chunk whose source symbols all arrive
/// (every chunk, without loss) needs no decoding and no per-symbol
/// allocation; the code solves only for chunks that lost some.
struct Collector {
    k: u32,
    /// The padded payload, source symbols at their places.
    data: Vec<u8>,
    have: Vec<bool>,
    sources: u32,
    repairs: fec::Repairs,
    /// Decoding is tried only once this many symbols have come, since a
    /// failed attempt costs a whole solve.
    try_at: u32,
}

impl Collector {
    /// A collector for a block of `k` symbols whose first `sent` are
    /// sent (the rest are zero padding), in `buf`'s memory.
    fn new(k: u32, sent: u32, mut buf: Vec<u8>) -> Collector {
        buf.clear();
        buf.resize(k as usize * SYMBOL_SIZE as usize, 0);
        let mut have = vec![false; k as usize];
        have[sent as usize..].fill(true);
        Collector {
            k,
            data: buf,
            have,
            sources: k - sent,
            repairs: fec::Repairs::default(),
            try_at: k,
        }
    }

    /// Takes symbol `esi`; returns the padded payload once it is complete
    /// (and ignores symbols after that).
    fn add(
        &mut self,
        esi: u32,
        symbol: &[u8],
        coefficients: &mut fec::Coefficients,
    ) -> Option<Vec<u8>> {
        let size = SYMBOL_SIZE as usize;
        if self.data.is_empty() {
            return None;
        }
        if esi < self.k {
            let i = esi as usize;
            if std::mem::replace(&mut self.have[i], true) {
                return None;
            }
            self.data[i * size..(i + 1) * size].copy_from_slice(symbol);
            self.sources += 1;
            if self.sources == self.k {
                return Some(std::mem::take(&mut self.data));
            }
        } else if self.repairs.contains(esi) {
            return None;
        } else {
            self.repairs.push(esi, symbol);
        }
        let have = self.sources + self.repairs.len() as u32;
        if have < self.try_at {
            return None;
        }
        if fec::decode(
            self.k,
            &mut self.data,
            &self.have,
            &self.repairs,
            coefficients,
        ) {
            return Some(std::mem::take(&mut self.data));
        }
        // Rank-deficient: a couple more symbols almost always do it.
        self.try_at = have + 2;
        None
    }
}

/// Payload buffers kept for reuse between the restore and the receiver.
const SPARE_BUFFERS: usize = 8;

/// The receiver thread: datagrams in, decoded chunks out.
struct ReceiveLoop {
    socket: UdpSocket,
    assembler: Assembler,
    decoded: Sender<(usize, Vec<u8>)>,
    /// A restarted server's session key and id, once the client rejoined.
    rekey: Receiver<(Key, u64)>,
}

/// Receive slots filled per receive call (recvmmsg): one system call and
/// one wake-up for up to this many when they queue up.
const RECV_BATCH: usize = 32;
/// Bytes of one receive slot: a datagram, or a run of them coalesced by
/// UDP GRO, which never exceeds an IPv4 packet's 64 KiB.
const SLOT: usize = 1 << 16;

/// What one receive slot got: `len` bytes of datagrams of `size` bytes
/// each (the last may be shorter; a single datagram is its own size).
#[derive(Clone, Copy, Default)]
struct Received {
    len: usize,
    size: usize,
}

impl ReceiveLoop {
    fn run(mut self) {
        let shared = self.assembler.shared.clone();
        let mut bufs = vec![0u8; SLOT * RECV_BATCH];
        let mut slots = [Received::default(); RECV_BATCH];
        while !shared.stop.load(Ordering::Relaxed) {
            while let Ok((key, session)) = self.rekey.try_recv() {
                self.assembler.rejoin(&key, session);
            }
            let got = match self.receive(&mut bufs, &mut slots) {
                Ok(n) => n,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("multicast receive failed: {e}");
                    return;
                }
            };
            for (buf, slot) in bufs.chunks_mut(SLOT).zip(&slots).take(got) {
                // max(1): an empty datagram (anyone can send one) has size 0.
                for datagram in buf[..slot.len].chunks_mut(slot.size.max(1)) {
                    if let Some(chunk) = self.assembler.take(datagram)
                        && self.decoded.send(chunk).is_err()
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Waits for datagrams and takes every one queued, up to a batch of
    /// slots, into `bufs`; returns how many slots it filled. Notes the
    /// kernel's count of datagrams dropped for want of room (SO_RXQ_OVFL).
    fn receive(&self, bufs: &mut [u8], slots: &mut [Received]) -> nix::Result<usize> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, MultiHeaders, recvmmsg};
        // Made afresh each call: the kernel shrinks each header's control
        // length to what it wrote, and nix does not reset it.
        let mut headers =
            MultiHeaders::<()>::preallocate(slots.len(), Some(nix::cmsg_space!(u32, i32)));
        let mut iovs: Vec<[IoSliceMut; 1]> = bufs
            .chunks_mut(SLOT)
            .map(|b| [IoSliceMut::new(b)])
            .collect();
        let msgs = recvmmsg(
            self.socket.as_raw_fd(),
            &mut headers,
            iovs.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        )?;
        let mut n = 0;
        for msg in msgs {
            slots[n] = Received {
                len: msg.bytes,
                size: msg.bytes,
            };
            for c in msg.cmsgs().into_iter().flatten() {
                match c {
                    ControlMessageOwned::RxqOvfl(dropped) => {
                        let stats = &self.assembler.shared.stats;
                        stats.overflows.store(u64::from(dropped), Ordering::Relaxed);
                    }
                    // Without it, or with a nonsensical size, the slot
                    // holds one datagram.
                    ControlMessageOwned::UdpGroSegments(size) => {
                        if let Some(size) = usize::try_from(size).ok().filter(|&s| s > 0) {
                            slots[n].size = size;
                        }
                    }
                    _ => {}
                }
            }
            n += 1;
        }
        Ok(n)
    }
}

/// Turns datagrams into decoded chunk payloads: checks each datagram,
/// collects symbols per chunk and decodes a chunk once it has enough.
/// No sockets here, so tests feed it datagrams directly.
struct Assembler {
    key: wire::DatagramKey,
    session: u64,
    head: ImageHead,
    shared: Arc<Shared>,
    collectors: HashMap<usize, Collector>,
    coefficients: fec::Coefficients,
    /// Bytes reserved by `collectors` (one padded payload each).
    collected: usize,
    first_seq: Option<u64>,
    first_pass: Option<u32>,
    /// Datagrams expected and passes seen in earlier sessions (before the
    /// server restarted), which this session's counts add to.
    seq_base: u64,
    pass_base: u32,
    /// Payload buffers the restore is done with, for new collectors.
    spare: Receiver<Vec<u8>>,
}

impl Assembler {
    fn new(
        key: Key,
        session: u64,
        head: ImageHead,
        shared: Arc<Shared>,
        spare: Receiver<Vec<u8>>,
    ) -> Assembler {
        Assembler {
            key: wire::DatagramKey::new(&key),
            session,
            head,
            shared,
            collectors: HashMap::new(),
            coefficients: fec::Coefficients::default(),
            collected: 0,
            first_seq: None,
            first_pass: None,
            seq_base: 0,
            pass_base: 0,
            spare,
        }
    }

    /// The server restarted: take the new session's datagrams from now on.
    /// Symbols collected so far stay: a chunk's symbol with a given id is
    /// the same in every session (RaptorQ encodes deterministically).
    fn rejoin(&mut self, key: &Key, session: u64) {
        self.key = wire::DatagramKey::new(key);
        self.session = session;
        let stats = &self.shared.stats;
        self.seq_base = stats.expected.load(Ordering::Relaxed);
        self.pass_base = stats.passes.load(Ordering::Relaxed);
        self.first_seq = None;
        self.first_pass = None;
    }

    /// Takes one datagram; returns a chunk's payload when it completes one.
    fn take(&mut self, datagram: &mut [u8]) -> Option<(usize, Vec<u8>)> {
        let (h, symbol) =
            wire::parse_symbol(&self.key, self.session, SYMBOL_SIZE, datagram).ok()?;
        let stats = &self.shared.stats;
        let first = *self.first_seq.get_or_insert(h.seq);
        let first_pass = *self.first_pass.get_or_insert(h.pass);
        stats.passes.fetch_max(
            self.pass_base + h.pass.saturating_sub(first_pass) + 1,
            Ordering::Relaxed,
        );
        stats.received.fetch_add(1, Ordering::Relaxed);
        stats.expected.fetch_max(
            self.seq_base + h.seq.saturating_sub(first) + 1,
            Ordering::Relaxed,
        );
        stats.last_data_ms.store(
            self.shared.epoch.elapsed().as_millis() as u64,
            Ordering::Relaxed,
        );
        let i = h.chunk as usize;
        let e = self.head.manifest.extents.get(i)?;
        if self.shared.held[i].load(Ordering::Relaxed) {
            return None;
        }
        let padded = fec::padded_len(u64::from(e.payload_len));
        if !self.collectors.contains_key(&i) {
            // Full: this chunk's symbols come again in a later pass.
            if self.collected + padded > COLLECT_LIMIT {
                return None;
            }
            self.collected += padded;
            let len = u64::from(e.payload_len);
            let buf = self.spare.try_recv().unwrap_or_default();
            let c = Collector::new(fec::block_symbols(len), fec::source_symbols(len), buf);
            self.collectors.insert(i, c);
        }
        let c = self.collectors.get_mut(&i).expect("inserted above");
        let mut data = c.add(h.esi, symbol, &mut self.coefficients)?;
        self.collectors.remove(&i);
        self.collected -= padded;
        data.truncate(e.payload_len as usize);
        self.shared.held[i].store(true, Ordering::Relaxed);
        Some((i, data))
    }
}

impl StreamStatus for Shared {
    fn loss_percent(&self) -> f64 {
        let s = &self.stats;
        let (got, sent) = (
            s.received.load(Ordering::Relaxed),
            s.expected.load(Ordering::Relaxed),
        );
        if sent == 0 {
            return 0.0;
        }
        sent.saturating_sub(got) as f64 * 100.0 / sent as f64
    }

    fn passes(&self) -> u32 {
        self.stats.passes.load(Ordering::Relaxed)
    }
}

/// Sends a report a few times a second until the restore ends.
fn report_loop(shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        let s = &shared.stats;
        let report = Msg::Report(wire::Report {
            missing: shared.missing(),
            received: s.received.load(Ordering::Relaxed),
            expected: s.expected.load(Ordering::Relaxed),
            overflows: s.overflows.load(Ordering::Relaxed),
            written: s.written.load(Ordering::Relaxed),
        });
        // Failing while the control connection is down (the server
        // restarting): the next report goes to the rejoined server.
        let _ = shared.send(&report);
        std::thread::sleep(REPORT_EVERY);
    }
}

/// How often a client whose server went away tries to reach it again.
const REJOIN_EVERY: Duration = Duration::from_secs(1);
/// How often it asks again a server that answers with another stream: each
/// ask is a client arriving and leaving in that server's log.
const RECHECK_EVERY: Duration = Duration::from_secs(10);

/// What a client needs to rejoin its stream after the server restarted.
struct Rejoin {
    spec: String,
    server: SocketAddr,
    /// The image being restored: only a server streaming it will do.
    digest: format::Digest,
    /// Group, port and local address the receiver's socket is joined to.
    stream: (Ipv4Addr, u16, Ipv4Addr),
    /// The session the receiver takes datagrams of.
    session: u64,
    rekey: Sender<(Key, u64)>,
}

/// Why a rejoin did not happen, and when to try again.
struct NotRejoined {
    why: String,
    retry_in: Duration,
}

impl Rejoin {
    /// Joins the server's current session if it streams the same image to
    /// the same group, handing the receiver the new key.
    fn attempt(&mut self, shared: &Shared) -> Result<(), NotRejoined> {
        let mut s = handshake(&self.spec, self.server).map_err(|e| NotRejoined {
            why: format!("{e:#}"),
            retry_in: REJOIN_EVERY,
        })?;
        let wrong = if s.head.digest() != self.digest {
            Some("the server now streams a different image")
        } else if (s.welcome.group, s.welcome.port, s.local) != self.stream {
            Some("the server now streams to a different group or port")
        } else {
            None
        };
        if let Some(why) = wrong {
            // Tells that server's log why this client came and went.
            let done = Msg::Done(wire::Done::after(Some(why.into())));
            let _ = wire::write_msg(&mut s.conn, &done);
            return Err(NotRejoined {
                why: why.into(),
                retry_in: RECHECK_EVERY,
            });
        }
        let restarted = s.welcome.session != self.session;
        if restarted {
            // The receive loop ends only with the restore, which stops
            // this thread too.
            let _ = self.rekey.send((s.key, s.welcome.session));
            self.session = s.welcome.session;
        }
        *lock(&shared.control) = Some(s.conn);
        *lock(&shared.control_lost) = None;
        let held = (shared.held.iter())
            .filter(|h| h.load(Ordering::Relaxed))
            .count();
        eprintln!(
            "{}: {}; rejoined its stream holding {held} of {} chunks",
            self.spec,
            if restarted {
                "the server restarted"
            } else {
                "the server dropped this client"
            },
            shared.held.len()
        );
        Ok(())
    }
}

/// Watches the control connection. When it ends, notes why (so a timeout
/// can say why the data stopped) and tries to rejoin: a server restarted
/// with the same image starts a new session, and the client carries on in
/// it with every chunk it holds, instead of giving up after `--timeout`
/// and erasing the target.
fn watch_control(shared: &Shared, mut rejoin: Rejoin) {
    loop {
        let why = control_ended(shared);
        // Set before the client's last message: the server closing the
        // connection after it is no reason to rejoin.
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        *lock(&shared.control) = None;
        *lock(&shared.control_lost) = Some(why.clone());
        let mut wait = REJOIN_EVERY;
        loop {
            std::thread::sleep(wait);
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            match rejoin.attempt(shared) {
                Ok(()) => break,
                Err(e) => {
                    *lock(&shared.control_lost) = Some(format!("{why}; rejoining: {}", e.why));
                    wait = e.retry_in;
                }
            }
        }
    }
}

/// Waits until the control connection ends; says how it did.
fn control_ended(shared: &Shared) -> String {
    // A clone, so the lock is not held while waiting for the server.
    let cloned = lock(&shared.control).as_ref().map(TcpStream::try_clone);
    let mut conn = match cloned {
        Some(Ok(conn)) => conn,
        Some(Err(e)) => return format!("the control connection failed: {e}"),
        None => return "no control connection".to_owned(),
    };
    let _ = conn.set_read_timeout(None);
    match wire::read_msg(&mut conn, 64 << 10) {
        Ok(Some(Msg::Error(e))) => format!("the server ended the session: {e}"),
        Ok(_) => "the server closed the control connection".to_owned(),
        Err(e) => format!("the control connection failed: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A padded block of `k` symbols and its encoder.
    fn block(k: u32) -> (Vec<u8>, raptorq::SourceBlockEncoder) {
        let data: Vec<u8> = (0..k as usize * 1408)
            .map(|i| (i * 7 % 253) as u8)
            .collect();
        let enc = raptorq::SourceBlockEncoder::new(0, &fec::block_config(k), &data);
        (data, enc)
    }

    #[test]
    fn every_source_symbol_completes_a_chunk() {
        let (data, enc) = block(40);
        let mut cf = fec::Coefficients::default();
        let mut c = Collector::new(40, 40, Vec::new());
        let packets = enc.source_packets();
        let (last, rest) = packets.split_last().unwrap();
        for p in rest.iter().rev().chain(&rest[..3]) {
            assert!(
                c.add(p.payload_id().encoding_symbol_id(), p.data(), &mut cf)
                    .is_none()
            );
        }
        let got = c.add(last.payload_id().encoding_symbol_id(), last.data(), &mut cf);
        assert_eq!(got.as_deref(), Some(&data[..]));
    }

    /// A block padded past its source symbols completes from them alone,
    /// and a symbol id in the padding (never sent) changes nothing.
    #[test]
    fn padding_symbols_are_never_waited_for() {
        let payload: Vec<u8> = (0..40 * 1408).map(|i| (i % 249) as u8).collect();
        let mut cf = fec::Coefficients::default();
        let mut c = Collector::new(64, 40, Vec::new());
        assert!(c.add(50, &[7; 1408], &mut cf).is_none());
        let mut got = None;
        for (esi, symbol) in payload.chunks(1408).enumerate() {
            got = c.add(esi as u32, symbol, &mut cf);
        }
        let got = got.expect("complete after the 40 source symbols");
        assert_eq!(&got[..payload.len()], &payload[..]);
        assert!(got[payload.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn lost_source_symbols_are_made_up_by_repair_symbols() {
        let (data, enc) = block(40);
        let mut cf = fec::Coefficients::default();
        let mut c = Collector::new(40, 40, Vec::new());
        for p in enc
            .source_packets()
            .iter()
            .filter(|p| p.payload_id().encoding_symbol_id() % 10 != 3)
        {
            assert!(
                c.add(p.payload_id().encoding_symbol_id(), p.data(), &mut cf)
                    .is_none()
            );
        }
        let mut got = None;
        for p in enc.repair_packets(0, 10) {
            got = got.or(c.add(p.payload_id().encoding_symbol_id(), p.data(), &mut cf));
        }
        assert_eq!(got.as_deref(), Some(&data[..]));
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mcast://10.0.0.1").unwrap(),
            ("10.0.0.1".into(), 7800)
        );
        assert_eq!(
            parse_url("mcast://srv:7900/").unwrap(),
            ("srv".into(), 7900)
        );
        for bad in [
            "mcast://",
            "mcast://h:0",
            "mcast://h:x",
            "mcast://h/a",
            "http://h",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    use crate::image::format::{Content, Digest, Extent, FsKind, Manifest, TableKind};
    use raptorq::SourceBlockEncoder;

    const KEY: Key = [3u8; 32];
    const SESSION: u64 = 99;

    /// A head for stored payloads of these lengths, and the payloads.
    fn image(lens: &[u32]) -> (ImageHead, Vec<Vec<u8>>) {
        let payloads: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(c, &n)| (0..n).map(|i| (i as usize * 7 + c * 13) as u8).collect())
            .collect();
        let mut offset = 0;
        let extents = payloads
            .iter()
            .map(|p| {
                let e = Extent {
                    target_offset: offset,
                    length: p.len() as u32,
                    payload_offset: offset,
                    payload_len: p.len() as u32,
                    codec: Codec::Stored,
                    digest: *blake3::hash(p).as_bytes() as Digest,
                };
                offset += p.len() as u64;
                e
            })
            .collect();
        let mut manifest = Manifest {
            logical_size: offset,
            sector_size: 512,
            chunk_size: *lens.iter().max().unwrap(),
            content: Content::Partition,
            table: TableKind::None,
            fs: FsKind::Unknown,
            created: 0,
            name: "t".into(),
            payload_area: 0,
            extents,
        };
        manifest.payload_area = format::encode_head(&manifest).len() as u64;
        let bytes = format::encode_head(&manifest);
        (parse_head("t", bytes).unwrap(), payloads)
    }

    fn assembler(head: ImageHead) -> Assembler {
        let n = head.manifest.extents.len();
        let shared = Arc::new(Shared {
            held: (0..n).map(|_| AtomicBool::new(false)).collect(),
            stats: Stats::default(),
            epoch: Instant::now(),
            stop: AtomicBool::new(false),
            control_lost: Mutex::new(None),
            control: Mutex::new(None),
        });
        Assembler::new(KEY, SESSION, head, shared, crossbeam_channel::never())
    }

    /// The datagrams of one transmission: source symbols, then `repairs`.
    fn datagrams(chunk: u32, payload: &[u8], repairs: u32, seq: &mut u64) -> Vec<Vec<u8>> {
        session_datagrams(&KEY, SESSION, chunk, payload, repairs, seq)
    }

    /// `datagrams` of another session.
    fn session_datagrams(
        key: &Key,
        session: u64,
        chunk: u32,
        payload: &[u8],
        repairs: u32,
        seq: &mut u64,
    ) -> Vec<Vec<u8>> {
        let mut padded = payload.to_vec();
        padded.resize(fec::padded_len(payload.len() as u64), 0);
        let len = payload.len() as u64;
        let enc = SourceBlockEncoder::new(0, &fec::block_config(fec::block_symbols(len)), &padded);
        let mut packets = enc.source_packets();
        packets.truncate(fec::source_symbols(len) as usize);
        packets.extend(enc.repair_packets(0, repairs));
        packets
            .iter()
            .map(|p| {
                let h = wire::SymbolHeader {
                    session,
                    seq: *seq,
                    chunk,
                    esi: p.payload_id().encoding_symbol_id(),
                    pass: 1,
                };
                *seq += 1;
                let mut d = Vec::new();
                wire::encode_symbol(&wire::DatagramKey::new(key), &h, p.data(), &mut d);
                d
            })
            .collect()
    }

    #[test]
    fn chunks_decode_through_loss_duplicates_and_forgeries() {
        let (head, payloads) = image(&[100_000, 1, 5000]);
        let mut a = assembler(head);
        let mut seq = 0;
        let mut got = Vec::new();
        for (c, p) in payloads.iter().enumerate() {
            let k = fec::source_symbols(p.len() as u64);
            let all = datagrams(c as u32, p, fec::symbols_to_send(k, 0.2) - k, &mut seq);
            for (n, d) in all.iter().enumerate() {
                // 20 % loss, every datagram twice, and a forged twin.
                if n % 5 == 1 {
                    continue;
                }
                let mut forged = d.clone();
                forged[100] ^= 1;
                for datagram in [&forged, d, d] {
                    got.extend(a.take(&mut datagram.clone()));
                }
            }
        }
        got.sort();
        let want: Vec<(usize, Vec<u8>)> = payloads.into_iter().enumerate().collect();
        assert_eq!(got, want);
        let stats = &a.shared.stats;
        assert_eq!(a.shared.missing(), []);
        assert!(
            stats.received.load(Ordering::Relaxed) < stats.expected.load(Ordering::Relaxed) * 2
        );
        assert_eq!(a.collected, 0);
    }

    #[test]
    fn loss_and_passes_as_the_menu_sees_them() {
        let (head, payloads) = image(&[200_000]);
        let mut a = assembler(head);
        assert_eq!((a.shared.loss_percent(), a.shared.passes()), (0.0, 0));
        let mut seq = 0;
        let k = fec::source_symbols(payloads[0].len() as u64);
        let all = datagrams(0, &payloads[0], fec::symbols_to_send(k, 0.25) - k, &mut seq);
        let mut decoded = 0;
        for (n, d) in all.iter().enumerate() {
            // Every fourth datagram lost.
            if n % 4 != 3 {
                decoded += a.take(&mut d.clone()).into_iter().count();
            }
        }
        assert_eq!(decoded, 1);
        let loss = a.shared.loss_percent();
        // The last datagrams after the decode still count as sent.
        assert!((20.0..=26.0).contains(&loss), "{loss}");
        assert_eq!(a.shared.passes(), 1);
    }

    #[test]
    fn a_chunk_refused_after_decoding_is_collected_again() {
        let (head, payloads) = image(&[3000]);
        let mut a = assembler(head);
        let mut seq = 0;
        let first = datagrams(0, &payloads[0], 0, &mut seq);
        let done: Vec<_> = first
            .iter()
            .filter_map(|d| a.take(&mut d.clone()))
            .collect();
        assert_eq!(done.len(), 1);
        assert_eq!(a.shared.missing(), []);
        // Held chunks ignore further symbols until the digest check says no.
        let again = datagrams(0, &payloads[0], 3, &mut seq);
        assert!(again.iter().all(|d| a.take(&mut d.clone()).is_none()));
        a.shared.forget(0);
        assert_eq!(a.shared.missing(), [(0, 1)]);
        let again = datagrams(0, &payloads[0], 0, &mut seq);
        assert_eq!(
            again.iter().filter_map(|d| a.take(&mut d.clone())).count(),
            1
        );
    }

    #[test]
    fn symbols_collected_before_a_server_restart_count_after_it() {
        let (head, payloads) = image(&[60_000]);
        let mut a = assembler(head);
        let mut seq = 0;
        let old = datagrams(0, &payloads[0], 0, &mut seq);
        let half = old.len() / 2;
        assert!(old[..half].iter().all(|d| a.take(&mut d.clone()).is_none()));
        let key = [9u8; 32];
        a.rejoin(&key, SESSION + 1);
        // The old session's datagrams are no longer the stream's.
        assert!(a.take(&mut old[half].clone()).is_none());
        assert_eq!(a.shared.stats.received.load(Ordering::Relaxed), half as u64);
        // The restarted server sends the chunk again from the start: its
        // second half completes the first half collected before.
        let mut seq = 0;
        let new = session_datagrams(&key, SESSION + 1, 0, &payloads[0], 0, &mut seq);
        let done: Vec<_> = new[half..]
            .iter()
            .filter_map(|d| a.take(&mut d.clone()))
            .collect();
        assert_eq!(done, [(0, payloads[0].clone())]);
        // Nothing was lost; each session's pass counts.
        assert_eq!((a.shared.loss_percent(), a.shared.passes()), (0.0, 2));
    }

    #[test]
    fn welcome_checks() {
        let good = wire::Welcome {
            version: wire::PROTOCOL_VERSION,
            session: 1,
            key: "0f".repeat(32),
            group: Ipv4Addr::new(239, 255, 0, 1),
            port: 7800,
            symbol_size: SYMBOL_SIZE,
            signature: None,
        };
        assert_eq!(check_welcome("s", &good).unwrap(), [0x0f; 32]);
        let bad = [
            wire::Welcome {
                version: 9,
                ..good.clone()
            },
            wire::Welcome {
                key: "zz".repeat(32),
                ..good.clone()
            },
            wire::Welcome {
                key: "0f".into(),
                ..good.clone()
            },
            wire::Welcome {
                group: Ipv4Addr::new(10, 0, 0, 1),
                ..good.clone()
            },
            wire::Welcome {
                symbol_size: 1000,
                ..good.clone()
            },
        ];
        for w in bad {
            assert!(check_welcome("s", &w).is_err(), "{w:?}");
        }
    }
}
