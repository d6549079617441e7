//! Settings: how this Autopilot is configured (nothing secret), and where each value comes from.

use askama::Template;
use axum::extract::State;
use axum::response::Response;

use super::{render, Chrome, PageResult};
use crate::dashboard::auth::{authorize, Action, Operator};
use crate::dashboard::Dashboard;

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    chrome: Chrome,
    rows: Vec<(&'static str, String, &'static str)>,
}

pub async fn show(State(dashboard): State<Dashboard>, operator: Operator) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let app = &dashboard.app;
    let config = &app.config;
    let rows = vec![
        (
            "Public URL",
            config.public_url.clone(),
            "AUTOPILOT_PUBLIC_URL",
        ),
        (
            "Mode",
            config.mode().to_owned(),
            "AUTOPILOT_NATS_URL (fleet when set)",
        ),
        (
            "Store",
            app.store.backend().to_owned(),
            "AUTOPILOT_DATABASE_URL",
        ),
        ("This control plane", app.replica_id.clone(), ""),
        ("Version", env!("CARGO_PKG_VERSION").to_owned(), ""),
        ("MCP endpoint", config.mcp_resource(), ""),
        (
            "Operator password",
            "set (argon2 hash kept; never shown)".to_owned(),
            "AUTOPILOT_OPERATOR_PASSWORD",
        ),
        (
            "Admin token",
            "set (never shown)".to_owned(),
            "AUTOPILOT_ADMIN_TOKEN",
        ),
    ];
    Ok(render(&SettingsPage {
        chrome: Chrome::new(&operator, "settings", "Settings"),
        rows,
    }))
}
