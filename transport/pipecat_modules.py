"""This host's SmallWebRTC classes under Pipecat's own names, for bots that ask Pipecat for a transport.

A bot written for Pipecat's runner gets its transport from Pipecat: with
``create_transport(runner_args, transport_params)``, which imports
``pipecat.transports.smallwebrtc.transport.SmallWebRTCTransport`` when it is
called, or by importing that class (and ``SmallWebRTCConnection`` from
``pipecat.transports.smallwebrtc.connection``, for type hints) itself.
:func:`install` makes those names this host's classes in the process that runs
the bots, so such a bot runs unchanged.

Why the names and not Pipecat's transport driving this host's connection:
Pipecat's ``SmallWebRTCClient`` reads decoded aiortc frames from the
connection's tracks and converts every one, and sends the bot's media through
aiortc output tracks; fed by this host's connection it would lose what the
host does on its fast path (sampling video before converting it, encoding the
bot's media in the worker for the engine to send as is), and it would depend on
how each Pipecat release's client drives its connection, which is private.
The module paths and class names are Pipecat's public API: they are all this
depends on.
"""

import importlib

import transport

# Where Pipecat defines the SmallWebRTC classes a bot or create_transport() imports.
PIPECAT_MODULES = (
    "pipecat.transports.smallwebrtc.transport",
    "pipecat.transports.smallwebrtc.connection",
)


def install() -> None:
    """Make Pipecat's SmallWebRTC modules hand out this host's classes, in this process.

    Only a process that hosts bots should call it, before it imports them: a
    bot's ``from ... import SmallWebRTCTransport`` binds what the module holds
    at that moment. Every name Pipecat's modules define that this host's
    ``transport`` package has (``SmallWebRTCTransport``, ``SmallWebRTCConnection``,
    ``SmallWebRTCClient``, ...) is replaced; the others (``IceServer``, ...)
    stay Pipecat's.
    """
    for module_name in PIPECAT_MODULES:
        module = importlib.import_module(module_name)
        for name in transport.__all__:
            if hasattr(module, name):
                setattr(module, name, getattr(transport, name))
