//! OAuth clients, authorization codes and refresh tokens in the SQL store: the [`OAuthStore`]
//! writes and queries, including the replay rule for refresh tokens.

use async_trait::async_trait;

use super::{classify, Pools, SqlStore};
use crate::domain::oauth::{AuthCode, OAuthClient, RefreshToken, RefreshUse};
use crate::store::rows::{to_json, to_ms, ClientRow, CodeRow, RefreshRow};
use crate::store::{OAuthStore, StoreResult};

#[async_trait]
impl OAuthStore for SqlStore {
    async fn insert_oauth_client(&self, client: &OAuthClient) -> StoreResult<()> {
        let sql = "INSERT INTO oauth_clients (client_id, secret_hash, auth_method, redirect_uris, client_name, scope, \
                   created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)";
        on_write!(self, pool => {
            sqlx::query(sql)
                .bind(&client.client_id)
                .bind(&client.secret_hash)
                .bind(&client.auth_method)
                .bind(to_json(&client.redirect_uris))
                .bind(&client.client_name)
                .bind(&client.scope)
                .bind(to_ms(client.created_at))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(())
    }

    async fn get_oauth_client(&self, client_id: &str) -> StoreResult<Option<OAuthClient>> {
        let sql = "SELECT client_id, secret_hash, auth_method, redirect_uris, client_name, scope, created_at_ms \
                   FROM oauth_clients WHERE client_id = $1";
        let row: Option<ClientRow> = on_read!(self, pool => {
            sqlx::query_as(sql).bind(client_id).fetch_optional(pool).await
        })
        .map_err(classify)?;
        row.map(OAuthClient::try_from).transpose()
    }

    async fn insert_auth_code(&self, code: &AuthCode) -> StoreResult<()> {
        let sql = "INSERT INTO oauth_codes (code_hash, client_id, redirect_uri, code_challenge, resource, scope, \
                   expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)";
        on_write!(self, pool => {
            sqlx::query(sql)
                .bind(&code.code_hash)
                .bind(&code.client_id)
                .bind(&code.redirect_uri)
                .bind(&code.code_challenge)
                .bind(&code.resource)
                .bind(&code.scope)
                .bind(to_ms(code.expires_at))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(())
    }

    async fn take_auth_code(&self, code_hash: &str) -> StoreResult<Option<AuthCode>> {
        let sql = "DELETE FROM oauth_codes WHERE code_hash = $1 RETURNING code_hash, client_id, redirect_uri, \
                   code_challenge, resource, scope, expires_at_ms";
        let row: Option<CodeRow> = on_write!(self, pool => {
            sqlx::query_as(sql).bind(code_hash).fetch_optional(pool).await
        })
        .map_err(classify)?;
        row.map(AuthCode::try_from).transpose()
    }

    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()> {
        let sql = "INSERT INTO oauth_refresh_tokens (token_hash, family_id, client_id, resource, scope, expires_at_ms) \
                   VALUES ($1, $2, $3, $4, $5, $6)";
        on_write!(self, pool => {
            sqlx::query(sql)
                .bind(&token.token_hash)
                .bind(&token.family_id)
                .bind(&token.client_id)
                .bind(&token.resource)
                .bind(&token.scope)
                .bind(to_ms(token.expires_at))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(())
    }

    async fn use_refresh_token(&self, token_hash: &str) -> StoreResult<RefreshUse> {
        let take = "UPDATE oauth_refresh_tokens SET used = TRUE WHERE token_hash = $1 AND used = FALSE \
                    AND revoked = FALSE RETURNING token_hash, family_id, client_id, resource, scope, expires_at_ms";
        let taken: Option<RefreshRow> = on_write!(self, pool => {
            sqlx::query_as(take).bind(token_hash).fetch_optional(pool).await
        })
        .map_err(classify)?;
        if let Some(row) = taken {
            return Ok(RefreshUse::Fresh(RefreshToken::try_from(row)?));
        }
        match self.refresh_family_of(token_hash).await? {
            Some((family_id, _)) => {
                self.revoke_refresh_family(&family_id).await?;
                Ok(RefreshUse::Replayed { family_id })
            }
            None => Ok(RefreshUse::Unknown),
        }
    }

    async fn revoke_refresh_family(&self, family_id: &str) -> StoreResult<()> {
        on_write!(self, pool => {
            sqlx::query("UPDATE oauth_refresh_tokens SET revoked = TRUE WHERE family_id = $1")
                .bind(family_id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(())
    }

    async fn refresh_family_of(&self, token_hash: &str) -> StoreResult<Option<(String, String)>> {
        let row: Option<(String, String)> = on_read!(self, pool => {
            sqlx::query_as("SELECT family_id, client_id FROM oauth_refresh_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(pool)
                .await
        })
        .map_err(classify)?;
        Ok(row)
    }
}
