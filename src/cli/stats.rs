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
    println!("repository   {}", s.location);
    println!(
        "snapshots    {} ({} source{})",
        s.snapshots,
        s.sources,
        if s.sources == 1 { "" } else { "s" }
    );
    println!(
        "stored       {} in {} objects",
        render::size(s.total_bytes),
        s.total_objects
    );
    for group in s.objects.iter().filter(|g| g.count > 0) {
        println!(
            "  {:<10} {:>10}  {:>8} object{}",
            group.prefix,
            render::size(group.bytes),
            group.count,
            if group.count == 1 { "" } else { "s" }
        );
    }
    println!(
        "blobs        {:>10}  {:>10}  {:>10}",
        "count", "plaintext", "stored"
    );
    for blob in &s.blobs {
        println!(
            "  {:<10} {:>10}  {:>10}  {:>10}",
            blob.kind,
            blob.count,
            render::size(blob.raw_bytes),
            render::size(blob.stored_bytes)
        );
    }
    println!(
        "logical      {} across all snapshots",
        render::size(s.logical_bytes)
    );
    println!(
        "savings      dedup {:.1}x, compression {:.1}x, overall {:.1}x",
        s.dedup_ratio, s.compression_ratio, s.overall_ratio
    );
    if s.damaged_blobs > 0 {
        println!(
            "damaged      {} blob copies (run `larder check --read-data`, then back up again to heal)",
            s.damaged_blobs
        );
    }
    Ok(Outcome::Success)
}
