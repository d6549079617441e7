//! `autopilot-servers <server>`: runs one of Autopilot's fixed MCP servers on standard input and
//! output. Its settings come from its environment (see `catalog`); a setting that is wrong stops
//! it at once with a message naming the variable, which the CLI shows as the server's failure.

use std::process::ExitCode;
use std::sync::Arc;

use autopilot_fixed_servers::catalog::{self, SERVERS};
use autopilot_fixed_servers::{approval, email, http, memory, notify, serve, web};

fn usage() -> String {
    let names: Vec<&str> = SERVERS.iter().map(|server| server.name).collect();
    format!(
        "usage: {} <server>   (servers: {})",
        catalog::PROGRAM,
        names.join(", ")
    )
}

fn main() -> ExitCode {
    let Some(name) = std::env::args().nth(1) else {
        eprintln!("{}", usage());
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{}: cannot start: {err}", catalog::PROGRAM);
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match name.as_str() {
            "email" => {
                let server = email::Email::from_settings().map_err(anyhow::Error::msg)?;
                serve::run(Arc::new(server)).await
            }
            "web" => {
                let server = web::Web::from_settings().map_err(anyhow::Error::msg)?;
                serve::run(Arc::new(server)).await
            }
            "notify" => {
                let server = notify::Notify::from_settings().map_err(anyhow::Error::msg)?;
                serve::run(Arc::new(server)).await
            }
            "http" => {
                let server = http::Http::from_settings().map_err(anyhow::Error::msg)?;
                serve::run(Arc::new(server)).await
            }
            "memory" => {
                let server = memory::Memory::from_settings().map_err(anyhow::Error::msg)?;
                serve::run(Arc::new(server)).await
            }
            autopilot_fixed_servers::approval_wire::SERVER => {
                let server = approval::Approval::from_settings().map_err(anyhow::Error::msg)?;
                serve::run(Arc::new(server)).await
            }
            other => anyhow::bail!("unknown server `{other}`; {}", usage()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{} {name}: {err:#}", catalog::PROGRAM);
            ExitCode::FAILURE
        }
    }
}
