//! Small helpers the measurement programs of `cargo xtask bench` share: pinning to one CPU and
//! summarising samples.

/// The CPU the calling thread runs on now.
pub fn current_cpu() -> std::io::Result<usize> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).map_err(|_| std::io::Error::last_os_error())
}

/// Pins the calling thread to `cpu`: the LRU tables' per-CPU free lists and the caches then
/// stay the same from sample to sample.
pub fn pin(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it; sched_setaffinity
    // (pid 0: the calling thread) reads size_of::<cpu_set_t>() bytes of it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Pins the calling thread to the CPU it runs on; returns that CPU.
pub fn pin_to_current_cpu() -> std::io::Result<usize> {
    let cpu = current_cpu()?;
    pin(cpu)?;
    Ok(cpu)
}

/// The median (NaN for no samples).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => f64::midpoint(s[n / 2 - 1], s[n / 2]),
    }
}

/// The quantile of a figure's interleaved batches (or rounds) that makes the figure. Another
/// tenant of a shared machine only ever adds time to a batch, in bursts that cover whole
/// batches, so the low tail is what the code costs; a quantile rather than the minimum, so
/// that one lucky batch does not make the figure. imfw and its references get the same one;
/// the notes give the medians too.
pub const LOW_QUANTILE: f64 = 0.1;

/// The [`LOW_QUANTILE`] of `v` (NaN for no samples).
pub fn low(v: &[f64]) -> f64 {
    quantile(v, LOW_QUANTILE)
}

/// How [`low`] is named in the bench's notes.
pub fn low_name() -> String {
    format!("{:.0}th percentile", LOW_QUANTILE * 100.0)
}

/// The `q` quantile (0 to 1) by the nearest rank (NaN for no samples): `quantile(v, 0.1)` is
/// the sample that a tenth of them do not exceed.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    // The rank is within 1..=len for q in 0..=1; the casts are exact for any sample count here.
    #[expect(clippy::cast_sign_loss, clippy::cast_precision_loss, reason = "see above")]
    let rank = ((q.clamp(0.0, 1.0) * s.len() as f64).ceil() as usize).max(1);
    s[rank - 1]
}

/// The smallest and largest sample.
pub fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(clippy::float_cmp, reason = "the medians and ranges of these inputs are exact")]
    fn median_and_range() {
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(quantile(&ten, 0.1), 1.0);
        assert_eq!(quantile(&ten, 0.25), 3.0);
        assert_eq!(quantile(&ten, 0.5), 5.0);
        assert_eq!(quantile(&ten, 1.0), 10.0);
        assert_eq!(quantile(&ten, 0.0), 1.0);
        assert!(quantile(&[], 0.1).is_nan());
        // Twenty batches, two of them slowed by a neighbour: the figure is the second fastest
        // (the 10th percentile of 20), untouched by the slow ones.
        let mut batches: Vec<f64> = (0..20).map(|i| 200.0 + f64::from(i)).collect();
        batches[3] = 400.0;
        batches[7] = 390.0;
        assert_eq!(low(&batches), 201.0);
        assert_eq!(low_name(), "10th percentile");
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(range(&[2.0, -1.0, 5.0]), (-1.0, 5.0));
    }
}
