//! What the OAuth authorization server keeps: registered clients, authorization codes and refresh
//! tokens. Codes and refresh tokens go in and out of here as the clients hold them; only their
//! digests are stored.

use crate::app::App;
use crate::domain::oauth::{AuthCode, OAuthClient, RefreshToken, RefreshUse};
use crate::domain::ServiceResult;
use crate::tokens;

pub async fn register_client(app: &App, client: &OAuthClient) -> ServiceResult<()> {
    Ok(app.store.insert_oauth_client(client).await?)
}

/// A registered client.
pub async fn client(app: &App, client_id: &str) -> ServiceResult<Option<OAuthClient>> {
    Ok(app.store.get_oauth_client(client_id).await?)
}

/// Keeps a code for [`redeem_code`]; `stored.code_hash` is the digest of the code given out.
pub async fn save_code(app: &App, stored: &AuthCode) -> ServiceResult<()> {
    Ok(app.store.insert_auth_code(stored).await?)
}

/// Takes the code: a code can be redeemed once.
pub async fn redeem_code(app: &App, code: &str) -> ServiceResult<Option<AuthCode>> {
    Ok(app.store.take_auth_code(&tokens::digest_hex(code)).await?)
}

/// Keeps a refresh token; `stored.token_hash` is the digest of the token given out.
pub async fn save_refresh_token(app: &App, stored: &RefreshToken) -> ServiceResult<()> {
    Ok(app.store.insert_refresh_token(stored).await?)
}

/// Uses up a refresh token; presenting one used before revokes its whole grant.
pub async fn use_refresh_token(app: &App, token: &str) -> ServiceResult<RefreshUse> {
    Ok(app
        .store
        .use_refresh_token(&tokens::digest_hex(token))
        .await?)
}

/// Revokes the grant of a refresh token if `client_id` owns it. Returns whether one was revoked;
/// an unknown token, or one of another client, changes nothing.
pub async fn revoke_grant(app: &App, token: &str, client_id: &str) -> ServiceResult<bool> {
    let owned = app
        .store
        .refresh_family_of(&tokens::digest_hex(token))
        .await?
        .filter(|(_, owner)| owner == client_id);
    let Some((family, _)) = owned else {
        return Ok(false);
    };
    app.store.revoke_refresh_family(&family).await?;
    Ok(true)
}
