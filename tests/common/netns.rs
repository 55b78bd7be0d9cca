//! Network namespaces made by a test, so that its traffic (mDNS,
//! multicast) never reaches the host's network: veth pairs between
//! namespaces, or a bridge in a "switch" namespace with one host per port.
//! Everything is deleted on drop, also when the test panics.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Runs `ip`, which must succeed; returns its stdout.
pub fn ip(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A veth link between two namespaces: (namespace, address) at each end.
pub type Link<'a> = [(&'a str, &'a str); 2];

/// Network namespaces `{prefix}-{pid}-{name}`, deleted on drop with their
/// veths.
pub struct Netns {
    prefix: String,
    names: Vec<String>,
}

/// The switch namespace of `Netns::lan`.
const SWITCH: &str = "sw";

impl Netns {
    /// Creates the namespaces and links, and waits until the links run.
    pub fn new(prefix: &str, names: &[&str], links: &[Link]) -> Self {
        let mut netns = Self {
            prefix: format!("{prefix}-{}", std::process::id()),
            names: Vec::new(),
        };
        for name in names {
            netns.add(name);
        }
        let ends: Vec<_> = links.iter().flat_map(|link| netns.link(link)).collect();
        netns.await_up(&ends);
        netns
    }

    /// A LAN: a bridge (without multicast snooping, so every port gets the
    /// group's traffic as on a plain switch) and one namespace per host at
    /// 10.232.0.1, .2, … in the order given. The hosts' interface is `lan0`.
    pub fn lan(prefix: &str, hosts: &[&str]) -> Self {
        let mut netns = Self::new(prefix, &[SWITCH], &[]);
        netns.exec(SWITCH, "link add br0 type bridge mcast_snooping 0");
        netns.exec(SWITCH, "link set br0 up");
        let mut ends = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            netns.add(host);
            let port = format!("p{i}");
            ip(&format!(
                "link add lan0 netns {} type veth peer name {port} netns {}",
                netns.ns(host),
                netns.ns(SWITCH)
            ));
            netns.exec(SWITCH, &format!("link set {port} master br0 up"));
            netns.exec(host, &format!("addr add {}/24 dev lan0", Self::lan_addr(i)));
            netns.exec(host, "link set lan0 up");
            ends.push((host.to_string(), "lan0".to_string()));
        }
        netns.await_up(&ends);
        netns
    }

    /// Address of the `i`th host of `lan`.
    pub fn lan_addr(i: usize) -> String {
        format!("10.232.0.{}", i + 1)
    }

    fn add(&mut self, name: &str) {
        ip(&format!("netns add {}", self.ns(name)));
        self.names.push(name.to_owned());
        self.exec(name, "link set lo up");
    }

    /// mdns-sd ignores interfaces that are not running yet, and the kernel
    /// reports a new link running up to a second late.
    fn await_up(&self, ends: &[(String, String)]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for (name, ifname) in ends {
            while !self
                .exec(name, &format!("-o link show dev {ifname}"))
                .contains("state UP")
            {
                assert!(Instant::now() < deadline, "{ifname} in {name} is not up");
                thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    pub fn exec(&self, name: &str, args: &str) -> String {
        ip(&format!("-n {} {args}", self.ns(name)))
    }

    /// A command that runs `program` inside namespace `name`.
    pub fn command(&self, name: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(name), program]);
        c
    }

    /// Drops `percent` % of the UDP datagrams to `port` arriving in
    /// namespace `name`, at random (this kernel has no netem; nftables'
    /// numgen does the same job).
    pub fn drop_udp(&self, name: &str, port: u16, percent: u32) {
        let rules = format!(
            "table ip loss {{\n chain input {{\n  type filter hook input priority 0;\n  \
             udp dport {port} numgen random mod 100 < {percent} drop\n }}\n}}\n"
        );
        let out = self
            .command(name, "nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("piped")
                    .write_all(rules.as_bytes())?;
                child.wait_with_output()
            })
            .expect("running nft");
        assert!(out.status.success(), "nft in {name} failed");
    }

    /// Creates the veth inside the namespaces, never on the host; returns
    /// its ends as (namespace, interface).
    fn link(&self, [(a, a_addr), (b, b_addr)]: &Link) -> [(String, String); 2] {
        let ends = [
            (a.to_string(), format!("to-{b}")),
            (b.to_string(), format!("to-{a}")),
        ];
        ip(&format!(
            "link add {} netns {} type veth peer name {} netns {}",
            ends[0].1,
            self.ns(a),
            ends[1].1,
            self.ns(b)
        ));
        for ((ns, ifname), addr) in ends.iter().zip([a_addr, b_addr]) {
            self.exec(ns, &format!("addr add {addr} dev {ifname}"));
            self.exec(ns, &format!("link set {ifname} up"));
        }
        ends
    }

    /// Runs `f` on a thread inside namespace `name`; threads it starts
    /// (mdns-sd's daemon) inherit the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.ns(name));
        thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            // SAFETY: setns only reads the fd, which `ns` keeps open; it
            // changes the namespace of this thread alone.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.ns(name)])
                .status();
        }
    }
}
