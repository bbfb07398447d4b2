"""The local broker's incarnations: which one answers (its cluster id), and the consumer group an
incarnation's commits are stored under.

The local broker keeps its log in memory and gets a new cluster id per start
(``local_stack.services.start_kafka``): restarted, it is a new, empty log, a new *incarnation*.
Clients reconnect to it transparently, so a commit made for one incarnation can reach the next
one. Kafka's commit metadata would label a commit with its incarnation, but tansu (0.6) does not
keep it: an offset fetch answers the offset only, the metadata is always null. The label is
therefore the group's name: a consumer group ``g`` commits, in an incarnation it read as ``X``
*before* it fetched anything, under ``group_of("g", "X")``. A commit found under that name in
incarnation ``X`` can only come from fetches made while ``X`` was up (the id was read before them,
the commit landed in ``X`` after them, and an incarnation never comes back), so it is a true
position in ``X``'s log; a commit that reached ``X`` from an older incarnation is under another
name, and nobody reads it (``local_stack.relay``, ``local_stack.poller``).
"""

from collections.abc import Sequence
from typing import Any


class TopicsMissingError(RuntimeError):
    """The broker answers, but without (some of) the topics: a new broker before the stack made them."""


def cluster_id(client: Any, topics: Sequence[str] = (), timeout: float = 5.0) -> str:
    """The cluster id of the broker answering ``client`` now (any confluent_kafka client: an
    ``AdminClient``, a ``Producer``, a ``Consumer``). With ``topics``: ``TopicsMissingError`` while one
    of them is missing or has no partitions. Raises what ``list_topics`` raises (no broker)."""
    metadata = client.list_topics(timeout=timeout)
    missing = [
        topic
        for topic in topics
        if (found := metadata.topics.get(topic)) is None or found.error is not None or not found.partitions
    ]
    if missing:
        raise TopicsMissingError(f"topic(s) {', '.join(missing)} not created yet")
    return str(metadata.cluster_id)


def group_of(group: str, cluster: str) -> str:
    """The name group ``group``'s offsets are committed under in the incarnation ``cluster``."""
    return f"{group}@{cluster}"
