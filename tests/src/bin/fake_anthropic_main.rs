//! `fake-anthropic [--bind 127.0.0.1:0] [--script FILE.json]`
//!
//! Serves the scriptable fake Anthropic Messages API and prints
//! `listening on http://127.0.0.1:PORT` on stdout once it accepts requests.

use std::io::Write;

use autopilot_tests::fake_anthropic::FakeAnthropic;

const USAGE: &str = "usage: fake-anthropic [--bind ADDR] [--script FILE.json]";

fn fail(msg: &str) -> ! {
    eprintln!("fake-anthropic: {msg}\n{USAGE}");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut bind = String::from("127.0.0.1:0");
    let mut script = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bind" => {
                bind = args
                    .next()
                    .unwrap_or_else(|| fail("--bind needs an address"))
            }
            "--script" => {
                script = Some(args.next().unwrap_or_else(|| fail("--script needs a file")))
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => fail(&format!("unknown argument {other:?}")),
        }
    }
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .unwrap_or_else(|e| fail(&format!("cannot bind {bind}: {e}")));
    let fake = FakeAnthropic::start_on(listener)
        .await
        .unwrap_or_else(|e| fail(&format!("cannot start: {e}")));
    if let Some(path) = script {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| fail(&format!("cannot read {path}: {e}")));
        if let Err(e) = fake.load_script(&text) {
            fail(&format!("bad script {path}: {e}"));
        }
    }
    println!("listening on {}", fake.base_url());
    let _ = std::io::stdout().flush();
    let _ = tokio::signal::ctrl_c().await;
}
