//! DNS-SD (mDNS) advertising and browsing of multicast streams, so that
//! clients can list the streams on a LAN without knowing any server.
//!
//! The TXT record carries everything a client shows: `v` (layout version),
//! `name`, `size` and `digest`. The name is in the TXT record too because
//! the instance name may be truncated or renamed ("name (2)") by mDNS.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use mdns_sd::{IfKind, ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo, TxtProperties};

use crate::util::human_size;

/// DNS-SD service type of reimage multicast streams.
pub const SERVICE_TYPE: &str = "_reimage._tcp.local.";

/// Major version of the TXT layout. Clients skip other majors; a minor
/// bump ("1.1") may only add keys.
const VERSION: &str = "1";

/// The DNS label limit, which bounds instance names.
const LABEL_MAX: usize = 63;

/// A TXT string is at most 255 bytes, "name=" included.
const TXT_NAME_MAX: usize = 255 - "name=".len();

/// How long a dropped daemon may take to send its goodbyes and exit.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// What a server advertises about its stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stream {
    /// Image name (instance name of the service).
    pub name: String,
    /// Restored size in bytes.
    pub size: u64,
    /// Image digest, 64 lowercase hex digits.
    pub digest: String,
    /// Server address and TCP control port: a client restores from
    /// `mcast://{addr}:{port}`.
    pub addr: Ipv4Addr,
    pub port: u16,
}

impl Stream {
    /// The source URL a client passes to `restore --source`.
    pub fn url(&self) -> String {
        format!("mcast://{}:{}", self.addr, self.port)
    }

    fn txt(&self) -> [(&'static str, String); 4] {
        [
            ("v", VERSION.to_owned()),
            ("name", truncate(&self.name, TXT_NAME_MAX).to_owned()),
            ("size", self.size.to_string()),
            ("digest", self.digest.clone()),
        ]
    }

    /// The stream a service at `addr:port` advertises, or `None` if its
    /// TXT record is not a valid one of our major version.
    fn from_txt(txt: &TxtProperties, addr: Ipv4Addr, port: u16) -> Option<Self> {
        if txt_str(txt, "v")?.split('.').next() != Some(VERSION) || port == 0 {
            return None;
        }
        let size = txt_str(txt, "size")?;
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
            return None; // parse() alone would take "+1"
        }
        Some(Self {
            name: txt_str(txt, "name").filter(|n| valid_name(n))?.to_owned(),
            size: size.parse().ok()?,
            digest: txt_str(txt, "digest")
                .filter(|d| valid_digest(d))?
                .to_ascii_lowercase(),
            addr,
            port,
        })
    }
}

fn txt_str<'a>(txt: &'a TxtProperties, key: &str) -> Option<&'a str> {
    std::str::from_utf8(txt.get_property_val(key)??).ok()
}

/// Names end up on terminals: control characters could rewrite the screen.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(char::is_control)
}

fn valid_digest(digest: &str) -> bool {
    digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The longest prefix of `s` of at most `max` bytes that ends at a char
/// boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One host name per address, so that servers never contend for a name.
fn host_name(addr: Ipv4Addr) -> String {
    format!("reimage-{}.local.", addr.to_string().replace('.', "-"))
}

/// An mDNS daemon whose thread sends its goodbyes and exits on drop.
struct Daemon(ServiceDaemon);

impl Daemon {
    fn start() -> Result<Self> {
        Ok(Self(ServiceDaemon::new().context("cannot start mDNS")?))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The reply is the thread's last act, so waiting for it keeps the
        // goodbyes from racing the process exit.
        if let Ok(done) = self.0.shutdown() {
            let _ = done.recv_timeout(SHUTDOWN_WAIT);
        }
    }
}

/// A running advertisement; dropping it withdraws the service (sends the
/// goodbye) and stops the daemon.
#[must_use = "dropping the advertisement withdraws it"]
pub struct Advertisement {
    _daemon: Daemon,
}

/// Advertises `stream` on the interface that has `stream.addr` (only that
/// interface: a server with several NICs must not announce itself where
/// clients can't reach the address).
pub fn advertise(stream: &Stream) -> Result<Advertisement> {
    let Stream { name, addr, .. } = stream;
    ensure!(
        valid_name(name),
        "cannot advertise {name:?}: the name is empty or has control characters"
    );
    ensure!(
        valid_digest(&stream.digest),
        "cannot advertise {name}: its digest is not 64 hex digits"
    );
    ensure!(stream.port != 0, "cannot advertise {name}: no control port");
    // mdns-sd would silently announce nowhere; a bind tells whether some
    // interface has the address.
    ensure!(
        !addr.is_unspecified(),
        "cannot advertise {name} on {addr}: give the address of one interface"
    );
    UdpSocket::bind((*addr, 0))
        .with_context(|| format!("cannot advertise {name} on {addr}: no interface has it"))?;
    let info = ServiceInfo::new(
        SERVICE_TYPE,
        truncate(name, LABEL_MAX),
        &host_name(*addr),
        IpAddr::V4(*addr),
        stream.port,
        stream.txt().as_slice(),
    )
    .with_context(|| format!("cannot advertise {name}"))?;
    let daemon = Daemon::start()?;
    // Commands run in order, so the service is never announced before the
    // interfaces are narrowed down.
    daemon
        .0
        .disable_interface(IfKind::All)
        .and_then(|()| daemon.0.enable_interface(IfKind::Addr((*addr).into())))
        .and_then(|()| daemon.0.register(info))
        .with_context(|| format!("cannot advertise {name}"))?;
    Ok(Advertisement { _daemon: daemon })
}

/// Listens for `wait` and returns every stream found, sorted by name then
/// address, without duplicates. Services whose TXT records are missing or
/// malformed are skipped.
pub fn browse(wait: Duration) -> Result<Vec<Stream>> {
    let deadline = Instant::now() + wait;
    let daemon = Daemon::start()?;
    // Streams are IPv4 only.
    let events = daemon
        .0
        .disable_interface(IfKind::IPv6)
        .and_then(|()| daemon.0.browse(SERVICE_TYPE))
        .context("cannot browse for reimage streams")?;
    // Keyed by instance, so that goodbyes and updates replace what was seen.
    let mut found = HashMap::new();
    while let Ok(event) = events.recv_deadline(deadline) {
        match event {
            ServiceEvent::ServiceResolved(service) => {
                found.insert(service.fullname.to_lowercase(), streams_of(&service));
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                found.remove(&fullname.to_lowercase());
            }
            _ => {}
        }
    }
    let mut streams: Vec<Stream> = found.into_values().flatten().collect();
    // Every field is in the key, so that dedup sees all duplicates.
    let key = |s: &Stream| (s.name.clone(), s.addr, s.port, s.size, s.digest.clone());
    streams.sort_by_key(key);
    streams.dedup();
    Ok(streams)
}

fn streams_of(service: &ResolvedService) -> Vec<Stream> {
    service
        .get_addresses_v4()
        .into_iter()
        .filter_map(|addr| Stream::from_txt(&service.txt_properties, addr, service.port))
        .collect()
}

/// `reimage browse`: prints the streams found as an aligned table (name,
/// size, digest prefix, url), or one JSON object per line with `json`.
pub fn browse_cmd(wait: Duration, json: bool, out: &mut dyn Write) -> Result<()> {
    let streams = browse(wait)?;
    if streams.is_empty() {
        eprintln!("no reimage streams found");
        return Ok(());
    }
    let text = if json {
        streams
            .iter()
            .map(|s| serde_json::to_string(s).map(|line| line + "\n"))
            .collect::<Result<String, _>>()?
    } else {
        table(&streams)
    };
    out.write_all(text.as_bytes())
        .context("cannot write the stream list")
}

fn table(streams: &[Stream]) -> String {
    let rows: Vec<[String; 4]> =
        std::iter::once(["NAME", "SIZE", "DIGEST", "URL"].map(String::from))
            .chain(streams.iter().map(|s| {
                let digest = s.digest.get(..16).unwrap_or(&s.digest);
                [
                    s.name.clone(),
                    human_size(s.size),
                    digest.to_owned(),
                    s.url(),
                ]
            }))
            .collect();
    let width = |col: usize| {
        rows.iter()
            .map(|r| r[col].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (nw, sw, dw) = (width(0), width(1), width(2));
    rows.iter()
        .fold(String::new(), |mut text, [name, size, digest, url]| {
            let _ = writeln!(text, "{name:<nw$}  {size:>sw$}  {digest:<dw$}  {url}");
            text
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mdns_sd::IntoTxtProperties;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn stream(name: &str, addr: [u8; 4]) -> Stream {
        Stream {
            name: name.to_owned(),
            size: 4 << 30,
            digest: DIGEST.to_owned(),
            addr: addr.into(),
            port: 7000,
        }
    }

    /// Parses TXT strings as they come off the wire.
    fn parse(strings: &[&[u8]]) -> Option<Stream> {
        let wire: Vec<u8> = strings
            .iter()
            .flat_map(|s| std::iter::once(s.len() as u8).chain(s.iter().copied()))
            .collect();
        Stream::from_txt(
            &TxtProperties::from(wire.as_slice()),
            [10, 0, 0, 1].into(),
            7000,
        )
    }

    const GOOD: [&[u8]; 4] = [
        b"v=1",
        b"name=debian",
        b"size=4294967296",
        b"digest=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ];

    #[test]
    fn txt_round_trip() {
        let s = stream("debian 12.4", [10, 0, 0, 1]);
        let txt = s.txt().as_slice().into_txt_properties();
        assert_eq!(Stream::from_txt(&txt, s.addr, s.port), Some(s));
        assert_eq!(parse(&GOOD), Some(stream("debian", [10, 0, 0, 1])));
    }

    #[test]
    fn lenient_where_harmless() {
        let upper = format!("digest={}", DIGEST.to_uppercase());
        // The first of duplicate keys wins (RFC 6763), so a prefix overrides GOOD.
        for first in [&b"v=1.7"[..], b"V=1", upper.as_bytes(), b"extra=x"] {
            let strings: Vec<&[u8]> = std::iter::once(first).chain(GOOD).collect();
            assert_eq!(parse(&strings), parse(&GOOD), "{}", first.escape_ascii());
        }
    }

    #[test]
    fn malformed_txt_is_skipped() {
        for missing in GOOD {
            let strings: Vec<&[u8]> = GOOD.into_iter().filter(|s| *s != missing).collect();
            assert_eq!(parse(&strings), None, "without {}", missing.escape_ascii());
        }
        let bad: [&[u8]; 13] = [
            b"v=2",
            b"v=",
            b"v",
            b"name=",
            b"name=a\x1b[2Jb",
            b"name=\xff\xfe",
            b"size=",
            b"size=+5",
            b"size=12x",
            b"size=99999999999999999999",
            b"digest=0123",
            b"digest=g123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            b"digest=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0",
        ];
        for first in bad {
            let strings: Vec<&[u8]> = std::iter::once(first).chain(GOOD).collect();
            assert_eq!(parse(&strings), None, "{}", first.escape_ascii());
        }
        let txt = TxtProperties::from(&b"\x05v=1"[..]); // length beyond the data
        assert_eq!(Stream::from_txt(&txt, [10, 0, 0, 1].into(), 7000), None);
    }

    #[test]
    fn port_zero_is_skipped() {
        let txt = stream("a", [10, 0, 0, 1])
            .txt()
            .as_slice()
            .into_txt_properties();
        assert_eq!(Stream::from_txt(&txt, [10, 0, 0, 1].into(), 0), None);
    }

    #[test]
    fn names_are_truncated_at_char_boundaries() {
        let long = "é".repeat(40); // 80 bytes
        assert_eq!(truncate(&long, LABEL_MAX), "é".repeat(31));
        assert_eq!(truncate(&"a".repeat(70), LABEL_MAX).len(), 63);
        assert_eq!(truncate("short", LABEL_MAX), "short");
        let s = stream(&"n".repeat(300), [10, 0, 0, 1]);
        assert_eq!(s.txt()[1].1.len(), TXT_NAME_MAX);
    }

    #[test]
    fn urls_and_host_names() {
        let s = stream("a", [192, 168, 1, 20]);
        assert_eq!(s.url(), "mcast://192.168.1.20:7000");
        assert_eq!(host_name(s.addr), "reimage-192-168-1-20.local.");
    }

    #[test]
    fn table_is_aligned() {
        let mut small = stream("ubuntu-24.04-desktop", [10, 0, 0, 12]);
        small.size = 512;
        let streams = [stream("debian", [10, 0, 0, 1]), small];
        assert_eq!(
            table(&streams),
            "NAME                     SIZE  DIGEST            URL\n\
             debian                4.0 GiB  0123456789abcdef  mcast://10.0.0.1:7000\n\
             ubuntu-24.04-desktop    512 B  0123456789abcdef  mcast://10.0.0.12:7000\n"
        );
    }
}
