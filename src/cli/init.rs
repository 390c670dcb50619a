//! `larder init`.

use anyhow::{Context, Result};
use clap::Args;
use larder::config::ChunkerProfile;
use larder::host::{current_host, current_user};
use larder::key::KdfParams;
use larder::repo::{InitOptions, Repo};

use super::{GlobalArgs, Outcome, passphrase, render};

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Argon2id memory cost of the key file, in MiB (at least 64 recommended)
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    kdf_memory: u32,
    /// Argon2id passes
    #[arg(long, default_value_t = 3, value_name = "N")]
    kdf_passes: u32,
    /// Override a chunker profile, as NAME=MIN:AVG:MAX (such as stream=4K:16K:64K);
    /// profiles: "stream" for dumps, "files" for file trees
    #[arg(long = "chunker", value_name = "SPEC", value_parser = parse_profile)]
    chunkers: Vec<ChunkerProfile>,
    /// zstd compression level for stored blobs [default: 1]
    #[arg(long, value_name = "LEVEL", allow_hyphen_values = true)]
    compression: Option<i32>,
    /// Target size of data packs in MiB [default: 16]
    #[arg(long, value_name = "MIB")]
    pack_size: Option<u32>,
    /// Use the chunker seed and profiles of this existing repository, so that
    /// `copy` between the two keeps deduplicating (the passphrase comes from
    /// --from-password-file, else LARDER_FROM_PASSWORD, else a prompt)
    #[arg(long, value_name = "URL", conflicts_with = "chunkers")]
    copy_chunker_params_from: Option<String>,
    /// Passphrase file of the repository named by --copy-chunker-params-from
    #[arg(long, value_name = "FILE", requires = "copy_chunker_params_from")]
    from_password_file: Option<std::path::PathBuf>,
    /// Entries per content list before another level is added (for testing deep lists)
    #[arg(long, hide = true)]
    list_fanout: Option<u32>,
}

fn parse_profile(spec: &str) -> Result<ChunkerProfile, String> {
    ChunkerProfile::parse(spec).map_err(|e| e.to_string())
}

#[derive(serde::Serialize)]
struct InitSummary {
    repository: String,
    id: String,
    key: String,
}

pub async fn run(global: &GlobalArgs, args: InitArgs) -> Result<Outcome> {
    let url = global.repo_url()?;
    let backend = larder::backend::open(url)?;
    let passphrase = passphrase::new_for_init(global)?;
    let (chunker_seed, profiles) = match &args.copy_chunker_params_from {
        Some(from) => {
            let other = super::copy::open_other(
                global,
                from,
                args.from_password_file.as_deref(),
                "LARDER_FROM_PASSWORD",
                "other",
                None,
            )
            .await?;
            let config = other.config();
            (Some(config.chunker_seed), config.profiles.clone())
        }
        None => (None, args.chunkers),
    };
    let options = InitOptions {
        chunker_seed,
        kdf: KdfParams {
            memory_kib: args.kdf_memory.saturating_mul(1024),
            passes: args.kdf_passes,
            ..KdfParams::default()
        },
        profiles,
        compression_level: args.compression,
        data_pack_size: args.pack_size.map(|m| m.saturating_mul(1 << 20)),
        list_fanout: args.list_fanout,
        host: current_host(),
        user: current_user(),
    };
    let repo = Repo::init(
        backend,
        passphrase.as_bytes(),
        options,
        &global.cache_root()?,
    )
    .await
    .with_context(|| format!("creating repository {url}"))?;
    let summary = InitSummary {
        repository: url.into(),
        id: repo.id().to_hex(),
        key: repo.key_id().to_hex(),
    };
    if global.json {
        render::print_json(&summary)?;
    } else if !global.quiet {
        outln!("created repository {} at {url}", repo.id().short())?;
        outln!("keep the passphrase safe: without it the backups cannot be read")?;
    }
    Ok(Outcome::Success)
}
