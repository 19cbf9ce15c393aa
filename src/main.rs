fn main() -> std::process::ExitCode {
    autobiz::main()
}
