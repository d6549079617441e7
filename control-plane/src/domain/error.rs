//! Errors of validation and of the services, shared by every edge (HTTP API, MCP, webhooks, the
//! scheduler). Each edge maps them to its own shape; a 4xx-kind error always says what was wrong
//! and, where it applies, which field. (The store's errors become these in `crate::store`.)

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The input is wrong; `field` names it (dotted path for nested fields).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    /// The request clashes with the current state (duplicate name, run already finished, …).
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this (not an approver, say); the message says who may.
    #[error("{0}")]
    Forbidden(String),
    /// Try again later.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// The disk that holds the store is full: nothing was written; try again once space is
    /// freed.
    #[error("the disk holding Autopilot's database is full")]
    StorageFull,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ServiceError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;
