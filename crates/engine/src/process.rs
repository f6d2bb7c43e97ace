//! [`ProcessUsage`]: this process's resident memory and CPU time, for `/metrics`
//! (`process_resident_memory_bytes`, `process_cpu_seconds_total`, as Prometheus' own clients
//! name them) and for benchmarks run without a GPU. `getrusage` gives CPU time on any Unix;
//! the current RSS comes from `/proc/self/status` (Linux) and is `None` elsewhere.

use std::time::Duration;

/// A reading of the process' resources.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessUsage {
    /// Current resident set size.
    pub rss_bytes: Option<u64>,
    /// User + system CPU time since the process started.
    pub cpu_time: Option<Duration>,
}

impl ProcessUsage {
    pub fn read() -> Self {
        Self { rss_bytes: current_rss(), cpu_time: cpu_time() }
    }
}

fn current_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

/// The `VmRSS:` line of `/proc/<pid>/status`, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn cpu_time() -> Option<Duration> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete `rusage` into the pointer it is given and reads
    // nothing from it; RUSAGE_SELF is always a valid `who`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: rc == 0, so getrusage filled the struct.
    let u = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000);
    Some(tv(u.ru_utime) + tv(u.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\ttandem\nVmPeak:\t  9000 kB\nVmRSS:\t  1234 kB\nThreads:\t3\n";
        // 1234 KiB = 1,263,616 bytes.
        assert_eq!(parse_vm_rss(status), Some(1_263_616));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_uses_some_memory_and_cpu() {
        let u = ProcessUsage::read();
        if cfg!(target_os = "linux") {
            assert!(u.rss_bytes.is_some_and(|b| b > 1 << 20), "{u:?}");
        }
        let spin: u64 = (0..2_000_000u64).fold(0, |a, x| a.wrapping_add(x * x));
        std::hint::black_box(spin);
        assert!(ProcessUsage::read().cpu_time.is_some_and(|t| t > Duration::ZERO));
    }
}
