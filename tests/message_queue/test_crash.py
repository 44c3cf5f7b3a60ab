"""kill -9 mid-stream: every record acknowledged with acks=all is there after restart, once,
in order (fsync before ack, the default)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

from tests.message_queue.conftest import RunningBroker

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def broker_process(data: Path) -> tuple[subprocess.Popen[str], int]:
    script = textwrap.dedent(f"""
        import asyncio
        from pathlib import Path
        from scalelab.message_queue.server import BrokerServer
        from scalelab.message_queue.settings import MessageQueueSettings

        async def main():
            settings = MessageQueueSettings.from_env({{}}, data=Path({str(data)!r}), port=0)
            server = BrokerServer(settings)
            await server.start()
            print(server.port, flush=True)
            await asyncio.Event().wait()

        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, port


def test_acknowledged_records_survive_kill_9(
    tmp_path: Path, start_broker: Callable[..., RunningBroker]
) -> None:
    data = tmp_path / "data"
    proc, port = broker_process(data)
    acked: list[bytes] = []
    producer = KafkaProducer(bootstrap_servers=f"127.0.0.1:{port}", acks="all", linger_ms=2,
                             retries=0, request_timeout_ms=3000)  # fmt: skip
    try:
        futures = []
        for i in range(1600):
            futures.append((b"record-%06d" % i, producer.send("crash", b"record-%06d" % i)))
            if i % 50 == 49 and i < 1500:
                producer.flush(timeout=5)
            if i == 1550:
                os.kill(proc.pid, signal.SIGKILL)  # mid-stream: sends are still in flight
                break
        for value, future in futures:
            try:
                future.get(timeout=5)
                acked.append(value)
            except Exception:  # noqa: BLE001 - lost with the broker: not acknowledged
                pass
    finally:
        producer.close(timeout=1)
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert len(acked) >= 1000
    again = start_broker(data)
    consumer = KafkaConsumer(bootstrap_servers=again.bootstrap, consumer_timeout_ms=3000)
    consumer.assign([TopicPartition("crash", 0)])
    consumer.seek_to_beginning()
    stored = [m.value for m in consumer]
    consumer.close()
    assert len(stored) == len(set(stored))  # nothing twice
    assert stored == sorted(stored)  # in order
    assert set(acked) <= set(stored)  # every acknowledged record is there
