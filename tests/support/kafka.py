"""Reading a topic of the tests' real broker back, from its first record."""

from kafka import KafkaConsumer, TopicPartition


def consume(port: int, topic: str, expected: int) -> list[tuple[bytes, bytes]]:
    """The (key, value) of ``topic``'s records on the broker at ``port``, from every partition's
    start, until ``expected`` are read (or 5 s pass without one)."""
    consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{port}", consumer_timeout_ms=5000)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[tuple[bytes, bytes]] = []
        for record in consumer:
            records.append((record.key, record.value))
            if len(records) >= expected:
                break
        return records
    finally:
        consumer.close()
