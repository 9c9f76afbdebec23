//! `tuneprobe`: per-pod kernel signals from eBPF. The command line lives in the
//! library (`cli`), one module per subcommand.

fn main() -> std::process::ExitCode {
    tuneprobe::main()
}
