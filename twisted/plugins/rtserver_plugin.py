"""twistd plugin: ``twistd rtserver``."""

from twisted.application.service import ServiceMaker

rtserver = ServiceMaker(
    "rtserver",
    "rtserver.tap",
    "Real-time messaging server, wire-compatible with Centrifugo clients",
    "rtserver",
)
