"""Shared memory for the write pipeline: memfd arenas, offset allocation, fd passing."""

from shm.allocator import ALIGN, RingAllocator
from shm.arena import Arena
from shm.fdpass import MAX_FDS, MAX_FRAME, FrameReader, FrameWriter, recv_msg, send_msg

__all__ = [
    "ALIGN",
    "MAX_FDS",
    "MAX_FRAME",
    "Arena",
    "FrameReader",
    "FrameWriter",
    "RingAllocator",
    "recv_msg",
    "send_msg",
]
