//! Randomness from the operating system: secrets, passwords, nonces.

use crate::error::{ApiError, ApiResult};

/// `len` bytes from the operating system's generator.
pub fn random_bytes(len: usize) -> ApiResult<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes)
        .map_err(|e| ApiError::Internal(format!("no randomness available: {e}")))?;
    Ok(bytes)
}

/// `len` random bytes, as lower-case hex.
pub fn random_hex(len: usize) -> ApiResult<String> {
    Ok(random_bytes(len)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
