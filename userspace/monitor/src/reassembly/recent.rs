//! The last delivered bytes of a direction, kept to compare retransmissions against.

/// A ring of the last `capacity` delivered bytes, ending at the direction's next offset.
#[derive(Debug, Default)]
pub(super) struct Recent {
    /// Allocated to the capacity on first push; empty while nothing was delivered.
    buf: Vec<u8>,
    /// Where the next byte goes.
    head: usize,
    /// Valid bytes, ending just before `head`.
    len: usize,
}

/// The outcome of comparing re-received bytes with the ones delivered.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Comparison {
    pub(super) equal: u64,
    pub(super) differing: u64,
    pub(super) unchecked: u64,
    /// First and last differing index into the compared slice.
    pub(super) span: Option<(usize, usize)>,
}

/// The first allocation of a window that is still growing: enough for a short flow.
const FIRST_ALLOC: usize = 1024;

impl Recent {
    pub(super) fn push(&mut self, capacity: usize, bytes: &[u8]) {
        if capacity == 0 || bytes.is_empty() {
            return;
        }
        if self.buf.len() > capacity {
            self.buf.clear();
            self.head = 0;
            self.len = 0;
        }
        // Growing: the ring is a plain buffer until it reaches the capacity, so a short flow
        // neither allocates nor touches the whole window.
        if self.buf.len() < capacity && self.head == self.buf.len() {
            let room = capacity - self.buf.len();
            let (now, rest) = bytes.split_at(bytes.len().min(room));
            let want = self.buf.len() + now.len();
            if want > self.buf.capacity() {
                // A first small allocation, then straight to the whole window: at most one
                // reallocation (of at most FIRST_ALLOC bytes) instead of a doubling series
                // that copies the window again at every step.
                let target = if self.buf.capacity() == 0 {
                    want.max(FIRST_ALLOC).min(capacity)
                } else {
                    capacity
                };
                self.buf.reserve_exact(target - self.buf.len());
            }
            self.buf.extend_from_slice(now);
            self.head = self.buf.len() % capacity;
            self.len += now.len();
            if rest.is_empty() {
                return;
            }
            return self.push(capacity, rest);
        }
        let capacity = self.buf.len();
        let n = bytes.len();
        if n >= capacity {
            self.buf.copy_from_slice(&bytes[n - capacity..]);
            self.head = 0;
            self.len = capacity;
            return;
        }
        let first = n.min(capacity - self.head);
        let (now, wrapped) = bytes.split_at(first);
        self.buf[self.head..self.head + first].copy_from_slice(now);
        self.buf[..wrapped.len()].copy_from_slice(wrapped);
        self.head = (self.head + n) % capacity;
        self.len = (self.len + n).min(capacity);
    }

    /// Forgets everything: after a gap the window no longer ends at the next offset.
    pub(super) fn clear(&mut self) {
        self.len = 0;
    }

    /// Compares `bytes`, received again at stream `offset`, with what was delivered; `next` is
    /// the next offset to deliver and `offset + bytes.len() <= next`.
    pub(super) fn compare(&self, next: u64, offset: u64, bytes: &[u8]) -> Comparison {
        let mut out = Comparison::default();
        let window_start = next.saturating_sub(self.len as u64);
        let skip = usize::try_from(window_start.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        out.unchecked = skip as u64;
        let Some(checked) = bytes.get(skip..) else {
            return out;
        };
        if checked.is_empty() || self.buf.is_empty() {
            out.unchecked = bytes.len() as u64;
            return out;
        }
        let capacity = self.buf.len();
        // Distance back from `next` to the first checked byte: at most `self.len`.
        let back = (next - (offset + skip as u64)) as usize;
        let start = (self.head + capacity - back) % capacity;
        let first_len = checked.len().min(capacity - start);
        let (head_part, tail_part) = checked.split_at(first_len);
        let spans = [
            diff_span(&self.buf[start..start + first_len], head_part),
            diff_span(&self.buf[..tail_part.len()], tail_part)
                .map(|(a, b)| (a + first_len, b + first_len)),
        ];
        let differing = count_differing(&self.buf[start..start + first_len], head_part)
            + count_differing(&self.buf[..tail_part.len()], tail_part);
        out.differing = differing;
        out.equal = checked.len() as u64 - differing;
        out.span = match spans {
            [Some((a, _)), Some((_, d))] => Some((a + skip, d + skip)),
            [Some((a, b)), None] | [None, Some((a, b))] => Some((a + skip, b + skip)),
            [None, None] => None,
        };
        out
    }
}

/// First and last index where `a` and `b` differ (they have the same length).
pub(super) fn diff_span(a: &[u8], b: &[u8]) -> Option<(usize, usize)> {
    if a == b {
        return None;
    }
    let first = a.iter().zip(b).position(|(x, y)| x != y)?;
    let last = a.iter().zip(b).rposition(|(x, y)| x != y)?;
    Some((first, last))
}

pub(super) fn count_differing(a: &[u8], b: &[u8]) -> u64 {
    if a == b {
        return 0;
    }
    a.iter().zip(b).filter(|(x, y)| x != y).count() as u64
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The ring against a model that keeps every byte since the last clear: the
        /// comparison of any re-received range ending at `next` is the same.
        #[test]
        fn the_ring_compares_like_a_full_history(
            capacity in 1usize..40,
            ops in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..50), any::<bool>(), 0usize..60, any::<u8>()),
                1..30,
            ),
        ) {
            let mut ring = Recent::default();
            let mut history: Vec<u8> = Vec::new();
            let mut next = 0u64;
            for (bytes, clear, back, flip) in ops {
                if clear {
                    ring.clear();
                    history.clear();
                }
                ring.push(capacity, &bytes);
                history.extend_from_slice(&bytes);
                next += bytes.len() as u64;
                // Re-receive the last `back` bytes (some never delivered since the clear),
                // one of them changed.
                let back = back.min(usize::try_from(next).unwrap());
                let offset = next - back as u64;
                let known = history.len().min(capacity);
                let mut again: Vec<u8> = (0..back)
                    .map(|i| {
                        let from_end = back - i;
                        if from_end <= history.len() { history[history.len() - from_end] } else { 0 }
                    })
                    .collect();
                if let Some(b) = again.first_mut() {
                    *b ^= flip;
                }
                let cmp = ring.compare(next, offset, &again);
                let unchecked = back.saturating_sub(known);
                prop_assert_eq!(cmp.unchecked, unchecked as u64);
                let checked = &again[unchecked..];
                let model = &history[history.len() - checked.len()..];
                prop_assert_eq!(cmp.differing, count_differing(model, checked));
                prop_assert_eq!(cmp.equal + cmp.differing, checked.len() as u64);
                prop_assert_eq!(cmp.span.map(|(a, b)| (a - unchecked, b - unchecked)), diff_span(model, checked));
            }
        }
    }
}
