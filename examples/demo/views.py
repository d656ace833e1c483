"""One view: which database user are we? It runs a query (on a new connection, unless
the alias keeps its connections: see ``CONN_MAX_AGE`` in the settings)."""

from __future__ import annotations

from django.db import DatabaseError, connections
from django.http import HttpRequest, HttpResponse, JsonResponse

CURRENT_USER = {
    "mysql": "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)",
    "postgresql": "SELECT session_user",  # the login, whatever role it assumed
}


def whoami(request: HttpRequest) -> HttpResponse:
    alias = request.GET.get("db", "default")
    if alias not in ("default", "stock"):
        return JsonResponse({"error": "unknown database"}, status=404)
    connection = connections[alias]
    try:
        with connection.cursor() as cursor:
            cursor.execute(CURRENT_USER[connection.vendor])
            (user,) = cursor.fetchone()
    except DatabaseError as exc:
        # The driver's message names the user, never the password.
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return JsonResponse({"error": f"{type(exc).__name__}: {first_line}"}, status=503)
    return JsonResponse({"user": user, "backend": type(connection).__module__})
