//! http(s):// sources. A prepared image is fetched as its head and then as
//! parallel Range requests for runs of chunk payloads, each retried with
//! backoff from the first chunk not yet received; everything else is one
//! sequential stream that resumes with a Range request after a dropped
//! connection. Servers without Range support get one plain stream.

use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};

use super::prepared::{describe_prepared, payload_order, prepared_info};
use super::resolve::Unresolvable;
use super::{ChunkSource, ImageInfo, Piece, Slot, Sniffed, SourceOptions, sniff};
use crate::image::format::{self, Codec, HEADER_LEN, ImageHead};
use crate::io::SeqRead;

/// Network knobs. Defaults suit a LAN or a CDN; tests shrink them.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Parallel Range requests for a prepared image.
    pub connections: usize,
    /// PEM file of extra CA certificates to trust besides the built-in
    /// Mozilla roots (a private CA).
    pub cacert: Option<PathBuf>,
    /// Attempts after the first one before a request is given up.
    pub retries: u32,
    /// Delay before the first retry; doubles each attempt up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Limit for connecting, and for each read once connected.
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Largest Range request, bytes: consecutive payloads are fetched
    /// together up to this, so small chunks do not cost a request each.
    pub batch_bytes: u64,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            connections: 4,
            cacert: None,
            retries: 8,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            batch_bytes: 4 << 20,
        }
    }
}

impl HttpOptions {
    fn delay(&self, attempt: u32) -> Duration {
        self.backoff
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_backoff)
    }
}

/// Bytes fetched first: the 64-byte header, the manifest of a typical
/// image, and every magic number sniffing needs.
const PROBE_LEN: u64 = 256 << 10;

/// Whether retrying can help.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    /// Dropped connections, timeouts, 5xx: worth another attempt.
    #[error("{0:#}")]
    Retryable(anyhow::Error),
    /// 4xx, TLS failures, a server that breaks the protocol: final.
    #[error("{0:#}")]
    Fatal(anyhow::Error),
}

/// An HTTP client trusting the built-in Mozilla roots (the rescue system
/// has no CA store) plus `--cacert`. There is no switch to skip
/// certificate checks.
fn client(opts: &HttpOptions) -> Result<Client> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &opts.cacert {
        let pem =
            std::fs::read(path).with_context(|| format!("reading --cacert {}", path.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| anyhow!("--cacert {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| anyhow!("--cacert {}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            bail!("--cacert {}: no PEM certificate in it", path.display());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Client::builder()
        .tls_backend_preconfigured(tls)
        .dns_resolver(Arc::new(super::resolve::SystemResolver::default()))
        .connect_timeout(opts.connect_timeout)
        // In the blocking client this bounds each read, not the transfer.
        .timeout(opts.read_timeout)
        .user_agent(concat!("reimage/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Turns a transport error into one the user can act on; TLS failures are
/// final and say what is wrong with the certificate.
fn classify(url: &str, e: reqwest::Error) -> FetchError {
    if let Some(tls) = find_cause::<rustls::Error>(&e) {
        return FetchError::Fatal(anyhow!("TLS with {}: {}", host_of(url), describe_tls(tls)));
    }
    if let Some(name) = find_cause::<Unresolvable>(&e) {
        return FetchError::Fatal(anyhow!("{url}: {name}"));
    }
    FetchError::Retryable(anyhow::Error::new(e).context(format!("fetching {url}")))
}

/// The first error of type `T` in `e`'s chain, looking through nested
/// io::Errors too (their `source()` skips the error they wrap).
fn find_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(found) = c.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(inner) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(found) = find_cause::<T>(inner)
        {
            return Some(found);
        }
        cause = c.source();
    }
    None
}

fn describe_tls(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the server's certificate has expired".into()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the server's certificate is not valid yet (is the clock right?)".into()
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "the server's certificate is not signed by a trusted CA (for a private CA, pass --cacert)".into()
        }
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the server's certificate is not valid for this host name".into()
        }
        other => other.to_string(),
    }
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// One GET, optionally of `range` (inclusive end, or open-ended).
fn get(
    client: &Client,
    url: &str,
    range: Option<(u64, Option<u64>)>,
) -> Result<Response, FetchError> {
    let mut req = client.get(url);
    if let Some((start, end)) = range {
        let spec = match end {
            Some(end) => format!("bytes={start}-{end}"),
            None => format!("bytes={start}-"),
        };
        req = req.header(reqwest::header::RANGE, spec);
    }
    let resp = req.send().map_err(|e| classify(url, e))?;
    check_status(url, resp, range.map(|(start, _)| start))
}

/// Passes a successful response; turns others into errors that say
/// whether retrying can help. `range_start` is where a Range began.
fn check_status(
    url: &str,
    resp: Response,
    range_start: Option<u64>,
) -> Result<Response, FetchError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let err = match (status, range_start) {
        (StatusCode::RANGE_NOT_SATISFIABLE, Some(start)) => {
            anyhow!(
                "{url} has no byte {start} (HTTP {status}): the image on the server is truncated"
            )
        }
        _ => anyhow!("{url} answered HTTP {status}"),
    };
    // Gateways and overloaded servers recover; a 500 or 4xx will answer
    // the same way again.
    let transient = [
        StatusCode::BAD_GATEWAY,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::GATEWAY_TIMEOUT,
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::REQUEST_TIMEOUT,
    ];
    if transient.contains(&status) {
        Err(FetchError::Retryable(err))
    } else {
        Err(FetchError::Fatal(err))
    }
}

/// Runs `f` until it succeeds, fails for good, or runs out of attempts.
fn with_retries<T>(opts: &HttpOptions, mut f: impl FnMut() -> Result<T, FetchError>) -> Result<T> {
    let mut attempt = 0;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(FetchError::Fatal(e)) => return Err(e),
            Err(FetchError::Retryable(e)) if attempt >= opts.retries => {
                return Err(e.context(format!("giving up after {} attempts", attempt + 1)));
            }
            Err(FetchError::Retryable(_)) => {
                std::thread::sleep(opts.delay(attempt));
                attempt += 1;
            }
        }
    }
}

/// Start and total of a 206 response's `Content-Range: bytes S-E/T`.
fn content_range(resp: &Response) -> Option<(u64, Option<u64>)> {
    let v = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let rest = v.strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let start = span.split_once('-')?.0.parse().ok()?;
    Some((start, total.parse().ok()))
}

/// A GET of bytes `start..=end` (or to the end of the file) that must be
/// answered with exactly that range: resuming anywhere else would corrupt
/// what has been received so far.
fn get_range(
    client: &Client,
    url: &str,
    start: u64,
    end: Option<u64>,
) -> Result<Response, FetchError> {
    let resp = get(client, url, Some((start, end)))?;
    expect_partial(url, &resp, start)?;
    Ok(resp)
}

/// Checks that a response to a Range request starting at `start` really
/// is that range.
fn expect_partial(url: &str, resp: &Response, start: u64) -> Result<(), FetchError> {
    if resp.status() != StatusCode::PARTIAL_CONTENT {
        return Err(FetchError::Fatal(anyhow!(
            "{url} ignored a Range request (HTTP {})",
            resp.status()
        )));
    }
    match content_range(resp) {
        Some((s, _)) if s == start => Ok(()),
        _ => Err(FetchError::Fatal(anyhow!(
            "{url} answered a Range request for byte {start} with another range"
        ))),
    }
}

pub fn open(url: &str, opts: &SourceOptions) -> Result<Box<dyn ChunkSource>> {
    let http = &opts.http;
    let client = client(http)?;
    // One ranged GET tells whether the server does ranges, how large the
    // file is, and what it holds. No HEAD: not every server answers it.
    let mut resp = with_retries(http, || get(&client, url, Some((0, Some(PROBE_LEN - 1)))))?;
    // After a redirect, later requests go straight to where it led.
    let fetch_url = resp.url().to_string();
    let ranged = resp.status() == StatusCode::PARTIAL_CONTENT;
    let total = if ranged {
        content_range(&resp).and_then(|(_, t)| t)
    } else {
        resp.content_length()
    };
    // A ranged probe is read whole (resuming if it is cut) and later reads
    // reopen at their position; an unranged response is the whole file, so
    // read only the probe's worth and keep streaming from it.
    let mut probe = Vec::new();
    let read = (&mut resp).take(PROBE_LEN).read_to_end(&mut probe);
    match read {
        Err(_) if ranged => {
            let want = total.map_or(PROBE_LEN, |t| t.min(PROBE_LEN));
            fill_from_start(&client, &fetch_url, http, want, &mut probe)?;
        }
        other => {
            other.with_context(|| format!("fetching {url}"))?;
        }
    }
    let stream = HttpStream {
        client: client.clone(),
        url: fetch_url.clone(),
        opts: http.clone(),
        resp: if ranged { None } else { Some(resp) },
        pos: 0,
        total,
        resumable: ranged,
        probe,
    };
    let head_bytes = stream.probe.clone();
    if ranged && sniff(&head_bytes) == Sniffed::Prepared {
        let head = fetch_head(&client, &fetch_url, http, &head_bytes)?;
        return Ok(Box::new(HttpPreparedSource::start(
            client, &fetch_url, http, head,
        )?));
    }
    // A UDIF image is known by its trailer: one more small ranged GET.
    if let (true, Some(len)) = (ranged, total) {
        let mut tail = HttpTail {
            client: &client,
            url: &fetch_url,
            opts: http,
        };
        if let Some(trailer) = super::udif_trailer(&head_bytes, &mut tail, len)? {
            let (client, fetch_url, http) = (client.clone(), fetch_url.clone(), http.clone());
            let opener = Box::new(move || -> Result<Box<dyn SeqRead>> {
                Ok(Box::new(HttpStream {
                    client: client.clone(),
                    url: fetch_url.clone(),
                    opts: http.clone(),
                    resp: None,
                    pos: 0,
                    total: Some(len),
                    resumable: true,
                    probe: Vec::new(),
                }))
            });
            let volume = opts.volume.as_deref();
            let src = super::dmg::DmgSource::open(
                url.to_owned(),
                &trailer,
                &mut tail,
                len,
                opener,
                volume,
            )?;
            return Ok(Box::new(src));
        }
    }
    super::from_stream(url.to_owned(), &head_bytes, Box::new(stream), total, opts)
}

/// Ranged reads of a few known spans (a .dmg's trailer and property list).
struct HttpTail<'a> {
    client: &'a Client,
    url: &'a str,
    opts: &'a HttpOptions,
}

impl super::dmg::TailReader for HttpTail<'_> {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64 - 1;
        with_retries(self.opts, || {
            let resp = get_range(self.client, self.url, offset, Some(end))?;
            let got = crate::io::read_full(&mut resp.take(buf.len() as u64), buf);
            match got {
                Ok(n) if n == buf.len() => Ok(()),
                Ok(n) => Err(FetchError::Retryable(anyhow!(
                    "{}: got {n} of {} bytes at {offset}",
                    self.url,
                    buf.len()
                ))),
                Err(e) => Err(FetchError::Retryable(
                    anyhow::Error::new(e).context(format!("fetching {}", self.url)),
                )),
            }
        })
    }
}

/// Fetches a small text file (a signature, a catalog, a CA bundle) of at
/// most `limit` bytes; None on 404. A larger file is an error rather than
/// silently cut short.
pub fn fetch_small(url: &str, opts: &HttpOptions, limit: u64) -> Result<Option<String>> {
    let client = client(opts)?;
    let resp = with_retries(opts, || {
        let r = client.get(url).send().map_err(|e| classify(url, e))?;
        if r.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check_status(url, r, None).map(Some)
    })?;
    let Some(resp) = resp else { return Ok(None) };
    let mut text = String::new();
    resp.take(limit.saturating_add(1))
        .read_to_string(&mut text)
        .with_context(|| format!("fetching {url}"))?;
    if text.len() as u64 > limit {
        bail!("{url} is larger than {}", crate::util::human_size(limit));
    }
    Ok(Some(text))
}

/// Extends `out`, which holds the first bytes of `url`, to its first `len`
/// bytes (fewer if the file is shorter) with Range requests that resume
/// where a dropped connection left off.
fn fill_from_start(
    client: &Client,
    url: &str,
    opts: &HttpOptions,
    len: u64,
    out: &mut Vec<u8>,
) -> Result<()> {
    while (out.len() as u64) < len {
        let start = out.len() as u64;
        let done = with_retries(opts, || {
            let resp = get_range(client, url, start, Some(len - 1))?;
            match resp.take(len - start).read_to_end(out) {
                Ok(_) => Ok(true),
                // Progress made: the next request goes on from there.
                Err(_) if out.len() as u64 > start => Ok(false),
                Err(e) => Err(FetchError::Retryable(
                    anyhow::Error::new(e).context(format!("fetching {url}")),
                )),
            }
        })?;
        if done {
            break;
        }
    }
    Ok(())
}

/// Reads a prepared image's head from the probed bytes, fetching the rest
/// of a manifest larger than the probe.
fn fetch_head(client: &Client, url: &str, opts: &HttpOptions, probe: &[u8]) -> Result<ImageHead> {
    let header = format::Header::decode(probe).with_context(|| format!("reading {url}"))?;
    let head_len = HEADER_LEN as u64 + header.manifest_len;
    let mut bytes = probe.to_vec();
    fill_from_start(client, url, opts, head_len, &mut bytes)
        .with_context(|| format!("fetching the manifest of {url}"))?;
    if (bytes.len() as u64) < head_len {
        bail!("{url} is truncated inside its manifest");
    }
    let manifest = bytes[HEADER_LEN..head_len as usize].to_vec();
    format::parse_head(header, manifest).with_context(|| format!("reading {url}"))
}

/// A sequential HTTP body that resumes after a dropped connection with a
/// Range request from the last byte received.
struct HttpStream {
    client: Client,
    url: String,
    opts: HttpOptions,
    resp: Option<Response>,
    pos: u64,
    total: Option<u64>,
    /// The server does Range requests, so a dropped stream can resume.
    resumable: bool,
    /// Bytes already fetched from offset 0 (the probe), served first.
    probe: Vec<u8>,
}

impl HttpStream {
    fn reopen(&mut self) -> Result<(), FetchError> {
        self.resp = Some(get_range(&self.client, &self.url, self.pos, None)?);
        Ok(())
    }
}

impl Read for HttpStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // An unranged stream's response continues after the probe, which
        // was read from it; a ranged one serves the probe, then reopens.
        if (self.pos as usize) < self.probe.len() {
            let from = &self.probe[self.pos as usize..];
            let n = from.len().min(buf.len());
            buf[..n].copy_from_slice(&from[..n]);
            self.pos += n as u64;
            return Ok(n);
        }
        let mut attempt = 0;
        loop {
            if self.resp.is_none()
                && let Err(e) = self.reopen()
            {
                match e {
                    FetchError::Retryable(_) if attempt < self.opts.retries => {}
                    e => return Err(std::io::Error::other(e)),
                }
                std::thread::sleep(self.opts.delay(attempt));
                attempt += 1;
                continue;
            }
            let resp = self.resp.as_mut().expect("opened above");
            let err = match resp.read(buf) {
                Ok(0) if self.total.is_none_or(|t| self.pos >= t) => return Ok(0),
                Ok(0) => anyhow!("connection closed at byte {} of {:?}", self.pos, self.total),
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) => anyhow::Error::new(e),
            };
            self.resp = None;
            if !self.resumable {
                return Err(std::io::Error::other(err.context(format!(
                    "{} dropped the connection and does not support Range requests to resume",
                    self.url
                ))));
            }
            if attempt >= self.opts.retries {
                return Err(std::io::Error::other(
                    err.context(format!("fetching {}: giving up", self.url)),
                ));
            }
            // A connection that delivered data and then dropped is
            // reopened at once; only repeated failures back off.
            if attempt > 0 {
                std::thread::sleep(self.opts.delay(attempt - 1));
            }
            attempt += 1;
        }
    }
}

impl SeqRead for HttpStream {
    fn position(&self) -> u64 {
        self.pos
    }

    /// A server that does ranges is asked for the new position instead of
    /// sending the bytes in between.
    fn skip_to(&mut self, offset: u64) -> std::io::Result<()> {
        if !self.resumable || offset <= self.pos || (self.pos as usize) < self.probe.len() {
            return crate::io::skip_by_reading(self, offset);
        }
        self.pos = offset;
        self.resp = None;
        Ok(())
    }
}

/// One Range request's worth of consecutive payloads.
struct Batch {
    /// Extent indices, payloads contiguous in the file.
    extents: Vec<usize>,
}

/// A prepared image fetched with parallel Range requests; chunks arrive in
/// whatever order the connections deliver them.
struct HttpPreparedSource {
    url: String,
    info: ImageInfo,
    rx: Receiver<Result<(usize, Vec<u8>)>>,
    remaining: usize,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl HttpPreparedSource {
    fn start(
        client: Client,
        url: &str,
        opts: &HttpOptions,
        head: ImageHead,
    ) -> Result<HttpPreparedSource> {
        let m = &head.manifest;
        let mut batches: Vec<Batch> = Vec::new();
        let mut batch_len = 0u64;
        let mut prev_end = None;
        for i in payload_order(&head) {
            let e = &m.extents[i];
            let contiguous = prev_end == Some(e.payload_offset);
            match batches.last_mut() {
                Some(b)
                    if contiguous && batch_len + u64::from(e.payload_len) <= opts.batch_bytes =>
                {
                    b.extents.push(i);
                    batch_len += u64::from(e.payload_len);
                }
                _ => {
                    batches.push(Batch { extents: vec![i] });
                    batch_len = u64::from(e.payload_len);
                }
            }
            prev_end = Some(e.payload_offset + u64::from(e.payload_len));
        }
        let remaining = m.extents.len();
        let (work_tx, work_rx) = unbounded::<Batch>();
        for b in batches {
            work_tx.send(b).expect("channel is open");
        }
        drop(work_tx);
        // Room for a few chunks per connection: enough to keep every
        // connection streaming, little enough to bound memory.
        let (tx, rx) = bounded(opts.connections.max(1) * 4);
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let head = Arc::new(head);
        for _ in 0..opts.connections.max(1) {
            let fetcher = Fetcher {
                client: client.clone(),
                url: url.to_owned(),
                opts: opts.clone(),
                head: head.clone(),
                tx: tx.clone(),
                received: received.clone(),
                stop: stop.clone(),
            };
            let work_rx = work_rx.clone();
            std::thread::spawn(move || fetcher.run(work_rx));
        }
        let head = Arc::try_unwrap(head).unwrap_or_else(|h| (*h).clone());
        Ok(HttpPreparedSource {
            url: url.to_owned(),
            info: prepared_info(head),
            rx,
            remaining,
            received,
            stop,
        })
    }
}

struct Fetcher {
    client: Client,
    url: String,
    opts: HttpOptions,
    head: Arc<ImageHead>,
    tx: Sender<Result<(usize, Vec<u8>)>>,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Fetcher {
    fn run(self, work: Receiver<Batch>) {
        for batch in work {
            if let Err(e) = self.fetch(&batch) {
                let _ = self.tx.send(Err(e));
                return;
            }
        }
    }

    /// Fetches a batch; after a failure, retries from the first byte not
    /// yet received, so a dropped connection costs nothing but a request.
    fn fetch(&self, batch: &Batch) -> Result<()> {
        let m = &self.head.manifest;
        let mut next = 0;
        // Bytes of extent `next` received before a connection dropped.
        let mut partial: Vec<u8> = Vec::new();
        let mut attempt = 0;
        while next < batch.extents.len() {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let first = &m.extents[batch.extents[next]];
            let last = &m.extents[*batch.extents.last().expect("batches are not empty")];
            let start = m.payload_area + first.payload_offset + partial.len() as u64;
            let end = m.payload_area + last.payload_offset + u64::from(last.payload_len);
            let outcome = get_range(&self.client, &self.url, start, Some(end - 1));
            let failure = match outcome {
                Err(FetchError::Fatal(e)) => return Err(e),
                Err(FetchError::Retryable(e)) => e,
                Ok(mut resp) => {
                    match self.deliver(&mut resp, batch, &mut next, &mut partial, &mut attempt) {
                        Ok(true) => continue,
                        Ok(false) => return Ok(()),
                        Err(e) => e,
                    }
                }
            };
            if attempt >= self.opts.retries {
                let i = batch.extents[next];
                return Err(failure.context(format!(
                    "fetching chunk {i} of {}: giving up after {} attempts",
                    self.url,
                    attempt + 1
                )));
            }
            std::thread::sleep(self.opts.delay(attempt));
            attempt += 1;
        }
        Ok(())
    }

    /// Reads chunk payloads off `resp` and sends them on, keeping a chunk's
    /// bytes in `partial` when the connection drops inside it. Ok(true):
    /// the batch is done; Ok(false): the source is gone.
    fn deliver(
        &self,
        resp: &mut Response,
        batch: &Batch,
        next: &mut usize,
        partial: &mut Vec<u8>,
        attempt: &mut u32,
    ) -> Result<bool> {
        let m = &self.head.manifest;
        while *next < batch.extents.len() {
            let i = batch.extents[*next];
            let len = m.extents[i].payload_len as usize;
            let mut filled = partial.len();
            partial.resize(len, 0);
            while filled < len {
                match resp.read(&mut partial[filled..]) {
                    Ok(0) => {
                        partial.truncate(filled);
                        bail!(
                            "connection to {} closed inside chunk {i}",
                            host_of(&self.url)
                        );
                    }
                    Ok(n) => {
                        filled += n;
                        self.received.fetch_add(n as u64, Ordering::Relaxed);
                        // Progress on this connection: a later drop starts
                        // a fresh round of retries.
                        *attempt = 0;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        partial.truncate(filled);
                        return Err(anyhow::Error::new(e)
                            .context(format!("fetching chunk {i} of {}", self.url)));
                    }
                }
            }
            if self.tx.send(Ok((i, std::mem::take(partial)))).is_err() {
                return Ok(false);
            }
            *next += 1;
        }
        Ok(true)
    }
}

impl Drop for HttpPreparedSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl fmt::Display for HttpPreparedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        describe_prepared(f, &self.url, &self.info)
    }
}

impl ChunkSource for HttpPreparedSource {
    fn info(&self) -> &ImageInfo {
        &self.info
    }

    fn next_piece(&mut self, slot: &mut Slot) -> Result<Option<Piece>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let (i, payload) = self
            .rx
            .recv()
            .map_err(|_| anyhow!("internal: fetchers of {} ended early", self.url))??;
        self.remaining -= 1;
        let m = &self
            .info
            .head
            .as_ref()
            .expect("prepared source has a head")
            .manifest;
        match m.extents[i].codec {
            Codec::Zstd => slot.input = payload,
            Codec::Stored => slot.data[..payload.len()].copy_from_slice(&payload),
        }
        Ok(Some(Piece::Extent(i)))
    }

    fn position(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let o = HttpOptions {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..Default::default()
        };
        assert_eq!(o.delay(0), Duration::from_millis(100));
        assert_eq!(o.delay(2), Duration::from_millis(400));
        assert_eq!(o.delay(10), Duration::from_secs(1));
        assert_eq!(o.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn host_names_for_messages() {
        assert_eq!(
            host_of("https://img.example:8443/a/b.rimg"),
            "img.example:8443"
        );
        assert_eq!(host_of("nonsense"), "nonsense");
    }
}
