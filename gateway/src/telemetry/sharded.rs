//! Counters and histograms with one shard per worker, summed when `/metrics` is scraped.
//!
//! A request records into a few counters and histograms of its route, upstream and
//! plugins. With one shared value per metric, every worker's write would pull the same
//! cache line (and, for prometheus-client's histogram, take the same lock) from the other
//! cores. Here each worker writes only its own shard, a cache line of its own, with relaxed
//! atomics and no lock; the scrape adds the shards up. Threads that are not proxy workers
//! share shard 0, which is why every update is still atomic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::worker::PerWorker;

/// One worker's share, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Cell(AtomicU64);

/// A monotonic counter with a shard per worker.
#[derive(Clone, Debug)]
pub struct Counter(Arc<PerWorker<Cell>>);

impl Default for Counter {
    fn default() -> Self {
        Counter(Arc::new(PerWorker::new(|_| Cell::default())))
    }
}

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Add `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.get().0.fetch_add(n, Ordering::Relaxed);
    }

    /// The total over every worker.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One worker's observations.
#[derive(Debug)]
#[repr(align(64))]
struct Shard {
    /// Observations per bucket (not cumulative), the last one unbounded.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum of the observations, as `f64` bits.
    sum: AtomicU64,
}

/// A histogram with a shard per worker.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Upper bounds, ascending, ending with `f64::MAX` (`+Inf`).
    bounds: Box<[f64]>,
    shards: PerWorker<Shard>,
}

impl Histogram {
    /// A histogram over `buckets` (upper bounds, ascending), plus `+Inf`.
    pub fn new(buckets: impl Iterator<Item = f64>) -> Histogram {
        let bounds: Box<[f64]> = buckets.chain(std::iter::once(f64::MAX)).collect();
        let shards = PerWorker::new(|_| Shard {
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        });
        Histogram(Arc::new(Inner { bounds, shards }))
    }

    /// Record `v` in the first bucket whose bound is at least `v`.
    pub fn observe(&self, v: f64) {
        let i = self.0.bounds.partition_point(|b| *b < v);
        let s = self.0.shards.get();
        if let Some(b) = s.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        s.count.fetch_add(1, Ordering::Relaxed);
        // Shard 0 has several writers, so the sum is updated by compare-and-swap; on a
        // worker's own shard it succeeds the first time.
        let _ = s
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// (sum, count, per-bucket counts) over every worker.
    fn totals(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = self.0.bounds.iter().map(|b| (*b, 0)).collect();
        let (mut sum, mut count) = (0.0, 0);
        for s in self.0.shards.iter() {
            sum += f64::from_bits(s.sum.load(Ordering::Relaxed));
            count += s.count.load(Ordering::Relaxed);
            for (total, b) in buckets.iter_mut().zip(s.buckets.iter()) {
                total.1 += b.load(Ordering::Relaxed);
            }
        }
        (sum, count, buckets)
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.totals();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    /// The text a registry holding `m` as `name` encodes.
    fn scrape(name: &str, m: impl prometheus_client::registry::Metric) -> String {
        let mut reg = Registry::default();
        reg.register(name, "help", m);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        out
    }

    #[test]
    fn shards_written_from_several_threads_add_up_at_scrape_as_prometheus_client_would() {
        let ours = Histogram::new([0.001, 0.01, 0.1].into_iter());
        let theirs = prometheus_client::metrics::histogram::Histogram::new([0.001, 0.01, 0.1]);
        let counter = Counter::default();
        let reference = prometheus_client::metrics::counter::Counter::<u64>::default();
        let values = [0.0005, 0.001, 0.002, 0.05, 0.1, 7.0, 0.0];
        // Worker threads (each its own shard, or shard 0 past the slots there are) and
        // this thread (shard 0) all write.
        std::thread::scope(|s| {
            for w in 0..4 {
                let (ours, counter) = (ours.clone(), counter.clone());
                s.spawn(move || {
                    crate::worker::enter(w);
                    for v in values {
                        ours.observe(v);
                        counter.inc();
                    }
                });
            }
        });
        for v in values {
            ours.observe(v);
            counter.inc_by(2);
        }
        for _ in 0..5 {
            for v in values {
                theirs.observe(v);
            }
        }
        reference.inc_by(4 * values.len() as u64 + 2 * values.len() as u64);
        assert_eq!(counter.get(), 42);
        assert_eq!(scrape("lat", ours), scrape("lat", theirs));
        assert_eq!(scrape("n", counter), scrape("n", reference));
    }
}
