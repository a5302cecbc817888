//! The one integration test binary (`cargo test --test it`).

mod support;

mod approval_live;
mod claude_backend;
mod config_cli;
mod confinement;
mod conformance;
mod control_socket;
mod e2e_approval;
mod e2e_claude;
mod e2e_faults;
mod onebot;
mod policy_corpus;
mod policy_oracle;
mod rocketchat;
mod webchat;
mod webchat_browser;
