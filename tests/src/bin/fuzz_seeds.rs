//! Writes every fuzz target's seeds (valid inputs) into DIR/TARGET/seed-N: libFuzzer's initial
//! corpus for `make fuzz`. Prints the target names.

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: fuzz_seeds DIR");
        std::process::exit(2);
    };
    for (name, _) in remus_tests::fuzz_targets::TARGETS {
        let d = std::path::Path::new(&dir).join(name);
        if let Err(e) = std::fs::create_dir_all(&d) {
            eprintln!("{}: {e}", d.display());
            std::process::exit(1);
        }
        for (i, s) in remus_tests::fuzz_seeds::seeds(name).iter().enumerate() {
            if let Err(e) = std::fs::write(d.join(format!("seed-{i}")), s) {
                eprintln!("{}: {e}", d.display());
                std::process::exit(1);
            }
        }
        println!("{name}");
    }
}
