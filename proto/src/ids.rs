//! Typed identifiers. Each wraps a UUIDv7 so ids sort by creation time and can never be mixed up.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

typed_id!(
    /// Identifies a job (a stored prompt or command with its schedule and run settings).
    JobId
);
typed_id!(
    /// Identifies one run: one fire of a job, a manual trigger or a quick run. Retries of a
    /// transient failure keep the run id and raise its attempt number.
    RunId
);

typed_id!(
    /// Identifies a webhook (a secret URL whose deliveries start runs).
    WebhookId
);

/// Identifies a worker process. Free-form so operators can recognise their hosts in listings.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
#[serde(transparent)]
pub struct WorkerId(String);

impl WorkerId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// A unique id for a worker started on this host.
    pub fn generate(prefix: &str) -> Self {
        let simple = Uuid::now_v7().simple().to_string();
        Self(format!("{prefix}-{}", &simple[simple.len() - 12..]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings_and_sort_by_creation() {
        let first = RunId::new();
        let second = RunId::new();
        assert!(first < second);
        assert_eq!(first.to_string().parse::<RunId>().unwrap(), first);
        assert!("not-a-uuid".parse::<JobId>().is_err());
    }
}
