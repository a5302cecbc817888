#!/usr/bin/env python3
"""A minimal NoneBot 2 application with the OneBot V11 adapter, serving reverse WebSocket on
127.0.0.1:<port> with an access token. The Rust test `fake_onebot_speaks_v11_to_nonebot`
points the project's fake OneBot implementation at it: NoneBot must accept the fake's
handshake, parse the events it pushes, and get answers it accepts for the actions it calls.

For every message event it calls get_login_info, get_msg (on the event's id) and an action
that does not exist, then answers in the chat with a summary line the test checks:
  nonebot saw <EventClass> text=<plain text> login=<user_id> get_msg_sender=<id> unknown_action=<retcode>

Usage: nonebot_app.py <port> <access token>
"""

import sys

import nonebot
from nonebot.adapters.onebot.v11 import Adapter, Bot, MessageEvent
from nonebot.adapters.onebot.v11.exception import ActionFailed

port, token = int(sys.argv[1]), sys.argv[2]
nonebot.init(
    driver="~fastapi",
    host="127.0.0.1",
    port=port,
    onebot_access_token=token,
    log_level="INFO",
)
nonebot.get_driver().register_adapter(Adapter)

handler = nonebot.on_message()


@handler.handle()
async def summarize(bot: Bot, event: MessageEvent):
    login = await bot.get_login_info()
    original = await bot.get_msg(message_id=event.message_id)
    try:
        await bot.call_api("no_such_action")
        unknown = "ok"
    except ActionFailed as e:
        unknown = str(e.info.get("retcode"))
    await bot.send(
        event,
        f"nonebot saw {type(event).__name__} text={event.get_plaintext()!r} "
        f"login={login['user_id']} get_msg_sender={original['sender']['user_id']} "
        f"unknown_action={unknown}",
    )


if __name__ == "__main__":
    nonebot.run()
