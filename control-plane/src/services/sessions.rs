//! Operator sessions of the dashboard: signing in with the operator password, finding the
//! session a cookie names, signing out. The cookie carries a random id; the store keeps its
//! SHA-256 only.

use chrono::{DateTime, Duration, Utc};

use crate::app::App;
use crate::domain::dashboard::DashboardSession;
use crate::domain::ServiceResult;
use crate::tokens;

/// A session unused this long ends.
pub const IDLE_TIMEOUT: Duration = Duration::hours(12);
/// A session ends this long after sign-in however much it is used.
pub const MAX_AGE: Duration = Duration::days(7);
/// Use is recorded at most this often (each page view would otherwise be a write).
const TOUCH_EVERY: Duration = Duration::minutes(1);

/// A new session: the cookie's value and the session as kept.
pub struct SignedIn {
    pub cookie_value: String,
    pub session: DashboardSession,
}

/// Signs in with the operator password. Returns `None` for a wrong password. Always a new
/// session id, and the session the browser had before (`previous`), if any, is ended, so an id
/// planted before sign-in is worth nothing after it.
pub async fn sign_in(
    app: &App,
    password: &str,
    previous: Option<&str>,
) -> ServiceResult<Option<SignedIn>> {
    if !app.keys.operator_password_matches(password) {
        return Ok(None);
    }
    if let Some(previous) = previous {
        app.store
            .delete_session(&tokens::digest_hex(previous))
            .await?;
    }
    let cookie_value = tokens::mint(tokens::OAUTH_PREFIX);
    let now = Utc::now();
    let session = DashboardSession {
        id_hash: tokens::digest_hex(&cookie_value),
        csrf_token: tokens::mint(tokens::OAUTH_PREFIX),
        created_at: now,
        seen_at: now,
        expires_at: expiry(now, now),
    };
    app.store.insert_session(&session).await?;
    // Expired sessions of anyone go at each sign-in; there are few.
    if let Err(err) = app.store.purge_sessions(now).await {
        tracing::warn!(error = %err, "purging expired dashboard sessions failed");
    }
    Ok(Some(SignedIn {
        cookie_value,
        session,
    }))
}

/// The live session a cookie value names, its use recorded.
pub async fn resume(app: &App, cookie_value: &str) -> ServiceResult<Option<DashboardSession>> {
    let Some(mut session) = app
        .store
        .get_session(&tokens::digest_hex(cookie_value))
        .await?
    else {
        return Ok(None);
    };
    let now = Utc::now();
    if session.expires_at <= now {
        app.store.delete_session(&session.id_hash).await?;
        return Ok(None);
    }
    if now - session.seen_at >= TOUCH_EVERY {
        session.seen_at = now;
        session.expires_at = expiry(session.created_at, now);
        app.store
            .touch_session(&session.id_hash, session.seen_at, session.expires_at)
            .await?;
    }
    Ok(Some(session))
}

/// Ends the session a cookie value names (nothing if there is none).
pub async fn sign_out(app: &App, cookie_value: &str) -> ServiceResult<()> {
    app.store
        .delete_session(&tokens::digest_hex(cookie_value))
        .await?;
    Ok(())
}

/// When a session created at `created` and used at `seen` ends.
fn expiry(created: DateTime<Utc>, seen: DateTime<Utc>) -> DateTime<Utc> {
    (seen + IDLE_TIMEOUT).min(created + MAX_AGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_when_idle_or_old_whichever_comes_first() {
        let created = Utc::now();
        assert_eq!(expiry(created, created), created + IDLE_TIMEOUT);
        let late = created + Duration::days(6) + Duration::hours(20);
        assert_eq!(expiry(created, late), created + MAX_AGE);
    }
}
