//! What runs can reach beside the CLI's own tools: the registry of MCP servers ([`servers`]),
//! the credentials vault ([`credentials`]; write-only: a value is never shown again once set),
//! tool bundles ([`bundles`]: named sets of grants), and, when a worker claims a run, the
//! resolution of the run's grants into the servers, tool lists and sealed credentials it hands
//! that worker ([`grants`]).

mod bundles;
mod credentials;
pub mod dynamic;
mod grants;
mod import;
pub mod oauth_client;
mod probe;
mod servers;

pub use bundles::{
    assign_bundle, create_bundle, delete_bundle, get_bundle, list_bundles, replace_bundle,
    AssignInput, BundleInput,
};
pub(crate) use credentials::{credential_value, credential_values};
pub use credentials::{delete_credential, list_credentials, set_credential, CredentialView};
pub use grants::{check_tools, Handed, Registry};
pub use import::{import, ImportInput, Imported};
pub use servers::{
    delete_server, find_server, get_server, invoke_tool, list_servers, register_server,
    replace_server, test_server, validate_server, Invoked, ServerInput, ServerView, TestedServer,
    ToolInput,
};
