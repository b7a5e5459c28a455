"""Flow-control defaults both ends use: windows and data chunk sizes, one place each.

An end that guesses the other's default differently either stalls (waiting for a
window that never comes) or buffers more than it meant to, so both import these.
The frame-size limits live with the frames (`shoal.protocol.frames`).
"""

from __future__ import annotations

__all__ = ["OUTPUT_WINDOW", "TRANSFER_WINDOW", "MAX_GET_WINDOW", "DATA_CHUNK", "RELAY_WINDOW", "MAX_BATCH_FILES",
           "MAX_BATCH_BYTES", "HUB_PORT"]

MiB = 1024 * 1024

# STDOUT/STDERR bytes an agent may send for one command before a WINDOW, when EXEC
# names no window: enough to keep a fast command streaming across a round trip.
OUTPUT_WINDOW = 4 * MiB
# FILE_DATA bytes in flight for one transfer: the window a put's receiver grants, and
# the one a get asks for when it names none. Deep enough for disk and hash to overlap.
TRANSFER_WINDOW = 8 * MiB
# The largest window a GET_FILE may ask for; also what the agent may queue on the socket.
MAX_GET_WINDOW = 64 * MiB
# The largest data payload in one STDOUT/STDERR/STDIN/FILE_DATA message (and pipe read):
# large enough that per-message costs vanish, well under the default frame limit.
DATA_CHUNK = 1 * MiB
# The TCP port a hub listens on for agents that dial in (`shoal-agent --connect HUB`
# without a port), beside the agents' own 8470.
HUB_PORT = 8472
# RELAY_DATA bytes in flight for one relayed stream, each way, when RELAY_OPEN or
# RELAY_OPENED names no window: a gateway holds about this much per target it
# relays to, and 256 KiB still fills a fast link at LAN round trips.
RELAY_WINDOW = 256 * 1024
# A PUT_BATCH holds at most this many entries and this many content bytes: the
# receiver keeps a whole batch in memory before writing it, and its window is the
# batch's size, so these bound both. Ample for the small files batches are for.
MAX_BATCH_FILES = 1024
MAX_BATCH_BYTES = 4 * MiB
