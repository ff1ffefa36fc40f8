//! The policy directory both proxies watch (like a ConfigMap mounted on
//! every node): installing it when a cluster starts (files from the
//! cluster's `Options`, or a symlink to a directory of them), writing and
//! removing files atomically, and waiting until both proxies reloaded.

use std::{fs, path::PathBuf, time::Duration};

use anyhow::Result;

use crate::cluster::{Cluster, NODES};

impl Cluster {
    /// The policy directory both proxies watch (like a ConfigMap mounted on every node).
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.join("policies")
    }

    /// Makes the policy directory a symlink to `policy_link` if set, else
    /// creates it and writes `policies` into it.
    pub(crate) fn install_policies(&self) -> Result<()> {
        if let Some(target) = &self.options.policy_link {
            std::os::unix::fs::symlink(target, self.policy_dir())?;
            return Ok(());
        }
        fs::create_dir_all(self.policy_dir())?;
        for (name, text) in &self.options.policies {
            self.write_policy(name, text);
        }
        Ok(())
    }

    /// Writes (or replaces) one policy file, atomically as a rename.
    pub fn write_policy(&self, name: &str, text: &str) {
        let tmp = self.policy_dir().join(format!(".{name}.tmp"));
        fs::write(&tmp, text).expect("write policy");
        fs::rename(&tmp, self.policy_dir().join(name)).expect("rename policy");
    }

    /// Removes one policy file.
    pub fn remove_policy(&self, name: &str) {
        fs::remove_file(self.policy_dir().join(name)).expect("remove policy");
    }

    /// Runs `change`, then waits until both proxies count one more policy
    /// reload with `result` (`ok` or `error`).
    pub fn change_policies(&self, result: &str, change: impl FnOnce(&Self)) {
        let name = "nodeward_policy_reloads_total";
        let before: Vec<f64> = NODES
            .iter()
            .map(|n| self.metric(n.name, name, &[("result", result)]))
            .collect();
        change(self);
        for (node, was) in NODES.iter().zip(before) {
            let now = self.wait_metric(
                node.name,
                name,
                &[("result", result)],
                was + 1.0,
                Duration::from_secs(10),
            );
            assert!(
                now > was,
                "{}: no policy reload with result {result}:\n{}",
                node.name,
                self.proxy_log(node.name)
            );
        }
    }
}
