//! `larder stats`.

use anyhow::Result;

use super::{GlobalArgs, Outcome, open, render};

pub async fn run(global: &GlobalArgs) -> Result<Outcome> {
    let repo = open(global).await?;
    let s = larder::ops::stats::stats(&repo).await?;
    if global.json {
        render::print_json(&s)?;
        return Ok(Outcome::Success);
    }
    outln!("repository   {}", s.location)?;
    outln!(
        "snapshots    {} ({} source{})",
        s.snapshots,
        s.sources,
        if s.sources == 1 { "" } else { "s" }
    )?;
    outln!(
        "stored       {} in {} objects",
        render::size(s.total_bytes),
        s.total_objects
    )?;
    for group in s.objects.iter().filter(|g| g.count > 0) {
        outln!(
            "  {:<10} {:>10}  {:>8} object{}",
            group.prefix,
            render::size(group.bytes),
            group.count,
            if group.count == 1 { "" } else { "s" }
        )?;
    }
    outln!(
        "blobs        {:>10}  {:>10}  {:>10}",
        "count",
        "plaintext",
        "stored"
    )?;
    for blob in &s.blobs {
        outln!(
            "  {:<10} {:>10}  {:>10}  {:>10}",
            blob.kind,
            blob.count,
            render::size(blob.raw_bytes),
            render::size(blob.stored_bytes)
        )?;
    }
    outln!(
        "logical      {} across all snapshots",
        render::size(s.logical_bytes)
    )?;
    outln!(
        "savings      dedup {:.1}x, compression {:.1}x, overall {:.1}x",
        s.dedup_ratio,
        s.compression_ratio,
        s.overall_ratio
    )?;
    if s.damaged_blobs > 0 {
        outln!(
            "damaged      {} blob copies (run `larder check --read-data`, then back up again to heal)",
            s.damaged_blobs
        )?;
    }
    Ok(Outcome::Success)
}
