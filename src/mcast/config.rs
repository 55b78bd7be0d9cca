//! The configuration property list of `reimage server`, with asr's key
//! names so existing asr server configs work unchanged.

use std::fs::File;
use std::io::{Cursor, Read};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use plist::{Dictionary, Integer, Value};

const DATA_RATE: &str = "Data Rate";
const ADDRESS: &str = "Multicast Address";
const CLIENT_DATA_RATE: &str = "Client Data Rate";
const DNS_SD: &str = "DNS Service Discovery";
const LOOP_SUSPEND: &str = "Loop Suspend";
const TTL: &str = "Multicast TTL";
const PORT: &str = "Port";
const KEYS: [&str; 7] = [
    DATA_RATE,
    ADDRESS,
    CLIENT_DATA_RATE,
    DNS_SD,
    LOOP_SUSPEND,
    TTL,
    PORT,
];

/// 10 GB/s: beyond any LAN, so a larger value is a typo (an extra zero).
const MAX_RATE: u64 = 10_000_000_000;
/// A config is a few hundred bytes; the cap keeps a wrong path (a disk
/// image, /dev/zero) from being read into memory.
const MAX_FILE: u64 = 1 << 20;

/// asr's server settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub data_rate: u64,
    pub group: Ipv4Addr,
    pub client_data_rate: Option<u64>,
    pub dns_sd: bool,
    /// 0 = never suspend.
    pub loop_suspend: u32,
    pub ttl: u8,
    pub port: u16,
}

impl ServerConfig {
    /// Reads and validates a config file (XML or binary plist).
    pub fn load(path: &Path) -> Result<ServerConfig> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| anyhow!("{name}: cannot open ({e})"))?;
        let too_big = || anyhow!("{name}: larger than 1 MiB, too big to be a server config");
        if file.metadata().is_ok_and(|m| m.len() > MAX_FILE) {
            return Err(too_big());
        }
        // Devices and pipes report length 0, so the read is capped as well.
        let mut bytes = Vec::new();
        file.take(MAX_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| anyhow!("{name}: cannot read ({e})"))?;
        if bytes.len() as u64 > MAX_FILE {
            return Err(too_big());
        }
        Self::parse(&name, &bytes)
    }

    /// Validates an already-read file's bytes; `name` is used in messages.
    pub fn parse(name: &str, bytes: &[u8]) -> Result<ServerConfig> {
        Self::from_plist(bytes).map_err(|e| anyhow!("{name}: {e}"))
    }

    fn from_plist(bytes: &[u8]) -> Result<ServerConfig> {
        let value = Value::from_reader(Cursor::new(bytes))
            .map_err(|e| anyhow!("not a property list ({e})"))?;
        let Value::Dictionary(dict) = value else {
            bail!("the top level must be a dictionary, not {}", kind(&value));
        };
        // Unknown keys first: a misspelt required key should be reported as
        // the typo it is, not as a missing key.
        if let Some(key) = dict.keys().find(|k| !KEYS.contains(&k.as_str())) {
            let hint = KEYS
                .iter()
                .find(|k| k.eq_ignore_ascii_case(key.trim()))
                .map(|k| format!("did you mean \"{k}\"? "))
                .unwrap_or_default();
            bail!("unknown key {key:?} ({hint}keys are: {})", KEYS.join(", "));
        }
        let missing = |key| anyhow!("missing required key \"{key}\"");
        Ok(ServerConfig {
            data_rate: int(&dict, DATA_RATE, 1..=MAX_RATE)?.ok_or_else(|| missing(DATA_RATE))?,
            group: group(&dict)?.ok_or_else(|| missing(ADDRESS))?,
            client_data_rate: int(&dict, CLIENT_DATA_RATE, 1..=MAX_RATE)?,
            dns_sd: get(&dict, DNS_SD, "a boolean", Value::as_boolean)?.unwrap_or(true),
            loop_suspend: int(&dict, LOOP_SUSPEND, 0..=1_000_000)?.unwrap_or(0),
            ttl: int(&dict, TTL, 1..=255)?.unwrap_or(3),
            port: int(&dict, PORT, 1..=65535)?.unwrap_or(7800),
        })
    }

    /// The rate the stream is paced at: `Data Rate`, capped by `Client Data Rate`.
    pub fn stream_rate(&self) -> u64 {
        self.client_data_rate
            .map_or(self.data_rate, |c| c.min(self.data_rate))
    }
}

fn get<'a, T>(
    dict: &'a Dictionary,
    key: &str,
    want: &str,
    extract: fn(&'a Value) -> Option<T>,
) -> Result<Option<T>> {
    let Some(value) = dict.get(key) else {
        return Ok(None);
    };
    match extract(value) {
        Some(v) => Ok(Some(v)),
        None => bail!("\"{key}\" must be {want}, not {}", kind(value)),
    }
}

/// Checking the range before narrowing to `T` means a negative or huge
/// plist integer can only ever be a range error, never a wrap.
fn int<T: TryFrom<u64>>(
    dict: &Dictionary,
    key: &str,
    range: RangeInclusive<u64>,
) -> Result<Option<T>> {
    let as_integer = |v: &Value| match v {
        Value::Integer(n) => Some(*n),
        _ => None,
    };
    let Some(n): Option<Integer> = get(dict, key, "an integer", as_integer)? else {
        return Ok(None);
    };
    let fits = n.as_unsigned().filter(|u| range.contains(u));
    if let Some(v) = fits.and_then(|u| T::try_from(u).ok()) {
        return Ok(Some(v));
    }
    // The one tempting out-of-range value gets its reason spelt out.
    let why = if key == TTL && n.as_unsigned() == Some(0) {
        " (0 would never leave this machine)"
    } else {
        ""
    };
    let (lo, hi) = range.into_inner();
    bail!("\"{key}\" is {n}; it must be {lo}..{hi}{why}")
}

fn group(dict: &Dictionary) -> Result<Option<Ipv4Addr>> {
    let Some(text) = get(dict, ADDRESS, "a string", Value::as_string)? else {
        return Ok(None);
    };
    let Ok(ip) = text.parse::<Ipv4Addr>() else {
        bail!("\"{ADDRESS}\" {text:?} is not an IPv4 address (a dotted quad such as 239.1.2.3)");
    };
    if !ip.is_multicast() {
        bail!("\"{ADDRESS}\" {ip} is not a multicast address (224.0.0.0/4)");
    }
    // Routers never forward 224.0.0.0/24 and it carries OSPF, VRRP, mDNS
    // and friends, so an image stream there would disturb the LAN's control
    // traffic and still not reach other subnets.
    if ip.octets()[..3] == [224, 0, 0] {
        bail!(
            "\"{ADDRESS}\" {ip} is in 224.0.0.0/24, reserved for local network control; \
             use an administratively scoped group such as 239.x.x.x"
        );
    }
    Ok(Some(ip))
}

/// A value's plist type, with its article, for "must be X, not Y" messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Array(_) => "an array",
        Value::Dictionary(_) => "a dictionary",
        Value::Boolean(_) => "a boolean",
        Value::Data(_) => "data",
        Value::Date(_) => "a date",
        Value::Real(_) => "a real",
        Value::Integer(_) => "an integer",
        Value::String(_) => "a string",
        Value::Uid(_) => "a UID",
        _ => "an unsupported plist type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: [(&str, &str); 2] = [
        (DATA_RATE, "<integer>6000000</integer>"),
        (ADDRESS, "<string>239.1.2.3</string>"),
    ];

    /// One value of every plist type, for the wrong-type matrix.
    const SAMPLES: [(&str, &str); 8] = [
        ("an integer", "<integer>1</integer>"),
        ("a real", "<real>1.0</real>"),
        ("a string", "<string>1</string>"),
        ("a boolean", "<true/>"),
        ("data", "<data>AA==</data>"),
        ("a date", "<date>2024-01-01T00:00:00Z</date>"),
        ("an array", "<array/>"),
        ("a dictionary", "<dict/>"),
    ];

    /// An XML plist whose top-level dictionary holds `(key, value element)`s.
    fn xml(entries: &[(&str, &str)]) -> Vec<u8> {
        let body: String = entries
            .iter()
            .map(|(k, v)| format!("<key>{k}</key>{v}\n"))
            .collect();
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \
             \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
             <plist version=\"1.0\"><dict>\n{body}</dict></plist>\n"
        )
        .into_bytes()
    }

    /// The minimal valid config with `key` set to `value`; an empty `value`
    /// removes the key.
    fn with(key: &str, value: &str) -> Vec<u8> {
        let mut entries: Vec<_> = REQUIRED.into_iter().filter(|(k, _)| *k != key).collect();
        if !value.is_empty() {
            entries.push((key, value));
        }
        xml(&entries)
    }

    fn parse(bytes: &[u8]) -> Result<ServerConfig> {
        ServerConfig::parse("server.plist", bytes)
    }

    /// Asserts `bytes` is refused with a one-line message that names the
    /// file and contains `fragment`.
    fn refused(bytes: &[u8], fragment: &str) {
        let msg = format!("{:#}", parse(bytes).unwrap_err());
        let one_line = msg.starts_with("server.plist: ") && !msg.contains('\n');
        assert!(one_line && msg.contains(fragment), "{msg:?}");
    }

    /// Asserts the minimal config with `key` set to `value` is refused by a
    /// message that names the key.
    fn bad(key: &str, value: &str, fragment: &str) {
        let bytes = with(key, value);
        refused(&bytes, &format!("\"{key}\""));
        refused(&bytes, fragment);
    }

    const MINIMAL: ServerConfig = ServerConfig {
        data_rate: 6_000_000,
        group: Ipv4Addr::new(239, 1, 2, 3),
        client_data_rate: None,
        dns_sd: true,
        loop_suspend: 0,
        ttl: 3,
        port: 7800,
    };

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse(&xml(&REQUIRED)).unwrap();
        assert_eq!(config, MINIMAL);
        assert_eq!(config.stream_rate(), 6_000_000);
    }

    #[test]
    fn full_config() {
        let config = parse(&xml(&[
            (DATA_RATE, "<integer>10000000000</integer>"),
            (ADDRESS, "<string>224.0.1.7</string>"),
            (CLIENT_DATA_RATE, "<integer>4000000</integer>"),
            (DNS_SD, "<false/>"),
            (LOOP_SUSPEND, "<integer>1000000</integer>"),
            (TTL, "<integer>255</integer>"),
            (PORT, "<integer>65535</integer>"),
        ]))
        .unwrap();
        let want = ServerConfig {
            data_rate: MAX_RATE,
            group: Ipv4Addr::new(224, 0, 1, 7),
            client_data_rate: Some(4_000_000),
            dns_sd: false,
            loop_suspend: 1_000_000,
            ttl: 255,
            port: 65535,
        };
        assert_eq!(config, want);
        assert_eq!(config.stream_rate(), 4_000_000);
        // A client limit above the data rate caps nothing.
        let fast_clients = ServerConfig {
            client_data_rate: Some(MAX_RATE),
            ..want
        };
        assert_eq!(fast_clients.stream_rate(), MAX_RATE);
    }

    #[test]
    fn binary_plist() {
        let mut dict = Dictionary::new();
        dict.insert(DATA_RATE.into(), Value::Integer(6_000_000.into()));
        dict.insert(ADDRESS.into(), Value::String("239.1.2.3".into()));
        dict.insert(PORT.into(), Value::Integer(7900.into()));
        dict.insert(DNS_SD.into(), Value::Boolean(false));
        let mut bytes = Vec::new();
        Value::Dictionary(dict)
            .to_writer_binary(&mut bytes)
            .unwrap();
        assert!(bytes.starts_with(b"bplist00"));
        let want = ServerConfig {
            port: 7900,
            dns_sd: false,
            ..MINIMAL
        };
        assert_eq!(parse(&bytes).unwrap(), want);
    }

    #[test]
    fn unknown_keys() {
        for key in KEYS {
            let typo = key.to_lowercase();
            let hint = format!("unknown key \"{typo}\" (did you mean \"{key}\"?");
            bad(&typo, "<integer>1</integer>", &hint);
        }
        let all = "unknown key \"Group\" (keys are: Data Rate, Multicast Address, \
                   Client Data Rate, DNS Service Discovery, Loop Suspend, Multicast TTL, Port)";
        bad("Group", "<string>239.1.2.3</string>", all);
    }

    #[test]
    fn wrong_types() {
        for key in KEYS {
            let want = match key {
                ADDRESS => "a string",
                DNS_SD => "a boolean",
                _ => "an integer",
            };
            for (kind, value) in SAMPLES.into_iter().filter(|(kind, _)| *kind != want) {
                bad(key, value, &format!("\"{key}\" must be {want}, not {kind}"));
            }
        }
    }

    #[test]
    fn out_of_range() {
        let cases = [
            (DATA_RATE, "0 -1 10000000001 18446744073709551615"),
            (CLIENT_DATA_RATE, "0 -6000000 10000000001"),
            (LOOP_SUSPEND, "-1 1000001"),
            (TTL, "-1 256"),
            // 4294975096 would wrap to 7800 if narrowed before the range check.
            (PORT, "0 -9223372036854775808 65536 4294975096"),
        ];
        for (key, values) in cases {
            for n in values.split(' ') {
                let range_error = format!("\"{key}\" is {n}; it must be ");
                bad(key, &format!("<integer>{n}</integer>"), &range_error);
            }
        }
        let why = "\"Multicast TTL\" is 0; it must be 1..255 (0 would never leave this machine)";
        bad(TTL, "<integer>0</integer>", why);
        bad(PORT, "<integer>65536</integer>", "it must be 1..65535");
    }

    #[test]
    fn bad_addresses() {
        let cases = [
            (
                "10.0.0.1",
                "10.0.0.1 is not a multicast address (224.0.0.0/4)",
            ),
            (
                "223.255.255.255",
                "223.255.255.255 is not a multicast address",
            ),
            ("240.0.0.1", "240.0.0.1 is not a multicast address"),
            ("224.0.0.0", "224.0.0.0 is in 224.0.0.0/24, reserved"),
            ("224.0.0.251", "224.0.0.251 is in 224.0.0.0/24, reserved"),
            // Quoted, so stray whitespace and emptiness are visible.
            ("239.1.2", "\"239.1.2\" is not an IPv4 address"),
            ("239.1.2.256", "\"239.1.2.256\" is not an IPv4 address"),
            ("ff02::1", "\"ff02::1\" is not an IPv4 address"),
            (" 239.1.2.3", "\" 239.1.2.3\" is not an IPv4 address"),
            ("", "\"\" is not an IPv4 address"),
        ];
        for (text, problem) in cases {
            bad(ADDRESS, &format!("<string>{text}</string>"), problem);
        }
    }

    #[test]
    fn missing_required_keys() {
        for (key, _) in REQUIRED {
            bad(key, "", "missing required key");
        }
    }

    #[test]
    fn not_a_config() {
        let array = b"<?xml version=\"1.0\"?><plist version=\"1.0\"><array><dict/></array></plist>";
        refused(array, "the top level must be a dictionary, not an array");
        refused(b"", "not a property list (");
        refused(b"\x00\xff\xfe garbage \x01", "not a property list (");
        let full = xml(&REQUIRED);
        refused(&full[..full.len() - 30], "not a property list (");
        // Too big for even a u64, so the plist reader itself refuses it.
        refused(
            &with(PORT, "<integer>99999999999999999999</integer>"),
            "not a property list (",
        );
    }

    #[test]
    fn load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.plist");
        std::fs::write(&path, xml(&REQUIRED)).unwrap();
        assert_eq!(ServerConfig::load(&path).unwrap(), MINIMAL);

        std::fs::write(&path, vec![b' '; MAX_FILE as usize + 1]).unwrap();
        let msg = ServerConfig::load(&path).unwrap_err().to_string();
        assert!(msg.ends_with("server.plist: larger than 1 MiB, too big to be a server config"));

        let msg = ServerConfig::load(&dir.path().join("absent.plist"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("absent.plist: cannot open ("), "{msg}");
    }
}
