"""Ray Serve deployments and the app builder: thin shells around the plain classes."""
