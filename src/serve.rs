//! `reimage serve`: an HTTP/1.1 server (HTTPS with `--tls-cert/--tls-key`)
//! for a directory of images (GET and HEAD with Range, from tower-http's
//! ServeDir) plus `/images.json`, the catalog the menu reads, built fresh on
//! every request so images copied into the directory appear at once.
//! With `--boot DIR` it also serves a PXE tree (boot.ipxe, kernel, initramfs)
//! under `/boot/`, so one server is all a netbooting room needs over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tower_http::services::ServeDir;

/// How long transfers may go on after SIGINT/SIGTERM before the server
/// exits anyway (idle keep-alive clients would otherwise hold it forever).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Bytes read from an image file per step when sending it. ServeDir's
/// 64 KiB default costs a blocking-pool round trip per 64 KiB; 1 MiB
/// reads sent a cold 4 GiB image in 4.4-5.0 s instead of 13-26 s here
/// (nginx with sendfile: 2.2-5.2 s; 4 MiB reads were no better).
const SEND_CHUNK: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub images: PathBuf,
    pub listen: SocketAddr,
    /// A directory served under `/boot/` (the PXE tree iPXE fetches).
    pub boot: Option<PathBuf>,
    /// PEM certificate chain and private key: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Serves until SIGINT or SIGTERM; `ready` is called with the bound
/// address once connections are accepted.
pub fn serve(opts: &ServeOptions, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    if !opts.images.is_dir() {
        anyhow::bail!("--images {} is not a directory", opts.images.display());
    }
    if let Some(boot) = opts.boot.as_ref().filter(|b| !b.is_dir()) {
        anyhow::bail!("--boot {} is not a directory", boot.display());
    }
    let tls = opts
        .tls
        .as_ref()
        .map(|(cert, key)| tls_config(cert, key))
        .transpose()?;
    let listener = std::net::TcpListener::bind(opts.listen)
        .with_context(|| format!("listening on {}", opts.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let images = opts.images.clone();
    let mut app = Router::new().route("/images.json", get(move || catalog(images.clone())));
    if let Some(boot) = &opts.boot {
        app = app.nest_service("/boot", ServeDir::new(boot).with_buf_chunk_size(SEND_CHUNK));
    }
    let app = app.fallback_service(ServeDir::new(&opts.images).with_buf_chunk_size(SEND_CHUNK));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        tokio::spawn(async move {
            stop_signal().await;
            stopper.graceful_shutdown(Some(SHUTDOWN_GRACE));
        });
        ready(addr);
        let service = app.into_make_service();
        match tls {
            Some(config) => {
                axum_server::from_tcp_rustls(
                    listener,
                    axum_server::tls_rustls::RustlsConfig::from_config(config),
                )?
                .handle(handle)
                .serve(service)
                .await?
            }
            None => {
                axum_server::from_tcp(listener)?
                    .handle(handle)
                    .serve(service)
                    .await?
            }
        }
        Ok(())
    })
}

/// A rustls server configuration (ring, the provider the client uses too)
/// from PEM files.
fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("--tls-cert {}: no certificate in it", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("--tls-cert and --tls-key do not match")?;
    Ok(Arc::new(config))
}

async fn catalog(dir: PathBuf) -> impl IntoResponse {
    let built = tokio::task::spawn_blocking(move || crate::catalog::build(&dir)).await;
    match built {
        Ok(Ok((catalog, _warnings))) => match serde_json::to_vec_pretty(&catalog) {
            Ok(body) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        },
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {},
        _ = term.recv() => {},
    }
}
