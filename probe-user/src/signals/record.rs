//! What the signals' ring-buffer records have in common: checking a record before it
//! is read, and what a signal may consult to name its fields (`trace`).

use std::{collections::HashMap, path::Path};

use probe_common::trace::{TraceHeader, TraceKind};

use crate::{
    kernel::{devices, loader::Probe, symbols::Symbols},
    workloads::{cgroup::Hierarchy, identity::Identity},
};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("{kind:?} record of {len} bytes, expected {expected}")]
    Size {
        kind: TraceKind,
        len: usize,
        expected: usize,
    },
}

/// The header every record starts with.
pub fn header(bytes: &[u8]) -> Result<TraceHeader, RecordError> {
    if bytes.len() < size_of::<TraceHeader>() {
        return Err(RecordError::Short(bytes.len()));
    }
    // SAFETY: long enough, `TraceHeader` is plain old data (any bit pattern is valid),
    // and the read tolerates any alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<TraceHeader>()) })
}

/// Copies a `#[repr(C)]` integer-only record of `kind` out of `bytes`.
pub fn read<T: aya::Pod>(kind: TraceKind, bytes: &[u8]) -> Result<Box<T>, RecordError> {
    if bytes.len() != size_of::<T>() {
        return Err(RecordError::Size {
            kind,
            len: bytes.len(),
            expected: size_of::<T>(),
        });
    }
    // SAFETY: the length matches, `T` is plain old data, and the read tolerates any
    // alignment.
    Ok(Box::new(unsafe {
        std::ptr::read_unaligned(bytes.as_ptr().cast::<T>())
    }))
}

/// What a signal may consult to name a record's fields: the kernel's enums (from the
/// loaded probe's BTF), its symbols, and block device names (cached: a burst of events
/// costs one sysfs lookup).
/// Who a trace record belongs to, named the way the report names it, and the loaded
/// programs its fields are read with: what `trace`'s decoder needs of the window.
pub trait Names {
    /// The identity of a kernel key: a cgroup id of `hierarchy`, or for id 0 the owner
    /// of namespace `netns`.
    fn identity_of(&mut self, hierarchy: Hierarchy, id: u64, netns: Option<u32>) -> Identity;
    fn probe(&self) -> &Probe;
}

pub struct TraceContext<'a> {
    pub probe: &'a Probe,
    pub symbols: &'a Symbols,
    pub sys_root: &'a Path,
    pub devices: &'a mut HashMap<u32, String>,
}

impl TraceContext<'_> {
    /// The block device's name (`sda`), or `major:minor`.
    pub fn device(&mut self, dev: u32) -> String {
        self.devices
            .entry(dev)
            .or_insert_with(|| devices::name(self.sys_root, dev))
            .clone()
    }
}
