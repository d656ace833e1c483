"""Django database backends: ``iamdb.backends.mysql`` and ``iamdb.backends.postgresql``."""
