//! Files only the node's user may read: the data directory (the store holds the token
//! secret and password hashes) and the secrets and demo credentials written beside it.

/// Makes the data directory private to the node's user: created (or fixed, with a
/// warning) as mode 0700, with every file in it 0600. The store holds the token signing
/// secret and password hashes; a world-readable file would let any local user forge staff
/// tokens. The process's umask is set to 0077 first, so files made later (snapshots, the
/// store when new) are private from the start.
pub fn private_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    // SAFETY: umask only sets the process's file creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let make_private = |path: &std::path::Path, mode: u32| -> std::io::Result<()> {
        let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if current & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{current:o}"),
                "readable by other users; making it private (mode {mode:o})"
            );
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    };
    make_private(dir, 0o700)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_file() {
            make_private(&entry.path(), 0o600)?;
        } else if kind.is_dir() {
            make_private(&entry.path(), 0o700)?;
        }
    }
    Ok(())
}

/// Writes a file only its owner may read (secrets, demo passwords), creating its directory.
pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}
