# Run with: twistd -ny tac/rtserver.tac   (config file from $RTSERVER_CONFIG, optional)
import os

from twisted.application.service import Application

from rtserver import config, service

cfg, _warnings = config.load(os.environ.get("RTSERVER_CONFIG") or None)
application = Application("rtserver")
service.build(cfg).setServiceParent(application)
