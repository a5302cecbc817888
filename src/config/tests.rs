//! Config validation tests: every problem reported at once, with key paths.

use super::*;

fn check(yaml: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    // The real platform list: these tests check the file as users write it.
    let result = load(&path, crate::TYPES);
    // Keep the dir alive until the result has been produced.
    drop(dir);
    result
}

const GOOD: &str = r#"
connectors:
  - {name: local, type: webchat, listen: "127.0.0.1:0", allowed_users: {owners: [me], guests: [bob]}}
default_agent: assistant
agents:
  assistant: {type: claude, command: claude, working_directory: ./work, timeout: 600,
              permissions: {enabled: true, timeout: 300},
              owner_allowed_tools: [{tool: Bash, params: "git (log|status).*"}], guest_allowed_tools: [{tool: Read}]}
watchers:
  - {name: local-all, connector: local, room: "*", agent: assistant}
max_queue_depth: 10
"#;

#[test]
fn good_config_validates() {
    let c = check(GOOD).unwrap();
    assert_eq!(c.connectors.len(), 1);
    assert_eq!(c.max_queue_depth, 10);
    let a = &c.agents["assistant"];
    assert!(a.working_directory.is_absolute());
    assert_eq!(a.owner_rules.rules.len(), 1);
}

#[test]
fn session_scope_is_room_unless_thread_is_asked() {
    let c = check(GOOD).unwrap();
    assert_eq!(c.watchers[0].session_scope, SessionScope::Room);
    let threads = GOOD.replace(
        "agent: assistant}",
        "agent: assistant, session_scope: thread}",
    );
    assert_eq!(
        check(&threads).unwrap().watchers[0].session_scope,
        SessionScope::Thread
    );
    let bad = GOOD.replace(
        "agent: assistant}",
        "agent: assistant, session_scope: threads}",
    );
    let e = check(&bad).unwrap_err().to_string();
    assert!(e.contains("watchers[0]") && e.contains("threads"), "{e}");
}

#[test]
fn every_problem_is_reported_with_its_key_path() {
    let yaml = GOOD
        .replace("type: claude", "type: claud")
        .replace("room: \"*\"", "room: \"*\", colour: red")
        .replace("max_queue_depth: 10", "max_queue_depth: 10\nbogus: 1");
    let err = check(&yaml).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(
            "agents.assistant.type (line 6): unknown agent type 'claud' (supported: claude, acp, codex, gemini, opencode)"
        ),
        "{text}"
    );
    assert!(text.contains("watchers[0]"), "{text}");
    assert!(text.contains("unknown field `colour`"), "{text}");
    assert!(text.contains("bogus"), "{text}");
    assert!(err.issues.len() >= 3, "{text}");
}

#[test]
fn unset_variable_is_named() {
    let yaml = GOOD.replace(
        "owners: [me]",
        "owners: [me]}, tokens: {me: \"${ACG_SURELY_UNSET_VAR}\"",
    );
    let text = check(&yaml).unwrap_err().to_string();
    assert!(
        text.contains("connectors[0].tokens.me")
            && text.contains("environment variable ACG_SURELY_UNSET_VAR is not set"),
        "{text}"
    );
}

#[test]
fn syntax_error_has_a_line() {
    let err = check("connectors: [\n  {name: x\n").unwrap_err();
    assert!(err.issues[0].line.is_some(), "{err}");
}

#[test]
fn roles_never_match_a_username_against_an_id_entry() {
    use crate::model::{Role, Sender};
    let roles = UserRoles {
        owners: ["alice".to_string(), "id:XK3abc".to_string()]
            .into_iter()
            .collect(),
        guests: ["bob".to_string()].into_iter().collect(),
        unknown: None,
    };
    let sender = |id: &str, username: &str| Sender {
        id: id.into(),
        username: username.into(),
        display_name: username.into(),
    };
    assert_eq!(roles.role_of(&sender("u1", "alice")), Some(Role::Owner));
    assert_eq!(
        roles.role_of(&sender("XK3abc", "renamed")),
        Some(Role::Owner)
    );
    // A guest who renames themselves to an owner's id gains nothing.
    assert_eq!(roles.role_of(&sender("u2", "XK3abc")), None);
    assert_eq!(roles.role_of(&sender("u2", "id:XK3abc")), None);
    // Nor does a user whose id equals an owner's username.
    assert_eq!(roles.role_of(&sender("alice", "mallory")), None);
    assert_eq!(roles.role_of(&sender("u3", "bob")), Some(Role::Guest));
}

#[test]
fn confinement_defaults_to_best_effort_without_run_as() {
    let c = check(GOOD).unwrap();
    let s = &c.agents["assistant"].sandbox;
    assert_eq!(s.confinement, ConfinementMode::BestEffort);
    assert_eq!(s.run_as, None);
    assert!(s.writable_paths.is_empty());
}

#[test]
fn confinement_run_as_and_writable_paths_are_read() {
    let yaml = GOOD.replace(
        "timeout: 600,",
        "timeout: 600, confinement: required, run_as: agent-bot, writable_paths: [./cache, /srv/x],",
    );
    let c = check(&yaml).unwrap();
    let s = &c.agents["assistant"].sandbox;
    assert_eq!(s.confinement, ConfinementMode::Required);
    assert_eq!(s.run_as.as_deref(), Some("agent-bot"));
    assert!(s.writable_paths[0].is_absolute() && s.writable_paths[0].ends_with("cache"));
    assert_eq!(s.writable_paths[1], Path::new("/srv/x"));
    let off = check(&GOOD.replace("timeout: 600,", "timeout: 600, confinement: off,")).unwrap();
    assert_eq!(
        off.agents["assistant"].sandbox.confinement,
        ConfinementMode::Off
    );
}

#[test]
fn bad_confinement_settings_are_errors() {
    let yaml = GOOD.replace(
        "timeout: 600,",
        "timeout: 600, confinement: sometimes, run_as: \"../root\", writable_paths: [/],",
    );
    let text = check(&yaml).unwrap_err().to_string();
    assert!(
        text.contains("agents.assistant.confinement") && text.contains("'sometimes' is not valid"),
        "{text}"
    );
    assert!(text.contains("'../root' is not a user name"), "{text}");
    assert!(text.contains("whole system writable"), "{text}");
}

#[test]
fn an_agent_key_no_agent_type_knows_is_named_with_its_line() {
    let yaml = GOOD.replace("command: claude,", "command: claude, colour: red,");
    let err = check(&yaml).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(
            "agents.assistant (line 6): unknown field `colour`, expected one of `type`, `command`, `args`, `working_directory`"
        ),
        "{text}"
    );
}

#[test]
fn the_default_command_comes_from_the_agent_type() {
    let yaml = GOOD.replace("command: claude, ", "");
    let c = check(&yaml).unwrap();
    let a = &c.agents["assistant"];
    assert_eq!(a.kind, "claude");
    assert_eq!(
        a.command,
        crate::agent::registry::AGENTS
            .find("claude")
            .unwrap()
            .default_command
    );
}

/// An agent type with a key of its own, as a new agent would bring.
mod own_section {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ModelSection {
        model: String,
    }

    fn parse_model(path: &str, own: Value, v: &mut Validator) -> Option<AgentSettings> {
        let section: ModelSection = v.parse(path, own)?;
        if section.model.is_empty() {
            v.error(format!("{path}.model"), "must not be empty");
            return None;
        }
        Some(AgentSettings::new(section))
    }

    /// The one agent type these files may name.
    struct WithModel;

    impl AgentTypes for WithModel {
        fn type_names(&self) -> Vec<&'static str> {
            vec!["modelled"]
        }

        fn section(&self, type_name: &str) -> Option<AgentSection> {
            (type_name == "modelled").then_some(AgentSection {
                name: "modelled",
                default_command: "modelled-cli",
                keys: &["model"],
                parse: parse_model,
                schema: super::schema::no_own_keys,
                gating: Gating::Optional,
            })
        }
    }

    fn agents(yaml: &str) -> (BTreeMap<String, AgentConfig>, Vec<ConfigIssue>) {
        let dir = tempfile::tempdir().unwrap();
        let yaml = yaml.replace("WORK", &dir.path().display().to_string());
        let mut v = Validator::new(dir.path().to_path_buf(), yaml.clone());
        let section: Value = serde_yaml::from_str(&yaml).unwrap();
        let out = validate_agents(
            section.get("agents").cloned(),
            &BTreeMap::new(),
            &WithModel,
            &mut v,
        );
        (out, v.issues)
    }

    #[test]
    fn the_agent_type_parses_its_own_keys_and_the_daemon_can_read_them_back() {
        let (out, issues) =
            agents("agents:\n  m: {type: modelled, model: big, working_directory: WORK}\n");
        assert!(issues.is_empty(), "{issues:?}");
        let m = &out["m"];
        assert_eq!(m.command, "modelled-cli");
        assert_eq!(m.settings.get::<ModelSection>().unwrap().model, "big");
    }

    #[test]
    fn its_own_problems_and_foreign_keys_are_reported_under_the_agent() {
        let (out, issues) = agents(
            "agents:\n  m: {type: modelled, model: '', working_directory: WORK}\n  n: {type: modelled, model: x, colour: red, working_directory: WORK}\n",
        );
        assert!(out.is_empty());
        let text: Vec<String> = issues.iter().map(|i| i.to_string()).collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with("agents.m.model") && t.ends_with("must not be empty")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.starts_with("agents.n")
                && t.contains("unknown field `colour`")
                && t.ends_with("`writable_paths`, `model`")),
            "{text:?}"
        );
    }
}

#[test]
fn unknown_and_missing_connector_types_list_every_registered_type() {
    let text = check(&GOOD.replace("type: webchat", "type: irc"))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains(
            "connectors[0].type (line 3): unknown connector type 'irc' (expected webchat, rocketchat, onebot, mattermost, matrix or openai)"
        ),
        "{text}"
    );
    let text = check(&GOOD.replace("type: webchat, ", ""))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("connectors[0].type")
            && text.contains("missing (webchat, rocketchat, onebot, mattermost, matrix or openai)"),
        "{text}"
    );
}

#[test]
fn an_acp_agent_needs_permissions_and_every_problem_of_its_section_is_reported() {
    let yaml = GOOD.replace(
        "type: claude, command: claude, working_directory: ./work, timeout: 600,\n              permissions: {enabled: true, timeout: 300},",
        "type: acp, idle_timeout: 0, working_directory: ./work, timeout: 600,",
    );
    let text = check(&yaml).unwrap_err().to_string();
    assert!(text.contains("agents.assistant.idle_timeout"), "{text}");
    assert!(
        text.contains("type 'acp' asks the gateway about every tool call"),
        "{text}"
    );
    let ok = GOOD.replace(
        "type: claude, command: claude,",
        "type: acp, idle_timeout: 60,",
    );
    let c = check(&ok).unwrap();
    assert_eq!(c.agents["assistant"].command, "claude-agent-acp");
}

/// Rooms bound to different agent types in one file; every problem of every agent section is
/// reported at once, and an agent whose CLI cannot ask about calls gets a warning.
#[test]
fn agents_of_every_type_mix_and_pipe_agents_cannot_enable_permissions() {
    let agents = r#"
default_agent: claude
agents:
  claude: {type: claude, working_directory: ./work}
  acp: {type: acp, working_directory: ./work, permissions: {enabled: true, timeout: 60}}
  codex: {type: codex, working_directory: ./work}
  gemini: {type: gemini, working_directory: ./work, args: [-m, gemini-2.5-flash]}
  opencode: {type: opencode, working_directory: ./work}
watchers:
  - {name: a, connector: local, room: "one", agent: claude}
  - {name: b, connector: local, room: "two", agent: codex}
  - {name: c, connector: local, room: "three", agent: opencode}
"#;
    let connectors = GOOD.split("default_agent").next().unwrap();
    let c = check(&format!("{connectors}{agents}")).unwrap();
    assert_eq!(c.agents.len(), 5);
    assert_eq!(c.agents["codex"].command, "codex");
    let warned: Vec<&str> = c.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        warned,
        ["agents.codex", "agents.gemini", "agents.opencode"],
        "{:?}",
        c.warnings
    );
    let text = c.warnings[0].to_string();
    assert!(text.contains("not checked one by one"), "{text}");
    assert!(text.contains("type: acp"), "{text}");

    let bad = agents
        .replace(
            "codex: {type: codex, working_directory: ./work}",
            "codex: {type: codex, working_directory: ./work, permissions: {enabled: true}}",
        )
        .replace("opencode: {type: opencode,", "opencode: {type: opencode, timeout: 0,")
        .replace("acp: {type: acp, working_directory: ./work, permissions: {enabled: true, timeout: 60}}", "acp: {type: acp, working_directory: ./work}");
    let err = check(&format!("{connectors}{bad}")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("agents.codex.permissions")
            && text.contains("type 'codex' cannot ask the gateway about each tool call"),
        "{text}"
    );
    assert!(text.contains("agents.opencode.timeout"), "{text}");
    assert!(text.contains("agents.acp.permissions"), "{text}");
}

#[test]
fn schedules_name_one_room_a_cron_and_a_user_with_a_role() {
    let good = GOOD.replace(
        "max_queue_depth: 10",
        "max_queue_depth: 10\nschedules:\n  - {name: standup, watcher: lobby, cron: \"0 9 * * mon-fri\", as: bob, prompt: \"Summarise\"}",
    )
    .replace(
        "  - {name: local-all, connector: local, room: \"*\", agent: assistant}",
        "  - {name: local-all, connector: local, room: \"*\", agent: assistant}\n  - {name: lobby, connector: local, room: lobby}",
    );
    let c = check(&good).unwrap();
    assert_eq!(c.schedules.len(), 1);
    let s = &c.schedules[0];
    assert_eq!((s.name.as_str(), s.watcher.as_str()), ("standup", "lobby"));
    assert_eq!(s.sender.username, "bob");
    assert_eq!(s.zone, ScheduleZone::Local);

    let bad = good
        .replace(
            "{name: standup, watcher: lobby, cron: \"0 9 * * mon-fri\", as: bob, prompt: \"Summarise\"}",
            "{name: a, watcher: local-all, cron: \"0 9 * * *\", as: bob, prompt: x}\n  - {name: b, watcher: lobby, cron: \"61 * * * *\", as: mallory, prompt: x, timezone: mars}",
        );
    let text = check(&bad).unwrap_err().to_string();
    for expected in [
        "schedules[0].watcher (line 14): watcher 'local-all' watches every room (\"*\"): a schedule needs a watcher of one room",
        "schedules[1].cron (line 15): '61 * * * *' is not a cron expression",
        "schedules[1].timezone (line 15): 'mars' is not valid: use 'local' or 'utc'",
        "schedules[1].as (line 15): 'mallory' is not an owner or guest of connector 'local' (list it in its allowed_users)",
    ] {
        assert!(text.contains(expected), "{expected}\nnot in\n{text}");
    }
}

#[test]
fn commands_and_budgets_are_read_and_their_problems_reported() {
    let c = check(GOOD).unwrap();
    assert_eq!(c.commands, CommandsConfig::default());
    assert!(!c.budgets.is_set());
    let yaml = format!(
        "{GOOD}commands: {{prefix: \"%\", slash: false}}\nbudgets:\n  user: {{daily: {{tokens: 500}}, monthly: {{usd: 2.5}}}}\n  room: {{daily: {{usd: 1, tokens: 9}}}}\n"
    );
    let c = check(&yaml).unwrap();
    assert_eq!(
        c.commands,
        CommandsConfig {
            prefix: "%".into(),
            slash: false
        }
    );
    assert_eq!(c.budgets.user.daily.tokens, Some(500));
    assert_eq!(c.budgets.user.monthly.usd, Some(2.5));
    assert_eq!(
        c.budgets.room.daily,
        Limit {
            tokens: Some(9),
            usd: Some(1.0)
        }
    );
    assert!(!c.budgets.room.monthly.is_set());

    let yaml = format!(
        "{GOOD}commands: {{prefix: \"two words\"}}\nbudgets:\n  user: {{daily: {{}}, weekly: {{tokens: 1}}}}\n  room: {{monthly: {{usd: -1}}}}\n"
    );
    let text = check(&yaml).unwrap_err().to_string();
    assert!(text.contains("commands.prefix"), "{text}");
    assert!(text.contains("unknown field `weekly`"), "{text}");
    let yaml =
        format!("{GOOD}budgets:\n  user: {{daily: {{}}}}\n  room: {{monthly: {{usd: -1}}}}\n");
    let text = check(&yaml).unwrap_err().to_string();
    assert!(text.contains("budgets.user.daily"), "{text}");
    assert!(text.contains("budgets.room.monthly.usd"), "{text}");
}

#[test]
fn a_servers_url_must_be_there_and_be_http() {
    let yaml = GOOD.replace(
        "connectors:\n",
        "connectors:\n  - {name: rc, type: rocketchat, server: \"chat.example.com\", username: bot, password: pw}\n  - {name: mm, type: mattermost, token: t}\n  - {name: mx, type: matrix, homeserver: \"https://matrix.example.com/\", user_id: \"@bot:example.com\", access_token: t}\n",
    );
    let err = check(&yaml).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(
            "connectors[0].server (line 3): 'chat.example.com' must start with http:// or https://"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "connectors[1].server: missing: the server URL, like https://chat.example.com"
        ),
        "{text}"
    );
    assert!(!text.contains("homeserver"), "a good URL is taken: {text}");
}
