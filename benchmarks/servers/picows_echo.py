"""Echo and broadcast server on picows' core callback API (WSListener), with uvloop.

The core API has no permessage-deflate, so --no-compression changes nothing here, and it has no
broadcast helper: /trigger sends the message to every /fanout transport in a loop.
"""

from __future__ import annotations

import uvloop
from _common import MAX_SIZE, announce, parse_args
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

DATA_TYPES = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION)
FANOUT: set[WSTransport] = set()


class EchoListener(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in DATA_TYPES:
            # Frame by frame: a fragmented message comes back fragmented the same way.
            transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


class FanoutListener(EchoListener):
    def on_ws_connected(self, transport: WSTransport) -> None:
        FANOUT.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        FANOUT.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            super().on_ws_frame(transport, frame)


class TriggerListener(EchoListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            payload = frame.get_payload_as_bytes()
            for receiver in FANOUT:
                if not receiver.is_close_frame_sent:
                    receiver.send(frame.msg_type, payload)
        else:
            super().on_ws_frame(transport, frame)


LISTENERS = {b"/fanout": FanoutListener, b"/trigger": TriggerListener}


def listener_factory(request: WSUpgradeRequest) -> WSListener:
    return LISTENERS.get(request.path, EchoListener)()


def main() -> None:
    args = parse_args("picows core API echo server (uvloop)")

    async def serve() -> None:
        server = await ws_create_server(
            listener_factory, args.host, args.port, max_frame_size=MAX_SIZE
        )
        announce(args.host, args.port)
        await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
