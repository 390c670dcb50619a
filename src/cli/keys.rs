//! `larder key add|list|remove|passwd|export`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use larder::key::KdfParams;
use larder::ops::keys;

use super::{GlobalArgs, Outcome, open, passphrase, render};

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Add a passphrase that opens the repository
    Add(NewKeyArgs),
    /// List the key files
    List,
    /// Remove a key file (not the one in use, never the last)
    Remove {
        /// Key id prefix (at least 4 hex digits)
        id: String,
    },
    /// Change the passphrase in use: add a new key file, then remove the current one
    Passwd(NewKeyArgs),
    /// Write the repository's key, unencrypted, to a new file (mode 0600) that opens it with --key-file and no passphrase or key derivation. Whoever reads the file can read and write the repository, and removing passphrases does not revoke it
    Export {
        /// The file to create (never overwritten)
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct NewKeyArgs {
    /// Read the new passphrase from this file [or LARDER_NEW_PASSWORD, or a prompt]
    #[arg(long, value_name = "FILE")]
    new_password_file: Option<PathBuf>,
    /// Argon2id memory cost in MiB
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    kdf_memory: u32,
    /// Argon2id passes
    #[arg(long, default_value_t = 3, value_name = "N")]
    kdf_passes: u32,
}

impl NewKeyArgs {
    fn kdf(&self) -> KdfParams {
        KdfParams {
            memory_kib: self.kdf_memory.saturating_mul(1024),
            passes: self.kdf_passes,
            ..KdfParams::default()
        }
    }
}

pub async fn run(global: &GlobalArgs, command: KeyCommand) -> Result<Outcome> {
    let repo = open(global).await?;
    match command {
        KeyCommand::List => {
            let keys = keys::list_keys(&repo).await?;
            if global.json {
                render::print_json(&keys)?;
            } else {
                outln!(
                    "  {:<8}  {:<27}  {:<16}  {:<12}  kdf",
                    "id",
                    "created",
                    "host",
                    "user"
                )?;
                for k in keys {
                    outln!(
                        "{} {:<8}  {:<27}  {:<16}  {:<12}  {} MiB x {}",
                        if k.current { '*' } else { ' ' },
                        k.id.short(),
                        k.created,
                        k.host,
                        k.user,
                        k.kdf_memory_kib / 1024,
                        k.kdf_passes
                    )?;
                }
            }
        }
        KeyCommand::Add(args) => {
            let pw = passphrase::new_key(args.new_password_file.as_deref())?;
            let id = keys::add_key(&repo, pw.as_bytes(), args.kdf()).await?;
            report(global, "added key", &id)?;
        }
        KeyCommand::Passwd(_) if repo.opened_with_key_file() => {
            anyhow::bail!(
                "key passwd replaces the passphrase that opened the repository, and a key file \
                 opened it: give the passphrase to change (--password-file), or use key add and \
                 key remove"
            );
        }
        KeyCommand::Passwd(args) => {
            let pw = passphrase::new_key(args.new_password_file.as_deref())?;
            let id = keys::change_passphrase(&repo, pw.as_bytes(), args.kdf()).await?;
            report(global, "passphrase changed; new key", &id)?;
        }
        KeyCommand::Remove { id } => {
            let id = keys::remove_key(&repo, &id).await?;
            report(global, "removed key", &id)?;
        }
        KeyCommand::Export { file } => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let bytes = zeroize::Zeroizing::new(repo.export_key());
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .with_context(|| format!("creating the key file {}", file.display()))?;
            out.write_all(&bytes)
                .and_then(|()| out.sync_all())
                .with_context(|| format!("writing the key file {}", file.display()))?;
            if !global.quiet && !global.json {
                outln!(
                    "wrote the repository's key to {} (mode 0600); it opens the repository with --key-file and no passphrase: keep it as safe as the data",
                    file.display()
                )?;
            }
        }
    }
    Ok(Outcome::Success)
}

fn report(global: &GlobalArgs, what: &str, id: &larder::hash::KeyId) -> Result<()> {
    if global.json {
        render::print_json(&serde_json::json!({ "key": id.to_hex() }))
    } else {
        if !global.quiet {
            outln!("{what} {}", id.short())?;
        }
        Ok(())
    }
}
