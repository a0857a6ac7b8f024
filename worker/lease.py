"""Lease renewal for the broker message a worker runs, so a long task is not delivered twice.

kombu's Redis transport emulates acknowledgements: a delivered message stays
in the `unacked` hash, with its delivery time as its score in the sorted set
`unacked_index`, until the worker acknowledges it. An idle worker hands every
message whose score is older than the visibility timeout back to the queue,
which is how the message of a killed worker gets redelivered.

The heartbeat thread moves the score of the running message to the current
time on every beat, so the visibility timeout only has to outlast a few
missed beats rather than the longest task. Once the worker dies, the score
stops moving and the message is redelivered one visibility timeout later.
"""

import logging
import time

import redis
from kombu.transport.redis import Channel

logger = logging.getLogger(__name__)


class DeliveryLease:
    """The delivery tags of the messages this worker process holds, by task id."""

    # NOTE: this relies on kombu's Redis transport layout (checked with kombu 5.7):
    # an `unacked_index` sorted set scored by delivery time, keyed by delivery tag.
    def __init__(self, client: redis.Redis, index_key: str = Channel.unacked_index_key) -> None:
        self.redis = client
        self.index_key = index_key
        self.delivery_tags: dict[str, str] = {}

    def begin(self, task_id: str, delivery_tag: str) -> None:
        self.delivery_tags[task_id] = delivery_tag

    def end(self, task_id: str) -> None:
        self.delivery_tags.pop(task_id, None)

    def renew(self) -> None:
        """Set the held messages' delivery time to now; raises redis.RedisError."""
        # A copy, because the worker's main thread adds and removes tags meanwhile.
        tags = list(self.delivery_tags.values())
        if not tags:
            return
        # XX updates only members that exist, so a message acknowledged
        # meanwhile is not added back to the index.
        now = time.time()
        self.redis.zadd(self.index_key, dict.fromkeys(tags, now), xx=True)
