-- Runs once, when the PostgreSQL volume is first initialised (docker-entrypoint-initdb.d),
-- connected to the `postgres` database as the `okr` role (POSTGRES_USER in docker-compose.yml).
--
-- Creates the database the services share. Each service keeps its events in its own schema
-- (`goals`, `checkins`, ...), which the service creates itself on start (shared/store.py):
-- nothing per service belongs here.

CREATE DATABASE okr OWNER okr ENCODING 'UTF8' TEMPLATE template0;

-- Only the owner connects; timestamps are compared in UTC.
REVOKE ALL ON DATABASE okr FROM PUBLIC;
ALTER DATABASE okr SET timezone TO 'UTC';
