"""A small Django project that keeps serving requests while its database password rotates."""
