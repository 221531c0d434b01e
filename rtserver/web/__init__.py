"""HTTP layer: the twisted.web resource tree, body limits, health."""
