//! MCP servers, credentials and tool bundles in the SQL store: the [`ToolStore`] reads and
//! writes.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{classify, Pools, SqlStore};
use crate::domain::dynamic::DynamicVersion;
use crate::domain::tools::{
    Credential, McpServer, ServerOAuth, ServerTool, ToolBundle, ToolGrant, Transport,
};
use crate::store::rows::{from_ms, to_json, to_ms};
use crate::store::{StoreError, StoreResult, ToolStore};

/// What of a server is kept in its `config` column.
#[derive(Serialize, Deserialize)]
struct ServerConfig {
    description: Option<String>,
    transport: Transport,
    tools: Vec<ServerTool>,
    tools_listed_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oauth: Option<ServerOAuth>,
}

type DocumentRow = (String, String, i64, i64);

fn server_from_row((name, config, created, updated): DocumentRow) -> StoreResult<McpServer> {
    let config: ServerConfig = serde_json::from_str(&config)
        .map_err(|err| StoreError::Corrupt(format!("server {name}: {err}")))?;
    Ok(McpServer {
        name,
        description: config.description,
        transport: config.transport,
        tools: config.tools,
        tools_listed_at: config.tools_listed_at_ms.map(from_ms).transpose()?,
        oauth: config.oauth,
        created_at: from_ms(created)?,
        updated_at: from_ms(updated)?,
    })
}

fn config_of(server: &McpServer) -> String {
    to_json(&ServerConfig {
        description: server.description.clone(),
        transport: server.transport.clone(),
        tools: server.tools.clone(),
        tools_listed_at_ms: server.tools_listed_at.map(to_ms),
        oauth: server.oauth.clone(),
    })
}

/// What of a bundle is kept in its `config` column.
#[derive(Serialize, Deserialize)]
struct BundleConfig {
    description: Option<String>,
    servers: Vec<ToolGrant>,
    tools: Vec<String>,
}

fn bundle_from_row((name, config, created, updated): DocumentRow) -> StoreResult<ToolBundle> {
    let config: BundleConfig = serde_json::from_str(&config)
        .map_err(|err| StoreError::Corrupt(format!("bundle {name}: {err}")))?;
    Ok(ToolBundle {
        name,
        description: config.description,
        servers: config.servers,
        tools: config.tools,
        created_at: from_ms(created)?,
        updated_at: from_ms(updated)?,
    })
}

fn bundle_config(bundle: &ToolBundle) -> String {
    to_json(&BundleConfig {
        description: bundle.description.clone(),
        servers: bundle.servers.clone(),
        tools: bundle.tools.clone(),
    })
}

type CredentialRow = (String, String, String, String, i64, i64, Option<i64>);

fn credential_from_row(row: CredentialRow) -> StoreResult<Credential> {
    let (name, wrapped_key, sealed_value, fingerprint, created, updated, used) = row;
    Ok(Credential {
        name,
        wrapped_key,
        sealed_value,
        fingerprint,
        created_at: from_ms(created)?,
        updated_at: from_ms(updated)?,
        last_used_at: used.map(from_ms).transpose()?,
    })
}

/// The two tables of named JSON documents (`name`, `config`, `created_at_ms`,
/// `updated_at_ms`), and what a row of each is called in a conflict.
#[derive(Clone, Copy)]
enum Documents {
    Servers,
    Bundles,
}

impl Documents {
    fn table(self) -> &'static str {
        match self {
            Documents::Servers => "mcp_servers",
            Documents::Bundles => "tool_bundles",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Documents::Servers => "server",
            Documents::Bundles => "bundle",
        }
    }
}

/// One named document as written.
struct Document<'a> {
    name: &'a str,
    config: String,
    created_at_ms: i64,
    updated_at_ms: i64,
}

impl SqlStore {
    async fn insert_document(&self, kind: Documents, doc: Document<'_>) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO {} (name, config, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4)",
            kind.table()
        );
        on_write!(self, pool => {
            sqlx::query(&sql)
                .bind(doc.name)
                .bind(&doc.config)
                .bind(doc.created_at_ms)
                .bind(doc.updated_at_ms)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(|err| match classify(err) {
            StoreError::Conflict(_) => StoreError::Conflict(format!(
                "a {} named `{}` already exists",
                kind.what(),
                doc.name
            )),
            other => other,
        })?;
        Ok(())
    }

    /// Replaces the document of that name; `NotFound` when there is none.
    async fn update_document(&self, kind: Documents, doc: Document<'_>) -> StoreResult<()> {
        let sql = format!(
            "UPDATE {} SET config = $2, updated_at_ms = $3 WHERE name = $1",
            kind.table()
        );
        let updated = on_write!(self, pool => {
            sqlx::query(&sql)
                .bind(doc.name)
                .bind(&doc.config)
                .bind(doc.updated_at_ms)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        if updated == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn list_documents(&self, kind: Documents) -> StoreResult<Vec<DocumentRow>> {
        let sql = format!(
            "SELECT name, config, created_at_ms, updated_at_ms FROM {} ORDER BY name",
            kind.table()
        );
        on_read!(self, pool => sqlx::query_as(&sql).fetch_all(pool).await).map_err(classify)
    }

    /// Whether it existed.
    async fn delete_document(&self, kind: Documents, name: &str) -> StoreResult<bool> {
        let sql = format!("DELETE FROM {} WHERE name = $1", kind.table());
        let deleted = on_write!(self, pool => {
            sqlx::query(&sql)
                .bind(name)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(deleted == 1)
    }
}

fn server_document(server: &McpServer) -> Document<'_> {
    Document {
        name: &server.name,
        config: config_of(server),
        created_at_ms: to_ms(server.created_at),
        updated_at_ms: to_ms(server.updated_at),
    }
}

fn bundle_document(bundle: &ToolBundle) -> Document<'_> {
    Document {
        name: &bundle.name,
        config: bundle_config(bundle),
        created_at_ms: to_ms(bundle.created_at),
        updated_at_ms: to_ms(bundle.updated_at),
    }
}

#[async_trait]
impl ToolStore for SqlStore {
    async fn insert_server(&self, server: &McpServer) -> StoreResult<()> {
        self.insert_document(Documents::Servers, server_document(server))
            .await
    }

    async fn update_server(&self, server: &McpServer) -> StoreResult<()> {
        self.update_document(Documents::Servers, server_document(server))
            .await
    }

    async fn list_servers(&self) -> StoreResult<Vec<McpServer>> {
        let rows = self.list_documents(Documents::Servers).await?;
        rows.into_iter().map(server_from_row).collect()
    }

    async fn delete_server(&self, name: &str) -> StoreResult<bool> {
        self.delete_document(Documents::Servers, name).await
    }

    async fn put_credential(&self, credential: &Credential) -> StoreResult<()> {
        on_write!(self, pool => {
            sqlx::query(
                "INSERT INTO credentials (name, wrapped_key, sealed_value, fingerprint, created_at_ms, updated_at_ms, last_used_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO UPDATE SET \
                 wrapped_key = excluded.wrapped_key, sealed_value = excluded.sealed_value, \
                 fingerprint = excluded.fingerprint, updated_at_ms = excluded.updated_at_ms",
            )
            .bind(&credential.name)
            .bind(&credential.wrapped_key)
            .bind(&credential.sealed_value)
            .bind(&credential.fingerprint)
            .bind(to_ms(credential.created_at))
            .bind(to_ms(credential.updated_at))
            .bind(credential.last_used_at.map(to_ms))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(())
    }

    async fn list_credentials(&self) -> StoreResult<Vec<Credential>> {
        let rows: Vec<CredentialRow> = on_read!(self, pool => {
            sqlx::query_as(
                "SELECT name, wrapped_key, sealed_value, fingerprint, created_at_ms, updated_at_ms, last_used_at_ms \
                 FROM credentials ORDER BY name",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(classify)?;
        rows.into_iter().map(credential_from_row).collect()
    }

    async fn delete_credential(&self, name: &str) -> StoreResult<bool> {
        let deleted = on_write!(self, pool => {
            sqlx::query("DELETE FROM credentials WHERE name = $1")
                .bind(name)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(deleted == 1)
    }

    async fn mark_credentials_used(&self, names: &[String], at: DateTime<Utc>) -> StoreResult<()> {
        if names.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = (0..names.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "UPDATE credentials SET last_used_at_ms = $1 WHERE name IN ({})",
            list.join(", ")
        );
        on_write!(self, pool => {
            let mut query = sqlx::query(&sql).bind(to_ms(at));
            for name in names {
                query = query.bind(name);
            }
            query.execute(pool).await.map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(())
    }

    async fn insert_bundle(&self, bundle: &ToolBundle) -> StoreResult<()> {
        self.insert_document(Documents::Bundles, bundle_document(bundle))
            .await
    }

    async fn update_bundle(&self, bundle: &ToolBundle) -> StoreResult<()> {
        self.update_document(Documents::Bundles, bundle_document(bundle))
            .await
    }

    async fn list_bundles(&self) -> StoreResult<Vec<ToolBundle>> {
        let rows = self.list_documents(Documents::Bundles).await?;
        rows.into_iter().map(bundle_from_row).collect()
    }

    async fn delete_bundle(&self, name: &str) -> StoreResult<bool> {
        self.delete_document(Documents::Bundles, name).await
    }

    async fn insert_dynamic_version(&self, version: &DynamicVersion) -> StoreResult<()> {
        on_write!(self, pool => {
            sqlx::query(
                "INSERT INTO dynamic_versions (server, version, document, created_at_ms) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&version.server)
            .bind(i64::from(version.version))
            .bind(to_json(version))
            .bind(to_ms(version.created_at))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .map_err(|err| match classify(err) {
            StoreError::Conflict(_) => StoreError::Conflict(format!(
                "version {} of `{}` exists already",
                version.version, version.server
            )),
            other => other,
        })?;
        Ok(())
    }

    async fn update_dynamic_version(&self, version: &DynamicVersion) -> StoreResult<()> {
        let updated = on_write!(self, pool => {
            sqlx::query(
                "UPDATE dynamic_versions SET document = $3 WHERE server = $1 AND version = $2",
            )
            .bind(&version.server)
            .bind(i64::from(version.version))
            .bind(to_json(version))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        if updated == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn list_dynamic_versions(&self, server: &str) -> StoreResult<Vec<DynamicVersion>> {
        let rows: Vec<(String,)> = on_read!(self, pool => {
            sqlx::query_as(
                "SELECT document FROM dynamic_versions WHERE server = $1 ORDER BY version",
            )
            .bind(server)
            .fetch_all(pool)
            .await
        })
        .map_err(classify)?;
        rows.into_iter()
            .map(|(document,)| {
                serde_json::from_str(&document).map_err(|err| {
                    StoreError::Corrupt(format!("a version of dynamic server {server}: {err}"))
                })
            })
            .collect()
    }

    async fn delete_dynamic_versions(&self, server: &str) -> StoreResult<u64> {
        on_write!(self, pool => {
            sqlx::query("DELETE FROM dynamic_versions WHERE server = $1")
                .bind(server)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)
    }
}
