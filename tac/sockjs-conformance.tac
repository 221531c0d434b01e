# The SockJS test services (/echo, /close, /disabled_websocket_echo, /cookie_needed_echo)
# for the upstream sockjs-protocol suite:
#   SOCKJS_PORT=8081 twistd -ny tac/sockjs-conformance.tac
#   SOCKJS_URL=http://127.0.0.1:8081 python2.7 sockjs-protocol.py
import os

from twisted.application.service import Application
from twisted.application.strports import service as strports_service
from twisted.internet import reactor

from rtserver.sockjs.conformance import services
from rtserver.web.site import Branch, RTSite

root = Branch()
for name, resource in services(reactor).items():
    root.putChild(name.encode("ascii"), resource)
port = os.environ.get("SOCKJS_PORT", "8081")
application = Application("sockjs-conformance")
strports_service(f"tcp:{port}", RTSite(root, reactor=reactor)).setServiceParent(application)
