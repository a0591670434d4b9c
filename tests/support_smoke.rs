//! The test support itself: per-test databases on the shared test server.

mod support;

#[tokio::test]
async fn each_test_gets_its_own_migrated_database() {
    let a = support::test_db().await;
    let b = support::test_db().await;
    assert_ne!(a.name, b.name);
    assert_ne!(a.url, b.url);
    for db in [&a, &b] {
        let current: String = sqlx::query_scalar("select current_database()::text")
            .fetch_one(&db.pool)
            .await
            .expect("current_database");
        assert_eq!(current, db.name);
        let jobs: i64 = sqlx::query_scalar("select count(*) from penguin.jobs")
            .fetch_one(&db.pool)
            .await
            .expect("penguin.jobs exists");
        assert_eq!(jobs, 0);
    }
    // Writes to one database are not visible in the other.
    sqlx::query("create table smoke_marker (x int)")
        .execute(&a.pool)
        .await
        .expect("create table in a");
    let in_b: i64 =
        sqlx::query_scalar("select count(*) from pg_tables where tablename = 'smoke_marker'")
            .fetch_one(&b.pool)
            .await
            .expect("query b");
    assert_eq!(in_b, 0);
}

#[tokio::test]
async fn concurrent_tests_share_one_server() {
    // Runs in parallel with the test above: databases made at the same time live on the
    // same cluster (one server per test binary), each its own.
    let (a, b) = tokio::join!(support::test_db(), support::test_db());
    assert_ne!(a.name, b.name);
    let started = |db: support::TestDb| async move {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>("select pg_postmaster_start_time()")
            .fetch_one(&db.pool)
            .await
            .expect("pg_postmaster_start_time")
    };
    assert_eq!(started(a).await, started(b).await);
}

#[test]
fn with_database_replaces_only_the_path() {
    use support::with_database;
    assert_eq!(
        with_database("postgres://u:p@h:5432/app?sslmode=disable", "t1"),
        "postgres://u:p@h:5432/t1?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "t1"), "postgres://h/t1");
    assert_eq!(with_database("postgresql://h/", "t1"), "postgresql://h/t1");
    assert_eq!(
        with_database("postgres://%2Fvar%2Frun%2Fpostgresql/app", "t1"),
        "postgres://%2Fvar%2Frun%2Fpostgresql/t1"
    );
}

#[tokio::test]
async fn a_daemon_left_running_by_a_failing_test_is_killed_with_its_handle() {
    let app = support::app::TestApp::new().await;
    let daemon = app.spawn_daemon("daemon.log");
    let pid = daemon.id();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    // what a panic between spawn and stop does: the handle is dropped
    drop(daemon);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        status.is_empty(),
        "the daemon still runs (or was not reaped): {status}"
    );
}
