//! The `wasmpush` command, built inside this crate so the end-to-end tests can run the real
//! binary (`CARGO_BIN_EXE_wasmpush-under-test`) without depending on another package's build.

fn main() -> std::process::ExitCode {
    wasmpush::main()
}
