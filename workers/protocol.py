"""Messages between the coordinator and its uploaders, inside the logstore.

These frames never leave the daemon's process tree, so they live with it; the
producer <-> logstore contract is ``woodpecker.wire``, whose ``encode`` and
``decode`` these control messages share.
"""

from __future__ import annotations

import struct

# coordinator -> uploader
ARENA = 20  # struct ARENA_FMT + arena fd
DROP_ARENA = 21  # struct DROP_FMT
JOB = 22  # orjson {job, key, parts: [[producer, offset, length], ...]}
# uploader -> coordinator
DONE = 30  # orjson {job, size, checksum}
FAILED = 31  # orjson {job, error, message}

# type, producer_id, arena size
ARENA_FMT = struct.Struct("<BQQ")
# type, producer_id
DROP_FMT = struct.Struct("<BQ")
