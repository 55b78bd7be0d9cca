//! Restores over HTTP from a real nginx on loopback, directly and through a
//! proxy that cuts connections at random points.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;

/// Images every test serves, built once.
struct Fixtures {
    root: PathBuf,
    /// The raw 48 MiB ext4 filesystem image.
    raw: PathBuf,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let root = scratch().keep();
        let raw = root.join("fs.img");
        make_ext4(&raw, 48, &sample_files(&root.join("src"), 16));
        let o = reimage(&["imagecreate", "--source", s(&raw), "--image", s(&root.join("fs.rimg"))]);
        assert!(o.status.success(), "{}", stderr(&o));
        sh("sh", &["-c", &format!("gzip -1 -c {0} > {0}.gz && xz -0 -T2 -c {0} > {0}.xz && zstd -q -1 {0} -o {0}.zst", s(&raw))]);
        Fixtures { root, raw }
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing listens on port {port}");
}

/// A real nginx serving `root` on a loopback port, stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// `extra` goes into the server block (e.g. `max_ranges 0;`).
    fn serve(root: &Path, extra: &str) -> Nginx {
        let port = free_port();
        let server = format!(
            "server {{ listen 127.0.0.1:{port}; root {}; {extra}
               location /broken/ {{ return 500; }} }}",
            root.display()
        );
        Self::start(&server, port)
    }

    /// Starts nginx with the given server blocks; waits for `port`.
    fn start(servers: &str, port: u16) -> Nginx {
        let dir = scratch();
        let p = dir.path().display();
        // One process (no master): killing it by PID stops everything.
        let conf = format!(
            "master_process off; daemon off; pid {p}/nginx.pid; error_log {p}/error.log;
             events {{}}
             http {{
               access_log off; sendfile on; default_type application/octet-stream;
               client_body_temp_path {p}; proxy_temp_path {p}; fastcgi_temp_path {p};
               uwsgi_temp_path {p}; scgi_temp_path {p};
               {servers}
             }}"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args([
                "-p",
                &p.to_string(),
                "-c",
                &format!("{p}/nginx.conf"),
                "-e",
                &format!("{p}/error.log"),
            ])
            .spawn()
            .expect("starting nginx");
        wait_for_port(port);
        Nginx {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of `upstream` that cuts every response after a
/// pseudo-random number of bytes between `min` and `max`.
/// Connections cut early are cut somewhere in their first this many bytes.
const EARLY_CUT: u64 = 8 << 10;

struct CuttingProxy {
    port: u16,
}

impl CuttingProxy {
    fn start(upstream: u16, min: u64, max: u64) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
            for (n, client) in listener.incoming().enumerate() {
                let Ok(client) = client else { break };
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Every third connection, the first included, dies early:
                // in the headers, the first bytes probed, or the manifest.
                let cut = if n % 3 == 0 {
                    seed % EARLY_CUT
                } else {
                    min + seed % (max - min)
                };
                std::thread::spawn(move || relay(client, upstream, cut));
            }
        });
        CuttingProxy { port }
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

fn relay(client: TcpStream, upstream: u16, cut: u64) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_in, &mut s_out);
        let _ = s_out.shutdown(Shutdown::Write);
    });
    let (mut s_in, mut c_out) = (server, client);
    let mut sent = 0u64;
    let mut buf = [0u8; 16384];
    while sent < cut {
        let want = buf.len().min((cut - sent) as usize);
        match s_in.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if c_out.write_all(&buf[..n]).is_err() {
                    break;
                }
                sent += n as u64;
            }
        }
    }
    let _ = c_out.shutdown(Shutdown::Both);
    let _ = s_in.shutdown(Shutdown::Both);
}

fn restore_url(url: &str, target: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "restore",
        "--source",
        url,
        "--target",
        s(target),
        "--erase",
        "--noprompt",
    ];
    args.extend_from_slice(extra);
    reimage(&args)
}

#[test]
fn every_format_round_trips_from_nginx() {
    let f = fixtures();
    let nginx = Nginx::serve(&f.root, "");
    let dir = scratch();
    let want = digest(&f.raw);
    for name in ["fs.rimg", "fs.img", "fs.img.gz", "fs.img.xz", "fs.img.zst"] {
        let out = dir.path().join("out.img");
        let o = restore_url(&nginx.url(name), &out, &[]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        if name.ends_with(".rimg") {
            assert_extents_match(&f.root.join(name), &f.raw, &out);
            assert!(run("e2fsck", &["-fn", s(&out)]).status.success());
        } else {
            assert_eq!(digest(&out), want, "{name}");
        }
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn prepared_image_onto_a_loop_device_over_http() {
    let f = fixtures();
    let nginx = Nginx::serve(&f.root, "");
    let dir = scratch();
    let (_file, l) = random_loop(dir.path(), 48);
    let o = restore_url(&nginx.url("fs.rimg"), l.path(), &["--connections", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("prepared image"), "{}", stdout(&o));
    assert_extents_match(&f.root.join("fs.rimg"), &f.raw, l.path());
    assert_fsck_clean(l.path(), 0, 48 * MIB);
}

#[test]
fn connections_cut_at_random_points_cost_nothing() {
    let f = fixtures();
    let nginx = Nginx::serve(&f.root, "");
    // Every response is cut somewhere in its first 64 KiB .. 1 MiB.
    let proxy = CuttingProxy::start(nginx.port, 64 << 10, 1 << 20);
    let dir = scratch();
    for name in ["fs.rimg", "fs.img.gz", "fs.img"] {
        let out = dir.path().join("out.img");
        let o = restore_url(&proxy.url(name), &out, &[]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        if name.ends_with(".rimg") {
            assert_extents_match(&f.root.join(name), &f.raw, &out);
        } else {
            assert_eq!(digest(&out), digest(&f.raw), "{name}");
        }
        std::fs::remove_file(&out).unwrap();
    }
}

/// A .dmg is read from its end first (trailer, property list: two Range
/// requests), then streamed; cut connections resume, and a server
/// without ranges gets a clear refusal instead of a raw restore.
#[test]
fn a_dmg_restores_over_http_with_range_reads() {
    let f = fixtures();
    let dir = scratch();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let dmg = www.join("fs.dmg");
    let generator = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/make-dmg");
    sh(
        generator,
        &[
            "--input",
            s(&f.raw),
            "--output",
            s(&dmg),
            "--codecs",
            "zlib,lzfse",
        ],
    );
    let nginx = Nginx::serve(&www, "");
    let proxy = CuttingProxy::start(nginx.port, 64 << 10, 1 << 20);
    let out = dir.path().join("out.img");
    for (url, extra) in [
        (nginx.url("fs.dmg"), &[][..]),
        (proxy.url("fs.dmg"), &[][..]),
        (nginx.url("fs.dmg"), &["--sourcevolume", "1"][..]),
    ] {
        let o = restore_url(&url, &out, extra);
        assert!(o.status.success(), "{url} {extra:?}: {}", stderr(&o));
        assert!(stdout(&o).contains("UDIF disk image"), "{}", stdout(&o));
        assert_eq!(digest(&out), digest(&f.raw), "{url} {extra:?}");
        std::fs::remove_file(&out).unwrap();
    }
    let no_ranges = Nginx::serve(&www, "max_ranges 0;");
    let o = restore_url(&no_ranges.url("fs.dmg"), &out, &[]);
    assert_fails_with(&o, "does not answer Range requests");
    assert!(!out.exists());
}

#[test]
fn redirects_are_followed() {
    let f = fixtures();
    let nginx = Nginx::serve(
        &f.root,
        "location = /moved.rimg { return 302 /fs.rimg; } location = /moved.img.gz { return 301 /fs.img.gz; }",
    );
    let dir = scratch();
    let out = dir.path().join("out.img");
    let o = restore_url(&nginx.url("moved.rimg"), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_extents_match(&f.root.join("fs.rimg"), &f.raw, &out);
    std::fs::remove_file(&out).unwrap();
    let o = restore_url(&nginx.url("moved.img.gz"), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(digest(&out), digest(&f.raw));
}

#[test]
fn a_server_without_range_support_gets_one_stream() {
    let f = fixtures();
    let nginx = Nginx::serve(&f.root, "max_ranges 0;");
    let dir = scratch();
    let out = dir.path().join("out.img");
    let o = restore_url(&nginx.url("fs.rimg"), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_extents_match(&f.root.join("fs.rimg"), &f.raw, &out);
}

#[test]
fn http_errors_are_clear_and_safe() {
    let f = fixtures();
    let dir = scratch();
    // A corrupt and a truncated copy of the prepared image.
    let bad = dir.path().join("www");
    std::fs::create_dir(&bad).unwrap();
    let head = head_of(&f.root.join("fs.rimg"));
    let mut bytes = std::fs::read(f.root.join("fs.rimg")).unwrap();
    let e = head.manifest.extents.last().unwrap();
    bytes.truncate((head.manifest.payload_area + e.payload_offset + 10) as usize);
    std::fs::write(bad.join("truncated.rimg"), &bytes).unwrap();
    let mut bytes = std::fs::read(f.root.join("fs.rimg")).unwrap();
    let at =
        (head.manifest.payload_area + e.payload_offset + u64::from(e.payload_len) / 2) as usize;
    bytes[at] ^= 0x40;
    std::fs::write(bad.join("corrupt.rimg"), &bytes).unwrap();
    let nginx = Nginx::serve(&bad, "");

    let (file, l) = random_loop(dir.path(), 48);
    let before = digest(&file);
    // Refused before anything is written: the target is untouched.
    for (name, needle) in [("missing.rimg", "HTTP 404"), ("broken/x.rimg", "HTTP 500")] {
        let o = restore_url(&nginx.url(name), l.path(), &[]);
        assert_fails_with(&o, needle);
        assert_eq!(digest(&file), before, "{name}");
    }
    let o = restore_url("http://127.0.0.1:1/x.rimg", l.path(), &["--retries", "1"]);
    assert_fails_with(&o, "giving up after 2 attempts");
    assert_eq!(digest(&file), before);
    // Failing after writing began: the target is erased to a valid empty state.
    for (name, needle) in [
        ("truncated.rimg", "truncated"),
        ("corrupt.rimg", "the image is corrupt"),
    ] {
        let o = restore_url(&nginx.url(name), l.path(), &["--retries", "2"]);
        assert_fails_with(&o, needle);
        assert!(
            stderr(&o).contains("erased to a valid empty state"),
            "{}",
            stderr(&o)
        );
        assert_empty_gpt(l.path());
    }
}

#[test]
fn https_with_a_private_ca() {
    let f = fixtures();
    let certs = scratch();
    sh(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/make-tls-certs"),
        &[s(certs.path())],
    );
    let c = certs.path().display();
    let ports = [free_port(), free_port(), free_port()];
    let servers: String = ["good", "expired", "wrong-name"]
        .iter()
        .zip(ports)
        .map(|(cert, port)| {
            format!(
                "server {{ listen 127.0.0.1:{port} ssl; root {}; ssl_certificate {c}/{cert}.pem;
                   ssl_certificate_key {c}/server.key; }}\n",
                f.root.display()
            )
        })
        .collect();
    let nginx = Nginx::start(&servers, ports[2]);
    wait_for_port(ports[0]);
    wait_for_port(ports[1]);
    let url = |port: u16| format!("https://127.0.0.1:{port}/fs.rimg");
    let ca = certs.path().join("ca.pem");
    let dir = scratch();
    let out = dir.path().join("out.img");

    let o = restore_url(&url(ports[0]), &out, &["--cacert", s(&ca)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_extents_match(&f.root.join("fs.rimg"), &f.raw, &out);
    std::fs::remove_file(&out).unwrap();

    for (port, extra, needle) in [
        (ports[0], vec![], "not signed by a trusted CA"),
        (ports[1], vec!["--cacert", s(&ca)], "has expired"),
        (
            ports[2],
            vec!["--cacert", s(&ca)],
            "not valid for this host name",
        ),
    ] {
        let o = restore_url(&url(port), &out, &extra);
        assert_fails_with(&o, needle);
        assert!(!out.exists(), "a refused restore created its target");
    }
    let o = restore_url(
        &url(ports[0]),
        &out,
        &["--cacert", s(&certs.path().join("server.csr"))],
    );
    assert_fails_with(&o, "no PEM certificate");
    drop(nginx);
}

#[test]
fn signed_images_over_http() {
    let f = fixtures();
    let www = scratch();
    let image = www.path().join("fs.rimg");
    std::fs::copy(f.root.join("fs.rimg"), &image).unwrap();
    let (public, secret) = keypair(www.path(), "k");
    sign(&image, &secret);
    let nginx = Nginx::serve(www.path(), "");
    let dir = scratch();
    let out = dir.path().join("out.img");
    let o = restore_url(&nginx.url("fs.rimg"), &out, &["--pubkey", s(&public)]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(&out).unwrap();
    let (_, other_secret) = keypair(www.path(), "other");
    sign(&image, &other_secret);
    let o = restore_url(&nginx.url("fs.rimg"), &out, &["--pubkey", s(&public)]);
    assert_fails_with(&o, "different key");
    std::fs::remove_file(format!("{}.minisig", s(&image))).unwrap();
    let o = restore_url(&nginx.url("fs.rimg"), &out, &["--pubkey", s(&public)]);
    assert_fails_with(&o, "is not signed");
    assert!(!out.exists());
}

/// `reimage serve` on a loopback port, stopped with SIGTERM on drop.
struct ReimageServe {
    child: Child,
    base: String,
}

impl ReimageServe {
    /// `extra` holds serve's other options (TLS, --boot), if any.
    fn start(dir: &Path, extra: &[&str]) -> ReimageServe {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_reimage"))
            .args([
                "serve",
                "--images",
                s(dir),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert!(line.starts_with("Serving "), "{line}");
        let scheme = if extra.contains(&"--tls-cert") {
            "https"
        } else {
            "http"
        };
        ReimageServe {
            child,
            base: format!("{scheme}://127.0.0.1:{port}"),
        }
    }

    /// Stops the server as Ctrl-C would and returns its exit code.
    fn stop(mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        self.child.wait().unwrap().code()
    }
}

impl Drop for ReimageServe {
    fn drop(&mut self) {
        // Only reached with the server still running when a test failed.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn reimage_serve_serves_images_ranges_and_the_catalog() {
    let f = fixtures();
    let server = ReimageServe::start(&f.root, &[]);
    let dir = scratch();
    for name in ["fs.rimg", "fs.img.zst"] {
        let out = dir.path().join("out.img");
        let o = restore_url(&format!("{}/{name}", server.base), &out, &[]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        if name.ends_with(".rimg") {
            assert_extents_match(&f.root.join(name), &f.raw, &out);
        } else {
            assert_eq!(digest(&out), digest(&f.raw));
        }
        std::fs::remove_file(&out).unwrap();
    }
    // reimage builds its clients with ring; a test-made client needs it too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::new();
    let head = client
        .head(format!("{}/fs.img", server.base))
        .send()
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        std::fs::metadata(&f.raw)
            .unwrap()
            .len()
            .to_string()
            .as_str()
    );
    let part = client
        .get(format!("{}/fs.img", server.base))
        .header("Range", "bytes=1024-2047")
        .send()
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.bytes().unwrap().as_ref(),
        &read_at(&f.raw, 1024, 1024)[..]
    );
    let catalog = client
        .get(format!("{}/images.json", server.base))
        .send()
        .unwrap();
    assert_eq!(catalog.headers()["content-type"], "application/json");
    let catalog: serde_json::Value = serde_json::from_str(&catalog.text().unwrap()).unwrap();
    let names: Vec<&str> = catalog["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["url"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fs.rimg"]);
    assert_eq!(
        client
            .get(format!("{}/nope.rimg", server.base))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_eq!(server.stop(), Some(0), "serve must exit cleanly on SIGTERM");
}

/// `--boot DIR`: the PXE tree is served under /boot/, beside the images.
#[test]
fn reimage_serve_serves_a_boot_tree_under_boot() {
    let f = fixtures();
    let boot = scratch();
    let script = "#!ipxe\nkernel vmlinuz initrd=initrd.img\ninitrd initrd.img\nboot\n";
    std::fs::write(boot.path().join("boot.ipxe"), script).unwrap();
    std::fs::write(boot.path().join("vmlinuz"), vec![7u8; 300_000]).unwrap();
    let server = ReimageServe::start(&f.root, &["--boot", s(boot.path())]);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::new();
    let get = |path: &str| client.get(format!("{}{path}", server.base)).send().unwrap();
    let r = get("/boot/boot.ipxe");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), script);
    let r = get("/boot/vmlinuz");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().len(), 300_000);
    assert_eq!(get("/boot/initrd.img").status(), 404);
    // The images dir is not reachable under /boot/, nor the tree at /.
    assert_eq!(get("/boot/fs.rimg").status(), 404);
    assert_eq!(get("/boot.ipxe").status(), 404);
    // The images and the catalog are served as without --boot.
    let r = get("/fs.rimg");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.bytes().unwrap().as_ref(),
        &std::fs::read(f.root.join("fs.rimg")).unwrap()[..]
    );
    assert_eq!(get("/images.json").status(), 200);
    assert_eq!(server.stop(), Some(0));
    let missing = boot.path().join("nope");
    let o = reimage(&["serve", "--images", s(&f.root), "--boot", s(&missing)]);
    assert_fails_with(&o, "is not a directory");
}

/// A deliberately odd HTTP/1.1 server for one file: no Range support, and
/// either chunked transfer encoding or a Content-Length that lies.
fn odd_server(file: PathBuf, chunked: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let file = file.clone();
            std::thread::spawn(move || {
                // Read the request head; its contents do not matter.
                let mut head = Vec::new();
                let mut byte = [0u8];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let data = std::fs::read(&file).unwrap();
                if chunked {
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
                    for piece in data.chunks(65536) {
                        let _ = write!(conn, "{:x}\r\n", piece.len());
                        let _ = conn.write_all(piece);
                        let _ = conn.write_all(b"\r\n");
                    }
                    let _ = conn.write_all(b"0\r\n\r\n");
                } else {
                    let claimed = data.len() + 1_000_000;
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Length: {claimed}\r\nConnection: close\r\n\r\n"
                    );
                    let _ = conn.write_all(&data);
                }
            });
        }
    });
    port
}

#[test]
fn chunked_bodies_work_and_lying_lengths_fail_cleanly() {
    let f = fixtures();
    let dir = scratch();
    let out = dir.path().join("out.img");
    let port = odd_server(f.root.join("fs.img.gz"), true);
    let o = restore_url(&format!("http://127.0.0.1:{port}/fs.img.gz"), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(digest(&out), digest(&f.raw));
    // A Content-Length longer than the body: a prepared image has every
    // byte it needs before the short body ends, and each is verified...
    let port = odd_server(f.root.join("fs.rimg"), false);
    std::fs::remove_file(&out).unwrap();
    let o = restore_url(&format!("http://127.0.0.1:{port}/fs.rimg"), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_extents_match(&f.root.join("fs.rimg"), &f.raw, &out);
    // ...while a raw stream cannot tell where it really ends: a clear error.
    let port = odd_server(f.raw.clone(), false);
    let o = restore_url(&format!("http://127.0.0.1:{port}/fs.img"), &out, &[]);
    assert_fails_with(&o, "does not support Range requests to resume");
    assert!(
        stderr(&o).contains("erased to a valid empty state"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn reimage_serve_over_https() {
    let f = fixtures();
    let certs = scratch();
    sh(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/make-tls-certs"),
        &[s(certs.path())],
    );
    let (cert, key) = (
        certs.path().join("good.pem"),
        certs.path().join("server.key"),
    );
    let server = ReimageServe::start(&f.root, &["--tls-cert", s(&cert), "--tls-key", s(&key)]);
    let dir = scratch();
    let out = dir.path().join("out.img");
    let url = format!("{}/fs.rimg", server.base);
    let o = restore_url(&url, &out, &["--cacert", s(&certs.path().join("ca.pem"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_extents_match(&f.root.join("fs.rimg"), &f.raw, &out);
    std::fs::remove_file(&out).unwrap();
    let o = restore_url(&url, &out, &[]);
    assert_fails_with(&o, "not signed by a trusted CA");
    assert_eq!(server.stop(), Some(0));
    let o = reimage(&[
        "serve",
        "--images",
        s(&f.root),
        "--tls-cert",
        s(&key),
        "--tls-key",
        s(&key),
    ]);
    assert_fails_with(&o, "--tls-cert");
}

#[test]
fn sigterm_during_a_stalled_download_erases_the_target() {
    let f = fixtures();
    // Headers and the first 4 MiB of the raw image, then silence.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let data = std::fs::read(&f.raw).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                data.len()
            );
            let _ = conn.write_all(&data[..4 << 20]);
            std::thread::sleep(Duration::from_secs(60));
        }
    });
    let dir = scratch();
    let (_file, l) = random_loop(dir.path(), 48);
    let child = Command::new(env!("CARGO_BIN_EXE_reimage"))
        .args([
            "restore",
            "--source",
            &format!("http://127.0.0.1:{port}/fs.img"),
            "--target",
            &l.dev,
        ])
        .args(["--erase", "--noprompt"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let started = std::time::Instant::now();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        started.elapsed()
    );
    assert_fails_with(&out, "interrupted by a signal");
    assert!(
        stderr(&out).contains("erased to a valid empty state"),
        "{}",
        stderr(&out)
    );
    assert_empty_gpt(l.path());
}

/// Host names are resolved by reimage itself (the static builds cannot use
/// NSS): from /etc/hosts, and from the DNS server in /etc/resolv.conf. Both
/// files are replaced in a private mount namespace; the DNS server is a
/// real dnsmasq on a loopback address of its own.
#[test]
fn host_names_resolve_from_hosts_and_dns() {
    let f = fixtures();
    let nginx = Nginx::serve(&f.root, "");
    let dir = scratch();
    let hosts = dir.path().join("hosts");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.1 from-hosts.test\n").unwrap();
    std::fs::write(&resolv, "nameserver 127.0.77.1\n").unwrap();
    let mut dns = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--listen-address=127.0.77.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--address=/from-dns.test/127.0.0.1",
            // Other names under .test: no such host, rather than "refused".
            "--local=/test/",
        ])
        .spawn()
        .expect("starting dnsmasq");
    let want = digest(&f.raw);
    let out = dir.path().join("out.img");
    let restore = |host: &str| {
        let url = format!("http://{host}:{}/fs.img.zst", nginx.port);
        let script = format!(
            "mount --bind {} /etc/hosts && mount --bind {} /etc/resolv.conf && exec {} restore --source {url} --target {} --erase --noprompt",
            s(&hosts),
            s(&resolv),
            env!("CARGO_BIN_EXE_reimage"),
            s(&out)
        );
        run("unshare", &["--mount", "setsid", "-w", "sh", "-c", &script])
    };
    for host in ["from-hosts.test", "from-dns.test"] {
        let o = restore(host);
        assert!(o.status.success(), "{host}: {}", stderr(&o));
        assert_eq!(digest(&out), want, "{host}");
        std::fs::remove_file(&out).unwrap();
    }
    let o = restore("nowhere.test");
    assert_fails_with(&o, "nowhere.test");
    let _ = dns.kill();
    let _ = dns.wait();
}
