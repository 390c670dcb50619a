//! `key add|list|remove|passwd`: key files wrapping the one master key.
//!
//! Every key file wraps the same master key under a different passphrase;
//! adding one never re-encrypts data. The key that opened the repository and
//! the last remaining key can never be removed, so a repository cannot be
//! locked out by accident.

use crate::backend::Backend;
use bytes::Bytes;

use crate::backend::Put;
use crate::error::{Error, Result};
use crate::hash::KeyId;
use crate::host::{current_host, current_user, now_ns};
use crate::key::{KdfParams, KeyFile};
use crate::repo::{Repo, list_key_ids};

/// A key file, as `key list` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeyInfo {
    /// Key id.
    #[serde(serialize_with = "crate::ops::hex_id")]
    pub id: KeyId,
    /// When it was made, RFC 3339.
    pub created: String,
    /// Host it was made on.
    pub host: String,
    /// User that made it.
    pub user: String,
    /// Argon2id memory cost in KiB.
    pub kdf_memory_kib: u32,
    /// Argon2id passes.
    pub kdf_passes: u32,
    /// True for the key that opened the repository in this run.
    pub current: bool,
}

/// Lists every key file.
pub async fn list_keys(repo: &Repo) -> Result<Vec<KeyInfo>> {
    let mut out = Vec::new();
    for id in list_key_ids(repo.backend()).await? {
        let bytes = repo
            .backend()
            .get(&crate::layout::key_path(&id), crate::key::MAX_KEY_FILE_SIZE)
            .await?;
        let file = KeyFile::parse(id, &bytes)?;
        out.push(KeyInfo {
            id,
            created: crate::ops::format_time(file.header.created_ns),
            host: file.header.host.clone(),
            user: file.header.user.clone(),
            kdf_memory_kib: file.header.kdf.memory_kib,
            kdf_passes: file.header.kdf.passes,
            current: id == repo.key_id(),
        });
    }
    out.sort_by(|a, b| a.created.cmp(&b.created));
    Ok(out)
}

/// Adds a key file for `passphrase`; returns its id.
pub async fn add_key(repo: &Repo, passphrase: &[u8], kdf: KdfParams) -> Result<KeyId> {
    let (id, bytes) = KeyFile::create(
        repo.master_key(),
        repo.id(),
        passphrase,
        kdf,
        now_ns(),
        current_host(),
        current_user(),
    )?;
    match repo
        .backend()
        .put_if_absent(&crate::layout::key_path(&id), Bytes::from(bytes))
        .await?
    {
        Put::Created => Ok(id),
        Put::Existed => Err(Error::corrupt(
            crate::layout::key_path(&id),
            "a key of this random id already exists",
        )),
    }
}

/// Removes the key file whose id starts with `prefix`.
pub async fn remove_key(repo: &Repo, prefix: &str) -> Result<KeyId> {
    let ids = list_key_ids(repo.backend()).await?;
    let matching: Vec<KeyId> = ids
        .iter()
        .copied()
        .filter(|id| id.to_hex().starts_with(prefix))
        .collect();
    let id = match (prefix.len() >= 4, &matching[..]) {
        (true, [id]) => *id,
        (false, _) => {
            return Err(Error::InvalidArgument(format!(
                "key id prefix {prefix:?} is too short; give at least 4 hex digits"
            )));
        }
        (_, []) => {
            return Err(Error::InvalidArgument(format!(
                "no key id starts with {prefix:?}"
            )));
        }
        _ => {
            return Err(Error::InvalidArgument(format!(
                "key id prefix {prefix:?} matches several keys"
            )));
        }
    };
    if id == repo.key_id() {
        return Err(Error::InvalidArgument(
            "refusing to remove the key this command opened the repository with; open it with another key first".into(),
        ));
    }
    if ids.len() <= 1 {
        return Err(Error::InvalidArgument(
            "refusing to remove the last key".into(),
        ));
    }
    repo.backend().delete(&crate::layout::key_path(&id)).await?;
    Ok(id)
}

/// Replaces the current key with one for `passphrase`: the new key file is
/// written before the old one is deleted. Returns the new key's id.
pub async fn change_passphrase(repo: &Repo, passphrase: &[u8], kdf: KdfParams) -> Result<KeyId> {
    let new = add_key(repo, passphrase, kdf).await?;
    repo.backend()
        .delete(&crate::layout::key_path(&repo.key_id()))
        .await?;
    Ok(new)
}
