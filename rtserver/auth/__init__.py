"""Authentication: verification of connection and subscription JWTs."""
