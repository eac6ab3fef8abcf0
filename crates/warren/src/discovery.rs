//! Discovery hooks: ways a node learns where its peers are.

pub mod cache;
pub mod manual;
pub mod mdns;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The tasks of a discovery hook and the token that stops them.
#[derive(Debug, Default)]
pub(crate) struct HookTasks {
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

impl HookTasks {
    /// Cancels every task and waits until all have ended.
    pub(crate) async fn stop(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
