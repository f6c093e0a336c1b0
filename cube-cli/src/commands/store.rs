//! The state store of a daemon: which kind, and in which data directory.
//!
//! `cube manager` and `cube worker` keep their state in a redb file by default, in a data
//! directory per role and name: `$XDG_DATA_HOME/cube/<role>` (or
//! `~/.local/share/cube/<role>`), where the role is `manager` or `worker-<name>`. `cube dev`
//! keeps memory stores unless `--store persistent` is given.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use cube_core::{MemoryStore, RedbStore, Store};

use crate::args::{StoreArgs, StoreKind};

/// The state store of a daemon, resolved from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// Nothing survives the process.
    Memory,
    /// A redb store in this directory.
    Persistent(PathBuf),
}

impl StoreChoice {
    /// Resolves `args` for `role` (`manager`, `worker-<name>` or `dev`), whose store is
    /// `default` when `--store` is not given.
    ///
    /// # Errors
    ///
    /// Fails when `--data-dir` is given with `--store memory`, or when no data directory is
    /// given and neither `XDG_DATA_HOME` nor `HOME` is set.
    pub fn resolve(args: &StoreArgs, role: &str, default: StoreKind) -> Result<Self> {
        match (args.store.unwrap_or(default), &args.data_dir) {
            (StoreKind::Memory, Some(dir)) if args.store == Some(StoreKind::Memory) => bail!(
                "--data-dir {} has no effect with --store memory; leave one of them out",
                dir.display()
            ),
            (StoreKind::Memory, _) => Ok(StoreChoice::Memory),
            (StoreKind::Persistent, Some(dir)) => Ok(StoreChoice::Persistent(dir.clone())),
            (StoreKind::Persistent, None) => Ok(StoreChoice::Persistent(default_data_dir(role)?)),
        }
    }

    /// Opens the store.
    ///
    /// # Errors
    ///
    /// Fails naming the directory when it cannot be created or read, or when another process
    /// has it open.
    pub fn open(&self) -> Result<Box<dyn Store>> {
        match self {
            StoreChoice::Memory => Ok(Box::new(MemoryStore::new())),
            StoreChoice::Persistent(dir) => {
                // The store's error names the directory.
                let store = RedbStore::open(dir).context("failed to open the persistent store")?;
                Ok(Box::new(store))
            }
        }
    }

    /// Returns a short description for the start-up log line.
    pub fn describe(&self) -> String {
        match self {
            StoreChoice::Memory => "memory".to_owned(),
            StoreChoice::Persistent(dir) => dir.display().to_string(),
        }
    }
}

/// `$XDG_DATA_HOME/cube/<role>`, or `$HOME/.local/share/cube/<role>`.
fn default_data_dir(role: &str) -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|value| !value.is_empty()) {
        Some(data_home) => PathBuf::from(data_home),
        None => match std::env::var_os("HOME").filter(|value| !value.is_empty()) {
            Some(home) => PathBuf::from(home).join(".local/share"),
            None => bail!("neither XDG_DATA_HOME nor HOME is set; pass --data-dir"),
        },
    };
    Ok(base.join("cube").join(role))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(store: Option<StoreKind>, dir: Option<&str>) -> StoreArgs {
        StoreArgs {
            data_dir: dir.map(PathBuf::from),
            store,
        }
    }

    #[test]
    fn store_kind_defaults_per_role() {
        let memory = StoreChoice::resolve(&args(None, None), "dev", StoreKind::Memory).unwrap();
        assert_eq!(memory, StoreChoice::Memory);
        let chosen =
            StoreChoice::resolve(&args(None, Some("/d")), "manager", StoreKind::Persistent)
                .unwrap();
        assert_eq!(chosen, StoreChoice::Persistent(PathBuf::from("/d")));
        let dev = StoreChoice::resolve(
            &args(Some(StoreKind::Persistent), Some("/d")),
            "dev",
            StoreKind::Memory,
        )
        .unwrap();
        assert_eq!(dev, StoreChoice::Persistent(PathBuf::from("/d")));
    }

    #[test]
    fn default_directory_is_per_role() {
        let StoreChoice::Persistent(dir) =
            StoreChoice::resolve(&args(None, None), "worker-w1", StoreKind::Persistent).unwrap()
        else {
            panic!("persistent by default");
        };
        assert!(dir.ends_with("cube/worker-w1"), "{}", dir.display());
    }

    #[test]
    fn memory_store_rejects_a_data_dir() {
        let error = StoreChoice::resolve(
            &args(Some(StoreKind::Memory), Some("/d")),
            "manager",
            StoreKind::Persistent,
        )
        .unwrap_err();
        assert!(error.to_string().contains("--data-dir /d"), "{error}");
    }
}
