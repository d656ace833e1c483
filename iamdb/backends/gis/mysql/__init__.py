"""MySQL / MariaDB spatial backend (mysqlclient) with credentials from an iamdb source."""
