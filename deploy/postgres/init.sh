#!/bin/sh
# The OKR database and one login role per service, each owning only its own schema.
#
# Run by the postgres image once, when its volume is first initialised
# (/docker-entrypoint-initdb.d), as the image's superuser (POSTGRES_USER). Run it again by hand
# to bring an older volume in line or to rotate the services' passwords: it creates what is
# missing and sets each role's attributes and password every time (docs/operations.md).
#
#   OKR_GOALS_DB_PASSWORD, OKR_CHECKINS_DB_PASSWORD, OKR_REVIEWS_DB_PASSWORD,
#   OKR_PROJECTIONS_DB_PASSWORD   each service's password (required)
#   OKR_DB_NAME                   the database (okr)
#   OKR_DB_ROLE_PREFIX            the roles' names: <prefix><service> (okr_)
#   POSTGRES_USER, POSTGRES_DB    who runs this, and where it connects first (the image's own)
#
# A service's role logs in to the database and creates and uses tables in its own schema,
# nowhere else: no superuser, no new databases, roles or schemas, no reading another
# service's events. The superuser is for operators; no service uses it.
set -eu

: "${OKR_GOALS_DB_PASSWORD:?set OKR_GOALS_DB_PASSWORD}"
: "${OKR_CHECKINS_DB_PASSWORD:?set OKR_CHECKINS_DB_PASSWORD}"
: "${OKR_REVIEWS_DB_PASSWORD:?set OKR_REVIEWS_DB_PASSWORD}"
: "${OKR_PROJECTIONS_DB_PASSWORD:?set OKR_PROJECTIONS_DB_PASSWORD}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --quiet \
    --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
    -v db="${OKR_DB_NAME:-okr}" \
    -v prefix="${OKR_DB_ROLE_PREFIX:-okr_}" \
    -v goals_password="$OKR_GOALS_DB_PASSWORD" \
    -v checkins_password="$OKR_CHECKINS_DB_PASSWORD" \
    -v reviews_password="$OKR_REVIEWS_DB_PASSWORD" \
    -v projections_password="$OKR_PROJECTIONS_DB_PASSWORD" <<'SQL'
-- The passwords reach the server inside these statements: no statement logging meanwhile.
SET log_statement = 'none';
SET client_min_messages = warning;

SELECT format('CREATE DATABASE %I ENCODING %L TEMPLATE template0', :'db', 'UTF8')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
-- Only the services' roles connect; timestamps are compared in UTC.
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db') \gexec
SELECT format('ALTER DATABASE %I SET timezone TO %L', :'db', 'UTC') \gexec

CREATE TEMPORARY TABLE okr_roles (service text, password text);
INSERT INTO okr_roles VALUES
    ('goals', :'goals_password'),
    ('checkins', :'checkins_password'),
    ('reviews', :'reviews_password'),
    ('projections', :'projections_password');

SELECT format('CREATE ROLE %I LOGIN', :'prefix' || service) FROM okr_roles
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'prefix' || service) \gexec
-- 40 connections: the service's pool of 12, and as many again for a command run beside it.
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION'
              ' NOBYPASSRLS CONNECTION LIMIT 40 PASSWORD %L', :'prefix' || service, password)
  FROM okr_roles \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', :'db', :'prefix' || service)
  FROM okr_roles \gexec
DROP TABLE okr_roles;

\connect :"db"
SET log_statement = 'none';
SET client_min_messages = warning;
-- Nothing is shared through `public`.
REVOKE ALL ON SCHEMA public FROM PUBLIC;

-- Each service's schema, owned by its role together with what is already in it (a volume
-- initialised when every service shared one role); the service creates its tables at start.
CREATE TEMPORARY TABLE okr_schemas (service text);
INSERT INTO okr_schemas VALUES ('goals'), ('checkins'), ('reviews'), ('projections');
SELECT format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', service, :'prefix' || service)
  FROM okr_schemas \gexec
SELECT format('ALTER SCHEMA %I OWNER TO %I', service, :'prefix' || service)
  FROM okr_schemas \gexec
SELECT format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', service) FROM okr_schemas \gexec
SELECT format('ALTER TABLE %I.%I OWNER TO %I', t.schemaname, t.tablename, :'prefix' || s.service)
  FROM pg_tables t JOIN okr_schemas s ON s.service = t.schemaname
 WHERE t.tableowner <> :'prefix' || s.service \gexec
SELECT format('ALTER SEQUENCE %I.%I OWNER TO %I', q.schemaname, q.sequencename,
              :'prefix' || s.service)
  FROM pg_sequences q JOIN okr_schemas s ON s.service = q.schemaname
 WHERE q.sequenceowner <> :'prefix' || s.service \gexec
SELECT format('ALTER ROLE %I IN DATABASE %I SET search_path TO %I', :'prefix' || service,
              current_database(), service) FROM okr_schemas \gexec
DROP TABLE okr_schemas;
SQL
