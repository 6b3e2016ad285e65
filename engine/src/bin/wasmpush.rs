//! The `wasmpush` command; everything it does is in the library (`wasmpush::main`).

fn main() -> std::process::ExitCode {
    wasmpush::main()
}
