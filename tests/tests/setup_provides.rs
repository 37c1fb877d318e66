//! Every program the project runs is installed by `scripts/setup.sh`.
//!
//! A fresh machine has only the Rust toolchain (and Debian's required packages). A test that
//! runs a program the developer happened to have (it was `ping`) passes on their machine and
//! fails on a new one. This check reads the source instead of the machine: it finds the
//! programs the code, the tests, the demo, the benchmarks and the scripts run, and fails unless
//! each one is in setup's table, in a package every Debian system has (Priority: required), or
//! part of the fresh machine's toolchain. It then checks setup's table against the packages'
//! real file lists, so the table cannot claim a package provides what it does not.
//!
//! The scanner is a hand-written lexer rather than a shell or Rust parser: it only has to find
//! the names in command position, and a false positive fails loudly with the place it came from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Names that required packages provide through Debian's alternatives (not in their file lists).
const REQUIRED_ALTERNATIVES: &[&str] = &["awk"];

/// Programs of the fresh machine's toolchain (not Debian packages there).
const TOOLCHAIN: &[&str] = &["cargo", "rustc", "rustup", "gcc", "cc", "python3", "git"];

/// Shell words in command position that are not programs.
const SHELL_WORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "for", "in", "do", "done", "while", "until", "case",
    "esac", "function", "return", "local", "declare", "export", "set", "unset", "shift", "exit",
    "trap", "wait", "cd", "echo", "printf", "read", "true", "false", "test", "[", "[[", "]]", ":",
    ".", "source", "eval", "exec", "break", "continue", "kill", "let", "readonly", "type",
    "command", "builtin", "pushd", "popd", "time", "{", "}", "!", "mapfile", "getopts", "ulimit",
    "umask", "hash", "jobs", "disown", "select",
];

/// Words that run the program named after them (possibly after options or an argument).
fn prefix_args(word: &str) -> Option<usize> {
    match word {
        "setsid" | "nohup" | "sudo" | "env" | "xargs" | "exec" | "time" | "command" => Some(0),
        "timeout" | "flock" => Some(1),
        _ => None,
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// setup.sh's table: program → package.
fn setup_table(root: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(root.join("scripts/setup.sh")).expect("scripts/setup.sh");
    let start = text
        .find("PROGRAMS=(")
        .expect("setup.sh has a PROGRAMS=( table");
    let body = &text[start + "PROGRAMS=(".len()..];
    let end = body
        .find("\n)")
        .expect("PROGRAMS table ends with a line ')'");
    let mut t = BTreeMap::new();
    for line in body[..end].lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let entry = line.trim_matches('"');
        let mut w = entry.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some(prog), Some(pkg), None) => {
                t.insert(prog.to_string(), pkg.to_string());
            }
            _ => panic!("setup.sh PROGRAMS entry {line:?} is not \"program package\""),
        }
    }
    t
}

/// A program found in command position, and where.
#[derive(Debug, Clone)]
struct Use {
    program: String,
    at: String,
}

fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                // Guest scripts run inside the guest's busybox, not on the host.
                if !matches!(
                    name.as_str(),
                    "target" | ".git" | "guest" | "fuzz" | "corpus"
                ) {
                    stack.push(p);
                }
            } else if name.ends_with(".rs") || name.ends_with(".sh") || name == "Makefile" {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// String literals of a Rust line, with the text before each.
fn literals(line: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            break;
        }
        if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            let start = i;
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                if b[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            out.push((start, line[start + 1..j.min(b.len())].to_string()));
            i = j + 1;
        } else {
            i += 1;
        }
    }
    out
}

/// Programs a Rust line runs: the first string literal of `Command::new(..)`, a namespace's
/// `command(..)`/`spawn(..)`, `sh(&[..])`/`exec(&[..])`, `find_program(..)`, and the word after
/// `"netns", "exec", NAME,` in an argument list.
fn rust_uses(text: &str, file: &str, out: &mut Vec<Use>) {
    const CALLS: &[&str] = &[
        "Command::new(",
        ".command(",
        ".spawn(",
        "sh(&[",
        ".exec(&[",
        "find_program(",
    ];
    let lines: Vec<&str> = text.lines().collect();
    for (n, line) in lines.iter().enumerate() {
        if line.contains("setup-check: not run") {
            continue;
        }
        let lits = literals(line);
        for call in CALLS {
            let mut from = 0;
            while let Some(k) = line[from..].find(call) {
                let at = from + k + call.len();
                from = at;
                // The call's first literal: on this line, or the next when the call breaks.
                let (first, before) = match lits.iter().find(|(s, _)| *s >= at) {
                    Some((s, l)) => (Some(l.clone()), &line[at..*s]),
                    None => (
                        lines
                            .get(n + 1)
                            .and_then(|l| literals(l).into_iter().next())
                            .filter(|(s, _)| lines[n + 1][..*s].trim().is_empty())
                            .map(|(_, l)| l),
                        "",
                    ),
                };
                // `.command(host, "prog")`: one plain argument may come first.
                let plain = before.trim().trim_end_matches(',').trim();
                let ok =
                    plain.is_empty() || (*call == ".command(" && !plain.contains(['(', '"', ')']));
                // A namespace's `.spawn("prog", &[args])`, not a supervisor's `.spawn("label", ..)`.
                let ok = ok
                    && (*call != ".spawn("
                        || line[at..]
                            .split_once("\", ")
                            .is_some_and(|(_, r)| r.starts_with("&[")));
                if let (true, Some(p)) = (ok, first) {
                    out.push(Use {
                        program: p,
                        at: format!("{file}:{}", n + 1),
                    });
                }
            }
        }
        // "netns", "exec", <name>, "prog"
        let joined: String = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Some(k) = joined.find("\"netns\", \"exec\", ") {
            let rest = &joined[k + "\"netns\", \"exec\", ".len()..];
            if let Some(c) = rest.find(", ") {
                if let Some((_, p)) = literals(&rest[c + 2..]).into_iter().next() {
                    if rest[c + 2..].starts_with('"') {
                        out.push(Use {
                            program: p,
                            at: format!("{file}:{}", n + 1),
                        });
                    }
                }
            }
        }
    }
}

/// Shell lexer state carried from one line to the next: an open quote (a `python3 -c '...'`
/// program spans lines), and an open array assignment (`ARGS=(-accel tcg` … `)`).
#[derive(Default)]
struct Lexer {
    quote: Option<char>,
    array: bool,
}

impl Lexer {
    /// Splits a shell line into words and control operators, dropping comments. Words inside
    /// a quote or an array carried over from earlier lines are not commands: they come back
    /// as one word with a leading quote, or not at all.
    fn words(&mut self, line: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let chars: Vec<char> = line.chars().collect();
        let mut braces = 0usize;
        let mut i = 0;
        let flush = |cur: &mut String, out: &mut Vec<String>| {
            if !cur.is_empty() {
                out.push(std::mem::take(cur));
            }
        };
        if self.array {
            match chars.iter().position(|&c| c == ')') {
                Some(k) => {
                    self.array = false;
                    i = k + 1;
                }
                None => return out,
            }
        }
        if let Some(q) = self.quote {
            cur.push(q);
        }
        while i < chars.len() {
            let c = chars[i];
            match self.quote {
                Some(q) if c == q => {
                    self.quote = None;
                    cur.push(c);
                }
                Some(_) => cur.push(c),
                None if braces > 0 => {
                    braces += usize::from(c == '{');
                    braces -= usize::from(c == '}');
                    cur.push(c);
                }
                None => match c {
                    '\'' | '"' => {
                        self.quote = Some(c);
                        cur.push(c);
                    }
                    '{' if cur.ends_with('$') => {
                        braces = 1;
                        cur.push(c);
                    }
                    '#' if cur.is_empty() => break,
                    ' ' | '\t' => flush(&mut cur, &mut out),
                    ';' | '|' | '&' | '(' | ')' | '`' => {
                        if c == '(' && cur.ends_with('$') {
                            // `$(` starts a command; `$((` is arithmetic.
                            cur.pop();
                            flush(&mut cur, &mut out);
                            if chars.get(i + 1) == Some(&'(') {
                                out.push("((".into());
                                i += 2;
                                continue;
                            }
                            out.push("$(".into());
                        } else if c == '(' && cur.ends_with('=') {
                            // NAME=( … ): an array, possibly over several lines.
                            flush(&mut cur, &mut out);
                            match chars[i..].iter().position(|&c| c == ')') {
                                Some(k) => {
                                    i += k + 1;
                                    continue;
                                }
                                None => {
                                    self.array = true;
                                    return out;
                                }
                            }
                        } else if c == '(' && !cur.is_empty() {
                            // a function definition `name()`
                            cur.push(c);
                        } else if c == ')' && cur.contains('(') {
                            cur.push(c);
                        } else {
                            flush(&mut cur, &mut out);
                            out.push(c.to_string());
                        }
                    }
                    _ => cur.push(c),
                },
            }
            i += 1;
        }
        flush(&mut cur, &mut out);
        out
    }
}

fn is_name(w: &str) -> bool {
    !w.is_empty()
        && w.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
}

/// Programs a shell script (or Makefile recipe) runs: every plain word in command position,
/// looking through `ip netns exec NS`, variables used as command prefixes (`$C iperf3`) and
/// `setsid`/`timeout N`-style wrappers. Heredoc bodies (other languages) are skipped.
fn shell_uses(
    text: &str,
    file: &str,
    makefile: bool,
    functions: &BTreeSet<String>,
    out: &mut Vec<Use>,
) {
    let mut lexer = Lexer::default();
    let mut heredoc: Option<String> = None;
    let mut continued = false;
    for (n, line) in text.lines().enumerate() {
        if let Some(end) = &heredoc {
            if line.trim() == end {
                heredoc = None;
            }
            continue;
        }
        let body = if makefile {
            // Recipe lines only; make's $(VAR) is a variable to the shell scan.
            match line.strip_prefix('\t') {
                Some(r) => r
                    .trim_start_matches(['@', '-'])
                    .replace("$(", "$")
                    .replace(')', ""),
                None => continue,
            }
        } else {
            line.to_string()
        };
        let body = body.as_str();
        let in_quote = lexer.quote.is_some();
        let words = lexer.words(body);
        if in_quote {
            continue;
        }
        if let Some(k) = words.iter().position(|w| w.starts_with("<<")) {
            let tag = words[k]
                .trim_start_matches("<<")
                .trim_start_matches('-')
                .to_string();
            let tag = if tag.is_empty() {
                words.get(k + 1).cloned().unwrap_or_default()
            } else {
                tag
            };
            heredoc = Some(tag.trim_matches(['\'', '"']).to_string());
        }
        let mut at_command = !continued;
        continued = body.trim_end().ends_with('\\');
        let mut skip = 0usize;
        let mut i = 0;
        while i < words.len() {
            let w = words[i].as_str();
            i += 1;
            if matches!(w, ";" | "|" | "&" | "(" | "$(" | "`" | "((" | ")") {
                at_command = w != "((" && w != ")";
                continue;
            }
            if !at_command {
                continue;
            }
            if skip > 0 {
                skip -= 1;
                continue;
            }
            // Assignments before a command, and redirections.
            if w.contains('=') && !w.starts_with('=') && is_name(w.split('=').next().unwrap_or(""))
            {
                continue;
            }
            if w.starts_with(['<', '>']) || w.starts_with("2>") {
                continue;
            }
            if matches!(
                w,
                "then" | "do" | "else" | "elif" | "if" | "while" | "until" | "!" | "{" | "time"
            ) {
                continue;
            }
            if let Some(n) = prefix_args(w) {
                // Options of the wrapper, then its n arguments, then the program.
                while i < words.len() && words[i].starts_with('-') {
                    i += 1;
                }
                skip = n;
                continue;
            }
            if w.starts_with('$') || w.starts_with("\"$") {
                // A variable in command position: in a script a prefix like `$C` (ip netns
                // exec ...), after which the program follows; a project binary ("$BIN/netbuf");
                // or in a Makefile the program itself ($(CARGO)).
                if !w.contains('/') && !makefile {
                    continue;
                }
                at_command = false;
                continue;
            }
            at_command = false;
            if w == "ip" && words.get(i).map(String::as_str) == Some("netns") {
                if words.get(i + 1).map(String::as_str) == Some("exec") {
                    i += 3;
                    at_command = true;
                }
                out.push(Use {
                    program: "ip".into(),
                    at: format!("{file}:{}", n + 1),
                });
                continue;
            }
            let w = w.trim_matches(['"', '\'']);
            if !is_name(w) || SHELL_WORDS.contains(&w) || functions.contains(w) || w.contains('(') {
                continue;
            }
            // `case` patterns such as `--bin)` never reach here (not names); `esac` etc. are words.
            out.push(Use {
                program: w.to_string(),
                at: format!("{file}:{}", n + 1),
            });
        }
    }
}

/// Functions defined in the shell files (a script calls those of a file it sources).
fn shell_functions(root: &Path) -> BTreeSet<String> {
    let mut functions = BTreeSet::new();
    for f in files(root)
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "sh"))
    {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
            let t = line.trim_start();
            if let Some((name, _)) = t.split_once("() {") {
                functions.insert(name.trim().trim_start_matches("function ").to_string());
            }
        }
    }
    functions
}

fn uses(root: &Path) -> Vec<Use> {
    let functions = shell_functions(root);
    let mut out = Vec::new();
    for f in files(root) {
        let rel = f
            .strip_prefix(root)
            .unwrap_or(&f)
            .to_string_lossy()
            .into_owned();
        if rel.ends_with("setup_provides.rs") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        if rel.ends_with(".rs") {
            rust_uses(&text, &rel, &mut out);
        } else {
            shell_uses(&text, &rel, rel.ends_with("Makefile"), &functions, &mut out);
        }
    }
    out
}

/// Names of the project's own binaries and scripts (run by path, built or checked in here).
fn own_programs(root: &Path) -> BTreeSet<String> {
    let mut own: BTreeSet<String> = ["remus", "netbuf", "diskrep", "checkpointd"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for dir in ["tests/src/bin", "scripts"] {
        if let Ok(rd) = std::fs::read_dir(root.join(dir)) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                own.insert(name.trim_end_matches(".rs").to_string());
                own.insert(name);
            }
        }
    }
    own
}

fn query(args: &[&str]) -> Option<String> {
    let o = Command::new(args[0]).args(&args[1..]).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Programs in Debian's required packages (on every Debian system, however minimal).
fn required_programs() -> BTreeSet<String> {
    let list = query(&["dpkg-query", "-W", "-f=${Package} ${Priority}\n"])
        .expect("dpkg-query: this check needs a Debian system");
    let required: Vec<&str> = list
        .lines()
        .filter_map(|l| l.strip_suffix(" required"))
        .collect();
    let mut progs = BTreeSet::new();
    for pkg in required {
        for path in query(&["dpkg", "-L", pkg]).unwrap_or_default().lines() {
            if let Some(name) = bin_name(path) {
                progs.insert(name.to_string());
            }
        }
    }
    progs
}

/// The program name of a path in a bin directory.
fn bin_name(path: &str) -> Option<&str> {
    let (dir, name) = path.rsplit_once('/')?;
    matches!(dir, "/bin" | "/sbin" | "/usr/bin" | "/usr/sbin").then_some(name)
}

#[test]
fn every_program_the_project_runs_is_installed_by_setup() {
    let root = repo_root();
    let table = setup_table(&root);
    let own = own_programs(&root);
    let required = required_programs();
    let found = uses(&root);
    assert!(
        found.iter().any(|u| u.program == "ping") && found.iter().any(|u| u.program == "sysctl"),
        "the scanner no longer sees programs it must see (ping, sysctl): {found:?}"
    );
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for u in &found {
        let p = u.program.as_str();
        if table.contains_key(p)
            || own.contains(p)
            || TOOLCHAIN.contains(&p)
            || required.contains(p)
            || REQUIRED_ALTERNATIVES.contains(&p)
            || !seen.insert(p.to_string())
        {
            continue;
        }
        // Name the package where this machine can tell (it may have the program by chance).
        let pkg = query(&["dpkg", "-S", &format!("bin/{p}")]).and_then(|out| {
            out.lines()
                .find(|l| bin_name(l.split_once(": ").map_or("", |(_, f)| f)) == Some(p))
                .and_then(|l| l.split(':').next().map(str::to_string))
        });
        problems.push(format!(
            "{p} is run at {} but scripts/setup.sh does not install it: add \"{p} {}\" to its \
             PROGRAMS table",
            u.at,
            pkg.as_deref().unwrap_or("<Debian package>")
        ));
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn setup_table_matches_the_packages_file_lists() {
    let table = setup_table(&repo_root());
    let mut problems = Vec::new();
    for (prog, pkg) in &table {
        match query(&["dpkg", "-L", pkg]) {
            None => problems.push(format!(
                "{pkg} (for {prog}) is not installed: run `make setup` (make test does)"
            )),
            Some(files) => {
                if !files.lines().any(|f| bin_name(f) == Some(prog)) {
                    problems.push(format!(
                        "setup.sh says {pkg} provides {prog}, but its file list has no bin/{prog}"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn scanner_finds_programs_in_rust_and_shell() {
    let mut u = Vec::new();
    rust_uses(
        "let o = Command::new(\"tcpdump\").arg(x);\n ns.exec(&[\"ping\", \"-c\"]);\n topo.command(h, \"sysctl\")\n let v = vec![\"netns\", \"exec\", &ns, \"setpriv\"];\n Command::new(bin(\"remus\"))",
        "x.rs",
        &mut u,
    );
    let names: Vec<&str> = u.iter().map(|u| u.program.as_str()).collect();
    assert_eq!(names, ["tcpdump", "ping", "sysctl", "setpriv"]);
    let mut s = Vec::new();
    shell_uses(
        "f() { :; }\nC=\"ip netns exec x\"\n$C iperf3 -s &\nx=$(nbdinfo --size u | awk '{print}')\nsetsid qemu-nbd -f raw &\nip netns exec \"$P-h\" sysctl -q\nfor i in $(seq 3); do f; done\npython3 - <<'PY'\nimport os\nPY\n\"$BIN/netbuf\" run\n",
        "x.sh",
        false,
        &["f".to_string()].into_iter().collect(),
        &mut s,
    );
    let names: Vec<&str> = s.iter().map(|u| u.program.as_str()).collect();
    assert_eq!(
        names,
        ["iperf3", "nbdinfo", "awk", "qemu-nbd", "ip", "sysctl", "seq", "python3"]
    );
}
