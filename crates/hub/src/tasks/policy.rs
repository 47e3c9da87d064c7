//! The hub's command policy: which commands it refuses to hand to agents.

use regex::{Regex, RegexBuilder};

use crate::config::TasksConfig;
use crate::error::{Error, Result};

/// Compiled deny and allow patterns.
pub struct CommandPolicy {
    allowlist_mode: bool,
    deny: Vec<(String, Regex)>,
    allow: Vec<Regex>,
}

fn compile(pattern: &str, whole: bool) -> Regex {
    let source = if whole {
        format!("^(?:{pattern})$")
    } else {
        pattern.to_string()
    };
    // Validated when the configuration was loaded.
    RegexBuilder::new(&source)
        .case_insensitive(true)
        .build()
        .unwrap_or_else(|e| panic!("task pattern {pattern:?} was validated at load: {e}"))
}

impl CommandPolicy {
    /// The policy of the configuration (whose patterns were validated at load).
    pub fn new(c: &TasksConfig) -> Self {
        CommandPolicy {
            allowlist_mode: c.policy == "allowlist",
            deny: c
                .deny
                .iter()
                .map(|p| (p.clone(), compile(p, false)))
                .collect(),
            allow: c.allow.iter().map(|p| compile(p, true)).collect(),
        }
    }

    /// `Forbidden` with the reason when the command may not run.
    pub fn check(&self, command: &str) -> Result<()> {
        if let Some((pattern, _)) = self.deny.iter().find(|(_, re)| re.is_match(command)) {
            return Err(Error::Forbidden(format!(
                "the hub's task policy refuses this command: it matches the deny pattern {pattern:?}"
            )));
        }
        if self.allowlist_mode && !self.allow.iter().any(|re| re.is_match(command)) {
            return Err(Error::Forbidden(
                "the hub's task policy refuses this command: it matches no allow pattern (tasks.policy = allowlist)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_denylist_stops_destructive_commands_and_lets_routine_ones_through() {
        let p = CommandPolicy::new(&TasksConfig::default());
        for bad in [
            "rm -rf /",
            "rm -rf --no-preserve-root /",
            "sudo rm -fr /*",
            "rm -rf ~",
            "mkfs.ext4 /dev/sdb1",
            "dd if=/dev/zero of=/dev/sda bs=1M",
            "cat x > /dev/nvme0n1",
            ":(){ :|:& };:",
            "shutdown -h now",
            "systemctl reboot",
            "init 0",
            "chmod -R 777 /",
            "crontab -r",
            "REBOOT",
        ] {
            let e = p.check(bad).unwrap_err().to_string();
            assert!(e.contains("deny pattern"), "{bad}: {e}");
        }
        for fine in [
            "echo hi",
            "uptime",
            "df -h",
            "rm -rf /tmp/build-cache",
            "systemctl status nginx",
            "journalctl -u nginx --since today",
            "dd if=/dev/zero of=/tmp/file bs=1M count=1",
            "apt-get update",
        ] {
            assert!(p.check(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn allowlist_mode_runs_only_whole_matches() {
        let c = TasksConfig {
            policy: "allowlist".into(),
            allow: vec!["uptime".into(), r"systemctl status [\w.-]+".into()],
            ..TasksConfig::default()
        };
        let p = CommandPolicy::new(&c);
        assert!(p.check("uptime").is_ok());
        assert!(p.check("systemctl status nginx").is_ok());
        assert!(p.check("uptime; reboot").is_err());
        assert!(p.check("systemctl status nginx; id").is_err());
        assert!(
            p.check("id")
                .unwrap_err()
                .to_string()
                .contains("no allow pattern")
        );
    }
}
