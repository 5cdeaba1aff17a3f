//! CPU time of server processes, read from `/proc/<pid>/stat` (Linux).
//!
//! A process's `utime` + `stime` cover all its threads; `cutime` + `cstime` cover children it
//! has waited for. A [`CpuMeter`] sums these over the given processes and every living
//! descendant, so a server that forks helpers is measured whole.

use std::collections::{HashMap, HashSet};

use anyhow::{Context as _, Result, bail};

/// Clock ticks per second of the times in `/proc/<pid>/stat`. Linux reports them in `USER_HZ`,
/// which is 100 on every architecture it supports for user space.
pub const USER_HZ: f64 = 100.0;

/// The fields of `/proc/<pid>/stat` the meter uses; times in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcTimes {
    /// Process ID.
    pub pid: u32,
    /// Parent's process ID.
    pub ppid: u32,
    /// User-mode time of all threads.
    pub utime: u64,
    /// Kernel-mode time of all threads.
    pub stime: u64,
    /// User-mode time of waited-for children.
    pub cutime: u64,
    /// Kernel-mode time of waited-for children.
    pub cstime: u64,
}

impl ProcTimes {
    /// All four times added up, in ticks.
    pub fn total_ticks(&self) -> u64 {
        self.utime + self.stime + self.cutime + self.cstime
    }
}

/// Parses one `/proc/<pid>/stat` line (`proc(5)`). The command name (field 2) is in parentheses
/// and may itself hold spaces and parentheses, so fields are counted from the last `)`.
///
/// # Errors
/// When the line is not in that format.
pub fn parse_stat(line: &str) -> Result<ProcTimes> {
    let open = line.find('(').context("stat: no '('")?;
    let close = line.rfind(')').context("stat: no ')'")?;
    if close < open {
        bail!("stat: malformed command name");
    }
    let pid: u32 = line[..open].trim().parse().context("stat: pid")?;
    // Fields from 3 (state) on: index i here is field i + 3.
    let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> Result<&str> { rest.get(n - 3).copied().with_context(|| format!("stat: no field {n}")) };
    let unsigned = |n: usize| -> Result<u64> { field(n)?.parse().with_context(|| format!("stat: field {n}")) };
    // cutime and cstime are signed in the kernel's format; negative values never occur in practice.
    let signed = |n: usize| -> Result<u64> {
        let v: i64 = field(n)?.parse().with_context(|| format!("stat: field {n}"))?;
        Ok(u64::try_from(v).unwrap_or(0))
    };
    Ok(ProcTimes {
        pid,
        ppid: field(4)?.parse().context("stat: ppid")?,
        utime: unsigned(14)?,
        stime: unsigned(15)?,
        cutime: signed(16)?,
        cstime: signed(17)?,
    })
}

/// Reads `/proc/<pid>/stat`.
///
/// # Errors
/// When the process does not exist or the file cannot be parsed.
pub fn read(pid: u32) -> Result<ProcTimes> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_stat(&text)
}

/// Every process now running, by PID (processes that exit while being read are skipped).
fn all_processes() -> Result<HashMap<u32, ProcTimes>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Ok(t) = read(pid) {
            out.insert(pid, t);
        }
    }
    Ok(out)
}

/// `roots` and all their descendants in `procs`.
pub fn tree(procs: &HashMap<u32, ProcTimes>, roots: &[u32]) -> HashSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in procs.values() {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut seen: HashSet<u32> = HashSet::new();
    let mut todo: Vec<u32> = roots.to_vec();
    while let Some(pid) = todo.pop() {
        if seen.insert(pid) {
            todo.extend(children.get(&pid).into_iter().flatten());
        }
    }
    seen
}

/// Total CPU ticks of `roots` and their living descendants.
///
/// # Errors
/// When a root process does not exist.
pub fn tree_ticks(roots: &[u32]) -> Result<u64> {
    let procs = all_processes()?;
    for r in roots {
        if !procs.contains_key(r) {
            bail!("process {r} is not running");
        }
    }
    Ok(tree(&procs, roots).iter().filter_map(|p| procs.get(p)).map(ProcTimes::total_ticks).sum())
}

/// Busy and total ticks of the whole machine, from the first line of `/proc/stat`
/// (`cpu user nice system idle iowait irq softirq steal …`): busy is all but idle and iowait.
///
/// # Errors
/// When the line is not in that format.
pub fn parse_host_stat(text: &str) -> Result<(u64, u64)> {
    let line = text.lines().next().context("/proc/stat: empty")?;
    let mut fields = line.split_whitespace();
    if fields.next() != Some("cpu") {
        bail!("/proc/stat: no cpu line");
    }
    let v: Vec<u64> = fields.take(8).map(str::parse).collect::<Result<_, _>>().context("/proc/stat: ticks")?;
    if v.len() < 5 {
        bail!("/proc/stat: too few fields");
    }
    let total: u64 = v.iter().sum();
    Ok((total - v[3] - v[4], total))
}

/// Busy ticks of the whole machine so far.
///
/// # Errors
/// When `/proc/stat` cannot be read.
pub fn host_busy_ticks() -> Result<u64> {
    Ok(parse_host_stat(&std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?)?.0)
}

/// Measures the CPU time some processes spend between [`CpuMeter::start`] and
/// [`CpuMeter::stop`].
pub struct CpuMeter {
    roots: Vec<u32>,
    start_ticks: u64,
    own_start_ticks: u64,
    host_start_ticks: u64,
}

/// CPU-seconds spent while a [`CpuMeter`] ran.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUsage {
    /// By the measured processes and their descendants.
    pub server_secs: f64,
    /// By this process (the load generator).
    pub loadgen_secs: f64,
    /// By the whole machine (all cores), the above and everything else.
    pub host_busy_secs: f64,
}

impl CpuMeter {
    /// Takes the first reading.
    ///
    /// # Errors
    /// When a process does not exist.
    pub fn start(roots: &[u32]) -> Result<Self> {
        Ok(Self {
            roots: roots.to_vec(),
            start_ticks: tree_ticks(roots)?,
            own_start_ticks: read(std::process::id())?.total_ticks(),
            host_start_ticks: host_busy_ticks()?,
        })
    }

    /// CPU-seconds spent since [`CpuMeter::start`].
    ///
    /// # Errors
    /// When a process has gone.
    pub fn stop(&self) -> Result<CpuUsage> {
        let secs = |now: u64, then: u64| now.saturating_sub(then) as f64 / USER_HZ;
        Ok(CpuUsage {
            server_secs: secs(tree_ticks(&self.roots)?, self.start_ticks),
            loadgen_secs: secs(read(std::process::id())?.total_ticks(), self.own_start_ticks),
            host_busy_secs: secs(host_busy_ticks()?, self.host_start_ticks),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "4242 (ganglion serve) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                        250 75 3 4 20 0 12 0 98765 123456789 4567 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 17662 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn parses_times() {
        let t = parse_stat(LINE).expect("parses");
        assert_eq!(t, ProcTimes { pid: 4242, ppid: 1, utime: 250, stime: 75, cutime: 3, cstime: 4 });
        assert_eq!(t.total_ticks(), 332);
    }

    #[test]
    fn command_names_with_parentheses_and_spaces() {
        let line = LINE.replace("(ganglion serve)", "(py) (x) y)");
        let t = parse_stat(&line).expect("parses");
        assert_eq!((t.pid, t.ppid, t.utime, t.stime), (4242, 1, 250, 75));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_stat("").is_err());
        assert!(parse_stat("12 (x) S 1").is_err());
        assert!(parse_stat("x (y) S 1 1 1 0 -1 0 0 0 0 0 1 2 3 4").is_err());
    }

    #[test]
    fn descendants_are_in_the_tree() {
        let p = |pid, ppid| ProcTimes { pid, ppid, utime: 1, stime: 0, cutime: 0, cstime: 0 };
        let procs: HashMap<u32, ProcTimes> =
            [p(1, 0), p(10, 1), p(11, 10), p(12, 11), p(20, 1)].into_iter().map(|t| (t.pid, t)).collect();
        let mut t: Vec<u32> = tree(&procs, &[10]).into_iter().collect();
        t.sort_unstable();
        assert_eq!(t, vec![10, 11, 12]);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert_eq!(read(me).expect("own stat").pid, me);
        let meter = CpuMeter::start(&[me]).expect("meter");
        let used = meter.stop().expect("reading");
        assert!(used.server_secs >= 0.0 && used.host_busy_secs >= 0.0);
    }

    #[test]
    fn parses_host_ticks() {
        let text = "cpu  100 5 50 1000 20 3 2 0 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(parse_host_stat(text).expect("parses"), (160, 1180));
        assert!(parse_host_stat("intr 1 2 3").is_err());
        assert!(host_busy_ticks().is_ok());
    }
}
