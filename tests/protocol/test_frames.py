"""Frame layout: serialisation, masking, and length encodings on both sides of a Connection."""

from __future__ import annotations

import pytest

from pulsewire.protocol import frames
from pulsewire.protocol.frames import Frame, Opcode, apply_mask, build_frame, serialize_frame

from .helpers import BINARY, MASK, PING, TEXT, client, frame, parse_frames, sent, server


class TestBuildFrame:
    # RFC 6455 section 5.7 examples.
    def test_unmasked_text(self) -> None:
        assert build_frame(0x81, b"Hello", None) == bytes.fromhex("810548656c6c6f")

    def test_masked_text(self) -> None:
        assert build_frame(0x81, b"Hello", MASK) == bytes.fromhex("818537fa213d7f9f4d5158")

    def test_fragments(self) -> None:
        assert build_frame(0x01, b"Hel", None) == bytes.fromhex("010348656c")
        assert build_frame(0x80, b"lo", None) == bytes.fromhex("80026c6f")

    def test_ping(self) -> None:
        assert build_frame(0x89, b"Hello", None) == bytes.fromhex("890548656c6c6f")

    @pytest.mark.parametrize(
        ("size", "header"),
        [
            (0, "8200"),
            (125, "827d"),
            (126, "827e007e"),
            (256, "827e0100"),
            (65535, "827effff"),
            (65536, "827f0000000000010000"),
            (70000, "827f0000000000011170"),
        ],
    )
    def test_length_encodings(self, size: int, header: str) -> None:
        payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        data = build_frame(0x82, payload, None)
        assert data == bytes.fromhex(header) + payload

    @pytest.mark.parametrize("size", [0, 1, 5, 125, 126, 65535, 65536])
    def test_masked_length_encodings(self, size: int) -> None:
        payload = b"x" * size
        data = build_frame(0x82, payload, MASK)
        (wire,) = parse_frames(data)
        assert wire.mask == MASK
        assert wire.payload == payload
        assert data[1] & 0x80

    def test_serialize_frame_bits(self) -> None:
        data = serialize_frame(Frame(Opcode.BINARY, b"ab", fin=False, rsv1=True, rsv3=True))
        assert data[0] == 0x40 | 0x10 | 0x02
        data = serialize_frame(Frame(Opcode.CONT, b"", fin=True, rsv2=True))
        assert data[0] == 0x80 | 0x20


class TestApplyMask:
    def test_rfc_example(self) -> None:
        assert apply_mask(b"Hello", MASK) == bytes.fromhex("7f9f4d5158")

    @pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 8, 1001])
    def test_involution(self, size: int) -> None:
        data = bytes((i * 7) & 0xFF for i in range(size))
        masked = apply_mask(data, b"\x01\x02\x03\x04")
        assert len(masked) == size
        if size:
            assert masked != data
        assert apply_mask(masked, b"\x01\x02\x03\x04") == data

    def test_accepts_memoryview_and_bytearray(self) -> None:
        assert apply_mask(bytearray(b"Hello"), MASK) == apply_mask(memoryview(b"Hello"), MASK)


@pytest.mark.skipif(not frames.SPEEDUPS, reason=frames.SPEEDUPS_ABSENT)
class TestSpeedupsMatchPython:
    SIZES = [0, 1, 3, 4, 7, 8, 9, 125, 126, 127, 511, 512, 513, 65535, 65536, 100_003]

    @pytest.mark.parametrize("size", SIZES)
    def test_apply_mask(self, size: int) -> None:
        data = bytes((i * 31 + 7) & 0xFF for i in range(size))
        for mask in (MASK, b"\x00\x00\x00\x00", b"\xff\x01\x80\x7f"):
            assert frames.apply_mask(data, mask) == frames._py_apply_mask(data, mask)
        assert frames.apply_mask(memoryview(data), MASK) == frames._py_apply_mask(data, MASK)

    @pytest.mark.parametrize("size", SIZES)
    def test_build_frame(self, size: int) -> None:
        payload = bytes((i * 13) & 0xFF for i in range(size))
        for first in (0x81, 0x02, 0xC1, 0x8A):
            for mask in (None, MASK):
                assert frames.build_frame(first, payload, mask) == frames._py_build_frame(
                    first, payload, mask
                )

    def test_bad_masks(self) -> None:
        with pytest.raises(ValueError):
            frames.apply_mask(b"data", b"abc")
        with pytest.raises(ValueError):
            frames.build_frame(0x81, b"data", b"abcde")


class TestSendSide:
    def test_client_masks_every_frame(self) -> None:
        conn = client()
        conn.send_text("hi")
        conn.send_binary(b"\x00\x01")
        conn.send_ping(b"p")
        conn.send_pong(b"q")
        conn.send_close(1000)
        frames = sent(conn)
        assert [f.opcode for f in frames] == [0x1, 0x2, 0x9, 0xA, 0x8]
        assert all(f.mask == MASK for f in frames)
        assert [f.payload for f in frames[:4]] == [b"hi", b"\x00\x01", b"p", b"q"]

    def test_client_uses_a_fresh_key_per_frame_by_default(self) -> None:
        from pulsewire.protocol import Connection, Side

        conn = Connection(Side.CLIENT)
        for _ in range(8):
            conn.send_binary(b"x" * 8)
        keys = {f.mask for f in sent(conn)}
        assert None not in keys
        assert len(keys) > 1

    def test_server_never_masks(self) -> None:
        conn = server()
        conn.send_text("hi")
        conn.send_binary(b"x" * 70000)
        conn.send_ping()
        frames = sent(conn)
        assert all(f.mask is None for f in frames)
        assert frames[1].payload == b"x" * 70000

    @pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 65537, 200_000])
    def test_server_output_lengths(self, size: int) -> None:
        conn = server(max_message_size=None)
        payload = bytes(i & 0xFF for i in range(size))
        conn.send_binary(payload)
        (wire,) = sent(conn)
        assert (wire.opcode, wire.fin, wire.payload) == (BINARY, True, payload)


@pytest.mark.usefixtures("parser")
class TestReceiveSide:
    @pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 100_000])
    def test_server_receives_all_length_encodings(self, size: int) -> None:
        conn = server(max_message_size=None)
        payload = bytes(i & 0xFF for i in range(size))
        conn.receive_data(frame(BINARY, payload))
        assert conn.events_received() == [payload]
        assert conn.failure is None

    @pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
    def test_client_receives_all_length_encodings(self, size: int) -> None:
        conn = client(max_message_size=None)
        conn.receive_data(frame(TEXT, b"a" * size, mask=None))
        assert conn.events_received() == ["a" * size]

    def test_rfc_examples(self) -> None:
        conn = client()
        conn.receive_data(bytes.fromhex("810548656c6c6f"))
        conn.receive_data(bytes.fromhex("010348656c") + bytes.fromhex("80026c6f"))
        conn.receive_data(bytes.fromhex("890548656c6c6f"))
        events = conn.events_received()
        assert events[:2] == ["Hello", "Hello"]
        assert events[2].data == b"Hello"  # type: ignore[union-attr]
        srv = server()
        srv.receive_data(bytes.fromhex("818537fa213d7f9f4d5158"))
        assert srv.events_received() == ["Hello"]

    def test_unmasked_frame_from_client_is_1002(self) -> None:
        conn = server()
        conn.receive_data(frame(TEXT, b"hello", mask=None))
        assert conn.events_received() == []
        assert conn.failure is not None
        assert conn.failure.code == 1002
        (close,) = sent(conn)
        assert close.close[0] == 1002
        assert close.mask is None
        assert conn.close_transport

    def test_unmasked_control_frame_from_client_is_1002(self) -> None:
        conn = server()
        conn.receive_data(frame(PING, b"", mask=None))
        assert conn.failure is not None and conn.failure.code == 1002
        assert [f.opcode for f in sent(conn)] == [0x8]

    def test_masked_frame_from_server_is_1002(self) -> None:
        conn = client()
        conn.receive_data(frame(TEXT, b"hello", mask=MASK))
        assert conn.events_received() == []
        assert conn.failure is not None and conn.failure.code == 1002
        (close,) = sent(conn)
        assert close.close[0] == 1002
        assert close.mask == MASK  # the client's own Close is still masked
        assert conn.close_transport

    def test_mask_check_happens_on_the_header(self) -> None:
        # Only the first bytes of a big masked frame (up to its 16-bit length): fail at once.
        conn = client()
        conn.receive_data(frame(BINARY, b"x" * 1000, mask=MASK)[:4])
        assert conn.failure is not None and conn.failure.code == 1002
