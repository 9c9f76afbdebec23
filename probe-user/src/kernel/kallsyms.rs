//! Kernel text symbols from `/proc/kallsyms`, to name the kernel function behind an
//! address (where a packet was dropped).

use std::path::Path;

/// Kernel text symbols from `/proc/kallsyms`, to name the function that dropped a packet.
#[derive(Debug, Default)]
pub struct Symbols {
    /// (address, name), sorted by address.
    sorted: Vec<(u64, String)>,
}

impl Symbols {
    /// Reads `path`; empty when unreadable or when the kernel hides addresses
    /// (`kptr_restrict`): locations are then shown as bare addresses.
    pub fn load(path: &Path) -> Self {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Self::default();
        };
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Self {
        let mut sorted: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let address = u64::from_str_radix(fields.next()?, 16).ok()?;
                let kind = fields.next()?;
                let name = fields.next()?;
                // Text symbols only: a drop location is a return address in code.
                (address != 0 && matches!(kind, "t" | "T")).then(|| (address, name.to_string()))
            })
            .collect();
        sorted.sort_unstable();
        Self { sorted }
    }

    /// `function+0xoffset`, or the address in hex if no symbol covers it.
    pub fn name(&self, address: u64) -> String {
        let index = self.sorted.partition_point(|(a, _)| *a <= address);
        match index.checked_sub(1).map(|i| &self.sorted[i]) {
            Some((start, name)) if address > 0 => format!("{name}+0x{:x}", address - start),
            _ => format!("0x{address:x}"),
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
        assert_eq!(symbols.name(0x10), "0x10");
        // Hidden addresses (kptr_restrict) give no symbols: bare addresses remain.
        let hidden = Symbols::parse("0000000000000000 T _stext\n");
        assert_eq!(hidden.name(0xffffffff81a00010), "0xffffffff81a00010");
    }
}
