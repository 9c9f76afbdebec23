//! The kernel side as userspace sees it: BTF and the layout read from it, the programs
//! loaded and attached, their maps; and the kernel's other interfaces tuneprobe reads
//! (block devices in sysfs, sockets through sock_diag, symbols in `/proc/kallsyms`).

pub mod btf;
pub mod devices;
pub mod layout;
pub mod loader;
pub mod sockdiag;
pub mod symbols;
