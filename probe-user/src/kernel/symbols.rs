//! Kernel text symbols from `/proc/kallsyms`: the function a code address is in. It
//! names where the kernel dropped a packet (`trace`'s `location`, and the drop reason on
//! kernels without drop reasons).

use std::path::Path;

/// Where the running kernel lists its symbols.
pub const KALLSYMS: &str = "/proc/kallsyms";

/// Kernel text symbols, sorted by address. Names are kept in one string (about 100,000
/// text symbols take some 4 MiB this way, where a `String` each would take twice that).
#[derive(Debug, Clone, Default)]
pub struct Symbols {
    /// (address, end of the name in `names`), sorted by address.
    sorted: Vec<(u64, u32)>,
    names: String,
}

impl Symbols {
    /// Reads `path`; empty when unreadable or when the kernel hides addresses
    /// (`kptr_restrict`, or a reader without `CAP_SYSLOG`): locations are then shown as
    /// bare addresses. The kernel decides at `open` whether a reader sees addresses, so
    /// this is read before tuneprobe drops its capabilities.
    pub fn load(path: &Path) -> Self {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Self::default();
        };
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Self {
        let mut symbols: Vec<(u64, &str)> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let address = u64::from_str_radix(fields.next()?, 16).ok()?;
                let kind = fields.next()?;
                let name = fields.next()?;
                // Text symbols only: a drop location is a return address in code.
                (address != 0 && matches!(kind, "t" | "T")).then_some((address, name))
            })
            .collect();
        symbols.sort_unstable();
        let mut names = String::with_capacity(symbols.iter().map(|(_, n)| n.len()).sum());
        let sorted = symbols
            .into_iter()
            .map(|(address, name)| {
                names.push_str(name);
                (address, names.len() as u32)
            })
            .collect();
        Self { sorted, names }
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The symbol covering `address` and `address`'s offset into it.
    fn lookup(&self, address: u64) -> Option<(&str, u64)> {
        if address == 0 {
            return None;
        }
        let index = self.sorted.partition_point(|(a, _)| *a <= address);
        let i = index.checked_sub(1)?;
        let (start, end) = self.sorted[i];
        let begin = i.checked_sub(1).map_or(0, |j| self.sorted[j].1);
        let name = self.names.get(begin as usize..end as usize)?;
        Some((name, address - start))
    }

    /// `function+0xoffset`, or the address in hex if no symbol covers it.
    pub fn name(&self, address: u64) -> String {
        match self.lookup(address) {
            Some((name, offset)) => format!("{name}+0x{offset:x}"),
            None => format!("0x{address:x}"),
        }
    }

    /// The function a return address returns into, without an offset (the byte before
    /// it is the call instruction's, inside the caller even when the call is the
    /// function's last instruction); the address in hex if no symbol covers it.
    pub fn caller(&self, return_address: u64) -> String {
        match self.lookup(return_address.saturating_sub(1)) {
            Some((name, _)) => name.to_string(),
            None => format!("0x{return_address:x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_name_the_enclosing_function() {
        let symbols = Symbols::parse(
            "ffffffff81000000 T _stext\nffffffff81a00000 t tcp_v4_rcv\n\
             ffffffff81a00800 T udp_rcv\nffffffff81b00000 D some_data\n",
        );
        assert_eq!(symbols.name(0xffffffff81a00010), "tcp_v4_rcv+0x10");
        assert_eq!(symbols.name(0xffffffff81a00800), "udp_rcv+0x0");
        assert_eq!(symbols.name(0xffffffff81000001), "_stext+0x1");
        assert_eq!(symbols.name(0x10), "0x10");
        // A return address just past a function's last call belongs to that function.
        assert_eq!(symbols.caller(0xffffffff81a00800), "tcp_v4_rcv");
        assert_eq!(symbols.caller(0xffffffff81a00801), "udp_rcv");
        assert_eq!(symbols.caller(0x10), "0x10");
        // Hidden addresses (kptr_restrict) give no symbols: bare addresses remain.
        let hidden = Symbols::parse("0000000000000000 T _stext\n");
        assert!(hidden.is_empty());
        assert_eq!(hidden.name(0xffffffff81a00010), "0xffffffff81a00010");
        assert_eq!(hidden.caller(0xffffffff81a00010), "0xffffffff81a00010");
    }

    #[test]
    fn the_running_kernels_symbols_name_its_functions() {
        let symbols = Symbols::load(Path::new(KALLSYMS));
        // Root here sees real addresses; find one function and name an address in it.
        let text = std::fs::read_to_string(KALLSYMS).unwrap();
        let address_of = |line: &str| u64::from_str_radix(line.split(' ').next()?, 16).ok();
        let line = text
            .lines()
            .find(|l| l.ends_with(" T kfree_skb_reason") || l.ends_with(" T sk_skb_reason_drop"))
            .unwrap();
        let address = address_of(line).unwrap();
        // Aliases share an address: any of their names is right.
        let names: Vec<&str> = text
            .lines()
            .filter(|l| address_of(l) == Some(address) && l.contains(" T "))
            .filter_map(|l| l.split_whitespace().nth(2))
            .collect();
        assert!(!symbols.is_empty());
        let name = symbols.caller(address + 2);
        assert!(names.contains(&name.as_str()), "{name} not in {names:?}");
        assert_eq!(symbols.name(address + 2), format!("{name}+0x2"));
    }
}
