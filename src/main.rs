//! Binary entry point: parse arguments and hand over to [`agent_chat_gateway::cli`]. No async
//! runtime exists here, so `start` can fork safely.

use clap::Parser;

fn main() {
    let cli = agent_chat_gateway::cli::Cli::parse();
    match agent_chat_gateway::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
