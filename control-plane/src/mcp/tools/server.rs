//! The server tool: what this Autopilot is and holds.

use rmcp::model::JsonObject;
use serde_json::json;

use super::{input, object, parse, success, Failure, NoArgs, Outcome, Spec};
use crate::app::App;
use crate::services::health;

pub(super) fn specs() -> Vec<Spec> {
    vec![Spec {
        name: "get_server_info",
        title: "Autopilot server info",
        description: "Shows this Autopilot's version, store backend, mode, public URL and \
                how many jobs and active runs it has. Example: {}",
        input: input::<NoArgs>(),
        output: object(
            json!({
                "version": { "type": "string" },
                "store": { "type": "string" },
                "mode": { "type": "string" },
                "public_url": { "type": "string" },
                "jobs": { "type": "integer" },
                "active_runs": { "type": "integer" },
            }),
            &[
                "version",
                "store",
                "mode",
                "public_url",
                "jobs",
                "active_runs",
            ],
        ),
        read_only: true,
        destructive: false,
        idempotent: true,
        open_world: false,
    }]
}

pub(super) async fn call(app: &App, name: &str, args: JsonObject) -> Outcome {
    match name {
        "get_server_info" => server_info(app, args).await,
        other => Err(Failure::Message(format!("unknown server tool `{other}`"))),
    }
}

async fn server_info(app: &App, args: JsonObject) -> Outcome {
    let NoArgs {} = parse(args)?;
    let (jobs, active_runs) = health::counts(app).await?;
    let mode = app.config.mode();
    let value = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "store": app.store.backend(),
        "mode": mode,
        "public_url": app.config.public_url,
        "jobs": jobs,
        "active_runs": active_runs,
    });
    success(
        format!(
            "Autopilot {} ({mode}, {} store) at {}: {jobs} job(s), {active_runs} active run(s).",
            env!("CARGO_PKG_VERSION"),
            app.store.backend(),
            app.config.public_url
        ),
        value,
    )
}
