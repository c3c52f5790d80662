//! What an attacker must not get (issue 20): the store's secrets through file modes, ...
//! Real processes, as a local user or a client would meet them.
mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The data directory is 0700 and its files 0600 from the first start (the store holds the
/// token signing secret); a directory and store made too open are fixed at the next start,
/// with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_its_files_are_private() {
    let mut node = Node::builder().demo().start();
    let dir = node.data_dir().to_path_buf();
    let store = dir.join("soundwave.redb");
    assert_eq!(mode(&dir), 0o700, "a fresh data directory");
    assert_eq!(mode(&store), 0o600, "a fresh store file");
    assert_eq!(mode(&dir.join("demo-credentials.txt")), 0o600);

    node.terminate();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    node.restart();
    assert_eq!(mode(&dir), 0o700, "the directory was fixed");
    assert_eq!(mode(&store), 0o600, "the store file was fixed");
    assert!(
        node.stderr_contains_soon("readable by other users").await,
        "a warning: {}",
        node.stderr_text()
    );
    let stderr = node.stderr_text();
    assert!(
        stderr.contains("soundwave.redb"),
        "it names the file: {stderr}"
    );
}
