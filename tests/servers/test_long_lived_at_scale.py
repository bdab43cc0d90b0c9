"""The bench's long-lived figure (bench/long_lived.py) at a small scale, as a guard: one server
process with 500 websockets and 500 event streams open at SIGTERM, with graceful_web; what
each connection saw is read by two client processes. ``make bench`` runs it with 10 000 each.
"""

from __future__ import annotations

import pytest

from bench import long_lived

CONNECTIONS = 500  # of each kind
CLIENTS = 2
EXIT_AFTER_LAST_TOLD_S = 2.0


@pytest.mark.parametrize("server", long_lived.SERVERS)
def test_every_websocket_closed_and_every_feed_ended_then_the_process_exits(server: str) -> None:
    n = long_lived.connections_possible(CONNECTIONS)
    run = long_lived.run_once(server, True, n, clients=CLIENTS)

    assert run.opened == 2 * n, run
    assert run.polite_closes == n, run
    assert run.streams == {"clean": n}, run
    assert run.signal_to_last_told_s is not None
    assert run.signal_to_last_told_s <= long_lived.LONG_LIVED_GRACE + 1, run
    assert run.last_told_to_exit_s is not None
    assert run.last_told_to_exit_s <= EXIT_AFTER_LAST_TOLD_S, run
    assert run.exit_status == 0, run
