//! The write path behind a small interface. [`CommandSubmitter`] is what the HTTP layer
//! calls; [`LocalWriter`] is the single-node implementation: one writer thread that drains
//! whatever commands are queued, applies them in one transaction, commits once durably and
//! only then answers every caller (group commit).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::apply::ChangeSet;
use crate::command::{Command, CommandOutcome, Rejection};
use crate::db::Store;
use crate::error::StoreError;

/// Most commands committed together.
const MAX_BATCH: usize = 1024;
/// Commands waiting for the writer before submitters wait for room.
const QUEUE_DEPTH: usize = 8192;

/// A command's answer once it is durable: its outcome or its rejection, or a storage failure.
pub type SubmitResult = Result<Result<CommandOutcome, Rejection>, StoreError>;
pub type SubmitFuture<'a> = Pin<Box<dyn Future<Output = SubmitResult> + Send + 'a>>;

/// Where writes go. Answers only once the command is applied and durable, and after every
/// [`ApplyObserver`] of this node has seen its changes.
pub trait CommandSubmitter: Send + Sync {
    fn submit(&self, command: Command) -> SubmitFuture<'_>;
}

/// Told of what applied commands changed, after the commit and before callers are answered,
/// so caches never serve data older than what was applied.
pub trait ApplyObserver: Send + Sync {
    fn applied(&self, changes: &ChangeSet);
}

struct Pending {
    command: Command,
    reply: oneshot::Sender<SubmitResult>,
}

/// Single-node write path with group commit.
#[derive(Clone)]
pub struct LocalWriter {
    queue: mpsc::Sender<Pending>,
}

impl LocalWriter {
    /// Starts the writer thread. It stops when the last `LocalWriter` clone is dropped,
    /// after answering everything already queued.
    pub fn start(
        store: Arc<Store>,
        observer: Arc<dyn ApplyObserver>,
    ) -> Result<LocalWriter, StoreError> {
        let (queue, mut incoming) = mpsc::channel::<Pending>(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("soundwave-writer".into())
            .spawn(move || {
                let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
                while let Some(first) = incoming.blocking_recv() {
                    batch.push(first);
                    while batch.len() < MAX_BATCH {
                        match incoming.try_recv() {
                            Ok(pending) => batch.push(pending),
                            Err(_) => break,
                        }
                    }
                    write_batch(&store, observer.as_ref(), &mut batch);
                }
            })
            .map_err(|e| StoreError::WriteFailed(format!("cannot start the writer: {e}")))?;
        Ok(LocalWriter { queue })
    }
}

fn write_batch(store: &Store, observer: &dyn ApplyObserver, batch: &mut Vec<Pending>) {
    let (commands, replies): (Vec<Command>, Vec<oneshot::Sender<SubmitResult>>) =
        batch.drain(..).map(|p| (p.command, p.reply)).unzip();
    let mut changes = ChangeSet::default();
    match store.apply_batch(&commands, &mut changes) {
        Ok(results) => {
            if !changes.is_empty() {
                observer.applied(&changes);
            }
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that went away no longer needs its answer.
                let _ = reply.send(Ok(result));
            }
        }
        Err(error) => {
            tracing::error!(%error, commands = commands.len(), "write batch failed");
            let message = error.to_string();
            for reply in replies {
                let _ = reply.send(Err(StoreError::WriteFailed(message.clone())));
            }
        }
    }
}

impl CommandSubmitter for LocalWriter {
    fn submit(&self, command: Command) -> SubmitFuture<'_> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            self.queue
                .send(Pending { command, reply })
                .await
                .map_err(|_| StoreError::WriterStopped)?;
            answer.await.map_err(|_| StoreError::WriterStopped)?
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use super::*;
    use crate::apply::tests::{category, created_id, product, user};
    use crate::command::Rejection;
    use crate::model::Id;

    /// Counts observer calls and remembers every change it was told of.
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<(usize, ChangeSet)>,
    }

    impl Recorder {
        fn calls(&self) -> usize {
            self.seen.lock().unwrap().0
        }

        fn products(&self) -> BTreeSet<Id> {
            self.seen.lock().unwrap().1.products.clone()
        }
    }

    impl ApplyObserver for Recorder {
        fn applied(&self, changes: &ChangeSet) {
            assert!(
                !changes.is_empty(),
                "the observer hears only of real changes"
            );
            let mut seen = self.seen.lock().unwrap();
            seen.0 += 1;
            seen.1.merge(changes.clone());
        }
    }

    fn start() -> (tempfile::TempDir, Arc<Store>, Arc<Recorder>, LocalWriter) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("store.redb")).unwrap());
        let recorder = Arc::new(Recorder::default());
        let writer = LocalWriter::start(store.clone(), recorder.clone()).unwrap();
        (dir, store, recorder, writer)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_submits_are_all_answered_applied_and_observed() {
        let (_dir, store, recorder, writer) = start();
        let setup = writer.submit(category("Rock")).await.unwrap();
        assert_eq!(created_id(setup), 1);
        let calls_before = recorder.calls();

        const TASKS: u32 = 200;
        let mut tasks = Vec::new();
        for i in 0..TASKS {
            let writer = writer.clone();
            let recorder = recorder.clone();
            tasks.push(tokio::spawn(async move {
                let name = format!("product {i}");
                let result = writer.submit(product(&name, i, 100, 1)).await;
                let Ok(Ok(CommandOutcome::Product(p))) = result else {
                    panic!("product {i} not created: {result:?}");
                };
                assert_eq!((p.name.as_str(), p.stock), (name.as_str(), i));
                // The answer comes only after the observer saw the change.
                assert!(recorder.products().contains(&p.id), "{} not observed", p.id);
                p.id
            }));
        }
        let mut ids = BTreeSet::new();
        for task in tasks {
            assert!(
                ids.insert(task.await.unwrap()),
                "every product got its own id"
            );
        }
        assert_eq!(ids, (1..=u64::from(TASKS)).collect());

        let reader = store.read().unwrap();
        let products = reader.all_products().unwrap();
        assert_eq!(products.len(), TASKS as usize);
        for p in &products {
            let i: u32 = p.name.strip_prefix("product ").unwrap().parse().unwrap();
            assert_eq!(p.stock, i);
        }
        assert_eq!(recorder.products(), ids);
        let batches = recorder.calls() - calls_before;
        assert!((1..=TASKS as usize).contains(&batches), "{batches} batches");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_caller_gets_its_own_answer() {
        let (_dir, store, _recorder, writer) = start();
        // 200 callers race for 100 names: each name is taken exactly once.
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                let name = format!("Name {}", i % 100);
                let name = if i >= 100 { name.to_uppercase() } else { name };
                (name.clone(), writer.submit(category(&name)).await.unwrap())
            }));
        }
        let mut winners = BTreeSet::new();
        let mut refused = 0;
        for task in tasks {
            match task.await.unwrap() {
                (name, Ok(CommandOutcome::Category(c))) => {
                    assert_eq!(c.name, name);
                    assert!(winners.insert(name.to_lowercase()));
                }
                (
                    _,
                    Err(Rejection::Duplicate {
                        what: "category", ..
                    }),
                ) => refused += 1,
                (name, other) => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!((winners.len(), refused), (100, 100));
        assert_eq!(store.read().unwrap().categories().unwrap().len(), 100);
    }

    #[tokio::test]
    async fn refusals_are_answered_without_telling_the_observer() {
        let (_dir, _store, recorder, writer) = start();
        writer.submit(user("alice", false)).await.unwrap().unwrap();
        let calls = recorder.calls();
        assert_eq!(calls, 1);
        let refused = writer.submit(user("alice", true)).await.unwrap();
        assert!(matches!(refused, Err(Rejection::Duplicate { .. })));
        let secret = Command::InitJwtSecret {
            secret: b"s".to_vec(),
        };
        assert_eq!(
            writer.submit(secret).await.unwrap(),
            Ok(CommandOutcome::JwtSecret(b"s".to_vec()))
        );
        assert_eq!(recorder.calls(), calls, "nothing the caches show changed");
    }

    #[test]
    fn the_writer_answers_from_another_runtime_and_stops_when_dropped() {
        let (_dir, store, _recorder, writer) = start();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let answer = runtime.block_on(writer.submit(category("Rock")));
        assert_eq!(created_id(answer.unwrap()), 1);
        drop(writer);
        // Once every handle is gone the thread ends and gives up its Arc of the store.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Arc::strong_count(&store) > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "writer thread did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
