//! The composition root: `gatehouse serve`. Loads the live state, binds the
//! partner and admin listeners, builds the event sink (monitor, anomaly
//! detector, journal) and the gateway, starts the admin listener, the admin
//! socket, the watcher, the upkeep and the baseline saver, accepts
//! connections until SIGTERM/SIGINT, then drains. It is the only module
//! that knows all the others; it wires and does nothing else.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::config::GatewayConfig;
use crate::control::socket::{AdminHooks, RunningSettings, serve_admin_socket};
use crate::control::view::AdminView;
use crate::control::watch::{ReloadTrigger, Watched, watch_files};
use crate::event::Recorder;
use crate::fleet::Fleet;
use crate::gateway::live::Live;
use crate::gateway::{Gateway, Membership, accept_loop};
use crate::guard::EventSink;
use crate::guard::alerts::AlertSink;
use crate::guard::anomaly::{AnomalySettings, Detector};
use crate::guard::baselines;
use crate::guard::monitor::Monitor;
use crate::home::Home;
use crate::identity_token::LiveIdentity;
use crate::journal::Journal;
use crate::stop_signals::StopSignals;

/// Command-line overrides of `gatehouse serve`.
#[derive(Debug, Default, Clone)]
pub struct ServeOptions {
    pub listen: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// `--node-id` / `GATEHOUSE_NODE_ID` (default: `[server] node_id`).
    pub node_id: Option<String>,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::gateway::live::LiveError),
    #[error(transparent)]
    Value(#[from] crate::config::InvalidValue),
    #[error(transparent)]
    Admin(#[from] crate::control::http::AdminNotLoopback),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind the admin listener on {addr}: {source}")]
    AdminListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the bound address cannot be read: {0}")]
    LocalAddr(#[source] std::io::Error),
    #[error("upstream identity key: {0}")]
    IdentityKey(#[from] crate::identity_token::TokenKeyError),
    #[error(transparent)]
    Alerts(#[from] crate::guard::alerts::AlertSinkError),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::StoreError),
    #[error(transparent)]
    Signal(#[from] crate::stop_signals::SignalError),
    #[error("cannot handle SIGHUP: {0}")]
    Hangup(#[source] std::io::Error),
}

/// Runs the broker until SIGTERM/SIGINT, then drains and returns.
pub async fn serve(home: Home, opts: ServeOptions, journal: Journal) -> Result<(), ServeError> {
    let live = Arc::new(Live::load(home.clone())?);
    let mut gateway_config = live.snapshot().gateway.clone();
    if gateway_config.cluster.is_none() {
        // A single node's value totals come back from its journal (a
        // fleet's are in its store).
        match crate::gateway::value::restore_totals(journal.store(), &live, crate::event::now_ms())
        {
            Ok(n) if n > 0 => {
                tracing::info!("value totals: today's {n} valued calls counted again")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("value totals could not be rebuilt from the journal: {e}"),
        }
    }
    if let Some(id) = &opts.node_id {
        crate::config::cluster::validate_node_id(id)?;
        gateway_config.server.node_id = id.clone();
    }
    let server = &gateway_config.server;
    let listen = opts.listen.unwrap_or(server.listen);
    let admin_addr = crate::control::http::admin_address(
        opts.admin.unwrap_or(server.admin),
        server.admin_public,
    )?;
    if let Err(e) =
        crate::ca::maintenance::refresh_crl_if_due(&home, gateway_config.ca.crl_validity)
    {
        tracing::warn!("could not re-sign the CRL: {e}");
    }
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: listen,
            source,
        })?;
    let admin_listener =
        TcpListener::bind(admin_addr)
            .await
            .map_err(|source| ServeError::AdminListen {
                addr: admin_addr,
                source,
            })?;
    let bound = listener.local_addr().map_err(ServeError::LocalAddr)?;
    let admin_bound = admin_listener.local_addr().map_err(ServeError::LocalAddr)?;

    crate::rlimit::prepare(server.max_connections);
    let events = Arc::new(event_sink(&gateway_config, &home, &journal, &live)?);
    let identity = Arc::new(LiveIdentity::load(&home, &server.node_id)?);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let trigger = Arc::new(ReloadTrigger::default());
    let fleet = join_fleet(
        &home,
        &gateway_config,
        FleetWiring {
            live: live.clone(),
            events: events.clone(),
            trigger: trigger.clone(),
            shutdown: shutdown_rx.clone(),
        },
        (bound, admin_bound),
    )
    .await?;
    let gateway = Arc::new(
        Gateway::new(live.clone(), events.clone(), identity.clone())
            .with_fleet(fleet.clone().map(|f| f as Arc<dyn Membership>)),
    );
    gateway.connections.set_listening(true);
    let watched = Arc::new(Watched {
        live: live.clone(),
        identity: identity.clone(),
        events: events.clone(),
        trigger,
        journal: journal.clone(),
    });
    watched.apply_anomaly_modes();
    let admin_task = tokio::spawn(crate::control::http::serve(
        admin_listener,
        Arc::new(AdminView {
            live: live.clone(),
            events: events.clone(),
            identity,
            connections: gateway.connections.clone(),
        }),
        shutdown_rx.clone(),
    ));
    let socket_task = spawn_admin_socket(
        &home,
        &live,
        &journal,
        &events,
        admin_bound,
        shutdown_rx.clone(),
    );
    let stop_signals = StopSignals::register()?;
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(ServeError::Hangup)?;
    let watcher = tokio::spawn(watch_files(watched, hup, shutdown_rx.clone()));
    let upkeep = tokio::spawn(crate::control::upkeep::run(
        live.clone(),
        events.clone(),
        shutdown_rx.clone(),
    ));
    let disk_watch = tokio::spawn(crate::control::disk_watch::run(
        journal.clone(),
        events.clone(),
        shutdown_rx.clone(),
    ));
    let saver = baselines::spawn_saver(
        events.detector().clone(),
        journal.clone(),
        shutdown_rx.clone(),
    );

    // Announce on stdout (tests and scripts read these lines).
    println!("gatehouse listening on {bound}");
    println!("gatehouse admin on {admin_bound}");
    tracing::info!(%bound, %admin_bound, partners = live.snapshot().partners.len(), "gatehouse serving");
    crate::sd_notify::ready(&format!("serving on {bound}, admin on {admin_bound}"));
    crate::sd_notify::spawn_watchdog(shutdown_rx.clone());

    let max_conns = server.max_connections;
    let permits = Arc::new(Semaphore::new(max_conns));
    let accept = accept_loop(
        listener,
        gateway.clone(),
        permits.clone(),
        shutdown_rx.clone(),
    );
    let mut accept = Box::pin(accept);
    tokio::select! {
        () = &mut accept => {},
        () = stop_signals.wait() => {},
    }
    // Dropping the accept loop closes the listener and frees the slot it
    // was holding for the next connection.
    drop(accept);
    drain(&gateway, &permits, max_conns, &shutdown_tx, &live).await;
    watcher.abort();
    upkeep.abort();
    disk_watch.abort();
    saver.abort();
    baselines::save(events.detector(), &journal);
    let _ = admin_task.await;
    let _ = socket_task.await;
    Ok(())
}

/// What a fleet node is wired to.
struct FleetWiring {
    live: Arc<Live>,
    events: Arc<EventSink>,
    trigger: Arc<ReloadTrigger>,
    shutdown: watch::Receiver<bool>,
}

/// Joins the fleet when `[cluster]` is set; `None` for a single node.
async fn join_fleet(
    home: &Home,
    config: &GatewayConfig,
    wiring: FleetWiring,
    (bound, admin_bound): (SocketAddr, SocketAddr),
) -> Result<Option<Arc<Fleet>>, ServeError> {
    let Some(cluster) = &config.cluster else {
        return Ok(None);
    };
    let fleet = Fleet::start(
        home,
        cluster,
        &config.server.node_id,
        wiring.live,
        wiring.events,
        wiring.trigger,
        wiring.shutdown,
    )
    .await?;
    fleet.set_listeners(bound, admin_bound);
    Ok(Some(fleet))
}

/// Stops taking connections and waits (at most `[server] drain_timeout`)
/// for the ones in flight to finish.
async fn drain(
    gateway: &Gateway,
    permits: &Semaphore,
    max_conns: usize,
    shutdown: &watch::Sender<bool>,
    live: &Live,
) {
    tracing::info!("stopping: no new connections; draining in-flight requests");
    crate::sd_notify::stopping();
    gateway.connections.set_listening(false);
    let _ = shutdown.send(true);
    let timeout = live.snapshot().gateway.server.drain_timeout;
    let all = u32::try_from(max_conns).unwrap_or(u32::MAX);
    if tokio::time::timeout(timeout, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = gateway.connections.active(),
            "drain time over; closing the remaining connections"
        );
    }
}

/// The event sink: the monitor, the anomaly detector (its baselines
/// restored from the journal's state tree) and the journal; alerts go out
/// through the alert sink.
fn event_sink(
    config: &GatewayConfig,
    home: &Home,
    journal: &Journal,
    live: &Arc<Live>,
) -> Result<EventSink, ServeError> {
    let detector = Arc::new(Detector::new(AnomalySettings {
        k: config.monitor.anomaly_factor,
        floor_per_minute: config.monitor.anomaly_floor_per_minute,
        warmup_minutes: config.monitor.anomaly_warmup_minutes,
        ..AnomalySettings::default()
    }));
    baselines::restore(&detector, journal);
    for (partner, rate) in detector.throttles() {
        live.snapshot().limits.set_throttle(&partner, Some(rate));
    }
    let monitor = Arc::new(Monitor::new());
    {
        // Journal append latency, batch size and failures, per group commit.
        let monitor = monitor.clone();
        journal.set_batch_observer(Arc::new(move |records, seconds, failed| {
            monitor.journal_batch(records, seconds, failed)
        }));
    }
    let recorder: Arc<dyn Recorder> = Arc::new(journal.clone());
    let alerts = AlertSink::new(
        recorder.clone(),
        &config.server.node_id,
        &config.monitor,
        home,
    )?;
    Ok(EventSink::new(
        recorder,
        monitor,
        detector,
        alerts,
        live.clone(),
        &config.server.node_id,
    ))
}

/// The journal's admin socket (`gatehouse log` while serving), mode 0600.
fn spawn_admin_socket(
    home: &Home,
    live: &Arc<Live>,
    journal: &Journal,
    events: &Arc<EventSink>,
    admin_bound: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let path = home.admin_socket();
    let journal = journal.clone();
    let hooks = {
        let events = events.clone();
        let live = live.clone();
        AdminHooks {
            clear_anomaly: Some(Arc::new(move |p: &str| events.clear_anomaly(p))),
            admin_addr: Some(admin_bound),
            running_settings: Some(Arc::new(move || RunningSettings {
                started: live.started_settings().clone(),
                applied: live.snapshot().settings(),
            })),
        }
    };
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = serve_admin_socket(path, journal, hooks, stop).await {
            tracing::error!("journal admin socket: {e}");
        }
    })
}
