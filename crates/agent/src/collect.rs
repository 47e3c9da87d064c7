//! Metric and inventory collection on top of `sysinfo`.
//!
//! One [`Collector`] lives as long as the agent: CPU usage and I/O rates are differences between
//! two readings, so the previous readings must be kept. Every value handed out is already
//! sanitised to what the hub accepts (finite, non-negative, used <= total), because a sample the
//! hub rejects is a sample lost.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use smon_proto::{
    DiskIo, FilesystemInfo, FilesystemUsage, InterfaceRates, Inventory, Memory, Rates, Sample,
    Swap, Temperature,
};
use sysinfo::{
    Components, CpuRefreshKind, Disk, DiskRefreshKind, Disks, MemoryRefreshKind, Networks,
    ProcessRefreshKind, ProcessesToUpdate, System,
};

/// The loopback interface carries only local traffic, so it is never reported.
const LOOPBACK: &str = "lo";
/// Temperatures outside this range are sensor glitches (or unplugged probes), not readings.
const MIN_CELSIUS: f64 = -100.0;
const MAX_CELSIUS: f64 = 200.0;

/// Filesystem types that hold no user data; listing them would only add noise.
const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "tmpfs",
    "devtmpfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "nsfs",
    "ramfs",
    "squashfs",
    "efivarfs",
    "rpc_pipefs",
    "selinuxfs",
];

/// Whether a filesystem type is a pseudo filesystem to skip (`overlay` is real: it is `/` in containers).
pub fn is_pseudo_fs(fs_type: &str) -> bool {
    PSEUDO_FS.contains(&fs_type)
}

/// Cumulative byte counters per device or interface, and when they were read.
///
/// Rates are computed from these totals rather than from sysinfo's "since last refresh" deltas,
/// so that a refresh done for the inventory does not shorten the next sample's window, and a
/// device that just appeared does not report its whole lifetime as one second of traffic.
struct Counters {
    at: Instant,
    totals: HashMap<String, (u64, u64)>,
}

impl Counters {
    /// Bytes per second for `key` between the previous reading and `now`; 0 when the key is new
    /// or its counter went backwards (device re-created, counter reset).
    fn rates(&self, key: &str, now: (u64, u64), at: Instant) -> (f64, f64) {
        let Some(&(prev_a, prev_b)) = self.totals.get(key) else {
            return (0.0, 0.0);
        };
        let secs = at.saturating_duration_since(self.at).as_secs_f64();
        (
            per_second(now.0.saturating_sub(prev_a), secs),
            per_second(now.1.saturating_sub(prev_b), secs),
        )
    }
}

/// One long-lived collector; refreshes only what it needs.
pub struct Collector {
    // Each part is optional because sysinfo's constructors are fallible on some platforms; a
    // missing part yields empty or zero values instead of stopping the agent.
    system: Option<System>,
    disks: Option<Disks>,
    networks: Option<Networks>,
    components: Option<Components>,
    disk_counters: Option<Counters>,
    net_counters: Option<Counters>,
}

impl Default for Collector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector {
    /// Build and prime counters (so the first sample has meaningful CPU and rates).
    pub fn new() -> Collector {
        let mut collector = Collector {
            system: ok_or_warn(System::new(), "system"),
            disks: ok_or_warn(Disks::new(), "disks"),
            networks: ok_or_warn(Networks::new(), "networks"),
            components: ok_or_warn(Components::new(), "components"),
            disk_counters: None,
            net_counters: None,
        };
        if let Some(system) = collector.system.as_mut() {
            // The first CPU reading only sets the baseline; usage needs two readings.
            system.refresh_cpu_usage();
        }
        collector.disk_counters = collector.read_disk_counters();
        collector.net_counters = collector.read_net_counters();
        collector
    }

    /// Take one sample; rates cover the real time since the previous call (or since `new`).
    pub fn sample(&mut self) -> Sample {
        let ts = chrono::Utc::now();

        let (cpu_percent, cpu_per_core, memory, swap, process_count) = self.sample_system();
        let load = match System::load_average() {
            Ok(l) => [
                non_negative(l.one),
                non_negative(l.five),
                non_negative(l.fifteen),
            ],
            Err(e) => {
                tracing::debug!(error = %e, "load average unavailable");
                [0.0; 3]
            }
        };
        let uptime_secs = System::uptime().unwrap_or_else(|e| {
            tracing::debug!(error = %e, "uptime unavailable");
            0
        });

        let filesystems = self.sample_disks_space();
        let disk_io = self.sample_disk_io();
        let (network, network_total) = self.sample_network();
        let temperatures = self.sample_temperatures();

        Sample {
            ts,
            cpu_percent,
            cpu_per_core,
            load,
            memory,
            swap,
            filesystems,
            disk_io,
            network,
            network_total,
            uptime_secs,
            process_count,
            temperatures,
        }
    }

    /// Collect the inventory: what the machine is, as opposed to how it is doing.
    pub fn inventory(&mut self) -> Inventory {
        let mut cpu_model = String::new();
        let mut cpu_threads = 0usize;
        let mut memory_total = 0u64;
        if let Some(system) = self.system.as_mut() {
            if system.cpus().is_empty() {
                // Only when the list is missing: rebuilding it resets the CPU usage baseline.
                system.refresh_cpu_list(CpuRefreshKind::nothing());
            }
            cpu_model = system
                .cpus()
                .iter()
                .map(|c| c.brand().trim())
                .find(|b| !b.is_empty())
                .unwrap_or_default()
                .to_owned();
            cpu_threads = system.cpus().len();
            system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
            memory_total = system.total_memory();
        }
        if cpu_threads == 0 {
            cpu_threads = std::thread::available_parallelism().map_or(0, |n| n.get());
        }
        // Without a physical count, threads is the honest lower bound of what we know.
        let cpu_cores = System::physical_core_count().unwrap_or(cpu_threads);

        let filesystems = match self.disks.as_mut() {
            Some(disks) => {
                disks.refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
                by_mount_point(disks)
                    .into_iter()
                    .map(|(mount, disk)| FilesystemInfo {
                        mount,
                        fs_type: disk.file_system().to_string_lossy().into_owned(),
                        device: disk.name().to_string_lossy().into_owned(),
                        total: disk.total_space(),
                    })
                    .collect()
            }
            None => Vec::new(),
        };

        let mut ip_addresses = Vec::new();
        if let Some(networks) = self.networks.as_mut() {
            // Safe for the rates: they are computed from cumulative totals, not from this refresh.
            networks.refresh(true);
            for (name, data) in networks.iter() {
                if name.as_os_str() == LOOPBACK {
                    continue;
                }
                ip_addresses.extend(
                    data.ip_networks()
                        .iter()
                        .filter(|n| !n.addr.is_loopback())
                        .map(|n| n.addr.to_string()),
                );
            }
        }
        ip_addresses.sort();
        ip_addresses.dedup();

        Inventory {
            hostname: System::host_name().unwrap_or_default(),
            os_name: System::name().unwrap_or_default(),
            os_version: System::os_version().unwrap_or_default(),
            kernel: System::kernel_version().unwrap_or_default(),
            arch: System::cpu_arch(),
            cpu_model,
            cpu_cores: saturating_u32(cpu_cores),
            cpu_threads: saturating_u32(cpu_threads),
            memory_total,
            filesystems,
            ip_addresses,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// CPU, memory, swap and process count: everything that lives in `System`.
    fn sample_system(&mut self) -> (f64, Vec<f64>, Memory, Swap, u32) {
        let Some(system) = self.system.as_mut() else {
            let zero_mem = Memory {
                total: 0,
                used: 0,
                available: 0,
            };
            return (0.0, Vec::new(), zero_mem, Swap { total: 0, used: 0 }, 0);
        };
        system.refresh_cpu_usage();
        system.refresh_memory_specifics(MemoryRefreshKind::everything());
        // Tasks are threads on Linux; without them the map holds processes only, and no
        // per-process detail is read, which keeps this cheap.
        system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().without_tasks(),
        );

        let cpu_percent = percent(f64::from(system.global_cpu_usage()));
        let cpu_per_core = system
            .cpus()
            .iter()
            .map(|c| percent(f64::from(c.usage())))
            .collect();

        // Derived here with saturating arithmetic: sysinfo subtracts unchecked, and odd
        // /proc/meminfo contents must not panic or break `used <= total`.
        let total = system.total_memory();
        let available = system.available_memory().min(total);
        let memory = Memory {
            total,
            used: total - available,
            available,
        };
        let swap_total = system.total_swap();
        let swap = Swap {
            total: swap_total,
            used: swap_total.saturating_sub(system.free_swap()),
        };
        let process_count = saturating_u32(system.processes().len());
        (cpu_percent, cpu_per_core, memory, swap, process_count)
    }

    /// Space on each real filesystem; also refreshes the I/O counters `sample_disk_io` reads.
    fn sample_disks_space(&mut self) -> Vec<FilesystemUsage> {
        let Some(disks) = self.disks.as_mut() else {
            return Vec::new();
        };
        disks.refresh_specifics(
            true,
            DiskRefreshKind::nothing().with_storage().with_io_usage(),
        );
        by_mount_point(disks)
            .into_iter()
            .map(|(mount, disk)| {
                let total = disk.total_space();
                FilesystemUsage {
                    mount,
                    fs_type: disk.file_system().to_string_lossy().into_owned(),
                    total,
                    used: total.saturating_sub(disk.available_space()),
                }
            })
            .collect()
    }

    /// Disk read/write rates from the counters refreshed by `sample_disks_space`.
    fn sample_disk_io(&mut self) -> DiskIo {
        let Some(current) = self.disk_counters_from_list() else {
            return DiskIo::default();
        };
        let mut io = DiskIo::default();
        if let Some(prev) = &self.disk_counters {
            for (device, &totals) in &current.totals {
                let (read, write) = prev.rates(device, totals, current.at);
                io.read_bps += read;
                io.write_bps += write;
            }
        }
        self.disk_counters = Some(current);
        io
    }

    /// Per-interface and total network rates; loopback excluded.
    fn sample_network(&mut self) -> (Vec<InterfaceRates>, Rates) {
        let Some(current) = self.read_net_counters() else {
            return (Vec::new(), Rates::default());
        };
        let mut interfaces: Vec<InterfaceRates> = current
            .totals
            .iter()
            .map(|(name, &totals)| {
                let (rx_bps, tx_bps) = match &self.net_counters {
                    Some(prev) => prev.rates(name, totals, current.at),
                    None => (0.0, 0.0),
                };
                InterfaceRates {
                    name: name.clone(),
                    rx_bps,
                    tx_bps,
                }
            })
            .collect();
        // Stable order so consecutive samples line up for whoever reads them.
        interfaces.sort_by(|a, b| a.name.cmp(&b.name));
        let total = interfaces.iter().fold(Rates::default(), |acc, i| Rates {
            rx_bps: acc.rx_bps + i.rx_bps,
            tx_bps: acc.tx_bps + i.tx_bps,
        });
        self.net_counters = Some(current);
        (interfaces, total)
    }

    /// Sensor temperatures that look like real readings.
    fn sample_temperatures(&mut self) -> Vec<Temperature> {
        let Some(components) = self.components.as_mut() else {
            return Vec::new();
        };
        components.refresh(true);
        components
            .iter()
            .filter_map(|c| {
                let celsius = f64::from(c.temperature()?);
                if !celsius.is_finite() || !(MIN_CELSIUS..=MAX_CELSIUS).contains(&celsius) {
                    return None;
                }
                let label = match c.label().trim() {
                    "" => c.id().unwrap_or("sensor").to_owned(),
                    l => l.to_owned(),
                };
                Some(Temperature { label, celsius })
            })
            .collect()
    }

    /// Refresh the disk list with I/O counters and read them (used to prime in `new`).
    fn read_disk_counters(&mut self) -> Option<Counters> {
        let disks = self.disks.as_mut()?;
        disks.refresh_specifics(
            true,
            DiskRefreshKind::nothing().with_storage().with_io_usage(),
        );
        self.disk_counters_from_list()
    }

    /// Cumulative I/O per device from the already refreshed disk list, each device once.
    fn disk_counters_from_list(&self) -> Option<Counters> {
        let disks = self.disks.as_ref()?;
        let at = Instant::now();
        let mut totals = HashMap::new();
        // A device mounted at several points (bind mounts, btrfs subvolumes) has one set of
        // counters; the first entry wins and the others are the same numbers again.
        for disk in disks.iter().filter(|d| is_real(d)) {
            let usage = disk.usage();
            totals
                .entry(disk.name().to_string_lossy().into_owned())
                .or_insert((usage.total_read_bytes, usage.total_written_bytes));
        }
        Some(Counters { at, totals })
    }

    /// Refresh the interfaces and read their cumulative byte counters (loopback excluded).
    fn read_net_counters(&mut self) -> Option<Counters> {
        let networks = self.networks.as_mut()?;
        networks.refresh(true);
        let at = Instant::now();
        let totals = networks
            .iter()
            .filter(|(name, _)| name.as_os_str() != LOOPBACK)
            .map(|(name, data)| {
                (
                    name.to_string_lossy().into_owned(),
                    (data.total_received(), data.total_transmitted()),
                )
            })
            .collect();
        Some(Counters { at, totals })
    }
}

/// Whether a sysinfo disk entry is a real, sized filesystem worth reporting.
fn is_real(disk: &Disk) -> bool {
    !is_pseudo_fs(&disk.file_system().to_string_lossy()) && disk.total_space() > 0
}

/// Real filesystems keyed (and so deduplicated and ordered) by mount point.
///
/// The last entry for a mount point wins because a later mount hides the earlier one. Mount
/// points that are not directories are skipped: containers bind-mount single files such as
/// `/etc/hosts` from the host disk, and those are not filesystems a person wants listed.
fn by_mount_point(disks: &Disks) -> BTreeMap<String, &Disk> {
    let mut seen = BTreeMap::new();
    for disk in disks.iter().filter(|d| is_real(d)) {
        if !disk.mount_point().is_dir() {
            continue;
        }
        seen.insert(disk.mount_point().to_string_lossy().into_owned(), disk);
    }
    seen
}

/// Log why a sysinfo part is unavailable and carry on without it.
fn ok_or_warn<T>(result: Result<T, sysinfo::Error>, what: &str) -> Option<T> {
    result
        .map_err(|e| tracing::warn!(error = %e, part = what, "cannot collect; reporting it empty"))
        .ok()
}

/// `bytes / secs`, or 0 when no time passed (which would otherwise give infinity or NaN).
fn per_second(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        non_negative(bytes as f64 / secs)
    } else {
        0.0
    }
}

/// A finite value >= 0, since the hub rejects anything else.
fn non_negative(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 { v } else { 0.0 }
}

/// A finite percentage in 0..=100; rounding in the kernel counters can overshoot slightly.
fn percent(v: f64) -> f64 {
    non_negative(v).min(100.0)
}

/// Counts do not realistically exceed `u32`, but saturating beats a panic if one does.
fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet as Set;
    use std::time::Duration;

    #[test]
    fn pseudo_filesystems_are_recognised() {
        for fs in ["proc", "sysfs", "tmpfs", "cgroup2", "squashfs", "devpts"] {
            assert!(is_pseudo_fs(fs), "{fs} should be pseudo");
        }
        for fs in [
            "overlay", "ext4", "xfs", "btrfs", "zfs", "vfat", "nfs4", "", "PROC",
        ] {
            assert!(!is_pseudo_fs(fs), "{fs} should be real");
        }
    }

    #[test]
    fn rates_handle_zero_time_new_keys_and_resets() {
        assert_eq!(per_second(1000, 0.0), 0.0);
        assert_eq!(per_second(1000, -1.0), 0.0);
        assert_eq!(per_second(1000, 2.0), 500.0);
        assert_eq!(percent(f64::NAN), 0.0);
        assert_eq!(percent(100.4), 100.0);
        assert_eq!(percent(-3.0), 0.0);
        assert_eq!(non_negative(f64::INFINITY), 0.0);

        let start = Instant::now();
        let prev = Counters {
            at: start,
            totals: HashMap::from([("eth0".to_owned(), (1000, 5000))]),
        };
        let later = start + Duration::from_secs(2);
        assert_eq!(prev.rates("eth0", (3000, 4000), later), (1000.0, 0.0));
        assert_eq!(prev.rates("eth1", (3000, 4000), later), (0.0, 0.0));
        assert_eq!(prev.rates("eth0", (3000, 6000), start), (0.0, 0.0));
    }

    fn check(f: f64, what: &str) {
        assert!(f.is_finite() && f >= 0.0, "{what} = {f}");
    }

    fn assert_valid(s: &Sample) {
        check(s.cpu_percent, "cpu_percent");
        assert!(s.cpu_percent <= 100.0);
        for &c in &s.cpu_per_core {
            check(c, "cpu_per_core");
            assert!(c <= 100.0);
        }
        for &l in &s.load {
            check(l, "load");
        }
        assert!(s.memory.total > 0);
        assert!(s.memory.used <= s.memory.total);
        assert!(s.memory.available <= s.memory.total);
        assert!(s.swap.used <= s.swap.total);
        assert!(!s.filesystems.is_empty(), "no filesystem found");
        let mut mounts = Set::new();
        for fs in &s.filesystems {
            assert!(fs.used <= fs.total, "{fs:?}");
            assert!(fs.total > 0, "{fs:?}");
            assert!(!is_pseudo_fs(&fs.fs_type), "{fs:?}");
            assert!(
                mounts.insert(fs.mount.clone()),
                "duplicate mount {}",
                fs.mount
            );
        }
        check(s.disk_io.read_bps, "disk read");
        check(s.disk_io.write_bps, "disk write");
        let (mut rx, mut tx) = (0.0, 0.0);
        for i in &s.network {
            assert_ne!(i.name, LOOPBACK);
            check(i.rx_bps, "rx");
            check(i.tx_bps, "tx");
            rx += i.rx_bps;
            tx += i.tx_bps;
        }
        check(s.network_total.rx_bps, "total rx");
        check(s.network_total.tx_bps, "total tx");
        assert!((s.network_total.rx_bps - rx).abs() <= 1e-6 * rx.max(1.0));
        assert!((s.network_total.tx_bps - tx).abs() <= 1e-6 * tx.max(1.0));
        for t in &s.temperatures {
            assert!(t.celsius.is_finite() && (MIN_CELSIUS..=MAX_CELSIUS).contains(&t.celsius));
        }
        assert!(s.process_count >= 1);
    }

    #[test]
    fn samples_satisfy_hub_validation() {
        let mut c = Collector::new();
        std::thread::sleep(Duration::from_millis(200));
        let first = c.sample();
        std::thread::sleep(Duration::from_millis(200));
        let second = c.sample();
        assert_valid(&first);
        assert_valid(&second);
        assert!(second.ts > first.ts);
    }

    #[test]
    fn inventory_describes_the_machine() {
        let mut c = Collector::new();
        let inv = c.inventory();
        assert!(!inv.hostname.is_empty());
        assert!(!inv.kernel.is_empty());
        assert!(!inv.arch.is_empty());
        assert!(inv.cpu_threads >= 1);
        assert!(inv.memory_total > 0);
        assert_eq!(inv.agent_version, env!("CARGO_PKG_VERSION"));
        for fs in &inv.filesystems {
            assert!(!is_pseudo_fs(&fs.fs_type) && fs.total > 0, "{fs:?}");
        }
        // An inventory in between must not disturb the sample that follows.
        assert_valid(&c.sample());
    }

    #[test]
    fn collector_can_move_to_another_thread() {
        fn is_send<T: Send>() {}
        is_send::<Collector>();
    }
}
