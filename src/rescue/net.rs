//! Wired networking for the rescue system. The Debian kernel has no
//! in-kernel DHCP (CONFIG_IP_PNP is off), so every wired NIC gets busybox
//! `udhcpc` with a script of ours that configures it with busybox `ip`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// What udhcpc runs on each lease event. Several NICs may answer; each
/// keeps its own resolver lines and /etc/resolv.conf is their union, so a
/// second NIC's lease does not drop the first one's name servers.
pub const DHCP_SCRIPT: &str = r#"#!/bin/sh
# udhcpc event script written by reimage (rescue system).
# ($dns is udhcpc's list of name servers; the store is ours.)
store=/run/reimage/dns
mkdir -p "$store"
case "$1" in
deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    rm -f "$store/$interface"
    ;;
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
    for r in $router; do
        ip route add default via "$r" dev "$interface" metric 100 && break
    done
    : >"$store/$interface"
    [ -n "$domain" ] && echo "search $domain" >>"$store/$interface"
    for s in $dns; do echo "nameserver $s" >>"$store/$interface"; done
    ;;
esac
cat "$store"/* >/etc/resolv.conf 2>/dev/null || : >/etc/resolv.conf
"#;

/// Wired Ethernet interfaces under `class_net` (/sys/class/net): backed by
/// a device (not lo, bridges or tunnels), ARP type Ethernet, and not
/// wireless (no `wireless`/`phy80211`: Wi-Fi needs credentials the rescue
/// system does not have). Sorted.
pub fn wired_nics(class_net: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(class_net) else {
        return Vec::new();
    };
    let mut nics: Vec<String> = entries
        .flatten()
        .filter(|e| {
            let dir = e.path();
            let ether = std::fs::read_to_string(dir.join("type")).is_ok_and(|t| t.trim() == "1");
            ether
                && dir.join("device").exists()
                && !dir.join("wireless").exists()
                && !dir.join("phy80211").exists()
        })
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    nics.sort();
    nics
}

/// The machine's name in the rescue system: "reimage-" and the last three
/// bytes of the first wired NIC's MAC address ("reimage-770001"), so the
/// server's log and the DHCP leases tell a room's machines apart. Just
/// "reimage" without a NIC.
pub fn machine_name(class_net: &Path, nics: &[String]) -> String {
    let mac = nics
        .first()
        .and_then(|n| std::fs::read_to_string(class_net.join(n).join("address")).ok())
        .map(|a| a.trim().to_ascii_lowercase())
        .filter(|a| a.len() == 17);
    match mac {
        Some(a) => format!("reimage-{}", a[9..].replace(':', "")),
        None => "reimage".to_owned(),
    }
}

/// Sets IFF_UP on an interface (what `ip link set NAME up` does).
pub fn link_up(name: &str) -> Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket for interface flags")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    anyhow::ensure!(
        !bytes.is_empty() && bytes.len() < req.ifr_name.len() && !bytes.contains(&0),
        "bad interface name {name:?}"
    );
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: the ioctls read and write only the ifreq passed, which
    // outlives the calls; the union field used is the flags one both use.
    unsafe {
        nix::errno::Errno::result(libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFFLAGS as libc::Ioctl,
            &mut req,
        ))
        .with_context(|| format!("reading the flags of {name}"))?;
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        nix::errno::Errno::result(libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFFLAGS as libc::Ioctl,
            &req,
        ))
        .with_context(|| format!("bringing {name} up"))?;
    }
    Ok(())
}

/// Starts udhcpc on `nic` with `script`. It keeps running (renewing the
/// lease) after it forks into the background; PID 1 reaps it whenever it
/// ends. Fails when there is no udhcpc.
pub fn start_dhcp(nic: &str, script: &Path, hostname: &str) -> Result<()> {
    super::command("udhcpc")
        .args(["-i", nic, "-s"])
        .arg(script)
        // Try for 3 × 2 s, then keep trying in the background: a cable
        // plugged in later still gets an address.
        .args(["-b", "-t", "3", "-T", "2", "-x"])
        .arg(format!("hostname:{hostname}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting udhcpc on {nic} (busybox udhcpc missing?)"))?;
    Ok(())
}

/// The IPv4 address of each of `nics` that has one.
pub fn addresses(nics: &[String]) -> BTreeMap<String, Ipv4Addr> {
    let mut out = BTreeMap::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for a in addrs {
        let ip = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|s| s.ip());
        if let Some(ip) = ip
            && nics.contains(&a.interface_name)
        {
            out.entry(a.interface_name).or_insert(ip);
        }
    }
    out
}

/// Waits until every NIC has an address or `limit` passes; returns the
/// addresses found.
pub fn await_addresses(nics: &[String], limit: Duration) -> BTreeMap<String, Ipv4Addr> {
    let deadline = Instant::now() + limit;
    loop {
        let found = addresses(nics);
        if found.len() == nics.len() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_is_named_after_its_first_nic() {
        let t = tempfile::tempdir().unwrap();
        let eth0 = t.path().join("eth0");
        std::fs::create_dir_all(&eth0).unwrap();
        std::fs::write(eth0.join("address"), "52:54:00:AB:cd:01\n").unwrap();
        let nics = ["eth0".to_owned(), "eth1".to_owned()];
        assert_eq!(machine_name(t.path(), &nics), "reimage-abcd01");
        assert_eq!(machine_name(t.path(), &nics[1..]), "reimage");
        assert_eq!(machine_name(t.path(), &[]), "reimage");
        std::fs::write(eth0.join("address"), "garbage\n").unwrap();
        assert_eq!(machine_name(t.path(), &nics), "reimage");
    }

    fn nic(root: &Path, name: &str, kind: &str, device: bool, extra: Option<&str>) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("type"), format!("{kind}\n")).unwrap();
        if device {
            std::fs::create_dir(dir.join("device")).unwrap();
        }
        if let Some(e) = extra {
            std::fs::create_dir(dir.join(e)).unwrap();
        }
    }

    #[test]
    fn only_wired_ethernet_with_a_device() {
        let t = tempfile::tempdir().unwrap();
        nic(t.path(), "lo", "772", false, None);
        nic(t.path(), "eth1", "1", true, None);
        nic(t.path(), "enp0s3", "1", true, None);
        nic(t.path(), "br0", "1", false, None);
        nic(t.path(), "wlan0", "1", true, Some("wireless"));
        nic(t.path(), "wlp2s0", "1", true, Some("phy80211"));
        nic(t.path(), "ib0", "32", true, None);
        assert_eq!(wired_nics(t.path()), ["enp0s3", "eth1"]);
        assert!(wired_nics(&t.path().join("missing")).is_empty());
    }

    #[test]
    fn bad_interface_names_are_errors() {
        assert!(link_up("").is_err());
        assert!(link_up("a-name-longer-than-ifnamsiz").is_err());
        assert!(link_up("no-such-if0").is_err());
    }

    #[test]
    fn loopback_has_its_address() {
        let found = addresses(&["lo".to_string()]);
        assert_eq!(found.get("lo"), Some(&Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn the_script_is_valid_shell() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("s");
        std::fs::write(&path, DHCP_SCRIPT).unwrap();
        let st = std::process::Command::new("sh")
            .arg("-n")
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success());
    }
}
