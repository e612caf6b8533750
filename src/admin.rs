//! `sat admin`: the operator's side of the control plane's admin API. Each subcommand is one
//! API call; answers print as tables for people, or as JSON with `--json` for scripts.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use sat_control::admin::api::{
    AccessTokenView, AuditView, CreateAccessToken, CreateRelayToken, RelayView, ServiceView,
};
use sat_control::admin::client::AdminClient;
use sat_control::admin::table::{self, render};
use sat_control::ControlError;
use serde::Serialize;

use crate::exit::{EXIT_FAILURE, EXIT_NOPERM, EXIT_UNAVAILABLE, EXIT_USAGE};

const DEFAULT_URL: &str = "http://127.0.0.1:4434";
/// The help heading of the options every `sat admin` command takes, apart from its own.
const ADMIN_OPTIONS: &str = "Admin API options";

#[derive(clap::Args)]
#[command(
    after_help = "The admin token is read from --token-file (or SAT_ADMIN_TOKEN_FILE), else taken \
from SAT_ADMIN_TOKEN, else from the `sat up` control plane's data directory \
($SAT_DATA_DIR or ~/.local/share/sat/up, then control/admin.token). A control plane writes \
<data_dir>/admin.token (mode 0600) when it first starts, and again if the file is deleted.\n\n\
Examples:\n  \
sat admin relays\n  \
sat admin relay-token create --region eu-west\n  \
sat admin services add web --kind http --backend 127.0.0.1:3000 --hostname app.example.com\n  \
sat admin token create --service ssh --ttl 8h\n  \
sat admin --url http://10.0.0.5:4434 --json relays"
)]
pub struct AdminArgs {
    /// The control plane's admin API.
    #[arg(long, env = "SAT_ADMIN_URL", default_value = DEFAULT_URL, global = true, help_heading = ADMIN_OPTIONS)]
    url: String,
    /// File holding the admin token [default: the `sat up` control plane's admin.token]
    #[arg(long, env = "SAT_ADMIN_TOKEN_FILE", global = true, help_heading = ADMIN_OPTIONS)]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table, for scripts.
    #[arg(long, global = true, help_heading = ADMIN_OPTIONS)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create one-time tokens that enrol new relays.
    #[command(
        subcommand,
        after_help = "Example:\n  sat admin relay-token create --region eu-west --ttl 1h"
    )]
    RelayToken(RelayTokenCommand),
    /// List the relays with their health (the default), or drain, resume or revoke one.
    #[command(after_help = "Examples:\n  \
sat admin relays\n  \
sat admin relays drain eu-west-1\n  \
sat admin relays resume eu-west-1")]
    Relays {
        #[command(subcommand)]
        command: Option<RelaysCommand>,
    },
    /// List, add or remove the services that relays publish.
    #[command(
        subcommand,
        after_help = "Examples:\n  \
sat admin services list\n  \
sat admin services add ssh --kind tcp --backend 10.0.0.7:22 --access token\n  \
sat admin services remove ssh"
    )]
    Services(ServicesCommand),
    /// Create, list or revoke access tokens for services with `--access token`.
    #[command(
        subcommand,
        after_help = "Examples:\n  \
sat admin token create --service ssh --ttl 8h\n  \
sat admin token list\n  \
sat admin token revoke 3f2a9c0d1e4b5a6f"
    )]
    Token(TokenCommand),
    /// Show the latest admin changes, newest first: when, who, what.
    #[command(after_help = "Example:\n  sat admin audit --limit 20")]
    Audit {
        /// How many entries to show, 1 to 1000.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Show the routing table relays run on: round trips between relays (from their probes)
    /// and, per client network, the round trips its clients reported (medians).
    Routing,
}

#[derive(Subcommand)]
enum RelayTokenCommand {
    /// Create a one-time token that enrols one relay in a region.
    ///
    /// The token is printed alone on stdout. Give it to the new relay, which uses it once to
    /// get its certificate from the control plane; it also pins the control plane's CA, so no
    /// other file needs copying.
    #[command(after_help = "Example:\n  \
sat admin relay-token create --region eu-west --name eu-west-1 --ttl 1h\n  \
sat relay --config relay.toml --token satr1....")]
    Create {
        /// The region the relay serves, such as eu-west.
        #[arg(long)]
        region: String,
        /// The relay's name [default: the relay proposes one]
        #[arg(long)]
        name: Option<String>,
        /// How long the token can be redeemed, such as 30m or 1h [default: the control
        /// plane's]
        #[arg(long)]
        ttl: Option<String>,
    },
}

#[derive(Subcommand)]
enum RelaysCommand {
    /// List the relays: state, last heartbeat, round-trip time, open streams, version.
    #[command(after_help = "Example:\n  sat admin relays list")]
    List,
    /// Stop sending new users to a relay; connections in flight finish. Before maintenance.
    #[command(after_help = "Example:\n  sat admin relays drain eu-west-1")]
    Drain {
        /// The relay's name, as `sat admin relays` shows it.
        name: String,
    },
    /// Undo a drain: the relay takes new users again.
    #[command(after_help = "Example:\n  sat admin relays resume eu-west-1")]
    Resume {
        /// The relay's name, as `sat admin relays` shows it.
        name: String,
    },
    /// Revoke a relay for good: its certificates stop working and it is dropped from the
    /// network. To bring the machine back, enrol it again with a new relay token.
    #[command(after_help = "Example:\n  sat admin relays revoke eu-west-1")]
    Revoke {
        /// The relay's name, as `sat admin relays` shows it.
        name: String,
    },
}

#[derive(Subcommand)]
enum ServicesCommand {
    /// List the services.
    #[command(after_help = "Example:\n  sat admin services list")]
    List,
    /// Add a service; relays publish it within seconds.
    ///
    /// An HTTP service is reached on its hostnames on every relay's HTTPS port; a TCP service
    /// through `sat connect` or `sat forward`. With `--access token`, users need an access
    /// token from `sat admin token create`.
    #[command(after_help = "Examples:\n  \
sat admin services add web --kind http --backend 127.0.0.1:3000 --hostname app.example.com\n  \
sat admin services add ssh --kind tcp --backend 10.0.0.7:22 --access token")]
    Add {
        /// The service's name: lowercase letters, digits, dashes and underscores.
        name: String,
        /// How users reach it: http (by hostname, on the relays' HTTPS port) or tcp (through
        /// sat connect / sat forward).
        #[arg(long, value_enum)]
        kind: Kind,
        /// Where the control plane reaches the service, as host:port.
        #[arg(long)]
        backend: String,
        /// A hostname the relays answer for this (http) service; repeat for more.
        #[arg(long = "hostname", value_name = "HOSTNAME")]
        hostnames: Vec<String>,
        /// Who may use it: anyone who reaches a relay, or holders of an access token.
        #[arg(long, value_enum, default_value_t = Access::Public)]
        access: Access,
    },
    /// Remove a service; relays stop publishing it within seconds.
    #[command(after_help = "Example:\n  sat admin services remove web")]
    Remove {
        /// The service's name.
        name: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Http,
    Tcp,
}

#[derive(Clone, Copy, ValueEnum)]
enum Access {
    Public,
    Token,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an access token for one or more services that need one (`--access token`).
    ///
    /// The token is printed alone on stdout, and shown this once: the control plane keeps only
    /// its id. Users pass it to `sat connect` / `sat forward` with --token or SAT_TOKEN, or to
    /// an HTTP service as `Authorization: Bearer <token>`.
    #[command(after_help = "Example:\n  \
sat admin token create --service ssh --service postgres --ttl 8h")]
    Create {
        /// A service the token grants; repeat for more.
        #[arg(long = "service", value_name = "NAME", required = true)]
        services: Vec<String>,
        /// How long the token is valid, such as 30m, 8h or 7d [default: 8h]
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List the access tokens (ids and what they grant, never the tokens themselves).
    #[command(after_help = "Example:\n  sat admin token list")]
    List,
    /// Revoke an access token: relays refuse it within seconds.
    #[command(after_help = "Example:\n  sat admin token revoke 3f2a9c0d1e4b5a6f")]
    Revoke {
        /// The token's id, as `sat admin token list` shows it.
        id: String,
    },
}

impl AdminArgs {
    pub async fn run(self) -> u8 {
        let (token, source) = match admin_token(self.token_file.clone()) {
            Ok(t) => t,
            Err(message) => {
                eprintln!("sat admin: {message}");
                return EXIT_USAGE;
            }
        };
        let client = match AdminClient::new(&self.url, token) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("sat admin: {e}");
                return EXIT_USAGE;
            }
        };
        match self.command.run(&client, self.json).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("sat admin: {e}");
                if let ControlError::Admin {
                    status: Some(401), ..
                } = e
                {
                    eprintln!("sat admin: the token sent came from {source}");
                }
                exit_code(&e)
            }
        }
    }
}

impl AdminCommand {
    async fn run(self, client: &AdminClient, json: bool) -> Result<(), ControlError> {
        match self {
            Self::RelayToken(RelayTokenCommand::Create { region, name, ttl }) => {
                let request = CreateRelayToken { region, name, ttl };
                let created = client.create_relay_token(&request).await?;
                if json {
                    return print_json(&created);
                }
                println!("{}", created.token);
                eprintln!(
                    "One-time token for a relay in {}{}, valid until {}. On the new relay, run:\n  \
                     sat relay --config relay.toml --token {}",
                    created.region,
                    created
                        .name
                        .as_deref()
                        .map(|n| format!(" named {n}"))
                        .unwrap_or_default(),
                    table::timestamp(created.expires_at),
                    created.token,
                );
                Ok(())
            }
            Self::Relays { command } => {
                let relay = match command.unwrap_or(RelaysCommand::List) {
                    RelaysCommand::List => {
                        let relays = client.relays().await?;
                        if json {
                            return print_json(&relays);
                        }
                        if relays.is_empty() {
                            eprintln!(
                                "No relays yet: enrol one with `sat admin relay-token create \
                                 --region REGION`."
                            );
                        }
                        print!("{}", relays_table(&relays));
                        return Ok(());
                    }
                    RelaysCommand::Drain { name } => client.drain(&name).await?,
                    RelaysCommand::Resume { name } => client.resume(&name).await?,
                    RelaysCommand::Revoke { name } => client.revoke(&name).await?,
                };
                if json {
                    return print_json(&relay);
                }
                print!("{}", relays_table(std::slice::from_ref(&relay)));
                Ok(())
            }
            Self::Services(ServicesCommand::List) => {
                let services = client.services().await?;
                if json {
                    return print_json(&services);
                }
                if services.is_empty() {
                    eprintln!("No services yet: add one with `sat admin services add`.");
                }
                print!("{}", services_table(&services));
                Ok(())
            }
            Self::Services(ServicesCommand::Add {
                name,
                kind,
                backend,
                hostnames,
                access,
            }) => {
                let service = ServiceView {
                    name,
                    kind: match kind {
                        Kind::Http => "http",
                        Kind::Tcp => "tcp",
                    }
                    .into(),
                    backend,
                    hostnames,
                    access: match access {
                        Access::Public => "public",
                        Access::Token => "token",
                    }
                    .into(),
                    created_at: 0,
                };
                let added = client.add_service(&service).await?;
                if json {
                    return print_json(&added);
                }
                print!("{}", services_table(std::slice::from_ref(&added)));
                Ok(())
            }
            Self::Services(ServicesCommand::Remove { name }) => {
                let removed = client.remove_service(&name).await?;
                if json {
                    return print_json(&removed);
                }
                println!("removed service {} ({})", removed.name, removed.backend);
                Ok(())
            }
            Self::Token(TokenCommand::Create { services, ttl }) => {
                let created = client
                    .create_access_token(&CreateAccessToken { services, ttl })
                    .await?;
                if json {
                    return print_json(&created);
                }
                let Some(token) = created.token.as_deref() else {
                    return Err(ControlError::Admin {
                        status: None,
                        message: "the control plane created the token but did not return it".into(),
                    });
                };
                println!("{token}");
                eprintln!(
                    "Access token {} for {}, valid until {}. Use it with sat connect or sat \
                     forward (--token or SAT_TOKEN), or as an HTTP bearer token:\n  \
                     export SAT_TOKEN={token}\n  \
                     sat connect {} --relay RELAY:443\n  \
                     curl -H \"Authorization: Bearer $SAT_TOKEN\" https://HOSTNAME/",
                    created.id,
                    created.services.join(", "),
                    table::timestamp(created.expires_at),
                    created
                        .services
                        .first()
                        .map(String::as_str)
                        .unwrap_or("SERVICE"),
                );
                Ok(())
            }
            Self::Token(TokenCommand::List) => {
                let tokens = client.access_tokens().await?;
                if json {
                    return print_json(&tokens);
                }
                print!("{}", tokens_table(&tokens, sat_proto::clock::unix_millis()));
                Ok(())
            }
            Self::Token(TokenCommand::Revoke { id }) => {
                let revoked = client.revoke_access_token(&id).await?;
                if json {
                    return print_json(&revoked);
                }
                println!(
                    "revoked access token {} ({})",
                    revoked.id,
                    revoked.services.join(", ")
                );
                Ok(())
            }
            Self::Audit { limit } => {
                let entries = client.audit(limit).await?;
                if json {
                    return print_json(&entries);
                }
                print!("{}", audit_table(&entries));
                Ok(())
            }
            Self::Routing => {
                let routing = client.routing().await?;
                if json {
                    return print_json(&routing);
                }
                print!("{}", routing_tables(&routing));
                Ok(())
            }
        }
    }
}

/// The admin token and where it came from (for the hint when it is refused).
fn admin_token(file: Option<PathBuf>) -> Result<(String, String), String> {
    // A file named on the command line (or its env var) beats a token in the environment.
    if file.is_none() {
        if let Some(token) = std::env::var("SAT_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            return Ok((token, "SAT_ADMIN_TOKEN".into()));
        }
    }
    let named = file.is_some();
    let path = file.unwrap_or_else(|| {
        // Where `sat up` keeps its control plane, honouring the same SAT_DATA_DIR it does.
        let up = std::env::var_os("SAT_DATA_DIR")
            .filter(|d| !d.is_empty())
            .map_or_else(sat_devnet::default_data_dir, std::path::PathBuf::from);
        up.join("control/admin.token")
    });
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            Ok((text.trim().to_owned(), path.display().to_string()))
        }
        Ok(_) => Err(format!("{}: the admin token file is empty", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => Err(format!(
            "no admin token: {} does not exist. A control plane writes <data_dir>/admin.token \
             when it first starts (`sat up` keeps it in its data dir); pass that file with \
             --token-file or SAT_ADMIN_TOKEN_FILE, or the token itself in SAT_ADMIN_TOKEN",
            path.display()
        )),
        Err(e) => Err(format!(
            "cannot read the admin token {}: {e}",
            path.display()
        )),
    }
}

/// 77 when the token is refused; 69 when no answer came (or the control plane is unwell), so
/// scripts can retry; 1 when the control plane refused the request itself (404, 409, 400).
fn exit_code(e: &ControlError) -> u8 {
    match e {
        ControlError::Admin {
            status: Some(401), ..
        } => EXIT_NOPERM,
        ControlError::Admin {
            status: None | Some(502..=504),
            ..
        } => EXIT_UNAVAILABLE,
        _ => EXIT_FAILURE,
    }
}

fn print_json<T: Serialize>(value: &T) -> Result<(), ControlError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| ControlError::Admin {
        status: None,
        message: format!("cannot print the answer as JSON: {e}"),
    })?;
    println!("{text}");
    Ok(())
}

fn relays_table(relays: &[RelayView]) -> String {
    let rows = relays
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.region.clone(),
                r.state.clone(),
                table::ago(r.last_heartbeat_ms_ago),
                table::rtt(r.rtt_us),
                r.streams.to_string(),
                r.connections.to_string(),
                r.load
                    .map_or_else(|| "-".into(), |l| format!("{:.0}%", l * 100.0)),
                r.version.clone(),
            ]
        })
        .collect();
    render(
        &[
            "NAME",
            "REGION",
            "STATE",
            "LAST HEARTBEAT",
            "RTT",
            "STREAMS",
            "USERS",
            "LOAD",
            "VERSION",
        ],
        rows,
    )
}

fn services_table(services: &[ServiceView]) -> String {
    let rows = services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.kind.clone(),
                s.backend.clone(),
                s.access.clone(),
                s.hostnames.join(","),
                table::timestamp(s.created_at),
            ]
        })
        .collect();
    render(
        &["NAME", "KIND", "BACKEND", "ACCESS", "HOSTNAMES", "CREATED"],
        rows,
    )
}

fn tokens_table(tokens: &[AccessTokenView], now_ms: i64) -> String {
    let rows = tokens
        .iter()
        .map(|t| {
            let state = match t.revoked_at {
                Some(at) => format!("revoked {}", table::timestamp(at)),
                None if t.expires_at <= now_ms => "expired".into(),
                None => format!("active, expires {}", table::relative(t.expires_at, now_ms)),
            };
            vec![
                t.id.clone(),
                t.services.join(","),
                table::timestamp(t.created_at),
                table::timestamp(t.expires_at),
                state,
            ]
        })
        .collect();
    render(&["ID", "SERVICES", "CREATED", "EXPIRES", "STATE"], rows)
}

fn audit_table(entries: &[AuditView]) -> String {
    let rows = entries
        .iter()
        .map(|e| {
            let detail = match &e.detail {
                serde_json::Value::Null => String::new(),
                d => d.to_string(),
            };
            vec![
                table::timestamp(e.at),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
                detail,
            ]
        })
        .collect();
    render(&["TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"], rows)
}

fn routing_tables(routing: &sat_proto::control::RoutingTable) -> String {
    let ms = |us: u64| format!("{:.1} ms", us as f64 / 1000.0);
    let peers = routing
        .peers
        .iter()
        .map(|p| vec![p.a.clone(), p.b.clone(), ms(p.rtt_us)])
        .collect();
    let networks = routing
        .networks
        .iter()
        .flat_map(|n| {
            n.rtts
                .iter()
                .map(|r| vec![n.network.clone(), r.relay.clone(), ms(r.rtt_us)])
        })
        .collect();
    format!(
        "{}\n{}",
        render(&["RELAY", "RELAY", "RTT"], peers),
        render(&["CLIENT NETWORK", "RELAY", "RTT"], networks)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_table_has_the_documented_columns() {
        let out = relays_table(&[RelayView {
            name: "eu-west-1".into(),
            region: "eu-west".into(),
            state: "up".into(),
            last_heartbeat_ms_ago: Some(1_200),
            rtt_us: Some(12_345),
            streams: 4,
            connections: 2,
            load: Some(0.125),
            uplinks: 2,
            version: "0.1.0".into(),
            addresses: vec![],
            enrolled_at: 0,
        }]);
        assert_eq!(
            out,
            "NAME       REGION   STATE  LAST HEARTBEAT  RTT      STREAMS  USERS  LOAD  VERSION\n\
             eu-west-1  eu-west  up     1.2s ago        12.3 ms  4        2      12%   0.1.0\n"
        );
    }

    #[test]
    fn token_states() {
        let token = |expires_at, revoked_at| AccessTokenView {
            id: "ab".into(),
            services: vec!["ssh".into()],
            created_at: 0,
            expires_at,
            revoked_at,
            token: None,
        };
        let out = tokens_table(
            &[
                token(8 * 3_600_000, None),
                token(1_000, None),
                token(8 * 3_600_000, Some(0)),
            ],
            2_000,
        );
        let states: Vec<&str> = out
            .lines()
            .skip(1)
            .map(|l| &l[l.rfind("  ").unwrap_or(0)..])
            .collect();
        assert_eq!(
            states,
            [
                "  active, expires in 7h",
                "  expired",
                "  revoked 1970-01-01T00:00:00Z"
            ]
        );
    }

    #[test]
    fn refusals_map_to_exit_codes() {
        let e = |status| ControlError::Admin {
            status,
            message: String::new(),
        };
        assert_eq!(exit_code(&e(Some(401))), EXIT_NOPERM);
        assert_eq!(exit_code(&e(None)), EXIT_UNAVAILABLE);
        assert_eq!(exit_code(&e(Some(503))), EXIT_UNAVAILABLE);
        assert_eq!(exit_code(&e(Some(404))), EXIT_FAILURE);
        assert_eq!(exit_code(&e(Some(409))), EXIT_FAILURE);
    }
}
