"""MySQL backend: Django's, with credentials resolved at connect time."""

from __future__ import annotations

from django.db.backends.mysql import base

from .._shared import CredentialsWrapperMixin
from .client import DatabaseClient
from .creation import DatabaseCreation

#: MySQL's "Access denied for user" (also what a refused PAM/IAM login gives), and
#: MariaDB's variant for a user that vanished during the login (a revoked Vault lease).
ER_ACCESS_DENIED_ERROR = 1045
ER_ACCESS_DENIED_NO_PASSWORD_ERROR = 1698
_REFUSED = (ER_ACCESS_DENIED_ERROR, ER_ACCESS_DENIED_NO_PASSWORD_ERROR)


class DatabaseWrapper(CredentialsWrapperMixin, base.DatabaseWrapper):
    client_class = DatabaseClient
    creation_class = DatabaseCreation

    # mysqlclient takes "passwd" as an alias of "password".
    iamdb_password_keys = ("password", "passwd")

    def iamdb_login_refused(self, exc: BaseException) -> bool:
        return isinstance(exc, self.Database.OperationalError) and bool(exc.args) and exc.args[0] in _REFUSED
