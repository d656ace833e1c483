"""PostGIS (psycopg 3 or psycopg2) with credentials from an iamdb source."""
