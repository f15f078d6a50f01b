"""The benchmarks count round trips right on clients they did not build (``benchmarks.counting.count_endpoint``).

The comparison with other libraries counts what their own Redis clients send
to the lock store: by server and database, one per send, handshakes aside.
"""

from __future__ import annotations

import redis

from benchmarks.counting import count, count_endpoint
from tests.support import RedisServer

# A database no other test uses, and a counter name of this module's own.
DB = 9
COUNTER = "endpoint-test"


def test_a_client_built_elsewhere_counts_one_round_trip_per_command_or_pipeline(redis_server: RedisServer) -> None:
    count_endpoint(COUNTER, redis_server.port, DB)
    client = redis.Redis(port=redis_server.port, db=DB)  # as a library would build it
    before = count(COUNTER)

    client.set("counted", "1", nx=True, px=60_000)  # the first command also opens the connection
    with client.pipeline() as pipe:
        pipe.get("counted").delete("counted").get("counted").execute()

    assert count(COUNTER) - before == 2
    client.close()


def test_another_database_of_the_same_server_is_not_counted(redis_server: RedisServer) -> None:
    count_endpoint(COUNTER, redis_server.port, DB)
    other = redis.Redis(port=redis_server.port, db=DB + 1)
    before = count(COUNTER)

    other.set("not-counted", "1", px=60_000)
    other.delete("not-counted")

    assert count(COUNTER) == before
    other.close()
