//! corelay-bench: load tool (density, echo, storm, fanout). Filled in by the engine work.
fn main() {
    eprintln!("corelay-bench: no mode yet");
    std::process::exit(2);
}
