//! Who is calling, and what they may do. Every authenticated request carries a [`Caller`] in its
//! extensions: the admin token grants everything; OAuth access tokens grant their scopes.

use std::fmt;

/// Scope that allows reading jobs, runs and events.
pub const SCOPE_READ: &str = "autopilot:read";
/// Scope that allows creating, changing, triggering and killing.
pub const SCOPE_WRITE: &str = "autopilot:write";

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Scopes {
    pub read: bool,
    pub write: bool,
}

impl Scopes {
    pub const ALL: Scopes = Scopes {
        read: true,
        write: true,
    };

    /// Parses a space-separated scope string; unknown scopes are ignored.
    pub fn parse(scopes: &str) -> Scopes {
        let mut parsed = Scopes::default();
        for scope in scopes.split_whitespace() {
            match scope {
                SCOPE_READ => parsed.read = true,
                SCOPE_WRITE => parsed.write = true,
                _ => {}
            }
        }
        parsed
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [(self.read, SCOPE_READ), (self.write, SCOPE_WRITE)]
            .into_iter()
            .filter_map(|(held, name)| held.then_some(name))
            .collect();
        f.write_str(&names.join(" "))
    }
}

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// `admin` for the admin token, the OAuth client id for access tokens, `stdio` for
    /// `autopilot mcp`.
    pub subject: String,
    pub scopes: Scopes,
}

impl Caller {
    pub fn admin() -> Caller {
        Caller {
            subject: "admin".into(),
            scopes: Scopes::ALL,
        }
    }

    pub fn stdio() -> Caller {
        Caller {
            subject: "stdio".into(),
            scopes: Scopes::ALL,
        }
    }

    /// The operator themselves: the admin token, or `autopilot mcp` on the operator's machine;
    /// not a client connected through OAuth (claude.ai, say), where Claude acts.
    pub fn is_operator(&self) -> bool {
        matches!(self.subject.as_str(), "admin" | "stdio")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip() {
        let scopes = Scopes::parse("openid autopilot:write autopilot:read");
        assert_eq!(scopes, Scopes::ALL);
        assert_eq!(scopes.to_string(), "autopilot:read autopilot:write");
        assert_eq!(
            Scopes::parse("autopilot:read"),
            Scopes {
                read: true,
                write: false
            }
        );
    }
}
