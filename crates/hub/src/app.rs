//! Starting and stopping the hub: store, services, background workers and the HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::alerts::AlertService;
use crate::api::ratelimit::RateLimits;
use crate::auth::AuthService;
use crate::config::Config;
use crate::events::EventService;
use crate::events::dispatcher::InFlight;
use crate::fleet::FleetService;
use crate::metrics::HttpMetrics;
use crate::notifications::render::Renderer;
use crate::notifications::{NotificationService, Notifier};
use crate::plugins::{PluginContext, PluginDeps, PluginManager, PluginRegistry};
use crate::secrets::SecretBox;
use crate::store::Store;
use crate::system::SystemService;
use crate::tasks::TaskService;
use crate::users::{FirstAdmin, UserService};
use crate::webhooks::delivery;
use crate::webhooks::send::WebhookClient;
use crate::webhooks::service::WebhookService;
use crate::webhooks::ssrf::SsrfPolicy;

/// Everything a request handler can reach: the services, never the store directly.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub auth: AuthService,
    pub users: UserService,
    pub events: EventService,
    pub system: SystemService,
    pub plugins: Arc<PluginManager>,
    pub webhooks: WebhookService,
    pub notifications: NotificationService,
    pub fleet: FleetService,
    pub tasks: TaskService,
    pub alerts: AlertService,
    pub caches: Arc<crate::cache::Caches>,
    pub http_metrics: Arc<HttpMetrics>,
    pub limits: Arc<RateLimits>,
}

/// Open the configured store and apply migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let url = config.effective_database_url();
    crate::store::open(&url).await.map_err(with_cause)
}

/// The name the hub gives SMTP servers: the public URL's host, else the machine's name.
fn hello_name(config: &Config) -> String {
    url::Url::parse(&config.public_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .or_else(|| sysinfo::System::host_name().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "server-monitor".into())
}

/// At the binary's edge an internal error is shown with its cause chain (never to HTTP clients).
pub fn with_cause(e: crate::error::Error) -> anyhow::Error {
    match e {
        crate::error::Error::Internal(inner) => inner,
        other => anyhow::Error::new(other),
    }
}

/// A running hub.
pub struct Hub {
    addr: SocketAddr,
    first_admin: FirstAdmin,
    local_server_name: Option<String>,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    workers: Vec<(&'static str, JoinHandle<()>)>,
    dispatcher: JoinHandle<InFlight>,
    fleet_writer: JoinHandle<()>,
    stop_writer: CancellationToken,
    plugins: Arc<PluginManager>,
    store: Arc<dyn Store>,
    leadership: Arc<crate::leader::Leadership>,
}

impl Hub {
    /// Start with the built-in plugin kinds.
    pub async fn start(config: Config) -> anyhow::Result<Hub> {
        Self::start_with(config, PluginRegistry::builtin()).await
    }

    /// Open the store, create the first admin if needed, load the allowlisted plugins from
    /// `registry`, start the workers and serve HTTP.
    pub async fn start_with(config: Config, registry: PluginRegistry) -> anyhow::Result<Hub> {
        let store = open_store(&config).await?;
        let mut auth = AuthService::new(store.clone(), config.auth.clone());
        if crate::store::Backend::of_url(&config.effective_database_url())
            == Some(crate::store::Backend::Postgres)
        {
            auth = auth.with_token_cache(crate::cluster::SYNC_EVERY);
        }
        let users = UserService::new(store.clone(), auth.clone());

        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;

        let policy = SsrfPolicy::new(&config.webhooks.allow_cidrs)
            .map_err(|e| anyhow::anyhow!("webhooks.allow_cidrs: {e}"))?;
        let deps = PluginDeps {
            webhooks: WebhookClient::new(Arc::new(policy)).map_err(anyhow::Error::msg)?,
        };
        let ctx = PluginContext {
            version: crate::VERSION,
            listen: addr.to_string(),
            data_dir: config.data_dir.clone(),
        };
        let plugins = PluginManager::start(&config.plugins, &registry, &deps, &ctx, store.clone())
            .await
            .map_err(anyhow::Error::msg)?;
        let secrets = SecretBox::load(config.secret_key.expose(), &config.data_dir)?;
        let notifier = Arc::new(Notifier::new(
            deps.webhooks.clone(),
            Renderer::new(config.notifications.templates.clone(), &config.public_url),
            hello_name(&config),
        ));
        let webhooks = WebhookService::new(
            store.clone(),
            secrets.clone(),
            deps.webhooks.clone(),
            config.webhooks.clone(),
            notifier.clone(),
            config.notifications.clone(),
        );
        let stale = webhooks.release_leases().await.map_err(with_cause)?;
        if stale > 0 {
            tracing::info!(
                deliveries = stale,
                "resuming webhook deliveries interrupted by the last stop"
            );
        }

        let (fleet, fleet_queue) = FleetService::load(
            store.clone(),
            config.fleet.clone(),
            config.enrollment_token.expose(),
        )
        .await
        .map_err(with_cause)?;
        let tasks = TaskService::load(store.clone(), fleet.clone(), &config.tasks)
            .await
            .map_err(with_cause)?;
        let alerts = AlertService::load(store.clone(), fleet.clone())
            .await
            .map_err(with_cause)?;
        let notifications = NotificationService::new(
            store.clone(),
            secrets,
            notifier,
            Arc::new(deps.webhooks.policy().clone()),
            fleet.clone(),
            config.notifications.clone(),
        );
        let observations = fleet.observe();
        let local_server = if config.local_agent {
            let hostname = sysinfo::System::host_name().unwrap_or_else(|_| "hub".into());
            Some(fleet.ensure_local(&hostname).await.map_err(with_cause)?)
        } else {
            None
        };

        // Last of the start-up steps that can fail: a generated password is printed only once,
        // so it must not be created by a start that then fails (port taken, bad plugin).
        let first_admin = users
            .ensure_first_admin(Some(config.admin_password.expose()))
            .await
            .map_err(|e| with_cause(e).context("creating the first admin"))?;

        let local_server_name = local_server.as_deref().and_then(|id| fleet.server_name(id));
        let state = AppState {
            auth,
            users,
            events: EventService::new(store.clone()),
            system: SystemService::new(store.clone()),
            plugins: plugins.clone(),
            webhooks: webhooks.clone(),
            notifications: notifications.clone(),
            fleet: fleet.clone(),
            tasks: tasks.clone(),
            alerts: alerts.clone(),
            caches: Arc::new(crate::cache::Caches::new(&config.cache)),
            http_metrics: Arc::default(),
            limits: Arc::new(RateLimits::new(&config.rate_limits)),
            config: Arc::new(config),
        };
        let shutdown = CancellationToken::new();
        // Taken before the loops start, so a hub alone leads from its first tick.
        let leadership = crate::leader::Leadership::new();
        leadership.renew(store.as_ref()).await;
        let mut workers = vec![
            (
                "leader-lease",
                tokio::spawn(crate::leader::run(
                    leadership.clone(),
                    store.clone(),
                    shutdown.clone(),
                )),
            ),
            (
                "auth-housekeeping",
                spawn_housekeeping(state.auth.clone(), state.limits.clone(), shutdown.clone()),
            ),
            (
                "webhook-delivery-pruner",
                tokio::spawn(delivery::run_pruner(webhooks.clone(), shutdown.clone())),
            ),
        ];
        workers.push((
            "fleet-offline-detector",
            tokio::spawn(crate::fleet::workers::run_offline_detector(
                fleet.clone(),
                leadership.clone(),
                shutdown.clone(),
            )),
        ));
        if crate::store::Backend::of_url(&state.config.effective_database_url())
            == Some(crate::store::Backend::Postgres)
        {
            workers.push((
                "cluster-sync",
                tokio::spawn(crate::cluster::run_sync(
                    fleet.clone(),
                    alerts.clone(),
                    tasks.clone(),
                    leadership.clone(),
                    shutdown.clone(),
                )),
            ));
        }
        workers.push((
            "alert-evaluator",
            tokio::spawn(crate::alerts::run_evaluator(
                alerts.clone(),
                observations,
                leadership.clone(),
                shutdown.clone(),
            )),
        ));
        workers.push((
            "task-reconciler",
            tokio::spawn(crate::tasks::run_reconciler(
                tasks.clone(),
                leadership.clone(),
                shutdown.clone(),
            )),
        ));
        workers.push((
            "fleet-retention",
            tokio::spawn(crate::fleet::workers::run_retention(
                fleet.clone(),
                shutdown.clone(),
            )),
        ));
        if let Some(id) = local_server {
            workers.push((
                "local-agent",
                tokio::spawn(crate::local_agent::run(
                    fleet.clone(),
                    tasks.clone(),
                    id,
                    shutdown.clone(),
                )),
            ));
        }
        // The writer outlives the HTTP server: requests still running wait for its commits.
        let stop_writer = CancellationToken::new();
        let fleet_writer = tokio::spawn(crate::fleet::ingest::run_writer(
            fleet_queue,
            store.clone(),
            fleet.metrics(),
            state.config.fleet.ingest_batch,
            stop_writer.clone(),
        ));
        for _ in 0..state.config.webhooks.workers {
            workers.push((
                "webhook-delivery",
                tokio::spawn(delivery::run_worker(webhooks.clone(), shutdown.clone())),
            ));
        }
        let dispatcher = tokio::spawn(crate::events::dispatcher::run(
            store.clone(),
            plugins.clone(),
            notifications,
            leadership.clone(),
            shutdown.clone(),
        ));

        let app = crate::api::router(state);
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        });
        tracing::info!(%addr, "hub listening");
        Ok(Hub {
            addr,
            first_admin,
            local_server_name,
            shutdown,
            server,
            workers,
            dispatcher,
            fleet_writer,
            stop_writer,
            plugins,
            store,
            leadership,
        })
    }

    /// The address the HTTP server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name of the server the embedded agent reports as, when it runs.
    pub fn local_server_name(&self) -> Option<&str> {
        self.local_server_name.as_deref()
    }

    /// What start did about the first admin.
    pub fn first_admin(&self) -> &FirstAdmin {
        &self.first_admin
    }

    /// Stop accepting requests, let in-flight ones finish (up to `grace`), stop the workers and
    /// close the database.
    pub async fn shutdown(self, grace: Duration) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let mut server = self.server;
        match tokio::time::timeout(grace, &mut server).await {
            Ok(joined) => joined.context("HTTP server task")?.context("HTTP server")?,
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "requests still running after the grace period; aborting them"
                );
                server.abort();
            }
        }
        for (name, worker) in self.workers {
            if let Err(e) = worker.await {
                tracing::error!(worker = name, error = %e, "worker ended abnormally");
            }
        }
        self.stop_writer.cancel();
        if let Err(e) = self.fleet_writer.await {
            tracing::error!(worker = "fleet-writer", error = %e, "worker ended abnormally");
        }
        // The dispatcher stops first, so nothing new reaches the plugins while they drain; what
        // they finish meanwhile is then marked, so a clean restart repeats nothing.
        let in_flight = self.dispatcher.await;
        self.plugins.shutdown().await;
        match in_flight {
            Ok(mut in_flight) => {
                if let Err(e) = in_flight.mark_finished(self.store.as_ref()).await {
                    tracing::warn!(error = %e, "cannot record the last dispatched events");
                }
            }
            Err(e) => {
                tracing::error!(worker = "event-dispatcher", error = %e, "worker ended abnormally")
            }
        }
        // Only now: another hub taking over dispatches from where this one stopped.
        self.leadership.resign(self.store.as_ref()).await;
        self.store.close().await;
        tracing::info!("hub stopped");
        Ok(())
    }
}

/// Periodically purge expired sessions and prune rate limiter state.
fn spawn_housekeeping(
    auth: AuthService,
    limits: Arc<RateLimits>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    limits.prune();
                    match auth.housekeeping().await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(purged = n, "expired sessions purged"),
                        Err(e) => tracing::warn!(error = %e, "auth housekeeping failed"),
                    }
                }
            }
        }
    })
}
