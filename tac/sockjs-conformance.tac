# Test services on 127.0.0.1 (SOCKJS_INTERFACE to change it, e.g. 0.0.0.0 for another box):
#   /echo, /close, /disabled_websocket_echo, /cookie_needed_echo
#       the SockJS services of the upstream sockjs-protocol suite:
#       SOCKJS_PORT=8081 twistd -ny tac/sockjs-conformance.tac
#       SOCKJS_URL=http://127.0.0.1:8081 python2.7 sockjs-protocol.py
#   /websocket_echo
#       a plain WebSocket echo (text and binary, 64 MiB messages) on rtserver's WebSocket
#       options, for the Autobahn fuzzing suite: python3 bench/autobahn_fuzz.py
import os

from twisted.application.service import Application
from twisted.application.strports import service as strports_service
from twisted.internet import reactor

from rtserver.sockjs.conformance import services, websocket_echo
from rtserver.web.site import Branch, RTSite

root = Branch()
for name, resource in services(reactor).items():
    root.putChild(name.encode("ascii"), resource)
root.putChild(b"websocket_echo", websocket_echo(reactor))
port = os.environ.get("SOCKJS_PORT", "8081")
interface = os.environ.get("SOCKJS_INTERFACE", "127.0.0.1")
application = Application("sockjs-conformance")
strports_service(f"tcp:{port}:interface={interface}", RTSite(root, reactor=reactor)).setServiceParent(
    application
)
