fn main() {
    std::process::exit(walkeeper::cli::main());
}
