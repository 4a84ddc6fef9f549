//! The test echo upstream as its own process, so a test can kill it (SIGKILL: every
//! connection dies with it) and start it again on the same address.
//!
//! `echo-server ADDR NAME` prints `listening ADDR` once bound.

use warden_tests::upstream::Echo;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let name = args.next().unwrap_or_else(|| "echo".into());
    let echo = Echo::start_at(&name, &addr).await;
    println!("listening {}", echo.addr);
    std::future::pending::<()>().await;
}
