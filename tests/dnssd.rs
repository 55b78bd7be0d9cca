//! Advertises and browses reimage streams over real mDNS between network
//! namespaces joined by veth pairs, so no packet reaches the host's LAN.
//! Needs root and iproute2.

mod common;

use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use common::netns::Netns;

use reimage::mcast::dnssd::{Stream, advertise, browse};

const WAIT: Duration = Duration::from_secs(2);

fn browse_in(netns: &Netns, name: &str, wait: Duration) -> JoinHandle<Vec<Stream>> {
    netns.spawn(name, move || browse(wait).expect("browsing"))
}

#[test]
fn streams_are_found_on_the_advertised_link_only_and_withdrawn_on_drop() {
    // The same subnet on both of the server's links: mdns-sd alone would
    // publish the address on every link whose subnet matches it, so only
    // advertise()'s interface restriction keeps the stream off "other".
    let netns = Netns::new(
        "rdnssd",
        &["srv", "cli", "other"],
        &[
            [("srv", "10.231.1.1/24"), ("cli", "10.231.1.2/24")],
            [("srv", "10.231.1.3/24"), ("other", "10.231.1.4/24")],
        ],
    );

    let stream = Stream {
        name: "debian 12.4 (base)".into(),
        size: 4 << 30,
        digest: "0123456789abcdef".repeat(4),
        addr: [10, 231, 1, 1].into(),
        port: 7000,
    };
    let (advertised, stop) = (mpsc::channel(), mpsc::channel::<()>());
    let server = {
        let stream = stream.clone();
        netns.spawn("srv", move || {
            let missing = Stream {
                addr: [10, 231, 9, 9].into(),
                ..stream.clone()
            };
            let err = advertise(&missing)
                .err()
                .expect("advertised a foreign address");
            assert!(
                format!("{err:#}").contains("no interface has it"),
                "{err:#}"
            );
            let ad = advertise(&stream).expect("advertising");
            advertised.0.send(()).unwrap();
            let _ = stop.1.recv();
            drop(ad);
        })
    };
    advertised.1.recv().expect("the server thread failed");

    let (cli, other) = (
        browse_in(&netns, "cli", WAIT),
        browse_in(&netns, "other", WAIT),
    );
    assert_eq!(cli.join().unwrap(), [stream]);
    assert_eq!(other.join().unwrap(), []);

    // A browse that sees the stream, then its withdrawal: without a
    // goodbye the stream would stay cached for minutes.
    let cli = browse_in(&netns, "cli", 2 * WAIT);
    thread::sleep(WAIT);
    stop.0.send(()).unwrap();
    server.join().unwrap();
    assert_eq!(cli.join().unwrap(), []);
}
