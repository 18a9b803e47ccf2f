//! `sluice server --config FILE`: settings from a TOML file, under the
//! environment and the command line. Each key is a long flag's name with
//! `_` for `-` (`data_dir`, `listen`, `durability`, `log_compression`,
//! `max_body_bytes`, `log_json`, `query_timeout`, `auth_token`,
//! `max_push_queries`). A setting given as a flag wins over its `SLUICE_*`
//! variable, which wins over the file, which wins over the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Deserialize;

use crate::ServerArgs;

/// The settings a config file may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    durability: Option<String>,
    log_compression: Option<String>,
    max_body_bytes: Option<usize>,
    log_json: Option<bool>,
    query_timeout: Option<u64>,
    auth_token: Option<String>,
    max_push_queries: Option<usize>,
}

/// Fills the settings of `args` that neither a flag nor the environment
/// gave (`matches` says which) from the file at `path`.
pub(crate) fn apply(
    args: &mut ServerArgs,
    matches: &ArgMatches,
    path: &Path,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let file: ConfigFile = toml::from_str(&text)
        .with_context(|| format!("the config file {} is not valid", path.display()))?;
    // Only defaults give way to the file.
    let unset = |id: &str| {
        matches!(
            matches.value_source(id),
            None | Some(ValueSource::DefaultValue)
        )
    };
    if let Some(value) = file.data_dir.filter(|_| unset("data_dir")) {
        // Relative to the file, as a config file means it.
        args.data_dir = path.parent().unwrap_or(Path::new(".")).join(value);
    }
    if let Some(value) = file.listen.filter(|_| unset("listen")) {
        args.listen = value;
    }
    if let Some(value) = file.durability.filter(|_| unset("durability")) {
        args.durability = crate::parse_durability(&value)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("durability in {}", path.display()))?;
    }
    if let Some(value) = file.log_compression.filter(|_| unset("log_compression")) {
        args.log_compression = crate::parse_log_compression(&value)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("log_compression in {}", path.display()))?;
    }
    if let Some(value) = file.max_body_bytes.filter(|_| unset("max_body_bytes")) {
        args.max_body_bytes = value;
    }
    if let Some(value) = file.log_json.filter(|_| unset("log_json")) {
        args.log_json = value;
    }
    if let Some(value) = file.query_timeout.filter(|_| unset("query_timeout")) {
        args.query_timeout = value;
    }
    if let Some(value) = file.auth_token.filter(|_| unset("auth_token")) {
        args.auth_token = Some(value);
    }
    if let Some(value) = file.max_push_queries.filter(|_| unset("max_push_queries")) {
        args.max_push_queries = value;
    }
    if args.max_push_queries == 0 {
        bail!("max_push_queries must be at least 1");
    }
    Ok(())
}
