//! Proxy workers: one thread per core, each running its own current-thread runtime over
//! its own `SO_REUSEPORT` listener, so that a request is accepted, proxied and answered on
//! one thread, and what that thread owns (its upstream connection pools, its access-log
//! buffer) is never locked across threads.
//!
//! A leaf: it knows worker numbers and sockets, nothing of HTTP. Worker 0 is every thread
//! that is not a proxy worker (the control runtime: admin, reload, secret refresh, health
//! checks; and any thread of a tool or a test); proxy workers are 1..=N.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Proxy workers in this process (0 until [`set_count`]).
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Declare how many proxy workers the process runs. Call once, before the first snapshot
/// is built, so that per-worker resources are sized for every worker.
pub fn set_count(n: usize) {
    COUNT.store(n, Ordering::Relaxed);
}

/// Proxy workers in this process.
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// Slots a per-worker resource needs: one per proxy worker plus one for everything else.
pub fn slots() -> usize {
    count() + 1
}

/// This thread's worker number: 1..=N on a proxy worker, 0 anywhere else.
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Mark the calling thread as proxy worker `i` (1-based).
pub fn enter(i: usize) {
    INDEX.with(|c| c.set(i));
}

/// The number of workers for `worker_threads`: as configured, else one per CPU the process
/// may run on.
pub fn resolve_count(configured: Option<usize>) -> usize {
    configured
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// `n` listeners on `addr` sharing one port through `SO_REUSEPORT`: the kernel spreads
/// new connections over them by a hash of the 4-tuple, so no accept lock or hand-off
/// thread sits between a connection and its worker. A port of 0 is resolved by the first
/// bind and the rest join it.
pub fn listeners(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n.max(1) {
        let l = reuseport_listener(at)?;
        at = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Only sockets of the same user may join a reuse-port group (Linux), so another
    // user's process cannot take a share of the connections.
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// One value per worker slot, each reached without a lock by the thread it belongs to.
/// Threads that are not proxy workers share slot 0.
#[derive(Debug)]
pub struct PerWorker<T>(Box<[T]>);

impl<T> PerWorker<T> {
    /// One value per slot, made by `make(slot)`.
    pub fn new(make: impl FnMut(usize) -> T) -> Self {
        PerWorker((0..slots()).map(make).collect())
    }

    /// The calling thread's value.
    pub fn get(&self) -> &T {
        self.for_worker(index())
    }

    /// Every slot's value, slot 0 first (to add up per-worker shards).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }

    /// The value of worker `i` (1-based; 0 is the slot of the other threads).
    pub fn for_worker(&self, i: usize) -> &T {
        // A worker beyond the slots (set_count raised after this was built) shares slot 0.
        self.0.get(i).unwrap_or(&self.0[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_share_one_port_and_each_accepts() {
        let ls = listeners("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
        // Connections land on some listener of the group; every one of them is accepted by
        // exactly one listener.
        let mut clients = Vec::new();
        for _ in 0..48 {
            clients.push(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut per = Vec::new();
        for l in &ls {
            let mut n = 0;
            while l.accept().is_ok() {
                n += 1;
            }
            per.push(n);
        }
        assert_eq!(per.iter().sum::<usize>(), 48, "{per:?}");
        // 48 connections over 3 listeners by a hash: one left empty would be a 1-in-10^8
        // chance, so an empty one means the group is not spreading.
        assert!(per.iter().all(|&n| n > 0), "{per:?}");
    }

    #[test]
    fn a_port_in_use_by_a_plain_socket_is_refused() {
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = listeners(plain.local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }

    #[test]
    fn threads_outside_the_workers_use_slot_zero() {
        let per = PerWorker::new(|i| i * 10);
        assert_eq!(*per.get(), 0);
        let seen = std::thread::spawn(move || {
            enter(1);
            // No workers declared in this test process: slot 1 does not exist, slot 0 is
            // shared.
            *per.get()
        })
        .join()
        .unwrap();
        assert_eq!(seen, 0);
    }
}
