//! Alert delivery. An alert (traffic spike, denial spike, handshake spike,
//! certificate expiry) becomes a journal record of kind `alert`, a `warn`
//! line, and, when `[monitor] webhook_url` is set, a JSON POST to it —
//! queued (bounded), retried with backoff, never on the request path.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::config::MonitorSettings;
use crate::event::{Decision, Event, EventKind, Recorder};
use crate::home::Home;

/// Alerts waiting for the webhook; past this, new ones are dropped (and logged).
const WEBHOOK_QUEUE: usize = 256;
/// Delivery attempts per alert.
const WEBHOOK_ATTEMPTS: u32 = 4;

/// One alert, in the form the journal, logs and webhook share.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AlertNotice {
    /// `rate_spike`, `denial_spike`, `handshake_spike`, `cert_expiry`, ...
    pub kind: String,
    pub partner: Option<String>,
    pub addr: Option<String>,
    pub message: String,
    pub time_ms: i64,
    /// The alert's own fields (rates, thresholds, serials).
    pub details: serde_json::Value,
}

/// Where alerts go.
pub struct AlertSink {
    recorder: Arc<dyn Recorder>,
    node: String,
    /// The delivery queue of the webhook in force; a reload swaps it (the
    /// old task delivers what it holds, then ends).
    webhook: arc_swap::ArcSwapOption<mpsc::Sender<Bytes>>,
}

impl AlertSink {
    /// Builds the sink; starts the webhook task when one is configured
    /// (must be called inside the tokio runtime).
    pub fn new(
        recorder: Arc<dyn Recorder>,
        node: &str,
        settings: &MonitorSettings,
        home: &Home,
    ) -> Result<AlertSink, AlertSinkError> {
        Ok(AlertSink {
            recorder,
            node: node.to_string(),
            webhook: arc_swap::ArcSwapOption::new(start_webhook(settings, home)?.map(Arc::new)),
        })
    }

    /// Puts a reloaded `[monitor] webhook_url` / `webhook_ca` in force
    /// (inside the tokio runtime). On error the running webhook stays.
    pub fn set_webhook(
        &self,
        settings: &MonitorSettings,
        home: &Home,
    ) -> Result<(), AlertSinkError> {
        self.webhook
            .store(start_webhook(settings, home)?.map(Arc::new));
        Ok(())
    }

    /// Raises an alert: journal record, warn line, webhook (best effort).
    /// Returns the recorded event (for metrics).
    pub fn raise(&self, notice: AlertNotice) -> Event {
        tracing::warn!(kind = %notice.kind, partner = notice.partner.as_deref().unwrap_or("-"), "ALERT: {}", notice.message);
        let mut ev = Event::new(EventKind::Alert, &self.node, Decision::Denied);
        ev.time_ms = notice.time_ms;
        ev.reason = Some(notice.kind.clone());
        ev.partner = notice.partner.clone();
        ev.client_addr = notice.addr.clone();
        ev.detail = Some(format!("{} {}", notice.message, notice.details));
        drop(self.recorder.record(ev.clone()));
        if let Some(tx) = &*self.webhook.load() {
            match serde_json::to_vec(&notice) {
                Ok(body) => {
                    if tx.try_send(Bytes::from(body)).is_err() {
                        tracing::warn!(
                            "alert webhook queue full: alert not delivered by webhook (it is in the journal)"
                        );
                    }
                }
                Err(e) => tracing::warn!("cannot encode alert: {e}"),
            }
        }
        ev
    }
}

/// Starts the delivery task of the configured webhook, if any.
fn start_webhook(
    settings: &MonitorSettings,
    home: &Home,
) -> Result<Option<mpsc::Sender<Bytes>>, AlertSinkError> {
    let Some(url) = &settings.webhook_url else {
        return Ok(None);
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| AlertSinkError::WebhookUrl {
            url: url.clone(),
            why: e.to_string(),
        })?;
    let client = webhook_client(settings, home)?;
    let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE);
    tokio::spawn(deliver(uri, client, rx));
    Ok(Some(tx))
}

type WebhookClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why the alert sink's webhook cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum AlertSinkError {
    #[error("[monitor] webhook_url `{url}`: {why}")]
    WebhookUrl { url: String, why: String },
    #[error("[monitor] webhook_ca: {0}")]
    WebhookCa(#[from] crate::tls::TlsError),
    #[error("[monitor] webhook_ca: {0}")]
    WebhookTrust(rustls::Error),
}

fn webhook_client(
    settings: &MonitorSettings,
    home: &Home,
) -> Result<WebhookClient, AlertSinkError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &settings.webhook_ca {
        for c in crate::tls::load_certs(&home.resolve(ca))? {
            roots.add(c).map_err(AlertSinkError::WebhookTrust)?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(AlertSinkError::WebhookTrust)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

async fn deliver(uri: Uri, client: WebhookClient, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(body) = rx.recv().await {
        let mut delay = Duration::from_millis(250);
        for attempt in 1..=WEBHOOK_ATTEMPTS {
            let req = Request::post(uri.clone())
                .header("content-type", "application/json")
                .header("user-agent", "gatehouse-alerts")
                .body(Full::new(body.clone()));
            let Ok(req) = req else { break };
            let outcome = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await;
            match outcome {
                Ok(Ok(resp)) if resp.status().is_success() => break,
                Ok(Ok(resp)) => {
                    tracing::warn!(status = %resp.status(), attempt, "alert webhook refused the alert")
                }
                Ok(Err(e)) => tracing::warn!(attempt, "alert webhook failed: {e}"),
                Err(_) => tracing::warn!(attempt, "alert webhook timed out"),
            }
            if attempt < WEBHOOK_ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}
