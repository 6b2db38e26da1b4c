"""A scheduler process for the two-schedulers test: one job, ``tick``, every second.

Each execution appends ``<pid> <time>`` to the file given; run until SIGTERM.
Usage: python -m tests.support.scheduler_worker DB_URL OUT_FILE
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from connector.store import StateStore
from sync.scheduler import Scheduler, interval


def main() -> None:
    url, out = sys.argv[1], sys.argv[2]
    store = StateStore(url)
    store.migrate()

    def tick() -> dict:
        with open(out, "a") as fh:
            fh.write(f"{os.getpid()} {time.time():.3f}\n")
        time.sleep(0.2)  # long enough that both schedulers are inside a run at once without the lock
        return {"pid": os.getpid()}

    scheduler = Scheduler(store, {"tick": tick}, {"tick": interval(1.0)})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    scheduler.start()
    print("started", flush=True)
    stop.wait()
    scheduler.shutdown()
    store.close()


if __name__ == "__main__":
    main()
