//! What the kernel knows about a process: CPU time and memory from `/proc`.
//!
//! CPU time is read in clock ticks from `/proc/PID/stat`; memory in KiB from
//! `/proc/PID/status` (VmHWM, the kernel's own peak-RSS counter) and
//! `/proc/PID/smaps_rollup` (Pss: resident memory with every shared page divided
//! among the processes that map it, so a library mapped by ten Postfix daemons
//! counts once in their sum).

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The fields of `/proc/PID/stat` the benchmark uses.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub ppid: i32,
    /// Own user + system time, all threads (exited threads included), in ticks.
    pub own_ticks: u64,
    /// User + system time of waited-for children, in ticks.
    pub children_ticks: u64,
    /// Start time since boot in ticks: with the pid, identifies one process even
    /// if the pid is reused.
    pub start_time: u64,
}

pub fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain anything;
    // the numbered fields start after the last ')', with field 3 (state) first.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |field: usize| -> Option<u64> { f.get(field - 3)?.parse().ok() };
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        own_ticks: n(14)? + n(15)?,
        children_ticks: n(16)? + n(17)?,
        start_time: n(22)?,
    })
}

/// A `Key: 1234 kB` line of `/proc/PID/status`, in KiB.
pub fn status_kib(pid: i32, key: &str) -> Option<u64> {
    kib_field(
        &fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        key,
    )
}

/// Proportional set size in KiB.
pub fn pss_kib(pid: i32) -> Option<u64> {
    kib_field(
        &fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?,
        "Pss",
    )
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Every process whose parent is `ppid`.
pub fn children(ppid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|s| s.ppid == ppid))
        .collect()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux in practice).
pub fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Memory peaks of a set of processes over a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemPeak {
    /// Sum over every process seen during the run of its VmHWM (its last sampled
    /// value, which is its peak). For one process: simply its peak RSS.
    pub hwm_sum_kib: u64,
    /// The largest sum of Pss over the processes alive at one sample.
    pub pss_sum_max_kib: u64,
    /// Distinct processes seen.
    pub processes: usize,
}

/// Samples the memory of a changing set of processes every `SAMPLE_EVERY` on a
/// thread of its own, until [`Sampler::finish`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<MemPeak>,
}

/// Often enough to see short-lived Postfix daemons (an smtpd lives for 100
/// sessions, i.e. seconds here), rarely enough to cost little CPU on two cores.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

impl Sampler {
    /// `pids` lists the processes to look at; called at every sample.
    pub fn start(pids: impl Fn() -> Vec<i32> + Send + 'static) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut hwm: HashMap<(i32, u64), u64> = HashMap::new();
            let mut pss_max = 0;
            loop {
                // One more sample after the stop request, so the end state counts.
                let last = flag.load(Ordering::Relaxed);
                let mut pss_sum = 0;
                for pid in pids() {
                    let Some(st) = stat(pid) else { continue };
                    if let Some(h) = status_kib(pid, "VmHWM") {
                        let e = hwm.entry((pid, st.start_time)).or_default();
                        *e = (*e).max(h);
                    }
                    pss_sum += pss_kib(pid).unwrap_or(0);
                }
                pss_max = pss_max.max(pss_sum);
                if last {
                    break;
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            MemPeak {
                hwm_sum_kib: hwm.values().sum(),
                pss_sum_max_kib: pss_max,
                processes: hwm.len(),
            }
        });
        Sampler { stop, handle }
    }

    pub fn finish(self) -> MemPeak {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}
