//! Shared by the durability tests (`state.rs`, `idempotency.rs`,
//! `receipts.rs`): the two-backend macro and a migrated store.

use std::sync::Arc;

use autobiz_kernel::clock::Clock;
use autobiz_kernel::store::{DatabaseUrl, Store};
use autobiz_testkit::TestDatabase;

/// Generate `NAME::sqlite` and `NAME::postgres` from one async test body
/// taking a `TestDatabase`. Multi-threaded, so concurrency tests race for
/// real.
macro_rules! both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body(autobiz_testkit::TestDatabase::sqlite()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body(autobiz_testkit::TestDatabase::postgres().await).await;
            }
        }
    };
}

/// Migrate as the owner, then open as the kernel role on `clock`.
pub async fn migrated(db: &TestDatabase, clock: Arc<dyn Clock>) -> Store {
    let admin_url: DatabaseUrl = db.admin_url().parse().unwrap();
    Store::open_admin(&admin_url).await.unwrap().migrate().await.unwrap();
    Store::open_with_clock(&db.kernel_url().parse().unwrap(), clock).await.unwrap()
}
