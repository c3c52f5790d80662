//! The write path behind a small interface: [`CommandSubmitter`] is what the HTTP layer
//! calls. The node's implementation is its cluster (the replicated log, applied by every
//! node's state machine), a one-member cluster when the node runs alone.

use std::future::Future;
use std::pin::Pin;

use crate::command::{Command, CommandOutcome, Rejection};
use crate::error::StoreError;

/// A command's answer once it is durable: its outcome or its rejection, or a storage failure.
pub type SubmitResult = Result<Result<CommandOutcome, Rejection>, StoreError>;
pub type SubmitFuture<'a> = Pin<Box<dyn Future<Output = SubmitResult> + Send + 'a>>;

/// Where writes go. Answers only once the command is applied and durable, and after this
/// node's caches have seen its changes.
pub trait CommandSubmitter: Send + Sync {
    fn submit(&self, command: Command) -> SubmitFuture<'_>;
}
