"""MySQL backend: Django's, with credentials resolved at connect time."""

from __future__ import annotations

from django.db.backends.mysql import base

from .._shared import CredentialsWrapperMixin
from .client import DatabaseClient
from .creation import DatabaseCreation

#: MySQL's "Access denied for user" (also what a refused PAM/IAM login gives).
ER_ACCESS_DENIED_ERROR = 1045


class DatabaseWrapper(CredentialsWrapperMixin, base.DatabaseWrapper):
    client_class = DatabaseClient
    creation_class = DatabaseCreation

    # mysqlclient takes "passwd" as an alias of "password".
    iamdb_password_keys = ("password", "passwd")

    def iamdb_login_refused(self, exc: BaseException) -> bool:
        return (
            isinstance(exc, self.Database.OperationalError)
            and bool(exc.args)
            and exc.args[0] == ER_ACCESS_DENIED_ERROR
        )
