#!/usr/bin/env python3
"""A small exec plugin for the Server Monitor hub (standard library only).

The hub runs this program once per event, with the event as one line of JSON on
standard input. It appends a summary line to a log file:

    <timestamp> <severity> <event_type> <event_id> <username or ->

and prints "warning: failed login for <username>" to standard error for
user.login_failed events (the hub logs what a plugin prints). Exit status 0 means
handled; anything else is counted as a failure of the plugin.

Enable it in the hub's TOML configuration:

    [plugins]
    allowlist = ["example"]

    [plugins.config.example]
    type = "exec"
    command = "python3"
    args = ["/opt/smon/exec_plugin.py"]
    max_concurrency = 1        # one event at a time, in order
    env = { SMON_EXAMPLE_LOG = "/var/lib/smon/example.log" }

SMON_EXAMPLE_LOG names the log file; without it, smon-events.log in the current
directory (the hub's working directory) is used.
"""
import json
import os
import sys

EVENT_KEYS = (
    "event_id", "event_type", "timestamp", "user_id", "username", "server_id",
    "server_name", "target_type", "target_id", "action", "meta", "ip",
    "user_agent", "severity",
)


def main():
    try:
        event = json.loads(sys.stdin.read())
    except ValueError as e:
        print(f"not a JSON event: {e}", file=sys.stderr)
        return 1
    if not isinstance(event, dict) or not all(k in event for k in EVENT_KEYS):
        print("not an event: expected a JSON object with all 14 event keys", file=sys.stderr)
        return 1
    # A failed login records the username as typed: keep it to one printable word.
    who = "".join(c if c.isprintable() and not c.isspace() else "?"
                  for c in str(event["username"] or "-"))
    line = f'{event["timestamp"]} {event["severity"]} {event["event_type"]} {event["event_id"]} {who}\n'
    with open(os.environ.get("SMON_EXAMPLE_LOG", "smon-events.log"), "a", encoding="utf-8") as log:
        log.write(line)
    if event["event_type"] == "user.login_failed":
        print(f"warning: failed login for {who}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
