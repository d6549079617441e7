//! `autopilot-mcp-guard -- <command> [args…]`: runs an MCP server for one run under the guard
//! (see `autopilot_fixed_servers::guard`), with the settings from the file
//! `AUTOPILOT_SETTINGS_FILE` names. `autopilot-mcp-guard --remote`: stands in front of the remote
//! (streamable HTTP) server whose URL and headers that file holds instead.
//! `autopilot-mcp-guard --list-tools -- <command> [args…]`: starts the server once and prints its
//! tools as one JSON line (see `autopilot_fixed_servers::guard::list`); `--call-tool <tool> --
//! <command> [args…]` calls one of them with the settings file's `arguments`.

use std::ffi::OsString;
use std::process::ExitCode;

use autopilot_fixed_servers::catalog::GUARD_PROGRAM;
use autopilot_fixed_servers::guard::{self, GuardSettings};
use autopilot_fixed_servers::serve::take_settings_file;

/// Prints a one-shot answer as one JSON line, or the error on standard error.
fn print_once(answer: Result<serde_json::Value, String>) -> ExitCode {
    match answer {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{GUARD_PROGRAM}: {err}");
            ExitCode::FAILURE
        }
    }
}

enum Mode {
    /// Relay a stdio server for a run.
    Relay,
    /// Stand in front of a remote server.
    Remote,
    /// Start a stdio server once and print its tools.
    ListTools,
    /// Start a stdio server once and call one of its tools.
    CallTool(String),
    Usage,
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let first = args.next();
    let mode = match first.as_deref().and_then(|a| a.to_str()) {
        Some("--") => Mode::Relay,
        Some("--remote") => Mode::Remote,
        Some("--list-tools") if args.next().as_deref() == Some(std::ffi::OsStr::new("--")) => {
            Mode::ListTools
        }
        Some("--call-tool") => match (args.next(), args.next()) {
            (Some(tool), Some(dashes)) if dashes == "--" => {
                Mode::CallTool(tool.to_string_lossy().into_owned())
            }
            _ => Mode::Usage,
        },
        _ => Mode::Usage,
    };
    if let Mode::Usage = mode {
        eprintln!(
            "usage: {GUARD_PROGRAM} -- <server command> [args…] | --remote | --list-tools -- \
             <server command> [args…] | --call-tool <tool> -- <server command> [args…]"
        );
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
    let relayed = match (mode, settings.url.clone()) {
        (Mode::Remote, Some(url)) => runtime.block_on(guard::remote::run(settings, url)),
        (Mode::Remote, None) => {
            eprintln!("{GUARD_PROGRAM}: --remote, but the settings file names no `url`");
            return ExitCode::FAILURE;
        }
        (Mode::Relay, _) => runtime.block_on(guard::run(settings, command)),
        (Mode::ListTools, _) => {
            let listed = runtime.block_on(guard::list::list(settings, command));
            return print_once(listed.map(|tools| serde_json::json!({ "tools": tools })));
        }
        (Mode::CallTool(tool), _) => {
            let redactor = autopilot_fixed_servers::redact::Redactor::new(&settings.secrets);
            let arguments = settings.arguments.clone().unwrap_or_default();
            let ask = guard::list::Ask::Call { tool, arguments };
            let called = runtime.block_on(guard::list::once(settings, command, ask));
            let answer = called.map(|result| serde_json::json!({ "result": result }));
            return print_once(answer.map(|answer| redactor.value(answer)));
        }
        (Mode::Usage, _) => return ExitCode::from(2),
    };
    match relayed {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("{GUARD_PROGRAM}: {err:#}");
            ExitCode::FAILURE
        }
    }
}
