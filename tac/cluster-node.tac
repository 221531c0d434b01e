# One node of an rtserver cluster (engine.type redis). Run one per process/host:
#
#   RTSERVER_NODE_NAME=node-1 RTSERVER_HTTP_SERVER_PORT=8000 twistd -ny tac/cluster-node.tac
#   RTSERVER_NODE_NAME=node-2 RTSERVER_HTTP_SERVER_PORT=8001 twistd -ny tac/cluster-node.tac
#
# The configuration comes from $RTSERVER_CONFIG (default: tac/cluster-node.json next to
# this file, an example whose secrets you must replace); any key can be overridden with
# RTSERVER_* variables, e.g. RTSERVER_ENGINE_REDIS_ADDRESS="redis://10.0.0.5:6379".
import os

from twisted.application.service import Application

from rtserver import config, service

here = os.path.dirname(os.path.abspath(__file__))  # twistd sets __file__ for .tac files
path = os.environ.get("RTSERVER_CONFIG") or os.path.join(here, "cluster-node.json")
cfg, _warnings = config.load(path)
if cfg.engine.type != "redis":
    raise SystemExit(f"{path}: a cluster node needs engine.type redis")
application = Application("rtserver")
service.build(cfg).setServiceParent(application)
