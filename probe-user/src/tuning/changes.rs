//! Change detection: the knobs whose values differ between two inventories.

use std::collections::BTreeMap;

use serde::Serialize;

use super::inventory::{Inventory, Setting};

/// A knob whose value changed between two inventories.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Change {
    pub knob: String,
    /// `node`, `netns:<inode>`, `device:<name>`, `mount:<path>`, `cgroup:<path>`.
    pub scope: String,
    /// The scope's owner, when it has one (the pod cgroup of a namespace).
    pub owner: Option<String>,
    /// `null` when the knob appeared (a new namespace, a new cgroup quota).
    pub old: Option<String>,
    /// `null` when the knob disappeared.
    pub new: Option<String>,
}

impl Inventory {
    /// Every setting with its scope key and owner.
    fn flatten(&self) -> BTreeMap<(String, String), (Option<String>, String)> {
        let mut out = BTreeMap::new();
        let mut put = |scope: String, owner: Option<&String>, settings: &[Setting]| {
            for s in settings {
                out.insert(
                    (scope.clone(), s.knob.clone()),
                    (owner.cloned(), s.value.clone()),
                );
            }
        };
        put("node".into(), None, &self.node);
        for ns in &self.netns {
            put(
                format!("netns:{}", ns.netns),
                ns.owner.as_ref(),
                &ns.settings,
            );
        }
        for d in &self.devices {
            put(format!("device:{}", d.device), None, &d.settings);
        }
        for m in &self.mounts {
            put(format!("mount:{}", m.mountpoint), None, &m.settings);
        }
        for c in &self.cgroups {
            put(
                format!("cgroup:{}", c.cgroup_path),
                Some(&c.cgroup_path),
                &c.settings,
            );
        }
        out
    }

    /// What changed from `earlier` to `self`. A scope that came or went entirely (a pod
    /// started or ended, a quota set on a new container) is not a tuning change and is
    /// left out; a knob that appeared or disappeared within a scope that stayed is one.
    /// (Container cgroups are listed with or without a quota, so a limit added to a
    /// running container is a change; other cgroups only while they have a quota.)
    pub(crate) fn changes_since(&self, earlier: &Inventory) -> Vec<Change> {
        let (before, after) = (earlier.flatten(), self.flatten());
        let scopes = |map: &BTreeMap<(String, String), (Option<String>, String)>| {
            map.keys()
                .map(|(scope, _)| scope.clone())
                .collect::<std::collections::BTreeSet<_>>()
        };
        let (scopes_before, scopes_after) = (scopes(&before), scopes(&after));
        let stable = |scope: &String| scopes_before.contains(scope) && scopes_after.contains(scope);
        let mut changes = Vec::new();
        let keys: std::collections::BTreeSet<_> =
            before.keys().chain(after.keys()).cloned().collect();
        for key in keys {
            let (old, new) = (before.get(&key), after.get(&key));
            if old.map(|o| &o.1) == new.map(|n| &n.1) || !stable(&key.0) {
                continue;
            }
            changes.push(Change {
                owner: new.or(old).and_then(|(owner, _)| owner.clone()),
                knob: key.1.clone(),
                scope: key.0.clone(),
                old: old.map(|(_, v)| v.clone()),
                new: new.map(|(_, v)| v.clone()),
            });
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuning::{CgroupSettings, KNOBS, NetnsSettings};

    #[test]
    fn changes_between_inventories() {
        let somaxconn = KNOBS
            .iter()
            .find(|k| k.name == "net.core.somaxconn")
            .unwrap();
        let cpu = KNOBS.iter().find(|k| k.name == "cpu.max").unwrap();
        let ns = |inode: u32, value: &str| NetnsSettings {
            netns: inode,
            owner: Some(format!("/pod{inode}")),
            settings: vec![Setting::new(somaxconn, value.into())],
            error: None,
        };
        let before = Inventory {
            netns: vec![ns(1, "4096"), ns(2, "4096")],
            ..Inventory::default()
        };
        let after = Inventory {
            netns: vec![ns(1, "65535"), ns(3, "4096")],
            cgroups: vec![CgroupSettings {
                cgroup_path: "/c".into(),
                settings: vec![Setting::new(cpu, "20000 100000".into())],
            }],
            ..Inventory::default()
        };
        let changes = after.changes_since(&before);
        // netns 1 changed; netns 2 ended, 3 started and a container with a quota
        // appeared: pods coming and going, not tuning.
        assert_eq!(changes.len(), 1, "{changes:#?}");
        assert_eq!(
            changes[0],
            Change {
                knob: "net.core.somaxconn".into(),
                scope: "netns:1".into(),
                owner: Some("/pod1".into()),
                old: Some("4096".into()),
                new: Some("65535".into()),
            }
        );
        // The container's quota raised in place: a change of that cgroup.
        let mut raised = after.clone();
        raised.cgroups[0].settings = vec![Setting::new(cpu, "100000 100000".into())];
        let changes = raised.changes_since(&after);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            (changes[0].scope.as_str(), changes[0].new.as_deref()),
            ("cgroup:/c", Some("100000 100000"))
        );
        assert_eq!(after.changes_since(&after.clone()), vec![]);
    }
}
