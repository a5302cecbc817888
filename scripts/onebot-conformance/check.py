#!/usr/bin/env python3
"""Checks the project's OneBot V11 fixtures against NoneBot's OneBot adapter, an independent
implementation of the protocol (install it with ./install.sh; run with the venv's python):

* every recorded event the fake OneBot sends parses into NoneBot's specific event model;
* every CQ string in cq_cases.json parses, with NoneBot's Message(str), into exactly the
  segments recorded there (the Rust test `cq_strings_parse_like_nonebot` checks the gateway's
  parser against the same file);
* every outbound frame the gateway sends (outbound_*.json, compared byte for byte by the Rust
  tests) is made of segments NoneBot builds the same way.

Exit status 0 when everything conforms; otherwise every problem is printed and it exits 1.
"""

import json
import pathlib
import sys

from nonebot.adapters.onebot.v11 import Adapter, Message, MessageSegment
from nonebot.compat import type_validate_python

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "onebot"

EVENTS = {
    "group_message_array.json": "GroupMessageEvent",
    "group_message_cq_string.json": "GroupMessageEvent",
    "private_message_array.json": "PrivateMessageEvent",
    "heartbeat.json": "HeartbeatMetaEvent",
    "lifecycle_connect.json": "LifecycleMetaEvent",
    "notice_group_recall.json": "GroupRecallNoticeEvent",
    "request_friend.json": "FriendRequestEvent",
    # NoneBot 2.4.6 has no model for NapCat's `message_sent`; it must still parse as an event.
    "message_sent_self.json": "Event",
}

problems = []


def load(name):
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def check_events():
    for name, expected in EVENTS.items():
        data = load(name)
        model = next(iter(Adapter.get_event_model(data)), None)
        if expected == "Event":
            event = Adapter.json_to_event(data)
            if event is None:
                problems.append(f"{name}: NoneBot cannot parse it as an event")
            continue
        if model is None or model.__name__ != expected:
            problems.append(f"{name}: NoneBot picks {model and model.__name__}, expected {expected}")
            continue
        try:
            type_validate_python(model, data)
        except Exception as e:  # pydantic's ValidationError, whichever pydantic is installed
            problems.append(f"{name}: not a valid {expected}: {e}")


def segments_of(message):
    return [{"type": s.type, "data": s.data} for s in message]


def check_cq_cases():
    for case in load("cq_cases.json"):
        got = segments_of(Message(case["cq"]))
        if got != case["segments"]:
            problems.append(f"cq_cases.json {case['cq']!r}: NoneBot gives {got}, fixture says {case['segments']}")


def expected_segment(seg):
    """The same segment as NoneBot's own constructors build it."""
    kind, data = seg["type"], seg["data"]
    if kind == "text":
        return MessageSegment.text(data["text"])
    if kind == "reply":
        return MessageSegment.reply(int(data["id"]))
    if kind == "at":
        return MessageSegment.at(data["qq"])
    if kind == "image":
        return MessageSegment.image(data["file"])
    if kind == "node":
        content = Message([type_validate_python(MessageSegment, s) for s in data["content"]])
        return MessageSegment.node_custom(int(data["user_id"]), data["nickname"], content)
    return None


def check_segment(where, seg):
    built = expected_segment(seg)
    if built is None:
        problems.append(f"{where}: segment type {seg['type']!r} has no NoneBot constructor here")
        return
    ours = dict(seg["data"])
    if seg["type"] == "node":
        # go-cqhttp's name/uin are sent beside NoneBot's nickname/user_id on purpose.
        ours.pop("name", None)
        ours.pop("uin", None)
        ours["content"] = segments_of(Message([type_validate_python(MessageSegment, s) for s in ours["content"]]))
        theirs = dict(built.data)
        theirs["content"] = segments_of(theirs["content"])
    else:
        theirs = dict(built.data)
    if ours != theirs:
        problems.append(f"{where}: gateway sends {ours}, NoneBot builds {theirs}")


def check_outbound():
    for path in sorted(FIXTURES.glob("outbound_*.json")):
        frame = json.loads(path.read_text(encoding="utf-8"))
        segments = frame["params"]["message"] if "params" in frame else [frame]
        for i, seg in enumerate(segments):
            check_segment(f"{path.name}[{i}]", seg)


def main():
    check_events()
    check_cq_cases()
    check_outbound()
    for p in problems:
        print(f"NONCONFORMING: {p}")
    if problems:
        return 1
    print(f"onebot fixtures conform to nonebot-adapter-onebot ({len(EVENTS)} events, CQ cases, outbound frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
