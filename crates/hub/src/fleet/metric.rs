//! The metrics kept as history: one list, from which the store's columns and the API's
//! `metric=` names both come.

use smon_proto::Sample;

macro_rules! metrics {
    ($( $variant:ident = $name:literal, $unit:literal; )*) => {
        /// A metric with history.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Metric { $( $variant, )* }

        impl Metric {
            /// Every metric, in column order.
            pub const ALL: &'static [Metric] = &[ $( Metric::$variant, )* ];
            /// How many there are.
            pub const COUNT: usize = [$( $name, )*].len();

            /// The API name, also the column prefix in the store.
            pub fn name(self) -> &'static str {
                match self { $( Metric::$variant => $name, )* }
            }

            /// The unit its values are in.
            pub fn unit(self) -> &'static str {
                match self { $( Metric::$variant => $unit, )* }
            }
        }
    };
}

metrics! {
    Cpu = "cpu", "percent";
    Memory = "memory", "percent";
    Swap = "swap", "percent";
    Disk = "disk", "percent";
    Load1 = "load1", "load";
    Load5 = "load5", "load";
    Load15 = "load15", "load";
    NetRx = "net_rx", "bytes/s";
    NetTx = "net_tx", "bytes/s";
    DiskRead = "disk_read", "bytes/s";
    DiskWrite = "disk_write", "bytes/s";
    Temperature = "temperature", "celsius";
}

impl Metric {
    /// Look a metric up by its API name.
    pub fn parse(name: &str) -> Option<Metric> {
        Self::ALL.iter().copied().find(|m| m.name() == name)
    }

    /// Every API name, for error messages.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn percent(part: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| part as f64 * 100.0 / total as f64)
}

/// The history values of a (validated) sample, in [`Metric::ALL`] order. Swap without swap,
/// disk without filesystems and temperature without sensors are absent, not zero.
pub fn values(s: &Sample) -> [Option<f64>; Metric::COUNT] {
    let disk = s
        .filesystems
        .iter()
        .filter_map(|f| percent(f.used, f.total))
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.max(v)))
        });
    let temperature = s
        .temperatures
        .iter()
        .map(|t| t.celsius)
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.max(v)))
        });
    [
        Some(s.cpu_percent),
        percent(s.memory.used, s.memory.total),
        percent(s.swap.used, s.swap.total),
        disk,
        Some(s.load[0]),
        Some(s.load[1]),
        Some(s.load[2]),
        Some(s.network_total.rx_bps),
        Some(s.network_total.tx_bps),
        Some(s.disk_io.read_bps),
        Some(s.disk_io.write_bps),
        temperature,
    ]
}
