//! `autopilot-mcp-guard -- <command> [args…]`: runs an MCP server for one run under the guard
//! (see `autopilot_fixed_servers::guard`), with the settings from the file
//! `AUTOPILOT_SETTINGS_FILE` names.

use std::ffi::OsString;
use std::process::ExitCode;

use autopilot_fixed_servers::catalog::GUARD_PROGRAM;
use autopilot_fixed_servers::guard::{self, GuardSettings};
use autopilot_fixed_servers::serve::take_settings_file;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(std::ffi::OsStr::new("--")) {
        eprintln!("usage: {GUARD_PROGRAM} -- <server command> [args…]");
        return ExitCode::from(2);
    }
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
    match runtime.block_on(guard::run(settings, command)) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("{GUARD_PROGRAM}: {err:#}");
            ExitCode::FAILURE
        }
    }
}
