//! Group context: the group's messages since the bot was last addressed, fetched with
//! `get_group_msg_history` and prepended to an addressed message as a delimited block.
//!
//! History paging differs between builds (NapCat #441, #987, #1671; LLOneBot #472): the
//! default `reverseOrder=false` returns messages *after* `message_seq`, some builds ignore the
//! parameter or `count`, and paging with the oldest seq can return the same window again. So
//! pages are requested with `reverseOrder` set, deduplicated by `message_id`, and paging
//! stops on a page with nothing new, a repeated or zero seq, the watermark, or the scan limit;
//! the result is sorted by time and bounded in count and characters.

use std::collections::HashSet;

use serde_json::json;

use super::config::GroupContext;
use super::inbound::{hhmm, history_text};
use super::link::Link;
use super::wire::{HistoryData, MessageEvent};
use super::{Inner, Runtime};
use crate::text::truncate;

/// Messages asked for per history page.
const PAGE: usize = 50;
/// One context line is cut at this many characters.
const LINE_CHARS: usize = 300;

pub const BLOCK_START: &str = "[Group chat context: messages since the bot was last addressed]";
pub const BLOCK_END: &str = "[End of context]";

fn watermark_key(group_id: i64) -> String {
    format!("context_since:group:{group_id}")
}

/// Which conversation's history to page through.
#[derive(Clone, Copy, Debug)]
pub enum History {
    Group(i64),
    Friend(i64),
}

/// Messages of a conversation, newest first from `anchor` (a `message_seq`; `None`: the
/// newest), paging backwards until `since` (epoch seconds) or `scan_limit` messages, with the
/// pitfalls described at the top of this file handled. Each comes with its rendered text.
/// Errors end the paging (logged): history is an optional extra, never a reason to fail.
pub async fn fetch_history(
    inner: &Inner,
    link: &Link,
    which: History,
    anchor: Option<i64>,
    since: Option<i64>,
    scan_limit: usize,
) -> Vec<(MessageEvent, String)> {
    let mut seen = HashSet::new();
    let mut collected: Vec<(MessageEvent, String)> = Vec::new();
    let mut seq = anchor;
    let mut last_seq = None;
    while collected.len() < scan_limit {
        let (action, mut params) = match which {
            History::Group(id) => ("get_group_msg_history", json!({ "group_id": id })),
            History::Friend(id) => ("get_friend_msg_history", json!({ "user_id": id })),
        };
        params["count"] = json!(PAGE.min(scan_limit));
        params["reverseOrder"] = json!(true);
        if let Some(seq) = seq {
            params["message_seq"] = json!(seq);
        }
        let page = match link.call(action, params, inner.cfg.action_timeout).await {
            Ok(data) => serde_json::from_value::<HistoryData>(data).unwrap_or_default(),
            Err(e) => {
                tracing::warn!(connector = %inner.name, ?which, error = %e, "history unavailable");
                break;
            }
        };
        let mut added = 0;
        let mut oldest: Option<(i64, i64)> = None;
        for value in &page.messages {
            let Some((m, text)) = history_text(value, link.self_id) else {
                continue;
            };
            let m_seq = m.message_seq.unwrap_or(m.message_id);
            if oldest.is_none_or(|(t, _)| m.time < t) {
                oldest = Some((m.time, m_seq));
            }
            if seen.insert(m.message_id) {
                added += 1;
                collected.push((m, text));
            }
        }
        let Some((oldest_time, oldest_seq)) = oldest else {
            break;
        };
        if added == 0 || since.is_some_and(|s| oldest_time <= s) {
            break;
        }
        if oldest_seq == 0 || last_seq == Some(oldest_seq) || seq == Some(oldest_seq) {
            break;
        }
        last_seq = Some(oldest_seq);
        seq = Some(oldest_seq);
    }
    collected
}

/// The context block for an addressed message in `group_id`, or `None` when there is nothing
/// to add or history is unavailable. Moves the watermark to the trigger either way.
pub async fn group_context(
    inner: &Inner,
    rt: &Runtime,
    self_id: i64,
    group_id: i64,
    trigger: &MessageEvent,
    limits: &GroupContext,
) -> Option<String> {
    let key = watermark_key(group_id);
    let since = rt.store.get(&key).and_then(|v| v.as_i64());
    rt.store.put(&key, json!(trigger.time));
    let link = inner.bots.get(self_id)?;
    let anchor = Some(trigger.message_seq.unwrap_or(trigger.message_id));
    let mut collected = fetch_history(
        inner,
        &link,
        History::Group(group_id),
        anchor,
        since,
        limits.scan_limit,
    )
    .await;
    collected.retain(|(m, _)| {
        m.message_id != trigger.message_id
            && (trigger.time == 0 || m.time <= trigger.time)
            && since.is_none_or(|s| m.time > s)
    });
    // Context obeys roles as the messages themselves do: an owner's turn is not shown a
    // guest's or a stranger's words (the gateway would not take them as an owner's), a
    // guest's turn no stranger's. The bot's own lines are kept.
    let role_of = |user: i64| {
        inner.users.role_of(&crate::model::Sender {
            id: user.to_string(),
            username: user.to_string(),
            display_name: String::new(),
        })
    };
    let asker = role_of(trigger.user_id);
    let before = collected.len();
    collected.retain(|(m, _)| {
        m.user_id == self_id || role_of(m.user_id).is_some_and(|r| asker.is_some_and(|a| r >= a))
    });
    let left_out = before - collected.len();
    collected.sort_by_key(|(m, _)| (m.time, m.message_id));
    let start = collected.len().saturating_sub(limits.max_messages);
    let mut lines: Vec<String> = collected[start..]
        .iter()
        .map(|(m, text)| {
            let who = if m.user_id == self_id {
                "bot".to_string()
            } else {
                m.sender.display_name(m.user_id)
            };
            let text = truncate(&text.replace('\n', " "), LINE_CHARS);
            format!("[{}] {}({}): {}", hhmm(m.time), who, m.user_id, text)
        })
        .collect();
    // Keep the newest lines within the character budget.
    let mut total: usize = lines.iter().map(|l| l.chars().count() + 1).sum();
    while total > limits.max_chars && !lines.is_empty() {
        total -= lines[0].chars().count() + 1;
        lines.remove(0);
    }
    if left_out > 0 {
        lines.insert(
            0,
            format!("({left_out} message(s) not shown: from people who may not use this bot, or with fewer rights than the sender)"),
        );
    }
    if lines.is_empty() {
        return None;
    }
    Some(format!("{BLOCK_START}\n{}\n{BLOCK_END}", lines.join("\n")))
}
