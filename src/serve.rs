//! `reimage serve`: an HTTP/1.1 server for a directory of images (GET and
//! HEAD with Range, from tower-http's ServeDir) plus `/images.json`, the
//! catalog the menu reads, built fresh on every request so images copied
//! into the directory appear at once.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tower_http::services::ServeDir;

/// How long transfers may go on after SIGINT/SIGTERM before the server
/// exits anyway.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub images: PathBuf,
    pub listen: SocketAddr,
}

/// Serves until SIGINT or SIGTERM; `ready` is called with the bound
/// address once connections are accepted.
pub fn serve(opts: &ServeOptions, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    if !opts.images.is_dir() {
        anyhow::bail!("--images {} is not a directory", opts.images.display());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let images = opts.images.clone();
        let app = Router::new()
            .route("/images.json", get(move || catalog(images.clone())))
            .fallback_service(ServeDir::new(&opts.images));
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .with_context(|| format!("listening on {}", opts.listen))?;
        ready(listener.local_addr()?);
        // On a signal, stop accepting and let transfers in flight finish,
        // but don't wait forever for idle keep-alive clients.
        let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopping_rx.changed().await;
        });
        tokio::select! {
            r = server => r?,
            () = async {
                stop_signal().await;
                let _ = stopping_tx.send(true);
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {}
        }
        Ok(())
    })
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
