//! The one integration test binary (`cargo test --test it <filter>`); the map is the "Tests"
//! section of docs/ARCHITECTURE.md.
//!
//! - `support`: what tests share (the daemon harness, the fakes, the dispatcher stand-in);
//! - `conformance`: the scenarios every chat platform passes, once per `FakePlatform`;
//! - one module per area: the platforms' connectors (`webchat`, `rocketchat`, `onebot`,
//!   `matrix` against a real Synapse, `webchat_browser`), the agents (`claude_backend`; `acp` with the Claude adapter and
//!   the host side, `acp_agents` with OpenCode and Gemini CLI; `pipe_agents`, the headless
//!   Codex, Gemini and OpenCode backends; `agent_clis`, those CLIs alone against the fake
//!   model APIs), approvals (`approval_live`, `e2e_approval`), the daemon end to end (`e2e_claude`, `e2e_faults`, `e2e_hold`, `room_commands`, `control_socket`, `admin_http`,
//!   `config_cli`, `confinement`), and the tool policy (`policy_corpus`, `policy_oracle`).

mod support;

mod acp;
mod acp_agents;
mod admin_http;
mod agent_clis;
mod approval_live;
mod claude_backend;
mod config_cli;
mod confinement;
mod conformance;
mod control_socket;
mod e2e_approval;
mod e2e_claude;
mod e2e_faults;
mod e2e_hold;
mod matrix;
mod mattermost;
mod onebot;
mod openai_api;
mod pipe_agents;
mod policy_corpus;
mod policy_oracle;
mod rocketchat;
mod room_commands;
mod schedules;
mod warm_claude;
mod webchat;
mod webchat_browser;
