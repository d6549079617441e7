//! `autopilot-mcp-guard -- <command> [args…]`: runs an MCP server for one run under the guard
//! (see `autopilot_fixed_servers::guard`), with the settings from the file
//! `AUTOPILOT_SETTINGS_FILE` names. `autopilot-mcp-guard --remote`: stands in front of the remote
//! (streamable HTTP) server whose URL and headers that file holds instead.

use std::ffi::OsString;
use std::process::ExitCode;

use autopilot_fixed_servers::catalog::GUARD_PROGRAM;
use autopilot_fixed_servers::guard::{self, GuardSettings};
use autopilot_fixed_servers::serve::take_settings_file;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let first = args.next();
    let remote = match first.as_deref().and_then(|a| a.to_str()) {
        Some("--") => false,
        Some("--remote") => true,
        _ => {
            eprintln!("usage: {GUARD_PROGRAM} -- <server command> [args…] | --remote");
            return ExitCode::from(2);
        }
    };
    let command: Vec<OsString> = args.collect();
    let settings = match take_settings_file() {
        Ok(Some((path, text))) => match serde_json::from_slice::<GuardSettings>(&text) {
            Ok(settings) => settings,
            Err(err) => {
                eprintln!(
                    "{GUARD_PROGRAM}: the settings file {} is not valid: {err}",
                    path.display()
                );
                return ExitCode::FAILURE;
            }
        },
        Ok(None) => GuardSettings::default(),
        Err(err) => {
            eprintln!("{GUARD_PROGRAM}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{GUARD_PROGRAM}: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    let relayed = match (remote, settings.url.clone()) {
        (true, Some(url)) => runtime.block_on(guard::remote::run(settings, url)),
        (true, None) => {
            eprintln!("{GUARD_PROGRAM}: --remote, but the settings file names no `url`");
            return ExitCode::FAILURE;
        }
        (false, _) => runtime.block_on(guard::run(settings, command)),
    };
    match relayed {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("{GUARD_PROGRAM}: {err:#}");
            ExitCode::FAILURE
        }
    }
}
