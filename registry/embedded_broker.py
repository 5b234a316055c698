"""An embedded MQTT 3.1.1 broker (amqtt) for one-machine setups and the demo.

Production fleets use Mosquitto or EMQX; this exists so that ``scripts/demo``
runs with no broker installed and no root rights. It speaks MQTT 3.1.1 only, so
MQTT 5 features (shared subscriptions) are not available on it.

Run it as its own process: ``python -m registry.embedded_broker --port 1884``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

__all__ = ["serve"]

logger = logging.getLogger(__name__)


async def serve(host: str = "127.0.0.1", port: int = 1883) -> None:
    """Run an anonymous broker on ``host:port`` until cancelled or signalled.

    Raises:
        OSError: the port is taken.
    """
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    logger.info("embedded MQTT broker listening on %s:%d", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s broker %(message)s")
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
