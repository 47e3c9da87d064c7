//! `smon`: the Server Monitor hub and its administration commands.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use smon_hub::auth::roles::Role;
use smon_hub::events::Origin;
use smon_hub::users::{FirstAdmin, NewUser, UserPatch, UserService};
use smon_hub::{Config, Hub};

/// In-flight requests get this long to finish on SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(3500);
/// Whatever is still running after this is abandoned, so that the process exits within 5 s.
const SHUTDOWN_LIMIT: Duration = Duration::from_millis(4500);

#[derive(Parser)]
#[command(name = "smon", version, about = "Server Monitor hub")]
struct Cli {
    /// TOML configuration file; every key also has an SMON_* environment override.
    #[arg(long, global = true, env = "SMON_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub (API, event log, background workers) and an agent for this machine.
    Serve {
        /// Do not monitor this machine (sets local_agent = false).
        #[arg(long)]
        no_local_agent: bool,
    },
    /// Manage users directly in the database (works while the hub runs).
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Print every configuration key with its environment variable and default.
    Config,
    /// Copy a stopped hub's SQLite database into a new PostgreSQL database, in one transaction,
    /// and check the copy by counting every table on both sides.
    MigrateData {
        /// The SQLite database, e.g. sqlite:///var/lib/smon/smon.db.
        #[arg(long)]
        from: String,
        /// An empty PostgreSQL database, e.g. postgres://smon:secret@db.example/smon.
        #[arg(long)]
        to: String,
    },
    /// Print the OpenAPI document (the committed docs/openapi.json).
    Openapi,
}

#[derive(Subcommand)]
enum UserAction {
    /// Create a user; prints a generated password unless --password-stdin is given.
    Add {
        username: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long)]
        email: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's password (ends their sessions); generated unless --password-stdin is given.
    Passwd {
        username: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Delete a user (the last admin cannot be deleted).
    Delete { username: String },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s)
        .ok_or_else(|| format!("unknown role {s:?}: use admin, operator, viewer or auditor"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("smon: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Blocking work still running (a password hash) must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smon: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Openapi => {
            print!("{}", smon_hub::api::openapi_json());
            Ok(())
        }
        Command::Config => {
            for (key, env, default) in Config::reference() {
                println!("{key:<28} {env:<34} default {default}");
            }
            Ok(())
        }
        Command::Serve { no_local_agent } => {
            let mut config = Config::load(cli.config.as_deref())?;
            if no_local_agent {
                config.local_agent = false;
            }
            init_logging(&config);
            serve(config).await
        }
        Command::User { action } => {
            let config = Config::load(cli.config.as_deref())?;
            user_command(config, action).await
        }
        Command::MigrateData { from, to } => migrate_data(&from, &to).await,
    }
}

async fn migrate_data(from: &str, to: &str) -> anyhow::Result<()> {
    let counts = smon_hub::store::migrate::sqlite_to_postgres(from, to)
        .await
        .map_err(smon_hub::app::with_cause)?;
    println!("{:<20} {:>12} {:>12}", "table", "sqlite", "postgres");
    for c in &counts {
        println!("{:<20} {:>12} {:>12}", c.table, c.source, c.target);
    }
    let wrong: Vec<&str> = counts
        .iter()
        .filter(|c| c.source != c.target)
        .map(|c| c.table)
        .collect();
    if !wrong.is_empty() {
        bail!(
            "the copy does not match the source in: {}; nothing was written",
            wrong.join(", ")
        );
    }
    let rows: i64 = counts.iter().map(|c| c.target).sum();
    println!(
        "copied and verified {rows} rows in {} tables; point database_url at the new database \
         and keep the same secret key",
        counts.len()
    );
    Ok(())
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let signal = shutdown_signal()?;
    let hub = Hub::start(config).await?;
    // The banner is best effort: a closed stdout (`smon serve | head -1`) must not stop the hub.
    if let Err(e) = print_banner(&hub) {
        tracing::warn!(error = %e, "cannot print the start banner");
    }
    signal.await;
    tracing::info!("shutdown requested");
    match tokio::time::timeout(SHUTDOWN_LIMIT, hub.shutdown(SHUTDOWN_GRACE)).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("shutdown did not finish in time; exiting anyway");
            Ok(())
        }
    }
}

fn print_banner(hub: &Hub) -> std::io::Result<()> {
    let url = format!("http://{}", hub.local_addr());
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Server Monitor hub {} listening on {url}",
        smon_hub::VERSION
    )?;
    if let Some(name) = hub.local_server_name() {
        writeln!(
            out,
            "Monitoring this machine as server \"{name}\" (turn off with --no-local-agent)"
        )?;
    }
    if let FirstAdmin::Created {
        password,
        generated,
    } = hub.first_admin()
    {
        if *generated {
            writeln!(
                out,
                "First start: created user \"admin\" with password: {password}"
            )?;
            writeln!(
                out,
                "  (shown only now; change it with `smon user passwd admin`)"
            )?;
        } else {
            writeln!(
                out,
                "First start: created user \"admin\" with the password from SMON_ADMIN_PASSWORD"
            )?;
        }
    }
    writeln!(out, "Web UI: {url}/ (log in as admin)")?;
    writeln!(
        out,
        "API login: curl -s {url}/api/auth/login -H 'Content-Type: application/json' \\
         -d '{{\"username\":\"admin\",\"password\":\"...\"}}'"
    )?;
    out.flush()
}

/// Register for SIGTERM and SIGINT now and return what waits for either. Registering before
/// the banner matters: a signal that arrives before its handler kills the process outright.
fn shutdown_signal()
-> anyhow::Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        Ok(Box::pin(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }))
    }
    #[cfg(not(unix))]
    Ok(Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
    }))
}

fn password_from(stdin: bool) -> anyhow::Result<(String, bool)> {
    if !stdin {
        return Ok((smon_hub::auth::token::random_password(), true));
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        bail!("no password on standard input");
    }
    Ok((password, false))
}

async fn user_command(config: Config, action: UserAction) -> anyhow::Result<()> {
    let store = smon_hub::app::open_store(&config).await?;
    let auth = smon_hub::auth::AuthService::new(store.clone(), config.auth.clone());
    let users = UserService::new(store.clone(), auth);
    let origin = Origin {
        user_agent: Some("smon cli".into()),
        ..Origin::default()
    };
    let result = async {
        match action {
            UserAction::Add {
                username,
                role,
                email,
                password_stdin,
            } => {
                let (password, generated) = password_from(password_stdin)?;
                let new = NewUser {
                    username,
                    password: password.clone(),
                    role,
                    email,
                    enabled: true,
                };
                let user = users.create(&origin, new).await?;
                println!(
                    "created {} ({}) id {}",
                    user.username,
                    user.role.as_str(),
                    user.id
                );
                if generated {
                    println!("password: {password}");
                }
            }
            UserAction::Passwd {
                username,
                password_stdin,
            } => {
                let user = users.get_by_username(&username).await?;
                let (password, generated) = password_from(password_stdin)?;
                let patch = UserPatch {
                    password: Some(password.clone()),
                    ..UserPatch::default()
                };
                users.update(&origin, &user.id, patch).await?;
                println!("password of {username} changed; their sessions have ended");
                if generated {
                    println!("password: {password}");
                }
            }
            UserAction::List => {
                println!(
                    "{:<24} {:<9} {:<8} {:<25} id",
                    "username", "role", "enabled", "last login"
                );
                for u in users.list().await? {
                    let last = u
                        .last_login_at
                        .map_or("never".to_string(), |t| t.to_rfc3339());
                    println!(
                        "{:<24} {:<9} {:<8} {:<25} {}",
                        u.username,
                        u.role.as_str(),
                        u.enabled,
                        last,
                        u.id
                    );
                }
            }
            UserAction::Delete { username } => {
                let user = users.get_by_username(&username).await?;
                users.delete(&origin, &user.id).await?;
                println!("deleted {username}");
            }
        }
        anyhow::Ok(())
    }
    .await;
    store.close().await;
    result.map_err(|e| match e.downcast::<smon_hub::error::Error>() {
        Ok(e) => smon_hub::app::with_cause(e),
        Err(e) => e,
    })
}
