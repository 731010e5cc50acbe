"""Reference watcher for bench/destination/run.py: a bare key-value watch in a process of its own.

It watches a JetStream key-value bucket through ``tether.shared.bus`` (the watch a destination replica
uses, under uvloop as a replica runs) with the values left undecoded, and prints ``synced`` once the watch
is live, then ``rev <revision> <time.monotonic()>`` as each change is delivered. CLOCK_MONOTONIC is
system-wide on Linux, so the writer's send times and these receive times are comparable.

    python bench/destination/raw_watch.py NATS_URL BUCKET
"""

from __future__ import annotations

import sys
import time

import msgspec
import uvloop

from tether.shared.bus import Bus, KvEntry, Synced


async def watch(url: str, bucket: str) -> None:
    bus = await Bus.connect(url, name="bench-reference-watch")
    kv = await bus.kv(bucket)
    out = sys.stdout
    async for item in kv.watch(msgspec.Raw):
        received = time.monotonic()
        if isinstance(item, Synced):
            out.write("synced\n")
        elif isinstance(item, KvEntry):
            out.write(f"rev {item.revision} {received!r}\n")
        out.flush()


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    uvloop.run(watch(sys.argv[1], sys.argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
