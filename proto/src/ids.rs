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

            /// The smallest id made at `time` or later: ids sort by creation time, so "made
            /// since" is "at least this id".
            pub fn first_at(time: chrono::DateTime<chrono::Utc>) -> Self {
                let millis = u64::try_from(time.timestamp_millis()).unwrap_or(0);
                let mut bytes = [0u8; 16];
                bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
                bytes[6] = 0x70; // version 7
                bytes[8] = 0x80; // RFC 9562 variant
                Self(Uuid::from_bytes(bytes))
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

    #[test]
    fn first_at_sorts_before_every_id_made_since() {
        let before = chrono::Utc::now();
        let made = RunId::new();
        assert!(RunId::first_at(before) <= made);
        assert!(RunId::first_at(before).to_string() <= made.to_string());
        let later = before + chrono::Duration::milliseconds(5);
        assert!(RunId::first_at(later) > RunId::first_at(before));
        assert_eq!(RunId::first_at(before).as_uuid().get_version_num(), 7);
    }
}
