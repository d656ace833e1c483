"""MySQL / MariaDB (mysqlclient) with credentials from an iamdb source."""
