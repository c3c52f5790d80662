//! Peak memory and time of a state-machine snapshot: built from a store with many orders,
//! sent in openraft-sized chunks into the file an empty store receives, and installed there.
//!
//! ```text
//! cargo run --release -p soundwave-store --example snapshot_memory -- populate [orders] [dir]
//! cargo run --release -p soundwave-store --example snapshot_memory -- measure [dir] [cache MiB]
//! ```
//!
//! `populate` fills `dir/source.redb` (default `target/snapshot-memory`, 200,000 orders);
//! `measure`, in a fresh process, reports the peak resident memory (`VmHWM`, reset before
//! each phase through `/proc/self/clear_refs`) and the time of each phase. Both stores get
//! redb's page cache of `cache MiB` (default: the store's default, 256 MiB), which is most
//! of what stays resident once a store has been read or written whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use rust_decimal::Decimal;
use store::raft::{DiscardResults, StateMachine};
use store::{
    ChangeSet, Command, DEFAULT_PAGE_CACHE_BYTES, NewProduct, NewUser, OrderLine, OrderLines, Store,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Failure = Box<dyn std::error::Error + Send + Sync>;

const USERS: u64 = 2_000;
const PRODUCTS: u64 = 20_000;
const BATCH: usize = 2_000;
/// openraft's default snapshot chunk.
const CHUNK: usize = 3 * 1024 * 1024;

/// `VmRSS` and `VmHWM` of this process, in MiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak to the current resident size (Linux 4.0+).
fn reset_peak() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak resident size: {e}");
    }
}

fn apply(store: &Store, commands: &mut Vec<Command>) -> Result<(), Failure> {
    let results = store.apply_batch(commands, &mut ChangeSet::default())?;
    if let Some(rejected) = results.iter().find_map(|r| r.as_ref().err()) {
        return Err(format!("a command was rejected: {rejected}").into());
    }
    commands.clear();
    Ok(())
}

fn populate(dir: &Path, orders: u64) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("source.redb");
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    let started = Instant::now();
    let store = Store::open(&path)?;
    let mut commands = vec![Command::CreateCategory {
        name: "Records".into(),
    }];
    for user in 0..USERS {
        commands.push(Command::CreateUser(NewUser {
            username: format!("buyer{user}"),
            email: format!("buyer{user}@example.com"),
            phone_number: "+10000000000".into(),
            password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$hash-of-buyer{user}"),
            is_staff: false,
            date_joined: 1,
        }));
    }
    apply(&store, &mut commands)?;
    for product in 0..PRODUCTS {
        commands.push(Command::CreateProduct(NewProduct {
            name: format!("Pressing number {product}"),
            stock: 1_000_000,
            price: Decimal::new(1999 + (product as i64 % 500) * 10, 2),
            description: format!("Limited pressing {product}, 180 g vinyl, gatefold sleeve."),
            category: 1,
        }));
        if commands.len() == BATCH {
            apply(&store, &mut commands)?;
        }
    }
    apply(&store, &mut commands)?;
    for order in 0..orders {
        let line = |n: u64| OrderLine {
            product: 1 + (order * 7919 + n * 104_729) % PRODUCTS,
            quantity: 1 + (n as u32),
        };
        commands.push(Command::PlaceOrder {
            user: 1 + order % USERS,
            lines: OrderLines::Products((0..1 + order % 3).map(line).collect()),
            idempotency_key: None,
            at: 1_700_000_000 + order as i64,
        });
        if commands.len() == BATCH {
            apply(&store, &mut commands)?;
        }
    }
    apply(&store, &mut commands)?;
    println!(
        "populated {orders} orders in {:.1?}: store file {} MiB",
        started.elapsed(),
        store.file_size() / (1024 * 1024)
    );
    Ok(())
}

async fn measure(dir: &Path, page_cache_bytes: usize) -> Result<(), Failure> {
    let source_path = dir.join("source.redb");
    if !source_path.exists() {
        return Err("no source store: run `populate` first".into());
    }
    let target_dir = dir.join("target");
    if target_dir.exists() {
        std::fs::remove_dir_all(&target_dir)?;
    }
    std::fs::create_dir_all(&target_dir)?;
    let _ = std::fs::remove_file(dir.join("source-snapshot.bin"));

    let source = Arc::new(Store::open_with_page_cache(&source_path, page_cache_bytes)?);
    let mut leader = StateMachine::new(
        source.clone(),
        Arc::new(DiscardResults),
        dir.join("source-snapshot.bin"),
    );
    let (rss, _) = memory();
    println!(
        "source store {} MiB, open: rss {rss} MiB",
        source.file_size() / (1024 * 1024)
    );

    reset_peak();
    let started = Instant::now();
    let mut snapshot = leader.get_snapshot_builder().await.build_snapshot().await?;
    let built = started.elapsed();
    let (rss, peak) = memory();
    let size = std::fs::metadata(dir.join("source-snapshot.bin"))?.len();
    println!(
        "build:   {built:.2?}, snapshot file {} MiB, peak rss {peak} MiB, rss after {rss} MiB",
        size / (1024 * 1024)
    );

    let target = Arc::new(Store::open_with_page_cache(
        target_dir.join("store.redb"),
        page_cache_bytes,
    )?);
    let mut follower = StateMachine::new(
        target.clone(),
        Arc::new(DiscardResults),
        target_dir.join("snapshot.bin"),
    );
    reset_peak();
    let started = Instant::now();
    // As openraft sends it: chunk by chunk into the data the receiver began.
    let mut receiving = follower.begin_receiving_snapshot().await?;
    let mut chunk = Vec::with_capacity(CHUNK);
    loop {
        chunk.clear();
        while chunk.len() < CHUNK {
            if snapshot.snapshot.read_buf(&mut chunk).await? == 0 {
                break;
            }
        }
        if chunk.is_empty() {
            break;
        }
        receiving.write_all(&chunk).await?;
    }
    receiving.shutdown().await?;
    let sent = started.elapsed();
    follower.install_snapshot(&snapshot.meta, receiving).await?;
    let installed = started.elapsed() - sent;
    let (rss, peak) = memory();
    println!(
        "install: {installed:.2?} (after {sent:.2?} sending), peak rss {peak} MiB, rss after {rss} MiB"
    );

    let same = source.read()?.digest()? == target.read()?.digest()?;
    println!("digests equal: {same}");
    if !same {
        return Err("the installed state differs from the source".into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let default_dir = || PathBuf::from("target/snapshot-memory");
    match args.first().map(String::as_str) {
        Some("populate") => {
            let orders = args.get(1).map_or(Ok(200_000), |n| n.parse())?;
            let dir = args.get(2).map_or_else(default_dir, PathBuf::from);
            tokio::task::spawn_blocking(move || populate(&dir, orders)).await?
        }
        Some("measure") => {
            let dir = args.get(1).map_or_else(default_dir, PathBuf::from);
            let cache_mib = args
                .get(2)
                .map_or(Ok(DEFAULT_PAGE_CACHE_BYTES / (1024 * 1024)), |n| n.parse())?;
            measure(&dir, cache_mib * 1024 * 1024).await
        }
        _ => {
            Err("usage: snapshot_memory populate [orders] [dir] | measure [dir] [cache MiB]".into())
        }
    }
}
