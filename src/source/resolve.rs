//! Host name resolution in Rust, from `/etc/hosts` and `/etc/resolv.conf`.
//!
//! The static glibc build cannot load the NSS modules `getaddrinfo` needs,
//! and the rescue system has none to load; resolving here makes every build
//! behave the same. Without `/etc/resolv.conf` only `/etc/hosts` and
//! numeric addresses work: there is no fallback to a public DNS server.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::LookupIpStrategy;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::system_conf::read_system_conf;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A name no source of addresses knows: final, retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {0}: {1}")]
pub struct Unresolvable(String, &'static str);

#[derive(Default, Clone)]
pub struct SystemResolver {
    /// Built on first use: it must be made inside reqwest's runtime.
    resolver: Arc<OnceLock<Result<Built, String>>>,
}

struct Built {
    resolver: TokioResolver,
    has_servers: bool,
}

fn build() -> Result<Built, String> {
    let (config, options) = read_system_conf().unwrap_or_default();
    let has_servers = !config.name_servers.is_empty();
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    *builder.options_mut() = options;
    builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
    let resolver = builder.build().map_err(|e| e.to_string())?;
    Ok(Built {
        resolver,
        has_servers,
    })
}

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        Box::pin(async move {
            let built = this
                .resolver
                .get_or_init(build)
                .as_ref()
                .map_err(|e| e.clone())?;
            let lookup = match built.resolver.lookup_ip(name.as_str()).await {
                Ok(lookup) => lookup,
                Err(_) if !built.has_servers => {
                    let why = "not in /etc/hosts, and /etc/resolv.conf names no DNS server";
                    return Err(Unresolvable(name.as_str().into(), why).into());
                }
                Err(e) if e.is_no_records_found() => {
                    let why = "no such host (not in /etc/hosts or DNS)";
                    return Err(Unresolvable(name.as_str().into(), why).into());
                }
                Err(e) => return Err(e.into()),
            };
            let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Resolves `host` (a name or an IPv4 address) to an IPv4 address, the
/// same way the HTTP client does, for the multicast control connection.
pub fn lookup_ipv4(host: &str) -> anyhow::Result<std::net::Ipv4Addr> {
    if let Ok(ip) = host.parse() {
        return Ok(ip);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let built = build().map_err(|e| anyhow::anyhow!("cannot resolve {host}: {e}"))?;
    let lookup = rt
        .block_on(built.resolver.lookup_ip(host))
        .map_err(|e| anyhow::anyhow!("cannot resolve {host}: {e}"))?;
    lookup
        .iter()
        .find_map(|ip| match ip {
            std::net::IpAddr::V4(v4) => Some(v4),
            std::net::IpAddr::V6(_) => None,
        })
        .ok_or_else(|| anyhow::anyhow!("{host} has no IPv4 address"))
}
