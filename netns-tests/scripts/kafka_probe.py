#!/usr/bin/python3
"""A real Kafka client (kafka-python, Debian's python3-kafka) for the L7
tests. (kcat is the issue's client of choice, but librdkafka 2.0.2 cannot
read tansu 0.6.0's ApiVersions v3 answer, "Read underflow", with or without
Palisade in the path; kafka-python speaks to tansu.)

  kafka_probe.py produce BROKER TOPIC MESSAGE   prints OK <offset> or the error's name
  kafka_probe.py consume BROKER TOPIC           prints each message, or the error's name
Exit status 0 on success, 1 on a Kafka error.
"""
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError


def produce(broker, topic, msg):
    p = KafkaProducer(bootstrap_servers=broker, request_timeout_ms=5000, max_block_ms=5000, retries=0, api_version=(2, 0, 0))
    md = p.send(topic, msg.encode()).get(timeout=10)
    print("OK", md.offset)


def consume(broker, topic):
    c = KafkaConsumer(bootstrap_servers=broker, consumer_timeout_ms=3000, request_timeout_ms=5000, api_version=(2, 0, 0))
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    got = 0
    for m in c:
        print(m.value.decode())
        got += 1
    if got == 0:
        # Nothing came: ask for the topic's offsets, which raises the
        # broker's (or the proxy's) error if there is one.
        c.beginning_offsets([tp])
        print("EMPTY")


if __name__ == "__main__":
    try:
        if sys.argv[1] == "produce":
            produce(sys.argv[2], sys.argv[3], sys.argv[4])
        else:
            consume(sys.argv[2], sys.argv[3])
    except KafkaError as e:
        print(type(e).__name__, e, flush=True)
        sys.exit(1)
