"""Every name of Pipecat's SmallWebRTC transport API exists here with the same signature."""

import inspect

import pytest
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

import transport
from engine.common.link import Outbox

SIGNATURES = {
    "RawAudioTrack.__init__": ["self", "sample_rate", "auto_silence"],
    "RawVideoTrack.__init__": ["self", "width", "height"],
    "SmallWebRTCClient.__init__": ["self", "webrtc_connection", "callbacks"],
    "SmallWebRTCInputTransport.__init__": ["self", "client", "params", "kwargs"],
    "SmallWebRTCOutputTransport.__init__": ["self", "client", "params", "kwargs"],
    "SmallWebRTCTransport.__init__": ["self", "webrtc_connection", "params", "input_name", "output_name"],
}
METHODS = {
    "RawAudioTrack": ["add_audio_bytes", "recv"],
    "RawVideoTrack": ["add_video_frame", "recv"],
    "SmallWebRTCClient": [
        "read_video_frame", "read_audio_frame", "write_audio_frame", "write_video_frame",
        "setup", "connect", "disconnect", "send_message",
    ],
    "SmallWebRTCInputTransport": [
        "process_frame", "start", "stop", "cancel", "push_app_message",
        "request_participant_image", "capture_participant_media",
    ],
    "SmallWebRTCOutputTransport": ["start", "stop", "cancel", "send_message", "write_audio_frame", "write_video_frame"],
    "SmallWebRTCTransport": [
        "input", "output", "send_image", "send_audio", "capture_participant_video",
        "capture_participant_audio", "get_client_id",
    ],
}


@pytest.mark.parametrize("name, expected", SIGNATURES.items())
def test_constructor_signatures(name, expected):
    cls_name, method = name.split(".")
    parameters = inspect.signature(getattr(getattr(transport, cls_name), method)).parameters
    assert [p for p in parameters][: len(expected)] == expected
    if cls_name == "RawAudioTrack":
        assert parameters["auto_silence"].default is True
    if cls_name == "SmallWebRTCTransport":
        assert parameters["input_name"].default is None and parameters["output_name"].default is None


@pytest.mark.parametrize("cls_name, methods", METHODS.items())
def test_methods_exist(cls_name, methods):
    cls = getattr(transport, cls_name)
    for method in methods:
        assert callable(getattr(cls, method)), f"{cls_name}.{method}"


def test_base_classes():
    assert issubclass(transport.SmallWebRTCTransport, BaseTransport)
    assert issubclass(transport.SmallWebRTCInputTransport, BaseInputTransport)
    assert issubclass(transport.SmallWebRTCOutputTransport, BaseOutputTransport)


def test_format_conversions_are_the_seeds():
    assert set(transport.SmallWebRTCClient.FORMAT_CONVERSIONS) == {"gray", "nv12", "yuv420p", "yuvj420p"}


def test_client_properties():
    assert isinstance(inspect.getattr_static(transport.SmallWebRTCClient, "is_connected"), property)
    assert isinstance(inspect.getattr_static(transport.SmallWebRTCClient, "is_closing"), property)


async def test_callbacks_take_the_seeds_three_handlers():
    async def handler(*args):
        pass

    callbacks = transport.SmallWebRTCCallbacks(
        on_app_message=handler, on_client_connected=handler, on_client_disconnected=handler
    )
    await callbacks.on_track_status("camera", False)


async def test_transport_events():
    connection = transport.SmallWebRTCConnection("pc-1", Outbox("test"))
    bot_transport = transport.SmallWebRTCTransport(connection, TransportParams(audio_in_enabled=True))
    for event in ("on_client_connected", "on_client_disconnected", "on_client_message", "on_app_message"):
        bot_transport.event_handler(event)(lambda *args: None)
        assert bot_transport._event_handlers[event].handlers
    assert bot_transport.get_client_id(connection) == "pc-1"
