//! Quick run: a prompt run once, now, with the tools picked; it can be saved as a job after.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::{render, see_other, Chrome, PageError, PageResult};
use crate::dashboard::auth::{authorize, Action, Operator, Submitted};
use crate::dashboard::Dashboard;
use crate::domain::input::from_value;
use crate::services::runs::{self, QuickRunInput};

#[derive(Template)]
#[template(path = "quick.html")]
struct QuickPage {
    chrome: Chrome,
    prompt: String,
    model: String,
    allowed_tools: String,
    error: Option<(String, String)>,
}

pub async fn show(operator: Operator) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    Ok(render(&QuickPage {
        chrome: Chrome::new(&operator, "quick", "Quick run"),
        prompt: String::new(),
        model: String::new(),
        allowed_tools: "Read\nGlob\nGrep".into(),
        error: None,
    }))
}

pub async fn submit(
    State(dashboard): State<Dashboard>,
    Submitted {
        operator,
        form: fields,
    }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::Run)?;
    let mut input = json!({
        "prompt": fields.get("prompt").unwrap_or_default(),
        "allowed_tools": fields.lines("allowed_tools"),
    });
    if let Some(model) = fields.text("model") {
        input["model"] = Value::from(model);
    }
    let started = match from_value::<QuickRunInput>(input) {
        Ok(input) => runs::quick_run(&dashboard.app, input)
            .await
            .map_err(PageError::from),
        Err(err) => Err(err.into()),
    };
    match started {
        Ok(run) => Ok(see_other(&format!("/runs/{}", run.id))),
        Err(PageError::Api(api)) if api.status == StatusCode::UNPROCESSABLE_ENTITY => {
            let mut response = render(&QuickPage {
                chrome: Chrome::new(&operator, "quick", "Quick run"),
                prompt: fields.get("prompt").unwrap_or_default().to_owned(),
                model: fields.get("model").unwrap_or_default().to_owned(),
                allowed_tools: fields.get("allowed_tools").unwrap_or_default().to_owned(),
                error: Some((api.field.clone().unwrap_or_default(), api.message)),
            });
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(response)
        }
        Err(err) => Err(err),
    }
}
