//! Matrix as a [`FakePlatform`] — not a fake: a real Synapse (`support/synapse.rs`) with the
//! public room `#conf:localhost`, `@owner:localhost` (owner) and `@guest:localhost` (guest)
//! bound by their user ids. The gateway reaches Synapse through a [`Cut`], so its
//! connection drops while the users keep talking.

use serde_json::{json, Value};

use super::{FakePlatform, Who, TURN};
use crate::support::daemon::Gateway;
use crate::support::deps;
use crate::support::synapse::{Account, Cut, MatrixUser, Synapse};

/// Small, so a long reply needs several messages.
const MAX_LEN: usize = 300;
const ALIAS: &str = "#conf:localhost";

pub struct Matrix {
    pub owner: MatrixUser,
    pub guest: MatrixUser,
    pub stranger: MatrixUser,
    pub bot: Account,
    pub room: String,
    pub cut: Cut,
    /// Last: dropped (killed) after everything that talks to it.
    pub _synapse: Synapse,
}

impl Matrix {
    /// Waits for the bot's message containing `needle`; its (first) event.
    async fn bot_event(&mut self, needle: &str) -> Value {
        let (room, bot) = (self.room.clone(), self.bot.user_id.clone());
        let find = |u: &MatrixUser| -> Option<Value> {
            u.messages_of(&room, &bot)
                .into_iter()
                .find(|(t, _)| t.contains(needle))
                .map(|(_, ev)| ev)
        };
        let what = format!("a bot message containing {needle:?}");
        self.owner
            .wait_for(&what, TURN, |u| find(u).is_some())
            .await;
        find(&self.owner).unwrap()
    }

    fn bot_texts(&self) -> Vec<String> {
        self.owner
            .messages_of(&self.room, &self.bot.user_id)
            .into_iter()
            .map(|(text, _)| text)
            .collect()
    }
}

impl FakePlatform for Matrix {
    fn available() -> bool {
        deps::synapse_python().is_some()
    }

    async fn start() -> Matrix {
        let synapse = Synapse::start().await.expect("checked by available()");
        let owner = MatrixUser::new(&synapse, synapse.register("owner").await);
        let guest = MatrixUser::new(&synapse, synapse.register("guest").await);
        let stranger = MatrixUser::new(&synapse, synapse.register("stranger").await);
        let bot = synapse.register("bot").await;
        let room = owner.create_room("conf").await;
        // Three members: a group, where the bot needs a mention (two would be a DM).
        guest.join(&room).await;
        stranger.join(&room).await;
        let cut = Cut::start(synapse.port).await;
        Matrix {
            owner,
            guest,
            stranger,
            bot,
            room,
            cut,
            _synapse: synapse,
        }
    }

    fn connector_yaml(&self) -> String {
        format!(
            "  - {{name: chat, type: matrix, homeserver: \"{}\", user_id: \"{}\", access_token: \"{}\", require_mention: true, max_message_len: {MAX_LEN}, allowed_users: {{owners: [\"id:@owner:localhost\"], guests: [\"id:@guest:localhost\"]}}}}",
            self.cut.url(),
            self.bot.user_id,
            self.bot.token,
        )
    }

    fn group_room(&self) -> String {
        ALIAS.into()
    }

    fn username(&self, who: Who) -> String {
        match who {
            Who::Owner => "@owner:localhost".into(),
            Who::Guest => "@guest:localhost".into(),
            Who::Stranger => "@stranger:localhost".into(),
        }
    }

    fn max_message_len(&self) -> usize {
        MAX_LEN
    }

    async fn attach(&mut self, _gateway: &Gateway) {
        // The connector takes its first sync position before it joins, so whatever is sent
        // after the join reaches it.
        let (room, bot) = (self.room.clone(), self.bot.user_id.clone());
        self.owner
            .wait_for("the bot to join the room", TURN, |u| {
                u.saw_join(&room, &bot)
            })
            .await;
    }

    async fn send(&mut self, who: Who, text: &str, mention: bool) {
        let user = match who {
            Who::Owner => &self.owner,
            Who::Guest => &self.guest,
            Who::Stranger => &self.stranger,
        };
        let mention = mention.then_some(self.bot.user_id.as_str());
        user.say(&self.room, text, mention).await;
    }

    async fn replies_containing(&mut self, needle: &str, count: usize) -> Vec<String> {
        let (room, bot) = (self.room.clone(), self.bot.user_id.clone());
        let found = |u: &MatrixUser| -> Vec<String> {
            u.messages_of(&room, &bot)
                .into_iter()
                .map(|(t, _)| t)
                .filter(|t| t.contains(needle))
                .collect()
        };
        let what = format!("{count} bot messages containing {needle:?}");
        self.owner
            .wait_for(&what, TURN, |u| found(u).len() >= count)
            .await;
        found(&self.owner)
    }

    async fn bot_messages(&mut self) -> Vec<String> {
        self.owner.sync_once(0).await;
        self.bot_texts()
    }

    async fn disconnect(&mut self) {
        // Only once the bot stopped typing, which it does after the answer was delivered: a
        // send cut off before its response would be retried later as a second copy.
        let (room, bot) = (self.room.clone(), self.bot.user_id.clone());
        self.owner
            .wait_for("the bot to stop typing", TURN, |u| {
                !u.typing.get(&room).is_some_and(|t| t.contains(&bot))
            })
            .await;
        self.cut.cut();
    }

    async fn reconnect(&mut self) {
        self.cut.restore();
    }
}

impl super::Threads for Matrix {
    async fn post_at(&mut self, who: Who, text: &str, mention: bool, root: Option<&str>) -> String {
        let user = match who {
            Who::Owner => &self.owner,
            Who::Guest => &self.guest,
            Who::Stranger => &self.stranger,
        };
        let mention = mention.then_some(self.bot.user_id.as_str());
        let Some(root) = root else {
            return user.say(&self.room, text, mention).await;
        };
        // As clients send a threaded message: the thread relation, with the root as the
        // reply fallback.
        let body = match mention {
            Some(bot) => format!("{bot} {text}"),
            None => text.to_string(),
        };
        let mentions = match mention {
            Some(bot) => json!({"user_ids": [bot]}),
            None => json!({}),
        };
        let content = json!({"msgtype": "m.text", "body": body, "m.mentions": mentions,
            "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": true,
                "m.in_reply_to": {"event_id": root}}});
        user.send(&self.room, content).await
    }

    async fn top_level_bot_message(&mut self, needle: &str) -> Option<String> {
        let ev = self.bot_event(needle).await;
        assert!(
            ev["content"]["m.relates_to"]["rel_type"] != "m.thread",
            "{ev}"
        );
        ev["event_id"].as_str().map(str::to_string)
    }

    async fn thread_of_reply(&mut self, needle: &str) -> Option<String> {
        let ev = self.bot_event(needle).await;
        let rel = &ev["content"]["m.relates_to"];
        (rel["rel_type"] == "m.thread")
            .then(|| rel["event_id"].as_str().map(str::to_string))
            .flatten()
    }
}

super::scenarios!(Matrix);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_scope_gives_each_thread_its_session_and_context() {
    super::thread_scope::<Matrix>().await;
}
