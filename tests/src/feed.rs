//! The price feed of the live-data benchmark, shared by `data_bench` (which publishes it to the
//! engine and checks the frames) and `push_floor --events` (which sends the same frames itself,
//! as the floor): the symbols each account holds, and the symbols each batch moves.

/// Symbols every account holds.
pub const HOLDINGS: usize = 3;

/// The symbols (indices of `prices`) account `i` holds.
pub fn holdings(i: usize, prices: usize) -> [usize; HOLDINGS] {
    [i % prices, (i * 7 + 1) % prices, (i * 13 + 2) % prices]
}

/// The key of symbol `index` in the `prices` bucket.
pub fn symbol(index: usize) -> String {
    format!("S{index:04}")
}

/// The symbols the feed moves, batch after batch: `per_batch` of them, spread over all.
#[derive(Debug)]
pub struct Feed {
    prices: usize,
    per_batch: usize,
    next: usize,
}

impl Feed {
    /// A feed over `prices` symbols moving `per_batch` of them per batch.
    pub fn new(prices: usize, per_batch: usize) -> Self {
        Feed { prices: prices.max(1), per_batch, next: 0 }
    }

    /// The symbols the next batch moves.
    pub fn next_batch(&mut self) -> Vec<usize> {
        (0..self.per_batch)
            .map(|_| {
                // A stride coprime with any count of this kind.
                self.next = (self.next + 389) % self.prices;
                self.next
            })
            .collect()
    }
}

/// Time since the Unix epoch: the one clock `push_floor --events` stamps its frames with and
/// `data_bench --floor` reads them by (two processes on one machine).
pub fn unix_time() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}
