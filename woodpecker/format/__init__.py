"""The block format: Arrow IPC streams of ``payload: binary`` rows, with xxh3 checksums."""

from woodpecker.format.block import (
    SCHEMA,
    STREAM_FOOTER,
    STREAM_HEADER,
    batch_message_size,
    check_batch_message,
    checksum,
    decode_block,
    decode_messages,
    encode_batch_message,
    encode_block,
    encode_file,
    iter_payloads,
    message_size,
    write_batch_message,
)

__all__ = [
    "SCHEMA",
    "STREAM_FOOTER",
    "STREAM_HEADER",
    "batch_message_size",
    "check_batch_message",
    "checksum",
    "decode_block",
    "decode_messages",
    "encode_batch_message",
    "encode_block",
    "encode_file",
    "iter_payloads",
    "message_size",
    "write_batch_message",
]
