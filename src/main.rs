//! The `aigne-hub` binary: see `aigne-hub --help`.

fn main() -> std::process::ExitCode {
    aigne_hub::cli::main()
}
