//! The broker seen through the [`ToolGate`] seam alone, by an agent that is not Claude and
//! speaks no HTTP: a fake ACP-style agent that answers its CLI's `session/request_permission`
//! by asking the gate over a plain function call. Allow, deny and ask-an-owner all work
//! without the Claude hook.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::audit::AuditLog;
use super::{Approvals, Command, TurnBinding};
use crate::agent::gate::{self, GateTicket, ToolGate};
use crate::config::{AgentConfig, PermissionsConfig};
use crate::connector::{Capabilities, Connector, ConnectorContext, ConnectorError, RunError};
use crate::model::{PostedMessage, ReplyTarget, Role, RoomKey, RoomRef, ToolCall};
use crate::policy::{Rule, RuleSet};

/// The room: records what the broker posts.
#[derive(Default)]
struct Room {
    posts: Mutex<Vec<String>>,
    posted: tokio::sync::Notify,
}

#[async_trait]
impl Connector for Room {
    fn name(&self) -> &str {
        "t"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            threads: false,
            max_message_len: 4000,
            edit: false,
            edit_interval: Duration::from_secs(1),
        }
    }

    async fn run(self: Arc<Self>, _ctx: ConnectorContext) -> Result<(), RunError> {
        Ok(())
    }

    async fn post(&self, _to: &ReplyTarget, text: &str) -> Result<PostedMessage, ConnectorError> {
        let mut posts = self.posts.lock().unwrap();
        posts.push(text.to_string());
        self.posted.notify_waiters();
        Ok(PostedMessage {
            id: posts.len().to_string(),
        })
    }

    async fn resolve_room(&self, spec: &str) -> Result<RoomRef, ConnectorError> {
        Err(ConnectorError::RoomNotFound(spec.to_string()))
    }
}

/// A fake ACP client side: turns the agent's permission request into a neutral call, asks
/// the gate with its turn's ticket, and picks the option by `kind` (never by position).
struct AcpStyleAgent {
    gate: Arc<dyn ToolGate>,
    ticket: GateTicket,
    cwd: std::path::PathBuf,
}

impl AcpStyleAgent {
    async fn request_permission(&self, params: &Value) -> Value {
        let tool_call = &params["toolCall"];
        let call = ToolCall {
            tool: tool_call["_meta"]["claudeCode"]["toolName"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
            input: tool_call["rawInput"].clone(),
            cwd: self.cwd.clone(),
        };
        let answer = tokio::time::timeout(
            self.ticket.timeout,
            self.gate.decide(Some(&self.ticket.secret), call),
        )
        .await;
        // Fail closed: no answer in time is a reject.
        let wanted = match answer {
            Ok(d) if gate::allows(&d) => "allow_once",
            _ => "reject_once",
        };
        let option = params["options"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["kind"] == wanted)
            .unwrap();
        json!({"outcome": {"outcome": "selected", "optionId": option["optionId"]}})
    }
}

fn permission_request(command: &str) -> Value {
    json!({
        "sessionId": "sess",
        "toolCall": {
            "toolCallId": "toolu_1",
            "_meta": {"claudeCode": {"toolName": "Bash"}},
            "rawInput": {"command": command},
            "kind": "execute",
        },
        "options": [
            {"kind": "allow_always", "name": "Always Allow", "optionId": "allow_always"},
            {"kind": "allow_once", "name": "Allow", "optionId": "allow"},
            {"kind": "reject_once", "name": "Reject", "optionId": "reject"},
        ],
    })
}

fn chosen(answer: &Value) -> &str {
    answer["outcome"]["optionId"].as_str().unwrap()
}

struct Setup {
    approvals: Arc<Approvals>,
    room: Arc<Room>,
    dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let approvals = Approvals::new(
        dir.path().join("runtime"),
        &[],
        AuditLog::open(&dir.path().join("audit.jsonl")),
        tokio_util::task::TaskTracker::new(),
    );
    Setup {
        approvals,
        room: Arc::new(Room::default()),
        dir,
    }
}

fn binding(s: &Setup, role: Role) -> TurnBinding {
    TurnBinding {
        room: RoomKey::new("t", "r"),
        target: ReplyTarget::room("r"),
        role,
        agent: Arc::new(AgentConfig {
            name: "acp".into(),
            kind: "acp-test".into(),
            settings: Default::default(),
            command: "acp-agent".into(),
            args: vec![],
            working_directory: s.dir.path().to_path_buf(),
            timeout: Duration::from_secs(60),
            permissions: PermissionsConfig {
                enabled: true,
                timeout: Duration::from_secs(20),
                skip_owner_approval: false,
            },
            owner_rules: RuleSet::new(vec![Rule::new("Bash", Some("git status")).unwrap()]),
            guest_rules: RuleSet::default(),
            env: vec![],
            system_prompt: None,
            sandbox: Default::default(),
        }),
        outbox: crate::outbox::of(s.room.clone()),
        asking: super::Asking::InTurnRoom,
    }
}

fn agent(s: &Setup, ticket: GateTicket) -> AcpStyleAgent {
    AcpStyleAgent {
        gate: s.approvals.clone(),
        ticket,
        cwd: s.dir.path().to_path_buf(),
    }
}

#[tokio::test]
async fn an_acp_style_agent_is_allowed_what_the_policy_allows() {
    let s = setup();
    let (ticket, _turn) = s.approvals.bind_turn(binding(&s, Role::Owner));
    let a = agent(&s, ticket);
    let answer = a
        .request_permission(&permission_request("git status"))
        .await;
    assert_eq!(chosen(&answer), "allow");
    assert!(s.room.posts.lock().unwrap().is_empty(), "no owner asked");
}

#[tokio::test]
async fn an_acp_style_agent_is_denied_what_a_guest_may_not_do() {
    let s = setup();
    let (ticket, _turn) = s.approvals.bind_turn(binding(&s, Role::Guest));
    let a = agent(&s, ticket);
    let answer = a.request_permission(&permission_request("rm -rf x")).await;
    assert_eq!(chosen(&answer), "reject");
    assert!(
        s.room.posts.lock().unwrap().is_empty(),
        "guests are never asked"
    );
}

#[tokio::test]
async fn an_acp_style_agent_waits_for_an_owner_and_gets_the_answer() {
    let s = setup();
    let (ticket, _turn) = s.approvals.bind_turn(binding(&s, Role::Owner));
    let a = agent(&s, ticket);
    let request = permission_request("touch new.txt");
    let asking = a.request_permission(&request);
    let answering = async {
        let id = loop {
            let posted = s.room.posted.notified();
            if let Some(prompt) = s.room.posts.lock().unwrap().first().cloned() {
                let start = prompt.find("`[").unwrap() + 2;
                break prompt[start..start + 4].to_string();
            }
            posted.await;
        };
        let notice = s.approvals.command_from_room(
            &RoomKey::new("t", "r"),
            None,
            Role::Owner,
            Command {
                approve: true,
                id: &id,
                always: false,
                by: "alice",
            },
        );
        assert!(notice.contains("approved"), "{notice}");
    };
    let (answer, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(asking, answering)
    })
    .await
    .expect("the owner's answer reached the agent");
    assert_eq!(chosen(&answer), "allow");

    // Denied by the owner the second time.
    let asking = a.request_permission(&request);
    let answering = async {
        let id = loop {
            let posted = s.room.posted.notified();
            if let Some(prompt) = s.room.posts.lock().unwrap().get(1).cloned() {
                let start = prompt.find("`[").unwrap() + 2;
                break prompt[start..start + 4].to_string();
            }
            posted.await;
        };
        s.approvals.command_from_room(
            &RoomKey::new("t", "r"),
            None,
            Role::Owner,
            Command {
                approve: false,
                id: &id,
                always: false,
                by: "alice",
            },
        );
    };
    let (answer, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(asking, answering)
    })
    .await
    .unwrap();
    assert_eq!(chosen(&answer), "reject");
}

#[tokio::test]
async fn a_call_with_an_ended_turns_ticket_is_denied() {
    let s = setup();
    let (ticket, turn) = s.approvals.bind_turn(binding(&s, Role::Owner));
    drop(turn);
    assert!(!s.approvals.is_live(&ticket.secret));
    let a = agent(&s, ticket);
    let answer = a
        .request_permission(&permission_request("git status"))
        .await;
    assert_eq!(chosen(&answer), "reject");
}
