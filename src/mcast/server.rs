//! `reimage server`: asr's multicast server. Clients connect over TCP,
//! get the manifest and the session key, and report what they still
//! miss; the stream loops over the chunks someone still needs, each sent
//! as fresh RaptorQ symbols, paced at the configured rate.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use raptorq::SourceBlockEncoder;
use socket2::{Domain, Protocol, Socket, Type};

use super::config::ServerConfig;
use super::fec;
use super::wire::{self, Key, Msg, Report, SYMBOL_SIZE, SymbolHeader};
use crate::image::format::{self, ImageHead};

pub struct ServerOptions {
    pub source: PathBuf,
    pub config: ServerConfig,
    /// Network interface for the stream (and the address advertised).
    pub interface: Option<String>,
}

/// A client silent this long (it reports several times a second) is gone.
const CLIENT_SILENCE: Duration = Duration::from_secs(15);
/// Loss below this (one datagram in 10,000: about one 1 MiB chunk in 13
/// misses a symbol) gets no repair symbols in a chunk's first sending: the
/// few incomplete chunks are cheaper to complete in the next pass than
/// building a RaptorQ encoder for every chunk.
const NEGLIGIBLE_LOSS: f64 = 1e-4;

/// What the server knows about one connected client.
struct Peer {
    name: String,
    /// Chunks not yet held; None until the first report (everything).
    missing: Option<Vec<(u32, u32)>>,
    /// Recent fraction of datagrams lost on the way to this client.
    loss: f64,
    received: u64,
    expected: u64,
    overflows: u64,
    /// Its socket overflowed since the rate was last adjusted.
    behind: bool,
    /// The highest rate it has shown it can take (bytes/s); infinite until
    /// it first overflows. See [`next_rate`].
    ceiling: f64,
    /// The latest report's totals, for the log.
    totals: (u64, u64),
}

impl Peer {
    fn new(name: String) -> Peer {
        Peer {
            name,
            missing: None,
            loss: 0.0,
            received: 0,
            expected: 0,
            overflows: 0,
            behind: false,
            ceiling: f64::INFINITY,
            totals: (0, 0),
        }
    }

    fn needs(&self, chunk: u32) -> bool {
        let Some(missing) = &self.missing else {
            return true;
        };
        let i = missing.partition_point(|&(_, end)| end <= chunk);
        missing.get(i).is_some_and(|&(start, _)| start <= chunk)
    }

    fn update(&mut self, r: Report) {
        let (dr, de) = (
            r.received.saturating_sub(self.received),
            r.expected.saturating_sub(self.expected),
        );
        let overflowed = r.overflows > self.overflows;
        // A loss estimate from a handful of datagrams is noise.
        if de >= 64 {
            // Datagrams a client's own socket dropped are not the
            // network's loss: repair symbols for them would only give a
            // client already short of CPU more decoding to do (the rate
            // answers overflows). An interval with overflows tells
            // nothing about the network, so it leaves the estimate alone.
            if !overflowed {
                let sample = 1.0 - (dr as f64 / de as f64).min(1.0);
                // Rise at once (too few symbols cost a pass), decay slowly.
                self.loss = if sample > self.loss {
                    sample
                } else {
                    0.8 * self.loss + 0.2 * sample
                };
            }
            (self.received, self.expected) = (r.received, r.expected);
        }
        self.totals = (r.received, r.expected);
        self.behind |= overflowed;
        self.overflows = r.overflows;
        self.missing = Some(r.missing);
    }
}

#[derive(Default)]
struct State {
    peers: HashMap<u64, Peer>,
    next_id: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a client arrives.
    arrived: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The IPv4 address of `interface`, or of the first interface that is up,
/// not loopback and can multicast.
pub fn interface_addr(interface: Option<&str>) -> Result<Ipv4Addr> {
    use nix::net::if_::InterfaceFlags as F;
    let addrs = nix::ifaddrs::getifaddrs().context("listing network interfaces")?;
    for a in addrs {
        let Some(v4) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) else {
            continue;
        };
        let usable = match interface {
            Some(name) => a.interface_name == name,
            None => {
                a.flags.contains(F::IFF_UP | F::IFF_MULTICAST) && !a.flags.contains(F::IFF_LOOPBACK)
            }
        };
        if usable {
            return Ok(v4.ip());
        }
    }
    match interface {
        Some(name) => bail!("--interface {name}: no such interface with an IPv4 address"),
        None => bail!("no network interface is up with an IPv4 address; pass --interface"),
    }
}

/// Paces datagrams at a byte rate without bursts longer than `SLACK`.
struct Pacer {
    rate: f64,
    next: Instant,
}

/// How far ahead of schedule the sender may run before sleeping: sleeping
/// per datagram would cost more than the datagram.
const SLACK: Duration = Duration::from_micros(500);
/// How far behind schedule the sender may catch up in a burst. A sender
/// preempted for a few milliseconds (other busy processes on the same
/// CPUs) must not lose that time for good: with no credit at all, a
/// 40 MB/s stream ran at 28 MB/s in the benchmark. An idle sender earns no
/// more than this.
const CATCH_UP: Duration = Duration::from_millis(10);

impl Pacer {
    fn pace(&mut self, bytes: usize) {
        let wait = self.book(Instant::now(), bytes);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    /// Books `bytes` to go out at `now`; returns how long to wait first.
    /// Kept apart from the clock, so tests can drive it with their own.
    fn book(&mut self, now: Instant, bytes: usize) -> Duration {
        if self.next + CATCH_UP < now {
            self.next = now.checked_sub(CATCH_UP).unwrap_or(now);
        }
        let wait = if self.next > now + SLACK {
            self.next - now
        } else {
            Duration::ZERO
        };
        self.next += Duration::from_secs_f64(bytes as f64 / self.rate);
        wait
    }
}

/// Datagrams per batch handed to the kernel at once: as many whole
/// datagrams as fit the 64 KiB an IPv4 packet (here, a UDP segmentation
/// offload super-packet) can hold.
const BATCH: usize = 65_507 / wire::DATAGRAM_LEN;

/// Datagrams on their way out, packed back to back and sent a batch at a
/// time with UDP segmentation offload (UDP_SEGMENT): one system call and
/// one trip through the IP stack per batch instead of per datagram, the
/// device (or the kernel just before it) cutting the batch into datagrams
/// of `DATAGRAM_LEN`. On the wire nothing changes. Where the kernel or the
/// interface cannot do it, datagrams go one per call.
struct Outbox {
    socket: UdpSocket,
    buf: Vec<u8>,
    gso: bool,
    pacer: Pacer,
    /// Datagram bytes sent so far.
    sent: u64,
}

impl Outbox {
    fn new(socket: UdpSocket, rate: f64) -> Outbox {
        use nix::sys::socket::{setsockopt, sockopt::UdpGsoSegment};
        let gso = setsockopt(&socket, UdpGsoSegment, &(wire::DATAGRAM_LEN as i32)).is_ok();
        Outbox {
            socket,
            buf: Vec::with_capacity(BATCH * wire::DATAGRAM_LEN),
            gso,
            pacer: Pacer {
                rate,
                next: Instant::now(),
            },
            sent: 0,
        }
    }

    /// Adds a datagram; sends the batch once it is full.
    fn push(&mut self, key: &wire::DatagramKey, h: &SymbolHeader, symbol: &[u8]) -> Result<()> {
        wire::encode_symbol(key, h, symbol, &mut self.buf);
        if self.buf.len() >= BATCH * wire::DATAGRAM_LEN {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends the datagrams queued, paced.
    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.pacer.pace(self.buf.len());
        let result = self.send_batch().context("sending to the multicast group");
        self.buf.clear();
        result
    }

    fn send_batch(&mut self) -> Result<()> {
        if self.gso && self.buf.len() > wire::DATAGRAM_LEN {
            match send_all(&self.socket, &self.buf) {
                Ok(()) => {
                    self.sent += self.buf.len() as u64;
                    return Ok(());
                }
                // EIO: the interface cannot checksum for the kernel, which
                // segmentation needs; EINVAL or EMSGSIZE: its MTU is below
                // a datagram (single ones go out as IP fragments).
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE)
                    ) =>
                {
                    eprintln!(
                        "UDP segmentation offload unavailable ({e}); sending datagram by datagram"
                    );
                    self.gso = false;
                    // Set, the size applies to single datagrams too.
                    nix::sys::socket::setsockopt(
                        &self.socket,
                        nix::sys::socket::sockopt::UdpGsoSegment,
                        &0,
                    )
                    .context("turning UDP segmentation offload off")?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        for datagram in self.buf.chunks(wire::DATAGRAM_LEN) {
            send_all(&self.socket, datagram)?;
            self.sent += datagram.len() as u64;
        }
        Ok(())
    }
}

/// Sends `bytes` (a datagram, or a batch the socket segments), waiting
/// while the socket buffer is full.
fn send_all(socket: &UdpSocket, bytes: &[u8]) -> std::io::Result<()> {
    loop {
        match socket.send(bytes) {
            Ok(_) => return Ok(()),
            // A full socket buffer: the pacer is ahead of the NIC.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(200))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

struct Sender {
    file: File,
    head: ImageHead,
    out: Outbox,
    key: wire::DatagramKey,
    session: u64,
    seq: u64,
    pass: u32,
    /// Per chunk: whether its source symbols went out, and the next
    /// repair symbol id, so every transmission sends fresh symbols.
    sent_source: Vec<bool>,
    next_repair: Vec<u32>,
    max_rate: f64,
    last_adjust: Instant,
    payload: Vec<u8>,
}

impl Sender {
    fn send(&mut self, chunk: u32, esi: u32, symbol: &[u8]) -> Result<()> {
        let h = SymbolHeader {
            session: self.session,
            seq: self.seq,
            chunk,
            esi,
            pass: self.pass,
        };
        self.seq += 1;
        self.out.push(&self.key, &h, symbol)
    }

    /// Sends chunk `i` once: its source symbols the first time (and, when
    /// some client loses datagrams, the repair symbols that loss calls
    /// for), later as many fresh repair symbols as the worst loss among the
    /// clients that need it calls for. With no loss the source symbols go
    /// alone: no encoder is built, and a receiver that gets them all needs
    /// no decoder either.
    fn send_chunk(&mut self, i: usize, loss: f64) -> Result<()> {
        let e = &self.head.manifest.extents[i];
        let at = self.head.manifest.payload_area + e.payload_offset;
        let len = e.payload_len as u64;
        let (k, sources) = (fec::block_symbols(len), fec::source_symbols(len));
        self.payload.clear();
        self.payload.resize(fec::padded_len(len), 0);
        self.file
            .read_exact_at(&mut self.payload[..len as usize], at)
            .with_context(|| format!("reading chunk {i} of the image"))?;
        // The block's padding symbols are known zeros: a receiver needs
        // as many symbols as there are source symbols.
        let mut to_send = fec::symbols_to_send(sources, loss);
        let chunk = i as u32;
        if !self.sent_source[i] {
            self.sent_source[i] = true;
            let payload = std::mem::take(&mut self.payload);
            let symbols = payload.chunks(SYMBOL_SIZE as usize).take(sources as usize);
            for (esi, symbol) in symbols.enumerate() {
                self.send(chunk, esi as u32, symbol)?;
            }
            self.payload = payload;
            to_send = if loss >= NEGLIGIBLE_LOSS {
                to_send - sources
            } else {
                0
            };
            if to_send == 0 {
                return self.out.flush();
            }
        }
        let enc = SourceBlockEncoder::new(0, &fec::block_config(k), &self.payload);
        let mut start = self.next_repair[i];
        if u64::from(k) + u64::from(start) + u64::from(to_send) >= u64::from(wire::ESI_LIMIT) {
            start = 0;
        }
        for p in enc.repair_packets(start, to_send) {
            self.send(chunk, p.payload_id().encoding_symbol_id(), p.data())?;
        }
        self.next_repair[i] = start + to_send;
        self.out.flush()
    }

    /// Sets the rate from the clients' overflows, every half second.
    fn adjust_rate(&mut self, shared: &Shared) {
        if self.last_adjust.elapsed() < Duration::from_millis(500) {
            return;
        }
        self.last_adjust = Instant::now();
        let mut st = shared.lock();
        let rate = &mut self.out.pacer.rate;
        let (next, slow) = next_rate(*rate, self.max_rate, st.peers.values_mut());
        if !slow.is_empty() {
            eprintln!(
                "Falling behind: {}; rate lowered to {}/s",
                slow.join(", "),
                crate::util::human_size(next as u64)
            );
        } else if next > *rate * RATE_CLIMB * 1.01 {
            eprintln!(
                "The slowest client left; rate back up to {}/s",
                crate::util::human_size(next as u64)
            );
        }
        *rate = next;
    }
}

/// A client that overflowed gets a ceiling this far below the rate it
/// overflowed at; one that took the stream at its ceiling gets this much
/// more at the next adjustment.
const RATE_CUT: f64 = 0.75;
const RATE_CLIMB: f64 = 1.05;
/// The rate never falls below this (bytes/s).
const MIN_RATE: f64 = 64e3;

/// The stream's next rate, from its current `rate`, the configured `max`
/// and the clients. Each client has a ceiling, the highest rate it has
/// shown it can take: an overflow sets it a quarter below the rate the
/// client overflowed at; a client that took the stream at its ceiling
/// without overflowing earns 5 % more; a client whose ceiling is above
/// the stream's rate was not tested and keeps it. The stream runs at the
/// lowest ceiling. So while the slowest client is there it sets the pace
/// as a single group-wide rate would, but when it leaves (done, or gone)
/// the rest get at once the rate they have shown they take, instead of a
/// climb of 5 % per half second from where the slowest left it (a client
/// that joined late, finishing alone, got 10–15 % of its time that way).
/// Also returns the names of the clients that overflowed.
fn next_rate<'a>(
    rate: f64,
    max: f64,
    peers: impl Iterator<Item = &'a mut Peer>,
) -> (f64, Vec<String>) {
    let mut slow = Vec::new();
    let mut next = max;
    for p in peers {
        if std::mem::take(&mut p.behind) {
            p.ceiling = (rate * RATE_CUT).max(MIN_RATE);
            slow.push(p.name.clone());
        } else if p.ceiling <= rate {
            p.ceiling = (p.ceiling * RATE_CLIMB).min(max);
        }
        next = next.min(p.ceiling);
    }
    (next, slow)
}

/// Runs the server until SIGINT or SIGTERM.
pub fn run(opts: &ServerOptions) -> Result<()> {
    let cfg = &opts.config;
    let name = opts.source.display().to_string();
    let mut file = File::open(&opts.source).with_context(|| format!("opening {name}"))?;
    let head = read_prepared_head(&mut file, &name)?;
    let signature = std::fs::read_to_string(format!("{name}.minisig")).ok();
    let addr = interface_addr(opts.interface.as_deref())?;
    let n = head.manifest.extents.len();

    let session = u64::from_be_bytes(wire::random_bytes()?);
    let key: Key = wire::random_bytes()?;
    let socket = multicast_socket(addr, cfg)?;
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, cfg.port))
        .with_context(|| format!("listening on TCP port {}", cfg.port))?;
    let welcome = wire::Welcome {
        version: wire::PROTOCOL_VERSION,
        session,
        key: format::hex(&key),
        group: cfg.group,
        port: cfg.port,
        symbol_size: SYMBOL_SIZE,
        signature,
    };
    let head_bytes = format::encode_head(&head.manifest);
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        arrived: Condvar::new(),
    });
    {
        let shared = shared.clone();
        std::thread::spawn(move || accept_loop(listener, shared, welcome, head_bytes));
    }
    // Dropped (withdrawn) when the server stops.
    let _advertisement = if cfg.dns_sd {
        let stream = super::dnssd::Stream {
            name: head.manifest.name.clone(),
            size: head.manifest.logical_size,
            digest: format::hex(&head.digest()),
            addr,
            port: cfg.port,
        };
        super::dnssd::advertise(&stream)
            .map_err(|e| eprintln!("DNS-SD: not advertising the stream ({e:#})"))
            .ok()
    } else {
        None
    };

    crate::signals::catch_interrupts();
    let rate = cfg.stream_rate() as f64;
    let mut sender = Sender {
        file,
        head,
        out: Outbox::new(socket, rate),
        key: wire::DatagramKey::new(&key),
        session,
        seq: 0,
        pass: 0,
        sent_source: vec![false; n],
        next_repair: vec![0; n],
        max_rate: rate,
        last_adjust: Instant::now(),
        payload: Vec::new(),
    };
    println!("Ready to start accepting clients");
    loop {
        if !wait_for_client(&shared)? {
            break;
        }
        let mut idle_passes = 0;
        loop {
            if !pass_needed(&shared, sender.head.manifest.extents.len()) {
                // Every client holds every chunk and is still writing or
                // verifying: a pass would send nothing (and, repeated,
                // spin). Wait for a report of a gap, a new client or a
                // stop instead.
                idle_wait(&shared);
                if crate::signals::check().is_err() {
                    break;
                }
                continue;
            }
            sender.pass += 1;
            println!("Starting stream {}", crate::util::now_rfc3339());
            let restoring = stream_pass(&mut sender, &shared)?;
            if crate::signals::check().is_err() {
                println!("Stopped");
                return Ok(());
            }
            idle_passes = if restoring { 0 } else { idle_passes + 1 };
            if cfg.loop_suspend > 0 && idle_passes >= cfg.loop_suspend {
                println!(
                    "Suspending stream after {idle_passes} passes with no client; waiting for clients"
                );
                break;
            }
        }
    }
    println!("Stopped");
    Ok(())
}

/// One pass over the chunks some client still needs (all of them when no
/// client is connected, so that one joining finds the stream running).
/// Returns whether any client was restoring during the pass.
fn stream_pass(sender: &mut Sender, shared: &Shared) -> Result<bool> {
    let mut restoring = false;
    let (started, sent_before) = (Instant::now(), sender.out.sent);
    for i in 0..sender.head.manifest.extents.len() {
        if crate::signals::check().is_err() {
            return Ok(restoring);
        }
        sender.adjust_rate(shared);
        let (needed, loss) = {
            let st = shared.lock();
            restoring |= !st.peers.is_empty();
            let needing = st.peers.values().filter(|p| p.needs(i as u32));
            let loss = needing.clone().map(|p| p.loss).fold(0.0, f64::max);
            (st.peers.is_empty() || needing.count() > 0, loss)
        };
        if needed {
            sender.send_chunk(i, loss)?;
        }
    }
    let (bytes, secs) = (
        sender.out.sent - sent_before,
        started.elapsed().as_secs_f64(),
    );
    if bytes > 0 {
        println!(
            "Pass {} sent {} in {secs:.1} s ({:.1} MB/s)",
            sender.pass,
            crate::util::human_size(bytes),
            bytes as f64 / secs.max(1e-3) / 1e6
        );
    }
    Ok(restoring)
}

/// Whether a pass would send anything: some client lacks a chunk, or no
/// client is connected (the stream runs for whoever joins).
fn pass_needed(shared: &Shared, chunks: usize) -> bool {
    let st = shared.lock();
    st.peers.is_empty()
        || st
            .peers
            .values()
            .any(|p| (0..chunks as u32).any(|i| p.needs(i)))
}

/// Waits a little for news from the clients (an arrival wakes it early).
fn idle_wait(shared: &Shared) {
    let st = shared.lock();
    let _ = shared.arrived.wait_timeout(st, Duration::from_millis(100));
}

/// Blocks until a client is connected and restoring; false when a signal
/// asks to stop first.
fn wait_for_client(shared: &Shared) -> Result<bool> {
    let mut st = shared.lock();
    loop {
        if crate::signals::check().is_err() {
            return Ok(false);
        }
        if !st.peers.is_empty() {
            return Ok(true);
        }
        st = shared
            .arrived
            .wait_timeout(st, Duration::from_millis(200))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

fn read_prepared_head(file: &mut File, name: &str) -> Result<ImageHead> {
    let mut magic = [0u8; 8];
    let n = crate::io::read_full(file, &mut magic)?;
    if crate::source::sniff(&magic[..n]) != crate::source::Sniffed::Prepared {
        bail!(
            "{name} is not a prepared image; the server streams prepared images only (make one with: reimage imagescan {name} --output IMAGE.rimg)"
        );
    }
    file.seek(SeekFrom::Start(0))?;
    let head = format::read_head(&mut BufReader::new(&mut *file))
        .with_context(|| format!("reading {name}"))?;
    for (i, e) in head.manifest.extents.iter().enumerate() {
        if fec::source_symbols(u64::from(e.payload_len)) > fec::MAX_SYMBOLS {
            bail!(
                "{name}: chunk {i} is too large to multicast; recreate the image with a smaller --chunksize"
            );
        }
    }
    Ok(head)
}

fn multicast_socket(addr: Ipv4Addr, cfg: &ServerConfig) -> Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_multicast_if_v4(&addr)
        .context("choosing the multicast interface")?;
    s.set_multicast_ttl_v4(u32::from(cfg.ttl))?;
    // Clients on this machine (tests, a lab server imaging itself) hear it.
    s.set_multicast_loop_v4(true)?;
    s.set_send_buffer_size(4 << 20)?;
    s.bind(&SocketAddr::from((addr, 0)).into())
        .with_context(|| format!("binding the stream's socket to {addr}"))?;
    s.connect(&SocketAddr::from((cfg.group, cfg.port)).into())
        .with_context(|| format!("sending to {}:{}", cfg.group, cfg.port))?;
    Ok(s.into())
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, welcome: wire::Welcome, head: Vec<u8>) {
    let (welcome, head) = (Arc::new(welcome), Arc::new(head));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (shared, welcome, head) = (shared.clone(), welcome.clone(), head.clone());
        std::thread::spawn(move || {
            let who = conn
                .peer_addr()
                .map_or_else(|_| "a client".into(), |a| a.to_string());
            if let Err(e) = serve_client(conn, &shared, &welcome, &head) {
                eprintln!("Client {who}: {e:#}");
            }
        });
    }
}

/// One client's control connection, from hello to done or silence.
fn serve_client(
    mut conn: TcpStream,
    shared: &Shared,
    welcome: &wire::Welcome,
    head: &[u8],
) -> Result<()> {
    conn.set_read_timeout(Some(CLIENT_SILENCE))?;
    conn.set_nodelay(true)?;
    let hello = match wire::read_msg(&mut conn, 64 << 10)? {
        Some(Msg::Hello(h)) => h,
        _ => bail!("did not say hello"),
    };
    if hello.version != wire::PROTOCOL_VERSION {
        let msg = format!(
            "this server speaks protocol version {}, the client {}",
            wire::PROTOCOL_VERSION,
            hello.version
        );
        wire::write_msg(&mut conn, &Msg::Error(msg.clone()))?;
        bail!(msg);
    }
    let who = format!("{} ({})", hello.client, conn.peer_addr()?);
    wire::write_msg(&mut conn, &Msg::Welcome(welcome.clone()))?;
    wire::write_msg(&mut conn, &Msg::Head(head.to_vec()))?;
    let id = {
        let mut st = shared.lock();
        st.next_id += 1;
        let id = st.next_id;
        st.peers.insert(id, Peer::new(who.clone()));
        id
    };
    shared.arrived.notify_all();
    println!("Client {who} connected");
    let result = client_reports(&mut conn, shared, id);
    let peer = shared.lock().peers.remove(&id);
    let (name, (received, expected)) = peer.map_or((who, (0, 0)), |p| (p.name, p.totals));
    match result {
        Ok(None) => println!(
            "Client {name} finished ({:.1} % of datagrams lost)",
            100.0 * (1.0 - received as f64 / expected.max(1) as f64)
        ),
        Ok(Some(err)) => println!("Client {name} failed: {err}"),
        Err(e) => println!("Client {name} disconnected ({e:#})"),
    }
    Ok(())
}

/// Reads reports until the client is done: Ok(None) when it succeeded,
/// Ok(Some(why)) when it says it failed.
fn client_reports(conn: &mut TcpStream, shared: &Shared, id: u64) -> Result<Option<String>> {
    loop {
        match wire::read_msg(conn, wire::MAX_FRAME)? {
            Some(Msg::Report(r)) => {
                if let Some(p) = shared.lock().peers.get_mut(&id) {
                    p.update(r);
                }
            }
            Some(Msg::Done(d)) => {
                return Ok(if d.ok {
                    None
                } else {
                    Some(d.error.unwrap_or_else(|| "no reason given".into()))
                });
            }
            Some(_) => bail!("sent an unexpected frame"),
            None => return Err(anyhow!("connection closed")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(missing: Option<Vec<(u32, u32)>>) -> Peer {
        Peer {
            missing,
            ..Peer::new("t".into())
        }
    }

    /// A pacer at 20 MB/s and a clock of its own that starts with it.
    fn pacer() -> (Pacer, Instant) {
        let now = Instant::now();
        (
            Pacer {
                rate: 20e6,
                next: now,
            },
            now,
        )
    }

    /// However the bytes come, the pacer never lets them out faster than
    /// the rate (beyond one burst of SLACK).
    #[test]
    fn pacing_never_exceeds_the_rate() {
        let (mut pacer, start) = pacer();
        let (mut now, mut sent) = (start, 0usize);
        for i in 0..4000 {
            let n = 1460 - (i % 7) * 100;
            now += pacer.book(now, n);
            sent += n;
            let allowed = (now - start + SLACK).as_secs_f64() * pacer.rate;
            assert!(sent as f64 <= allowed + 1460.0, "{sent} bytes by {now:?}");
        }
    }

    #[test]
    fn a_preempted_sender_catches_up_but_an_idle_one_earns_little() {
        let (mut pacer, start) = pacer();
        let mut now = start;
        let datagrams = 2000; // 2.92 MB: 146 ms at 20 MB/s
        for i in 0..datagrams {
            if i == datagrams / 2 {
                // Preempted for 8 ms: made up by sending faster after.
                now += Duration::from_millis(8);
            }
            now += pacer.book(now, 1460);
        }
        let planned = (datagrams * 1460) as f64 / pacer.rate;
        let took = (now - start).as_secs_f64();
        assert!(took <= planned, "{took} s for {planned} s of data");
        // After a long idle spell, at most CATCH_UP's worth goes at once.
        now += Duration::from_millis(100);
        let burst_start = now;
        for _ in 0..1000 {
            now += pacer.book(now, 1460);
        }
        let burst = (now - burst_start).as_secs_f64();
        let floor = 1000.0 * 1460.0 / pacer.rate - CATCH_UP.as_secs_f64() - SLACK.as_secs_f64();
        assert!(burst >= floor, "{burst} s < {floor} s");
    }

    #[test]
    fn needs_follows_the_missing_ranges() {
        assert!(peer(None).needs(7));
        let p = peer(Some(vec![(2, 4), (10, 11)]));
        let needed: Vec<u32> = (0..12).filter(|&c| p.needs(c)).collect();
        assert_eq!(needed, [2, 3, 10]);
    }

    #[test]
    fn loss_rises_at_once_and_decays_slowly() {
        let mut p = peer(None);
        let report = |received, expected| Report {
            received,
            expected,
            ..Default::default()
        };
        p.update(report(900, 1000));
        assert!((p.loss - 0.1).abs() < 1e-9);
        p.update(report(1900, 2000));
        assert!((p.loss - 0.08).abs() < 1e-9);
        p.update(report(2000, 3000));
        assert!((p.loss - 0.9).abs() < 1e-9);
        // Too few datagrams to judge: no change.
        p.update(report(2010, 3010));
        assert!((p.loss - 0.9).abs() < 1e-9);
    }

    /// One step of the rate controller (configured rate 100 MB/s, rates
    /// here in MB/s) with clients named by index; `behind` says which
    /// overflowed since the last step.
    fn step(rate: f64, peers: &mut [Peer], behind: &[usize]) -> (f64, Vec<String>) {
        for &i in behind {
            peers[i].behind = true;
        }
        let (next, slow) = next_rate(rate * 1e6, 100e6, peers.iter_mut());
        (next / 1e6, slow)
    }

    #[test]
    fn the_slowest_client_sets_the_rate_until_it_leaves() {
        let mut peers: Vec<Peer> = (0..3).map(|i| Peer::new(format!("c{i}"))).collect();
        // Nobody overflowed: the configured rate.
        assert_eq!(step(100.0, &mut peers, &[]).0, 100.0);
        // c0 overflows at 100, then c1 at 75: each is cut a quarter below
        // the rate it overflowed at, and the stream follows the lowest.
        let (rate, slow) = step(100.0, &mut peers, &[0]);
        assert_eq!((rate, slow.as_slice()), (75.0, &["c0".to_string()][..]));
        let (mut rate, slow) = step(rate, &mut peers, &[1]);
        assert_eq!((rate, slow.as_slice()), (56.25, &["c1".to_string()][..]));
        // c0 took 75 without overflowing meanwhile: 5 % more, 78.75. c1
        // is tested at its ceiling and climbs 5 % a step; c0's ceiling is
        // above the rate, untested, and stays.
        for _ in 0..3 {
            let before = rate;
            rate = step(rate, &mut peers, &[]).0;
            assert!((rate - before * 1.05).abs() < 1e-9, "{before} -> {rate}");
        }
        assert_eq!(peers[0].ceiling, 78.75e6);
        assert_eq!(peers[2].ceiling, f64::INFINITY);
        // c1 leaves: c0's ceiling at once, not a climb from 65.
        peers.remove(1);
        let mut rate = step(rate, &mut peers, &[]).0;
        assert_eq!(rate, 78.75);
        // c0 takes it and earns more, up to the configured rate.
        for _ in 0..20 {
            rate = step(rate, &mut peers, &[]).0;
        }
        assert_eq!(rate, 100.0);
        // An overflow far down is floored.
        assert_eq!(step(0.01, &mut peers, &[0]).0 * 1e6, MIN_RATE);
    }

    #[test]
    fn socket_overflows_slow_the_stream_but_are_not_loss() {
        let mut p = peer(None);
        p.update(Report {
            received: 500,
            expected: 1000,
            overflows: 500,
            ..Default::default()
        });
        assert_eq!(p.loss, 0.0);
        assert!(p.behind);
        // The next interval without overflows counts from there.
        p.update(Report {
            received: 1490,
            expected: 2000,
            overflows: 500,
            ..Default::default()
        });
        assert!((p.loss - 0.01).abs() < 1e-9, "{}", p.loss);
    }

    #[test]
    fn batches_arrive_as_the_datagrams_they_hold() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let key = wire::DatagramKey::new(&[7; 32]);
        let n = BATCH as u64 * 2 + 5;
        // Read as they come: the default receive buffer holds about a batch.
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let key = wire::DatagramKey::new(&[7; 32]);
            (0..n)
                .map(|_| {
                    let len = rx.recv(&mut buf).unwrap();
                    let (h, symbol) =
                        wire::parse_symbol(&key, 1, SYMBOL_SIZE, &mut buf[..len]).unwrap();
                    (h.seq, symbol[0])
                })
                .collect::<Vec<_>>()
        });
        let mut out = Outbox::new(tx, 5e6);
        for seq in 0..n {
            let h = SymbolHeader {
                session: 1,
                seq,
                chunk: 0,
                esi: seq as u32,
                pass: 1,
            };
            out.push(&key, &h, &[seq as u8; SYMBOL_SIZE as usize])
                .unwrap();
        }
        out.flush().unwrap();
        let want: Vec<_> = (0..n).map(|seq| (seq, seq as u8)).collect();
        assert_eq!(reader.join().unwrap(), want);
        assert!(out.gso, "loopback takes UDP_SEGMENT batches");
        assert_eq!(out.sent, n * wire::DATAGRAM_LEN as u64);
    }
}
